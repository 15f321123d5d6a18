package virtio_test

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// testMemory is one 64 KiB region at guest 0x10000.
func testMemory(t testing.TB) (*virtio.Memory, []byte) {
	t.Helper()
	host := make([]byte, 64<<10)
	m, err := virtio.NewMemory([]virtio.Region{{GuestAddr: 0x10000, Host: host}})
	if err != nil {
		t.Fatal(err)
	}
	return m, host
}

func TestNewSplitQueue(t *testing.T) {
	mem, _ := testMemory(t)
	host := make([]byte, 64<<10+1)
	misaligned, err := virtio.NewMemory([]virtio.Region{{GuestAddr: 0x10000, Host: host[1:]}})
	if err != nil {
		t.Fatal(err)
	}
	memUsed300, hostUsed300 := testMemory(t)
	binary.LittleEndian.PutUint16(hostUsed300[0x2002:], 300) // used idx
	ok := virtio.SplitConfig{Size: 256, DescAddr: 0x10000, AvailAddr: 0x11000, UsedAddr: 0x12000}
	tests := []struct {
		name string
		mem  *virtio.Memory
		edit func(*virtio.SplitConfig)
		want string // substring of the error; "" for success
	}{
		{"ok", mem, func(*virtio.SplitConfig) {}, ""},
		{"size 1", mem, func(c *virtio.SplitConfig) { c.Size = 1 }, ""},
		{"size 32768", mem, func(c *virtio.SplitConfig) { c.Size = 32768; c.DescAddr = 0x10000 }, "place descriptor table"},
		{"size 0", mem, func(c *virtio.SplitConfig) { c.Size = 0 }, "size 0 is not a power of two"},
		{"size 3", mem, func(c *virtio.SplitConfig) { c.Size = 3 }, "size 3 is not a power of two"},
		{"size 65535", mem, func(c *virtio.SplitConfig) { c.Size = 65535 }, "size 65535"},
		{"desc align", mem, func(c *virtio.SplitConfig) { c.DescAddr += 8 }, "not 16-byte aligned"},
		{"avail align 2", mem, func(c *virtio.SplitConfig) { c.AvailAddr += 2 }, ""},
		{"avail align 1", mem, func(c *virtio.SplitConfig) { c.AvailAddr++ }, "not 2-byte aligned"},
		{"used align 2", mem, func(c *virtio.SplitConfig) { c.UsedAddr += 2 }, "not 4-byte aligned"},
		{"desc outside", mem, func(c *virtio.SplitConfig) { c.DescAddr = 0x8000 }, "place descriptor table"},
		{"desc past end", mem, func(c *virtio.SplitConfig) { c.DescAddr = 0x20000 - 16*128 }, "place descriptor table"},
		{"avail past end", mem, func(c *virtio.SplitConfig) { c.AvailAddr = 0x20000 - 4 - 2*256 + 2 }, "place avail ring"},
		{"avail event past end", mem, func(c *virtio.SplitConfig) { c.AvailAddr = 0x20000 - 4 - 2*256; c.EventIdx = true }, "place avail ring"},
		{"avail end without event", mem, func(c *virtio.SplitConfig) { c.AvailAddr = 0x20000 - 4 - 2*256 }, ""},
		{"used past end", mem, func(c *virtio.SplitConfig) { c.UsedAddr = 0x20000 - 4 - 8*256; c.EventIdx = true }, "place used ring"},
		{"used overflow", mem, func(c *virtio.SplitConfig) { c.UsedAddr = 1<<64 - 4 }, "overflows"},
		{"in flight", mem, func(c *virtio.SplitConfig) { c.NextAvail, c.NextUsed = 5, 65535 }, ""},
		{"too many in flight", mem, func(c *virtio.SplitConfig) { c.NextAvail, c.NextUsed = 300, 10 }, "more than size 256"},
		{"host misaligned", misaligned, func(c *virtio.SplitConfig) {}, "host mapping not"},
		{"used idx from ring", memUsed300, func(c *virtio.SplitConfig) { c.NextAvail = 310 }, ""},
		{"used idx from ring too far", memUsed300, func(c *virtio.SplitConfig) { c.NextAvail = 600 }, "next avail 600 is 300 chains past next used 300"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.edit(&cfg)
			q, err := virtio.NewSplitQueue(tt.mem, cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("NewSplitQueue = %v; want nil", err)
				}
				if cfg.NextUsed == 0 {
					cfg.NextUsed = binary.LittleEndian.Uint16(hostUsed300[0x2002:])
					if tt.mem != memUsed300 {
						cfg.NextUsed = 0
					}
				}
				if q.Size() != cfg.Size || q.NextAvail() != cfg.NextAvail || q.NextUsed() != cfg.NextUsed {
					t.Fatalf("Size, NextAvail, NextUsed = %d, %d, %d; want %d, %d, %d",
						q.Size(), q.NextAvail(), q.NextUsed(), cfg.Size, cfg.NextAvail, cfg.NextUsed)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewSplitQueue = %v; want error containing %q", err, tt.want)
			}
		})
	}
}

// chainCase is a malformed (or unusual) chain and the result Pop must give.
type chainCase struct {
	name  string
	setup func(g *virtiotest.Guest) // posts raw descriptors
	want  *virtio.ChainError        // nil: Pop succeeds
	check func(t *testing.T, c *virtio.Chain)
}

func checkChainError(t *testing.T, err error, want *virtio.ChainError) {
	t.Helper()
	var ce *virtio.ChainError
	if !errors.As(err, &ce) {
		t.Fatalf("Pop error = %v; want *ChainError %v", err, want.Rule)
	}
	if ce.Rule != want.Rule || ce.HeadKnown != want.HeadKnown || ce.Head != want.Head || ce.Desc != want.Desc ||
		ce.Indirect != want.Indirect || ce.Got != want.Got || ce.Limit != want.Limit {
		t.Fatalf("Pop error = %+v\nwant        %+v", *ce, *want)
	}
	if want.HeadKnown != errors.Is(err, virtio.ErrBadChain) || want.HeadKnown == errors.Is(err, virtio.ErrBrokenRing) {
		t.Fatalf("errors.Is(ErrBadChain, ErrBrokenRing) = %v, %v; want %v, %v",
			errors.Is(err, virtio.ErrBadChain), errors.Is(err, virtio.ErrBrokenRing), want.HeadKnown, !want.HeadKnown)
	}
	if want.Rule == virtio.RuleAddress && !errors.Is(err, virtio.ErrOutOfRange) {
		t.Fatalf("errors.Is(%v, ErrOutOfRange) = false", err)
	}
	if msg := err.Error(); msg == "" || strings.ToLower(msg[:1]) != msg[:1] {
		t.Fatalf("error message %q: want lowercase", msg)
	}
}

func TestSplitChains(t *testing.T) {
	const size = 8
	W, N, I := uint16(virtiotest.FlagWrite), uint16(virtiotest.FlagNext), uint16(virtiotest.FlagIndirect)
	buf := func(g *virtiotest.Guest) uint64 { return g.Alloc(256) }
	table := func(g *virtiotest.Guest, ds ...virtiotest.Desc) (uint64, uint32) {
		a := g.Alloc(16 * len(ds))
		for j, d := range ds {
			b := g.Bytes(a+uint64(16*j), 16)
			binary.LittleEndian.PutUint64(b, d.Addr)
			binary.LittleEndian.PutUint32(b[8:], d.Len)
			binary.LittleEndian.PutUint16(b[12:], d.Flags)
			binary.LittleEndian.PutUint16(b[14:], d.Next)
		}
		return a, uint32(16 * len(ds))
	}
	ce := func(e virtio.ChainError) *virtio.ChainError { return &e }
	tests := []chainCase{
		{name: "avail idx too far", setup: func(g *virtiotest.Guest) { g.SetAvailIdx(size + 1) },
			want: &virtio.ChainError{Rule: virtio.RuleAvailIdx, Desc: size + 1, Got: size + 1, Limit: size}},
		{name: "avail idx far behind", setup: func(g *virtiotest.Guest) { g.SetAvailIdx(65535) },
			want: &virtio.ChainError{Rule: virtio.RuleAvailIdx, Desc: 65535, Got: 65535, Limit: size}},
		{name: "head out of range", setup: func(g *virtiotest.Guest) { g.PublishHead(size) },
			want: &virtio.ChainError{Rule: virtio.RuleHeadRange, Desc: 0, Got: size, Limit: size}},
		{name: "next out of range", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(3, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: size})
			g.PublishHead(3)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleNextRange, Head: 3, HeadKnown: true, Desc: 3, Got: size, Limit: size})},
		{name: "loop", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(0, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 1})
			g.WriteDesc(1, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 0})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleChainLen, HeadKnown: true, Desc: 0, Got: size + 1, Limit: size})},
		{name: "self loop", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(5, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N | W, Next: 5})
			g.PublishHead(5)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleChainLen, Head: 5, HeadKnown: true, Desc: 5, Got: size + 1, Limit: size})},
		{name: "readable after writable", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(0, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N | W, Next: 1})
			g.WriteDesc(1, virtiotest.Desc{Addr: buf(g), Len: 10})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleOrder, HeadKnown: true, Desc: 1})},
		{name: "readable after empty writable", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(0, virtiotest.Desc{Addr: buf(g), Len: 0, Flags: N | W, Next: 1})
			g.WriteDesc(1, virtiotest.Desc{Addr: buf(g), Len: 10})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleOrder, HeadKnown: true, Desc: 1})},
		{name: "buffer outside memory", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(0, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 1})
			g.WriteDesc(1, virtiotest.Desc{Addr: 0x1000, Len: 10, Flags: W})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleAddress, HeadKnown: true, Desc: 1, Got: 0x1000, Limit: 10})},
		{name: "buffer overflows", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(0, virtiotest.Desc{Addr: 1<<64 - 4, Len: 10})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleAddress, HeadKnown: true, Desc: 0, Got: 1<<64 - 4, Limit: 10})},
		{name: "indirect with next", setup: func(g *virtiotest.Guest) {
			a, n := table(g, virtiotest.Desc{Addr: buf(g), Len: 10})
			g.WriteDesc(0, virtiotest.Desc{Addr: a, Len: n, Flags: I | N, Next: 1})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleIndirectNext, HeadKnown: true, Desc: 0})},
		{name: "indirect nested", setup: func(g *virtiotest.Guest) {
			inner, in := table(g, virtiotest.Desc{Addr: buf(g), Len: 10})
			a, n := table(g, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 1}, virtiotest.Desc{Addr: inner, Len: in, Flags: I})
			g.WriteDesc(2, virtiotest.Desc{Addr: a, Len: n, Flags: I})
			g.PublishHead(2)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleIndirectNested, Head: 2, HeadKnown: true, Desc: 1, Indirect: true})},
		{name: "indirect len 0", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(0, virtiotest.Desc{Addr: buf(g), Len: 0, Flags: I})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleIndirectLen, HeadKnown: true})},
		{name: "indirect len 24", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(0, virtiotest.Desc{Addr: buf(g), Len: 24, Flags: I})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleIndirectLen, HeadKnown: true, Got: 24})},
		{name: "indirect table outside memory", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(0, virtiotest.Desc{Addr: 0x2000, Len: 32, Flags: I})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleAddress, HeadKnown: true, Got: 0x2000, Limit: 32})},
		{name: "indirect next out of range", setup: func(g *virtiotest.Guest) {
			a, n := table(g, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 2}, virtiotest.Desc{Addr: buf(g), Len: 10})
			g.WriteDesc(0, virtiotest.Desc{Addr: a, Len: n, Flags: I})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleNextRange, HeadKnown: true, Indirect: true, Got: 2, Limit: 2})},
		{name: "indirect loop", setup: func(g *virtiotest.Guest) {
			a, n := table(g, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 1}, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 0})
			g.WriteDesc(0, virtiotest.Desc{Addr: a, Len: n, Flags: I})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleChainLen, HeadKnown: true, Indirect: true, Got: 3, Limit: 2})},
		{name: "direct and indirect longer than size", setup: func(g *virtiotest.Guest) {
			var ds []virtiotest.Desc
			for j := range 6 {
				ds = append(ds, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: uint16(j + 1)})
			}
			ds[5].Flags = 0
			a, n := table(g, ds...)
			g.WriteDesc(0, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 1})
			g.WriteDesc(1, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 2})
			g.WriteDesc(2, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 3})
			g.WriteDesc(3, virtiotest.Desc{Addr: a, Len: n, Flags: I})
			g.PublishHead(0)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleChainLen, HeadKnown: true, Desc: 5, Indirect: true, Got: 9, Limit: size})},
		{name: "direct then indirect", setup: func(g *virtiotest.Guest) {
			a, n := table(g, virtiotest.Desc{Addr: buf(g), Len: 30, Flags: N, Next: 1}, virtiotest.Desc{Addr: buf(g), Len: 40, Flags: W})
			g.WriteDesc(6, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N, Next: 7})
			g.WriteDesc(7, virtiotest.Desc{Addr: buf(g), Len: 20, Flags: N, Next: 0})
			g.WriteDesc(0, virtiotest.Desc{Addr: a, Len: n, Flags: I | W})
			g.PublishHead(6)
		}, check: func(t *testing.T, c *virtio.Chain) {
			if c.Head != 6 || c.ReadLen != 60 || c.WriteLen != 40 || len(c.Readable) != 3 || len(c.Writable) != 1 {
				t.Fatalf("chain = head %d read %d in %d write %d in %d; want head 6 read 60 in 3 write 40 in 1",
					c.Head, c.ReadLen, len(c.Readable), c.WriteLen, len(c.Writable))
			}
		}},
		{name: "unused indirect table entries", setup: func(g *virtiotest.Guest) {
			a, _ := table(g, virtiotest.Desc{Addr: buf(g), Len: 30}, virtiotest.Desc{Addr: 0xdead, Len: 40, Flags: I})
			g.WriteDesc(0, virtiotest.Desc{Addr: a, Len: 16 * 40, Flags: I})
			g.PublishHead(0)
		}, check: func(t *testing.T, c *virtio.Chain) {
			if c.ReadLen != 30 || len(c.Readable) != 1 {
				t.Fatalf("chain = read %d in %d; want 30 in 1", c.ReadLen, len(c.Readable))
			}
		}},
		{name: "zero-length descriptors", setup: func(g *virtiotest.Guest) {
			g.WriteDesc(0, virtiotest.Desc{Addr: 0xdead, Len: 0, Flags: N, Next: 1})
			g.WriteDesc(1, virtiotest.Desc{Addr: buf(g), Len: 5, Flags: N | W, Next: 2})
			g.WriteDesc(2, virtiotest.Desc{Addr: 0, Len: 0, Flags: W})
			g.PublishHead(0)
		}, check: func(t *testing.T, c *virtio.Chain) {
			if c.ReadLen != 0 || c.WriteLen != 5 || len(c.Readable) != 0 || len(c.Writable) != 1 {
				t.Fatalf("chain = read %d in %d write %d in %d; want 0 in 0, 5 in 1", c.ReadLen, len(c.Readable), c.WriteLen, len(c.Writable))
			}
		}},
		{name: "whole table", setup: func(g *virtiotest.Guest) {
			for j := range uint16(size) {
				g.WriteDesc(j, virtiotest.Desc{Addr: buf(g), Len: 1, Flags: N, Next: (j + 1) % size})
			}
			g.WriteDesc(2, virtiotest.Desc{Addr: buf(g), Len: 1})
			g.PublishHead(3)
		}, check: func(t *testing.T, c *virtio.Chain) {
			if c.ReadLen != size || len(c.Readable) != size {
				t.Fatalf("chain = read %d in %d; want %d in %d", c.ReadLen, len(c.Readable), size, size)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, q := newPair(t, size, false, virtiotest.Options{})
			tt.setup(g)
			var c virtio.Chain
			ok, err := q.Pop(&c)
			if tt.want == nil {
				if !ok || err != nil {
					t.Fatalf("Pop = %v, %v; want true, nil", ok, err)
				}
				tt.check(t, &c)
				return
			}
			if ok {
				t.Fatalf("Pop = true; want false with error")
			}
			checkChainError(t, err, tt.want)
			if !tt.want.HeadKnown {
				if _, err2 := q.Pop(&c); err2 == nil {
					t.Fatalf("Pop after broken ring = nil error; want it to keep failing")
				}
				return
			}
			if c.Head != tt.want.Head || c.ReadLen != 0 || c.WriteLen != 0 || len(c.Readable)+len(c.Writable) != 0 {
				t.Fatalf("chain after error = head %d, %d+%d bytes; want head %d and no buffers", c.Head, c.ReadLen, c.WriteLen, tt.want.Head)
			}
			if err := q.Push(&c, 0); err != nil {
				t.Fatalf("Push of bad chain: %v", err)
			}
			q.Flush()
			if g.UsedIdx() != 1 {
				t.Fatalf("used idx = %d; want 1", g.UsedIdx())
			}
			if ok, err := q.Pop(&c); ok || err != nil {
				t.Fatalf("Pop after bad chain = %v, %v; want false, nil", ok, err)
			}
		})
	}
}

func TestChainBytesLimit(t *testing.T) {
	// Four guest regions alias one 1 GiB host buffer (never touched), so a
	// chain can be 2^32 bytes long.
	rings := make([]byte, 4096)
	big := make([]byte, 1<<30)
	regions := []virtio.Region{{GuestAddr: 0x1000, Host: rings}}
	for k := range uint64(4) {
		regions = append(regions, virtio.Region{GuestAddr: 1<<32 + k<<31, Host: big})
	}
	mem, err := virtio.NewMemory(regions)
	if err != nil {
		t.Fatal(err)
	}
	for k := range 4 {
		d := rings[16*k:]
		binary.LittleEndian.PutUint64(d, 1<<32+uint64(k)<<31)
		binary.LittleEndian.PutUint32(d[8:], 1<<30)
		binary.LittleEndian.PutUint16(d[12:], virtiotest.FlagNext)
		binary.LittleEndian.PutUint16(d[14:], uint16(k+1))
	}
	binary.LittleEndian.PutUint16(rings[16*3+12:], 0)
	binary.LittleEndian.PutUint16(rings[0x200+2:], 1) // avail idx 1, ring[0] = 0

	q, err := virtio.NewSplitQueue(mem, virtio.SplitConfig{Size: 4, DescAddr: 0x1000, AvailAddr: 0x1200, UsedAddr: 0x1400})
	if err != nil {
		t.Fatal(err)
	}
	var c virtio.Chain
	_, err = q.Pop(&c)
	checkChainError(t, err, &virtio.ChainError{Rule: virtio.RuleChainBytes, HeadKnown: true, Desc: 3, Got: 1 << 32, Limit: 1<<32 - 1})

	// Three of them are fine: 3 GiB.
	binary.LittleEndian.PutUint16(rings[16*2+12:], 0)
	binary.LittleEndian.PutUint16(rings[0x200+2:], 2)
	mustPop(t, q, &c)
	if c.ReadLen != 3<<30 || len(c.Readable) != 3 {
		t.Fatalf("chain = %d bytes in %d; want %d in 3", c.ReadLen, len(c.Readable), 3<<30)
	}
}

func TestSplitNotify(t *testing.T) {
	t.Run("flags", func(t *testing.T) {
		g, qi := newPair(t, 8, false, virtiotest.Options{})
		q := qi.(*virtio.SplitQueue)
		q.DisableNotify()
		if f := g.UsedFlags(); f != 1 {
			t.Fatalf("used flags after DisableNotify = %d; want 1 (NO_NOTIFY)", f)
		}
		if _, err := g.PostTX([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if g.Kick() {
			t.Fatalf("Kick with NO_NOTIFY = true; want false")
		}
		if !q.EnableNotify() {
			t.Fatalf("EnableNotify with a buffer pending = false; want true")
		}
		if f := g.UsedFlags(); f != 0 {
			t.Fatalf("used flags after EnableNotify = %d; want 0", f)
		}
		var c virtio.Chain
		mustPop(t, q, &c)
		if q.EnableNotify() {
			t.Fatalf("EnableNotify on empty ring = true; want false")
		}
		if _, err := g.PostTX([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if !g.Kick() {
			t.Fatalf("Kick without NO_NOTIFY = false; want true")
		}
		// Interrupts by flag.
		if err := q.Push(&c, 0); err != nil {
			t.Fatal(err)
		}
		if q.NeedsInterrupt() {
			t.Fatalf("NeedsInterrupt before Flush = true; want false")
		}
		q.Flush()
		g.DisableInterrupts()
		if q.NeedsInterrupt() {
			t.Fatalf("NeedsInterrupt with NO_INTERRUPT = true; want false")
		}
		mustPop(t, q, &c)
		if err := q.Push(&c, 0); err != nil {
			t.Fatal(err)
		}
		q.Flush()
		g.EnableInterrupts()
		if !q.NeedsInterrupt() {
			t.Fatalf("NeedsInterrupt without NO_INTERRUPT = false; want true")
		}
		if q.NeedsInterrupt() {
			t.Fatalf("second NeedsInterrupt with nothing new = true; want false")
		}
		if g.UsedFlags() != 0 || g.UsedIdx() != 2 {
			t.Fatalf("used flags, idx = %d, %d; want 0, 2", g.UsedFlags(), g.UsedIdx())
		}
	})
	t.Run("event-idx", func(t *testing.T) {
		g, qi := newPair(t, 8, false, virtiotest.Options{EventIdx: true, StartIdx: 65534})
		q := qi.(*virtio.SplitQueue)
		q.DisableNotify()
		if f := g.UsedFlags(); f != 0 {
			t.Fatalf("used flags with EVENT_IDX = %d; want 0", f)
		}
		if q.EnableNotify() {
			t.Fatalf("EnableNotify on empty ring = true")
		}
		if ev := g.AvailEvent(); ev != 65534 {
			t.Fatalf("avail_event = %d; want 65534", ev)
		}
		for k := range 3 {
			if _, err := g.PostTX([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if kick := g.Kick(); kick != (k == 0) {
				t.Fatalf("Kick %d = %v; want %v", k, kick, k == 0)
			}
		}
		if !q.EnableNotify() {
			t.Fatalf("EnableNotify with buffers = false")
		}
		var c virtio.Chain
		for range 3 {
			mustPop(t, q, &c)
		}
		if q.EnableNotify() {
			t.Fatalf("EnableNotify on empty ring = true")
		}
		if ev := g.AvailEvent(); ev != 1 {
			t.Fatalf("avail_event = %d; want 1 (wrapped)", ev)
		}
	})
}
