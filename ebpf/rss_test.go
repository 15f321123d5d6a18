package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
)

func loadRSSForTest(t *testing.T, hashOnly bool) *RSSProgram {
	t.Helper()
	testutil.RequireRoot(t)
	p, err := loadRSS(hashOnly)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func hasher(t testing.TB, key []byte, types virtio.HashTypes) *virtio.Hasher {
	t.Helper()
	h, err := virtio.NewHasher(key, types)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func randomKey(rng *rand.Rand) []byte {
	key := make([]byte, virtio.RSSKeySize)
	for i := range key {
		key[i] = byte(rng.Uint32())
	}
	return key
}

// frameGen makes random frames of the shapes the hash tells apart, and
// every way of getting them wrong: VLAN tags (up to one past the limit),
// IPv4 with options and fragments, IPv6 behind chains of extension
// headers (destination options with and without the home address option,
// routing headers of type 2 and others, fragments, AH, more headers than
// the limit), TCP, UDP and other protocols, cut anywhere.
type frameGen struct{ rng *rand.Rand }

func (g frameGen) bytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.rng.Uint32())
	}
	return b
}

func (g frameGen) pick(vals ...int) int { return vals[g.rng.IntN(len(vals))] }

func (g frameGen) frame() []byte {
	f := g.bytes(12)
	for range g.pick(0, 0, 0, 1, 2, 3) {
		f = binary.BigEndian.AppendUint16(f, uint16(g.pick(etherVLAN, etherQinQ)))
		f = append(f, g.bytes(2)...)
	}
	switch g.rng.IntN(9) {
	case 0:
		f = binary.BigEndian.AppendUint16(f, uint16(g.pick(0x0806, 0x88cc, int(g.rng.Uint32()&0xffff))))
		f = append(f, g.bytes(g.rng.IntN(60))...)
	case 1, 2, 3, 4:
		f = binary.BigEndian.AppendUint16(f, etherIPv4)
		f = append(f, g.ipv4()...)
	default:
		f = binary.BigEndian.AppendUint16(f, etherIPv6)
		f = append(f, g.ipv6()...)
	}
	if g.rng.IntN(4) == 0 {
		f = f[:14+g.rng.IntN(len(f)-14+1)]
	}
	return f
}

func (g frameGen) l4(proto int) []byte {
	switch proto {
	case protoTCP:
		return g.bytes(20 + 4*g.rng.IntN(3))
	case protoUDP:
		return g.bytes(8 + g.rng.IntN(20))
	}
	return g.bytes(g.rng.IntN(30))
}

func (g frameGen) ipv4() []byte {
	ihl := g.pick(5, 5, 5, 6, 8, 4)
	ip := g.bytes(4 * ihl)
	if len(ip) < 20 {
		ip = append(ip, g.bytes(20-len(ip))...)
	}
	ip[0] = byte(g.pick(4, 4, 4, 4, 6))<<4 | byte(ihl)
	frag := uint16(0)
	switch g.rng.IntN(6) {
	case 0:
		frag = 0x2000 // MF
	case 1:
		frag = uint16(g.rng.IntN(0x2000))
	case 2:
		frag = 0x4000 // DF: not a fragment
	}
	binary.BigEndian.PutUint16(ip[6:], frag)
	proto := g.pick(protoTCP, protoTCP, protoUDP, protoUDP, 1, int(g.rng.Uint32()&0xff))
	ip[9] = byte(proto)
	return append(ip, g.l4(proto)...)
}

func (g frameGen) ipv6() []byte {
	ip := g.bytes(40)
	ip[0] = byte(g.pick(6, 6, 6, 6, 4))<<4 | ip[0]&0xf
	var exts [][]byte
	var types []int
	for range g.pick(0, 0, 1, 1, 2, 3, 5, 8, 9, 10) {
		t := g.pick(protoHopByHop, protoRouting, protoRouting, protoDestOpts, protoDestOpts, protoFragment, protoAH, protoMobility)
		types = append(types, t)
		exts = append(exts, g.ext(t))
	}
	proto := g.pick(protoTCP, protoTCP, protoUDP, protoUDP, 58, protoNone, int(g.rng.Uint32()&0xff))
	next := proto
	var rest []byte
	for i := len(exts) - 1; i >= 0; i-- {
		exts[i][0] = byte(next)
		rest = append(exts[i], rest...)
		next = types[i]
	}
	ip[6] = byte(next)
	return append(append(ip, rest...), g.l4(proto)...)
}

func (g frameGen) ext(t int) []byte {
	switch t {
	case protoFragment:
		return g.bytes(8)
	case protoAH:
		n := g.rng.IntN(4)
		h := g.bytes(8 + 4*n)
		h[1] = byte(n)
		return h
	case protoRouting:
		if g.rng.IntN(3) > 0 {
			h := append([]byte{0, 2, routingType2, 1, 0, 0, 0, 0}, g.bytes(16)...)
			if g.rng.IntN(5) == 0 {
				h[1] = 1 // a type 2 header of the wrong length
			}
			return h
		}
		n := g.rng.IntN(3)
		h := g.bytes(8 * (n + 1))
		h[1] = byte(n)
		return h
	case protoDestOpts:
		var opts []byte
		for len(opts) < 2+g.rng.IntN(40) {
			switch g.rng.IntN(5) {
			case 0:
				opts = append(opts, optPad1)
			case 1:
				n := g.rng.IntN(5)
				opts = append(append(opts, 1, byte(n)), make([]byte, n)...)
			case 2, 3:
				opts = append(append(opts, optHomeAddr, 16), g.bytes(16)...)
			default:
				n := g.rng.IntN(8)
				opts = append(append(opts, byte(2+g.rng.IntN(200)), byte(n)), g.bytes(n)...)
			}
		}
		h := append([]byte{0, 0}, opts...)
		for len(h)%8 != 0 {
			h = append(h, optPad1)
		}
		h[1] = byte(len(h)/8 - 1)
		return h
	}
	n := g.rng.IntN(3)
	h := g.bytes(8 * (n + 1))
	h[1] = byte(n)
	return h
}

// rssShapes are frames of each shape the hash tells apart.
func rssShapes() map[string][]byte {
	shapes := map[string][]byte{}
	for _, c := range hashCases {
		shapes[c.name] = c.frame()
	}
	a, b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	home := append([]byte{protoTCP, 2, optPad1, 1, 1, 0, optHomeAddr, 16}, netip.MustParseAddr("2001:db8:aaaa::1").AsSlice()...)
	rt2 := append([]byte{protoDestOpts, 2, routingType2, 1, 0, 0, 0, 0}, netip.MustParseAddr("2001:db8:bbbb::2").AsSlice()...)
	ip := make([]byte, 40)
	ip[0], ip[6] = 0x60, protoRouting
	copy(ip[8:], a.AsSlice())
	copy(ip[24:], b.AsSlice())
	f := binary.BigEndian.AppendUint16(make([]byte, 12), etherIPv6)
	shapes["IPv6 mobile TCP"] = append(append(append(append(f, ip...), rt2...), home...), ports(40000, 443)...)
	return shapes
}

// check runs frame through the program and compares what it returns with
// want(frame), the Go side's answer; it returns false for a frame the
// kernel would not run.
func checkRun(t *testing.T, p *RSSProgram, name string, frame []byte, want uint32, none bool) bool {
	t.Helper()
	got, err := p.Run(frame)
	if errors.Is(err, unix.EINVAL) && none {
		// BPF_PROG_TEST_RUN refuses some frames whose IP header is
		// incomplete; tun never hands the program such a frame.
		return false
	}
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if got != want {
		t.Errorf("%s (% x): program returned %#x, Go %#x", name, frame, got, want)
	}
	return true
}

// unclassifiedMark is the unclassified queue of the hash-returning
// program's configuration: what it returns for a frame it does not hash.
const unclassifiedMark = 0xbeef

// The program computes, bit for bit, the hash virtio.Hasher computes,
// under every set of hash types, for every shape and thousands of random
// frames.
func TestRSSProgramMatchesHasher(t *testing.T) {
	p := loadRSSForTest(t, true)
	rng := rand.New(rand.NewPCG(5, 6))
	gen := frameGen{rng}
	typeSets := []virtio.HashTypes{virtio.HashAll, virtio.HashIPv4 | virtio.HashTCPv4 | virtio.HashUDPv4 | virtio.HashIPv6 | virtio.HashTCPv6 | virtio.HashUDPv6,
		virtio.HashIPEx | virtio.HashTCPEx | virtio.HashUDPEx, virtio.HashTCPEx | virtio.HashIPv6, virtio.HashIPv4 | virtio.HashIPv6, virtio.HashUDPv4 | virtio.HashUDPEx, 0}
	ran, refused := 0, 0
	reports := map[virtio.HashReport]int{}
	exAddrs := 0 // _EX hashes whose input took a home or routing address
	for k, types := range typeSets {
		c := RSSConfig{Hasher: hasher(t, randomKey(rng), types), Table: []uint16{0}, Unclassified: unclassifiedMark}
		if err := p.Configure(c); err != nil {
			t.Fatal(err)
		}
		// The plain types' hash of the same fields, to tell an _EX hash
		// that took a home or routing header address.
		plainL4 := hasher(t, c.Hasher.Key(), virtio.HashTCPv6|virtio.HashUDPv6)
		plainIP := hasher(t, c.Hasher.Key(), virtio.HashIPv6)
		check := func(name string, f []byte) {
			h, r := c.Hasher.Hash(f)
			reports[r]++
			plain := plainL4
			if r == virtio.HashReportIPv6Ex {
				plain = plainIP
			}
			if r >= virtio.HashReportIPv6Ex {
				if v, _ := plain.Hash(f); v != h {
					exAddrs++
				}
			}
			want := h
			if r == virtio.HashReportNone {
				want = unclassifiedMark
			}
			if checkRun(t, p, fmt.Sprintf("types %s, %s", types, name), f, want, r == virtio.HashReportNone) {
				ran++
			} else {
				refused++
			}
		}
		for name, f := range rssShapes() {
			if len(f) >= ethLen {
				check(name, f)
			}
		}
		n := 3000
		if k > 1 {
			n = 500
		}
		for i := range n {
			check(fmt.Sprintf("random frame %d", i), gen.frame())
		}
	}
	if refused > ran/10 {
		t.Errorf("the kernel refused %d frames, ran %d: too few compared", refused, ran)
	}
	for r := virtio.HashReportNone; r <= virtio.HashReportUDPv6Ex; r++ {
		if reports[r] < 20 {
			t.Errorf("only %d frames hashed as %s: the random frames miss a shape", reports[r], r)
		}
	}
	if exAddrs < 20 {
		t.Errorf("only %d _EX hashes took a home or routing header address", exAddrs)
	}
	t.Logf("compared program and virtio.Hasher on %d frames (%d the kernel would not run); reports %v, %d with _EX addresses",
		ran, refused, reports, exAddrs)
}

// The program returns the queue RSSQueue predicts: the indirection table's
// entry for the hash, or the unclassified queue.
func TestRSSProgramMatchesRSSQueue(t *testing.T) {
	p := loadRSSForTest(t, false)
	rng := rand.New(rand.NewPCG(7, 8))
	gen := frameGen{rng}
	for _, n := range []int{1, 4, 128, RSSMaxTable} {
		table := make([]uint16, n)
		for i := range table {
			table[i] = uint16(rng.IntN(16))
		}
		c := RSSConfig{Hasher: hasher(t, randomKey(rng), virtio.HashAll), Table: table, Unclassified: 17}
		if err := p.Configure(c); err != nil {
			t.Fatal(err)
		}
		for i := range 1000 {
			f := gen.frame()
			_, r := c.Hasher.Hash(f)
			checkRun(t, p, fmt.Sprintf("table of %d, frame %d", n, i), f, uint32(RSSQueue(c, f)), r == virtio.HashReportNone)
		}
	}
	// The published vectors land where their hashes say.
	key := []byte{0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca,
		0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa}
	table := make([]uint16, RSSMaxTable)
	for i := range table {
		table[i] = uint16(i)
	}
	c := RSSConfig{Hasher: hasher(t, key, virtio.HashTCPv4), Table: table}
	if err := p.Configure(c); err != nil {
		t.Fatal(err)
	}
	f := frametest.Spec{Src: netip.MustParseAddr("66.9.149.187"), Dst: netip.MustParseAddr("161.142.100.80"), Proto: protoTCP,
		SrcPort: 2794, DstPort: 1766}.Build()
	if got, err := p.Run(f); err != nil || got != 0x51ccc178&0xff {
		t.Errorf("66.9.149.187:2794 -> 161.142.100.80:1766: queue %#x, %v; want %#x (hash 0x51ccc178)", got, err, 0x51ccc178&0xff)
	}
}

func TestRSSConfigure(t *testing.T) {
	p := loadRSSForTest(t, false)
	h := hasher(t, nil, virtio.HashAll)
	for _, c := range []RSSConfig{
		{Hasher: h},
		{Hasher: h, Table: make([]uint16, 3)},
		{Hasher: h, Table: make([]uint16, 2*RSSMaxTable)},
		{Table: []uint16{0}},
	} {
		if err := p.Configure(c); err == nil {
			t.Errorf("Configure with a table of %d entries, hasher %v: nil error", len(c.Table), c.Hasher != nil)
		}
	}
	// Until configured, every frame goes to queue 0.
	p2 := loadRSSForTest(t, false)
	if got, err := p2.Run(tcp4(1, 2).Build()); err != nil || got != 0 {
		t.Errorf("unconfigured program: %d, %v; want queue 0", got, err)
	}
}

func TestQueueProgram(t *testing.T) {
	testutil.RequireRoot(t)
	for _, q := range []int{0, 3, 65535} {
		p, err := LoadQueueProgram(q)
		if err != nil {
			t.Fatal(err)
		}
		got, err := p.Run(tcp4(1, 2).Build())
		p.Close()
		if err != nil || got != uint32(q) {
			t.Errorf("queue program %d returned %d, %v", q, got, err)
		}
	}
	for _, q := range []int{-1, 65536} {
		if _, err := LoadQueueProgram(q); err == nil {
			t.Errorf("LoadQueueProgram(%d): nil error", q)
		}
	}
}
