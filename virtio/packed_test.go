package virtio_test

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

func TestNewPackedQueue(t *testing.T) {
	mem, _ := testMemory(t)
	host := make([]byte, 64<<10+2)
	misaligned, err := virtio.NewMemory([]virtio.Region{{GuestAddr: 0x10000, Host: host[2:]}})
	if err != nil {
		t.Fatal(err)
	}
	ok := virtio.PackedConfig{Size: 256, DescAddr: 0x10000, DriverAddr: 0x11000, DeviceAddr: 0x11004,
		NextAvail: virtio.PackedWrap, NextUsed: virtio.PackedWrap}
	tests := []struct {
		name string
		mem  *virtio.Memory
		edit func(*virtio.PackedConfig)
		want string
	}{
		{"ok", mem, func(*virtio.PackedConfig) {}, ""},
		{"size 1", mem, func(c *virtio.PackedConfig) { c.Size = 1 }, ""},
		{"size 1000", mem, func(c *virtio.PackedConfig) { c.Size = 1000; c.DriverAddr, c.DeviceAddr = 0x1f000, 0x1f004 }, ""},
		{"size 4095", mem, func(c *virtio.PackedConfig) { c.Size = 4095; c.DriverAddr, c.DeviceAddr = 0x1fff0, 0x1fff4 }, ""},
		{"size 4097", mem, func(c *virtio.PackedConfig) { c.Size = 4097 }, "place descriptor ring"},
		{"size 0", mem, func(c *virtio.PackedConfig) { c.Size = 0 }, "size 0 not in"},
		{"size 32769", mem, func(c *virtio.PackedConfig) { c.Size = 32769 }, "size 32769 not in"},
		{"desc align", mem, func(c *virtio.PackedConfig) { c.DescAddr += 4 }, "not 16-byte aligned"},
		{"driver align", mem, func(c *virtio.PackedConfig) { c.DriverAddr += 2 }, "not 4-byte aligned"},
		{"device align", mem, func(c *virtio.PackedConfig) { c.DeviceAddr += 2 }, "not 4-byte aligned"},
		{"driver outside", mem, func(c *virtio.PackedConfig) { c.DriverAddr = 0x20000 }, "place driver event suppression"},
		{"device outside", mem, func(c *virtio.PackedConfig) { c.DeviceAddr = 0x8000 }, "place device event suppression"},
		{"next avail range", mem, func(c *virtio.PackedConfig) { c.NextAvail = virtio.PackedWrap | 256 }, "next avail position 256"},
		{"next used range", mem, func(c *virtio.PackedConfig) { c.NextUsed = 300 }, "next used position 300"},
		{"resume", mem, func(c *virtio.PackedConfig) { c.NextAvail, c.NextUsed = 10, virtio.PackedWrap|200 }, ""},
		{"resume wrap 0", mem, func(c *virtio.PackedConfig) { c.NextAvail, c.NextUsed = 0, 0 }, ""},
		{"too many in flight", mem, func(c *virtio.PackedConfig) { c.NextAvail, c.NextUsed = 20, virtio.PackedWrap|10 }, "more than size 256"},
		{"host misaligned", misaligned, func(*virtio.PackedConfig) {}, "host mapping not 4-byte aligned"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.edit(&cfg)
			q, err := virtio.NewPackedQueue(tt.mem, cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("NewPackedQueue = %v; want nil", err)
				}
				if q.Size() != cfg.Size || q.NextAvail() != cfg.NextAvail || q.NextUsed() != cfg.NextUsed {
					t.Fatalf("Size, NextAvail, NextUsed = %d, %#x, %#x; want %d, %#x, %#x",
						q.Size(), q.NextAvail(), q.NextUsed(), cfg.Size, cfg.NextAvail, cfg.NextUsed)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewPackedQueue = %v; want error containing %q", err, tt.want)
			}
		})
	}
}

func TestPackedChains(t *testing.T) {
	const size = 8
	W, N, I := uint16(virtiotest.FlagWrite), uint16(virtiotest.FlagNext), uint16(virtiotest.FlagIndirect)
	buf := func(g *virtiotest.Guest) uint64 { return g.Alloc(256) }
	// table writes struct pvirtq_desc entries: flags at byte 14.
	table := func(g *virtiotest.Guest, ds ...virtiotest.Desc) (uint64, uint32) {
		a := g.Alloc(16 * len(ds))
		for j, d := range ds {
			b := g.Bytes(a+uint64(16*j), 16)
			binary.LittleEndian.PutUint64(b, d.Addr)
			binary.LittleEndian.PutUint32(b[8:], d.Len)
			binary.LittleEndian.PutUint16(b[12:], d.Next)
			binary.LittleEndian.PutUint16(b[14:], d.Flags)
		}
		return a, uint32(16 * len(ds))
	}
	ce := func(e virtio.ChainError) *virtio.ChainError { return &e }
	tests := []struct {
		name  string
		setup func(g *virtiotest.Guest)
		want  *virtio.ChainError
		descs int // ring descriptors the list occupies
		check func(t *testing.T, c *virtio.Chain)
	}{
		{name: "id from last descriptor", setup: func(g *virtiotest.Guest) {
			g.MakeAvailable([]virtiotest.Desc{
				{Addr: buf(g), Len: 10, Flags: N, Next: 1}, {Addr: buf(g), Len: 20, Flags: N | W, Next: 2}, {Addr: buf(g), Len: 30, Flags: W, Next: 7},
			})
		}, descs: 3, check: func(t *testing.T, c *virtio.Chain) {
			if c.Head != 7 || c.ReadLen != 10 || c.WriteLen != 50 {
				t.Fatalf("chain = head %d read %d write %d; want 7, 10, 50", c.Head, c.ReadLen, c.WriteLen)
			}
		}},
		{name: "not available", setup: func(g *virtiotest.Guest) {
			g.MakeAvailable([]virtiotest.Desc{{Addr: buf(g), Len: 10, Flags: N}, {Addr: buf(g), Len: 10, Next: 3}})
			d := g.ReadDesc(1)
			d.Flags ^= virtiotest.FlagAvail
			g.WriteDesc(1, d)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleNotAvail, Desc: 1, Got: 0, Limit: 1})},
		{name: "list longer than ring", setup: func(g *virtiotest.Guest) {
			var ds []virtiotest.Desc
			for range size {
				ds = append(ds, virtiotest.Desc{Addr: buf(g), Len: 1, Flags: N})
			}
			g.MakeAvailable(ds)
		}, want: ce(virtio.ChainError{Rule: virtio.RuleChainLen, Desc: size - 1, Got: size + 1, Limit: size})},
		{name: "whole ring", setup: func(g *virtiotest.Guest) {
			var ds []virtiotest.Desc
			for range size {
				ds = append(ds, virtiotest.Desc{Addr: buf(g), Len: 1, Flags: N})
			}
			ds[size-1] = virtiotest.Desc{Addr: buf(g), Len: 1, Next: 5}
			g.MakeAvailable(ds)
		}, descs: size, check: func(t *testing.T, c *virtio.Chain) {
			if c.Head != 5 || c.ReadLen != size {
				t.Fatalf("chain = head %d read %d; want 5, %d", c.Head, c.ReadLen, size)
			}
		}},
		{name: "readable after writable", setup: func(g *virtiotest.Guest) {
			g.MakeAvailable([]virtiotest.Desc{{Addr: buf(g), Len: 10, Flags: W | N}, {Addr: buf(g), Len: 10, Next: 4}})
		}, descs: 2, want: ce(virtio.ChainError{Rule: virtio.RuleOrder, Head: 4, HeadKnown: true, Desc: 1})},
		{name: "bad buffer then more", setup: func(g *virtiotest.Guest) {
			g.MakeAvailable([]virtiotest.Desc{{Addr: 0x10, Len: 10, Flags: N}, {Addr: buf(g), Len: 10, Flags: N}, {Addr: buf(g), Len: 10, Next: 2}})
		}, descs: 3, want: ce(virtio.ChainError{Rule: virtio.RuleAddress, Head: 2, HeadKnown: true, Got: 0x10, Limit: 10})},
		{name: "indirect with next", setup: func(g *virtiotest.Guest) {
			a, n := table(g, virtiotest.Desc{Addr: buf(g), Len: 10})
			g.MakeAvailable([]virtiotest.Desc{{Addr: a, Len: n, Flags: I | N}, {Addr: buf(g), Len: 10, Next: 1}})
		}, descs: 2, want: ce(virtio.ChainError{Rule: virtio.RuleIndirectNext, Head: 1, HeadKnown: true})},
		{name: "indirect in list", setup: func(g *virtiotest.Guest) {
			a, n := table(g, virtiotest.Desc{Addr: buf(g), Len: 10})
			g.MakeAvailable([]virtiotest.Desc{{Addr: buf(g), Len: 10, Flags: N}, {Addr: a, Len: n, Flags: I, Next: 6}})
		}, descs: 2, want: ce(virtio.ChainError{Rule: virtio.RuleIndirectInList, Head: 6, HeadKnown: true, Desc: 1})},
		{name: "indirect len", setup: func(g *virtiotest.Guest) {
			g.MakeAvailable([]virtiotest.Desc{{Addr: buf(g), Len: 20, Flags: I, Next: 3}})
		}, descs: 1, want: ce(virtio.ChainError{Rule: virtio.RuleIndirectLen, Head: 3, HeadKnown: true, Got: 20})},
		{name: "indirect table too long", setup: func(g *virtiotest.Guest) {
			g.MakeAvailable([]virtiotest.Desc{{Addr: buf(g), Len: 16 * (size + 1), Flags: I, Next: 3}})
		}, descs: 1, want: ce(virtio.ChainError{Rule: virtio.RuleChainLen, Head: 3, HeadKnown: true, Got: size + 1, Limit: size})},
		{name: "indirect table outside", setup: func(g *virtiotest.Guest) {
			g.MakeAvailable([]virtiotest.Desc{{Addr: 0x100, Len: 32, Flags: I}})
		}, descs: 1, want: ce(virtio.ChainError{Rule: virtio.RuleAddress, HeadKnown: true, Got: 0x100, Limit: 32})},
		{name: "indirect bad buffer", setup: func(g *virtiotest.Guest) {
			a, n := table(g, virtiotest.Desc{Addr: buf(g), Len: 10}, virtiotest.Desc{Addr: 0x100, Len: 7, Flags: W})
			g.MakeAvailable([]virtiotest.Desc{{Addr: a, Len: n, Flags: I}})
		}, descs: 1, want: ce(virtio.ChainError{Rule: virtio.RuleAddress, HeadKnown: true, Desc: 1, Indirect: true, Got: 0x100, Limit: 7})},
		{name: "indirect order", setup: func(g *virtiotest.Guest) {
			a, n := table(g, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: W}, virtiotest.Desc{Addr: buf(g), Len: 7})
			g.MakeAvailable([]virtiotest.Desc{{Addr: a, Len: n, Flags: I}})
		}, descs: 1, want: ce(virtio.ChainError{Rule: virtio.RuleOrder, HeadKnown: true, Desc: 1, Indirect: true})},
		{name: "indirect ignores other flags", setup: func(g *virtiotest.Guest) {
			a, n := table(g, virtiotest.Desc{Addr: buf(g), Len: 10, Flags: N | I, Next: 99}, virtiotest.Desc{Addr: buf(g), Len: 7, Flags: W | I})
			g.MakeAvailable([]virtiotest.Desc{{Addr: a, Len: n, Flags: I | W, Next: 2}})
		}, descs: 1, check: func(t *testing.T, c *virtio.Chain) {
			if c.Head != 2 || c.ReadLen != 10 || c.WriteLen != 7 {
				t.Fatalf("chain = head %d read %d write %d; want 2, 10, 7", c.Head, c.ReadLen, c.WriteLen)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, qi := newPair(t, size, true, virtiotest.Options{})
			q := qi.(*virtio.PackedQueue)
			tt.setup(g)
			var c virtio.Chain
			ok, err := q.Pop(&c)
			if tt.want == nil {
				if !ok || err != nil {
					t.Fatalf("Pop = %v, %v; want true, nil", ok, err)
				}
				tt.check(t, &c)
			} else {
				if ok {
					t.Fatalf("Pop = true; want false with error")
				}
				checkChainError(t, err, tt.want)
				if !tt.want.HeadKnown {
					if q.NextAvail() != virtio.PackedWrap {
						t.Fatalf("NextAvail after broken ring = %#x; want unchanged %#x", q.NextAvail(), virtio.PackedWrap)
					}
					return
				}
			}
			if got := q.NextAvail(); got != g.NextAvail() {
				t.Fatalf("NextAvail = %#x; want %#x, past the %d descriptors", got, g.NextAvail(), tt.descs)
			}
			if err := q.Push(&c, 0); err != nil {
				t.Fatalf("Push: %v", err)
			}
			q.Flush()
			d := g.ReadDesc(0)
			if d.Flags != virtiotest.FlagAvail|virtiotest.FlagUsed || d.Next != c.Head || d.Len != 0 {
				t.Fatalf("used descriptor = %+v; want flags AVAIL|USED, id %d, len 0", d, c.Head)
			}
			if got, want := q.NextUsed(), q.NextAvail(); got != want {
				t.Fatalf("NextUsed = %#x; want %#x", got, want)
			}
			// The ring goes on.
			if _, err := g.PostTX([]byte("next")); err != nil {
				t.Fatal(err)
			}
			mustPop(t, q, &c)
			if string(gather(c.Readable)) != "next" {
				t.Fatalf("next chain = %q; want %q", gather(c.Readable), "next")
			}
		})
	}
}

func TestPackedNotify(t *testing.T) {
	t.Run("flags", func(t *testing.T) {
		g, qi := newPair(t, 8, true, virtiotest.Options{})
		q := qi.(*virtio.PackedQueue)
		q.DisableNotify()
		if _, f := g.DeviceEvent(); f != 1 {
			t.Fatalf("device event flags = %d; want 1 (DISABLE)", f)
		}
		if _, err := g.PostTX([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if g.Kick() {
			t.Fatalf("Kick with DISABLE = true")
		}
		if !q.EnableNotify() {
			t.Fatalf("EnableNotify with a buffer = false")
		}
		if _, f := g.DeviceEvent(); f != 0 {
			t.Fatalf("device event flags = %d; want 0 (ENABLE)", f)
		}
		var c virtio.Chain
		mustPop(t, q, &c)
		if q.EnableNotify() {
			t.Fatalf("EnableNotify on empty ring = true")
		}
		if err := q.Push(&c, 0); err != nil {
			t.Fatal(err)
		}
		q.Flush()
		g.DisableInterrupts()
		if q.NeedsInterrupt() {
			t.Fatalf("NeedsInterrupt with DISABLE = true")
		}
		if _, err := g.PostTX([]byte("x")); err != nil {
			t.Fatal(err)
		}
		mustPop(t, q, &c)
		if err := q.Push(&c, 0); err != nil {
			t.Fatal(err)
		}
		q.Flush()
		g.EnableInterrupts()
		if !q.NeedsInterrupt() {
			t.Fatalf("NeedsInterrupt with ENABLE = false")
		}
		if q.NeedsInterrupt() {
			t.Fatalf("NeedsInterrupt with nothing new = true")
		}
	})
	t.Run("event-idx", func(t *testing.T) {
		g, qi := newPair(t, 4, true, virtiotest.Options{EventIdx: true})
		q := qi.(*virtio.PackedQueue)
		var c virtio.Chain
		for round := range 6 {
			if q.EnableNotify() {
				t.Fatalf("round %d: EnableNotify on empty ring = true", round)
			}
			ow, f := g.DeviceEvent()
			if f != 2 || ow != q.NextAvail() {
				t.Fatalf("round %d: device event = off_wrap %#x flags %d; want %#x, 2 (DESC)", round, ow, f, q.NextAvail())
			}
			for k := range 3 {
				if _, err := g.PostTX([]byte("x")); err != nil {
					t.Fatal(err)
				}
				if kick := g.Kick(); kick != (k == 0) {
					t.Fatalf("round %d: Kick %d = %v; want %v", round, k, kick, k == 0)
				}
			}
			for range 3 {
				mustPop(t, q, &c)
				if err := q.Push(&c, 0); err != nil {
					t.Fatal(err)
				}
			}
			q.Flush()
			if n := len(g.Reap()); n != 3 {
				t.Fatalf("round %d: reaped %d; want 3", round, n)
			}
		}
	})
}
