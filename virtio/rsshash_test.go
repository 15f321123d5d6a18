package virtio

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/frametest"
)

// The verification suite of Microsoft's RSS specification ("Verifying the
// RSS Hash Calculation"; also Intel's 82599 datasheet §7.1.2.8.3): its
// key, and for each flow the hash of the addresses alone and of the
// addresses and TCP ports.
var msKey, _ = hex.DecodeString("6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa")

var msVectors = []struct {
	dst, src     string
	dport, sport uint16
	ip, tcp      uint32
}{
	{"161.142.100.80", "66.9.149.187", 1766, 2794, 0x323e8fc2, 0x51ccc178},
	{"65.69.140.83", "199.92.111.2", 4739, 14230, 0xd718262a, 0xc626b0ea},
	{"12.22.207.184", "24.19.198.95", 38024, 12898, 0xd2d0a5de, 0x5c2b394a},
	{"209.142.163.6", "38.27.205.30", 2217, 48228, 0x82989176, 0xafc7327f},
	{"202.188.127.2", "153.39.163.191", 1303, 44251, 0x5d1809c5, 0x10e828a2},
	{"3ffe:2501:200:3::1", "3ffe:2501:200:1fff::7", 1766, 2794, 0x2cc18cd5, 0x40207d3d},
	{"ff02::1", "3ffe:501:8::260:97ff:fe40:efab", 4739, 14230, 0x0f0c461c, 0xdde51bbf},
	{"fe80::200:f8ff:fe21:67cf", "3ffe:1900:4545:3:200:f8ff:fe21:67cf", 38024, 44251, 0x4b61e985, 0x02d1feef},
}

// The bit-by-bit hash, the table and a Hasher on a real frame all give
// the published values.
func TestToeplitzVectors(t *testing.T) {
	table := NewToeplitzTable(msKey)
	for _, v := range msVectors {
		src, dst := netip.MustParseAddr(v.src), netip.MustParseAddr(v.dst)
		in := append(src.AsSlice(), dst.AsSlice()...)
		withPorts := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(append([]byte(nil), in...), v.sport), v.dport)
		for _, c := range []struct {
			name  string
			input []byte
			want  uint32
		}{{"addresses", in, v.ip}, {"addresses and ports", withPorts, v.tcp}} {
			if got := Toeplitz(msKey, c.input); got != c.want {
				t.Errorf("%s -> %s, %s: Toeplitz %#08x, want %#08x", v.src, v.dst, c.name, got, c.want)
			}
			if got := table.Hash(c.input); got != c.want {
				t.Errorf("%s -> %s, %s: table %#08x, want %#08x", v.src, v.dst, c.name, got, c.want)
			}
		}
		frame := frametest.Spec{Src: src, Dst: dst, Proto: frametest.ProtoTCP, SrcPort: v.sport, DstPort: v.dport}.Build()
		ipTypes, tcpTypes := HashIPv4, HashIPv4|HashTCPv4
		ipReport, tcpReport := HashReportIPv4, HashReportTCPv4
		if src.Is6() {
			ipTypes, tcpTypes = HashIPv6, HashIPv6|HashTCPv6
			ipReport, tcpReport = HashReportIPv6, HashReportTCPv6
		}
		for _, c := range []struct {
			types  HashTypes
			want   uint32
			report HashReport
		}{{ipTypes, v.ip, ipReport}, {tcpTypes, v.tcp, tcpReport}} {
			h, err := NewHasher(msKey, c.types)
			if err != nil {
				t.Fatal(err)
			}
			if got, r := h.Hash(frame); got != c.want || r != c.report {
				t.Errorf("%s:%d -> %s:%d, types %s: %#08x %s, want %#08x %s", v.src, v.sport, v.dst, v.dport, c.types, got, r, c.want, c.report)
			}
		}
	}
}

// The table gives what the bit-by-bit definition gives, for random keys
// of every length and inputs of every length.
func TestToeplitzTableMatchesBitwise(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		key := make([]byte, rng.IntN(RSSKeySize+1))
		for i := range key {
			key[i] = byte(rng.Uint32())
		}
		table := NewToeplitzTable(key)
		for range 20 {
			in := make([]byte, rng.IntN(RSSInputMax+1))
			for i := range in {
				in[i] = byte(rng.Uint32())
			}
			if got, want := table.Hash(in), Toeplitz(key, in); got != want {
				t.Fatalf("key % x, input % x: table %#08x, bitwise %#08x", key, in, got, want)
			}
			// Zeros appended change nothing: a fixed buffer holds every input.
			padded := append(in, make([]byte, RSSInputMax-len(in))...)
			if got, want := table.Hash(padded), Toeplitz(key, in); got != want {
				t.Fatalf("key % x, input % x padded: %#08x, want %#08x", key, in, got, want)
			}
		}
	}
}

// ext is one IPv6 extension header, its next header field filled in by
// ipv6Frame.
type ext struct {
	proto uint8
	body  []byte // the header from its length byte on
}

// ipv6Frame writes an IPv6 frame with the extension headers exts, then
// IP protocol proto and payload.
func ipv6Frame(src, dst netip.Addr, exts []ext, proto uint8, payload []byte) []byte {
	f := make([]byte, 12, 100)
	f = binary.BigEndian.AppendUint16(f, etherIPv6)
	ip := make([]byte, 40)
	ip[0] = 0x60
	ip[7] = 64
	copy(ip[8:], src.AsSlice())
	copy(ip[24:], dst.AsSlice())
	var rest []byte
	next := proto
	for i := len(exts) - 1; i >= 0; i-- {
		rest = append(append([]byte{next}, exts[i].body...), rest...)
		next = exts[i].proto
	}
	ip[6] = next
	rest = append(rest, payload...)
	binary.BigEndian.PutUint16(ip[4:], uint16(len(rest)))
	return append(append(f, ip...), rest...)
}

var (
	exSrc  = netip.MustParseAddr("2001:db8::1")
	exDst  = netip.MustParseAddr("2001:db8::2")
	home   = netip.MustParseAddr("2001:db8:aaaa::1")
	careOf = netip.MustParseAddr("2001:db8:bbbb::2")
)

// hopByHop is an 8-byte hop-by-hop header of padding.
var hopByHop = ext{protoHopByHop, []byte{0, 1, 4, 0, 0, 0, 0}}

// destOptsHome carries the home address option, behind a Pad1 and a PadN
// (RFC 6275 §6.3: aligned 8n+6).
func destOptsHome(a netip.Addr) ext {
	body := []byte{2, optPad1, 1, 1, 0, optHomeAddr, 16}
	body = append(body, a.AsSlice()...)
	return ext{protoDestOpts, body}
}

// routing2 is a type 2 routing header carrying a.
func routing2(a netip.Addr) ext {
	return ext{protoRouting, append([]byte{2, routingType2, 1, 0, 0, 0, 0}, a.AsSlice()...)}
}

func ports(sport, dport uint16, n int) []byte {
	b := make([]byte, n)
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	return b
}

func v6in(src, dst netip.Addr, p []byte) []byte {
	return append(append(src.AsSlice(), dst.AsSlice()...), p...)
}

// Which fields each enabled set of types selects, per frame shape.
func TestHasherSelectsFields(t *testing.T) {
	v4a, v4b := netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("192.0.2.9")
	v4 := append(v4a.AsSlice(), v4b.AsSlice()...)
	p := ports(40000, 443, 4)
	tcp4 := frametest.Spec{Src: v4a, Dst: v4b, Proto: frametest.ProtoTCP, SrcPort: 40000, DstPort: 443}
	udp4 := frametest.Spec{Src: v4a, Dst: v4b, Proto: frametest.ProtoUDP, SrcPort: 40000, DstPort: 443}
	withOpts := tcp4
	withOpts.IPOptions = []byte{1, 1, 1, 1}
	frag := udp4
	frag.MF = true
	vlan2 := tcp4
	vlan2.VLANs = []uint16{frametest.EtherQinQ, frametest.EtherVLAN}
	vlan3 := tcp4
	vlan3.VLANs = []uint16{frametest.EtherQinQ, frametest.EtherVLAN, frametest.EtherVLAN}
	icmp4 := frametest.Spec{Src: v4a, Dst: v4b, Proto: frametest.ProtoICMP, Type: 8, Payload: make([]byte, 8)}
	plain6 := v6in(exSrc, exDst, nil)
	tcp6 := ipv6Frame(exSrc, exDst, nil, protoTCP, ports(40000, 443, 20))
	udp6 := ipv6Frame(exSrc, exDst, nil, protoUDP, ports(40000, 443, 8))
	hbhTCP := ipv6Frame(exSrc, exDst, []ext{hopByHop}, protoTCP, ports(40000, 443, 20))
	mobile := ipv6Frame(exSrc, exDst, []ext{hopByHop, routing2(careOf), destOptsHome(home)}, protoTCP, ports(40000, 443, 20))
	mobileUDP := ipv6Frame(exSrc, exDst, []ext{routing2(careOf), destOptsHome(home)}, protoUDP, ports(40000, 443, 8))
	ah := ext{protoAH, append([]byte{4}, make([]byte, 22)...)} // 24 bytes: (4+2)*4
	ahTCP := ipv6Frame(exSrc, exDst, []ext{ah}, protoTCP, ports(40000, 443, 20))
	frag6 := ipv6Frame(exSrc, exDst, []ext{{protoFragment, []byte{0, 0, 1, 0, 0, 0, 7}}}, protoTCP, ports(40000, 443, 20))
	var many []ext
	for range HashMaxExtHeaders {
		many = append(many, hopByHop)
	}
	justEnough := ipv6Frame(exSrc, exDst, many, protoTCP, ports(40000, 443, 20))
	tooMany := ipv6Frame(exSrc, exDst, append(many, hopByHop), protoTCP, ports(40000, 443, 20))
	shortTCP := ipv6Frame(exSrc, exDst, nil, protoTCP, ports(40000, 443, 19))

	for _, c := range []struct {
		name   string
		frame  []byte
		types  HashTypes
		input  []byte
		report HashReport
	}{
		{"IPv4 TCP, all", tcp4.Build(), HashAll, append(v4, p...), HashReportTCPv4},
		{"IPv4 TCP, UDP and IP", tcp4.Build(), HashUDPv4 | HashIPv4, v4, HashReportIPv4},
		{"IPv4 TCP, TCPv6 only", tcp4.Build(), HashTCPv6 | HashIPv6, nil, HashReportNone},
		{"IPv4 UDP", udp4.Build(), HashAll, append(v4, p...), HashReportUDPv4},
		{"IPv4 UDP, TCP only", udp4.Build(), HashTCPv4, nil, HashReportNone},
		{"IPv4 with options", withOpts.Build(), HashAll, append(v4, p...), HashReportTCPv4},
		{"IPv4 first fragment", frag.Build(), HashAll, v4, HashReportIPv4},
		{"IPv4 ICMP", icmp4.Build(), HashAll, v4, HashReportIPv4},
		{"two VLAN tags", vlan2.Build(), HashAll, append(v4, p...), HashReportTCPv4},
		{"three VLAN tags", vlan3.Build(), HashAll, nil, HashReportNone},
		{"IPv4 TCP cut in the TCP header", tcp4.Build()[:14+20+19], HashAll, v4, HashReportIPv4},
		{"IPv4 header cut", tcp4.Build()[:14+19], HashAll, nil, HashReportNone},
		{"IPv6 TCP", tcp6, HashAll, v6in(exSrc, exDst, p), HashReportTCPv6},
		{"IPv6 TCP, EX types alone", tcp6, HashTCPEx | HashIPEx, nil, HashReportNone},
		{"IPv6 UDP", udp6, HashAll, v6in(exSrc, exDst, p), HashReportUDPv6},
		{"IPv6 TCP, IPv6 only", tcp6, HashIPv6, plain6, HashReportIPv6},
		{"IPv6 TCP header cut", shortTCP, HashAll, plain6, HashReportIPv6},
		{"hop-by-hop, TCP_EX", hbhTCP, HashAll, v6in(exSrc, exDst, p), HashReportTCPv6Ex},
		{"hop-by-hop, TCPv6 alone", hbhTCP, HashTCPv6, v6in(exSrc, exDst, p), HashReportTCPv6},
		{"home address and type 2 routing, TCP_EX", mobile, HashAll, v6in(home, careOf, p), HashReportTCPv6Ex},
		{"home address and type 2 routing, IP_EX", mobile, HashIPEx | HashTCPv6, v6in(home, careOf, nil), HashReportIPv6Ex},
		{"home address and type 2 routing, plain types", mobile, HashTCPv6 | HashIPv6, v6in(exSrc, exDst, p), HashReportTCPv6},
		{"home address and type 2 routing, UDP_EX", mobileUDP, HashUDPEx, v6in(home, careOf, p), HashReportUDPv6Ex},
		{"AH", ahTCP, HashTCPv6, v6in(exSrc, exDst, p), HashReportTCPv6},
		{"fragment header", frag6, HashAll, v6in(exSrc, exDst, nil), HashReportIPv6Ex},
		{"fragment header, plain types", frag6, HashTCPv6 | HashIPv6, plain6, HashReportIPv6},
		{"extension headers to the limit", justEnough, HashTCPv6, v6in(exSrc, exDst, p), HashReportTCPv6},
		{"extension headers past the limit", tooMany, HashTCPv6 | HashIPv6, plain6, HashReportIPv6},
		{"ARP", frametest.Spec{EtherType: frametest.EtherARP, Payload: make([]byte, 28)}.Build(), HashAll, nil, HashReportNone},
		{"runt", make([]byte, 13), HashAll, nil, HashReportNone},
		{"IPv4 ethertype, version 6", ipv4Version6(tcp4.Build()), HashAll, nil, HashReportNone},
		{"nothing enabled", tcp4.Build(), 0, nil, HashReportNone},
	} {
		h, err := NewHasher(msKey, c.types)
		if err != nil {
			t.Fatal(err)
		}
		got, r := h.Hash(c.frame)
		want := uint32(0)
		if c.report != HashReportNone {
			want = Toeplitz(msKey, c.input)
		}
		if got != want || r != c.report {
			t.Errorf("%s, types %s: %#08x %s, want %#08x %s (input % x)", c.name, c.types, got, r, want, c.report, c.input)
		}
	}
}

func ipv4Version6(f []byte) []byte {
	f[14] = 0x65
	return f
}

func TestNewHasherRefuses(t *testing.T) {
	if _, err := NewHasher(make([]byte, RSSKeySize+1), HashIPv4); err == nil {
		t.Error("key of 41 bytes: nil error")
	}
	if _, err := NewHasher(msKey, HashAll+1); err == nil {
		t.Error("unknown hash type bit: nil error")
	}
	// A short key is zero-padded.
	h, err := NewHasher(msKey[:8], HashIPv4)
	if err != nil {
		t.Fatal(err)
	}
	in := []byte{10, 0, 0, 1, 10, 0, 0, 2}
	f := frametest.Spec{Src: netip.AddrFrom4([4]byte(in[:4])), Dst: netip.AddrFrom4([4]byte(in[4:])), Proto: 253}.Build()
	if got, _ := h.Hash(f); got != Toeplitz(append(msKey[:8:8], make([]byte, 32)...), in) {
		t.Errorf("8-byte key: %#08x, want the hash under the key zero-padded", got)
	}
}

func TestHashReportTypes(t *testing.T) {
	for r := HashReportIPv4; r <= HashReportUDPv6Ex; r++ {
		if got := r.Types(); got != 1<<(r-1) || got.String() == "" {
			t.Errorf("%s.Types() = %s", r, got)
		}
	}
	if HashReportNone.Types() != 0 || HashReport(10).Types() != 0 {
		t.Error("NONE or an undefined report has a type")
	}
}

// The hot path's cost: no allocation whatever the frame.
func TestHasherAllocs(t *testing.T) {
	h, _ := NewHasher(msKey, HashAll)
	frames := [][]byte{
		frametest.Spec{Src: exSrc, Dst: exDst, Proto: frametest.ProtoTCP, SrcPort: 1, DstPort: 2}.Build(),
		ipv6Frame(exSrc, exDst, []ext{hopByHop, routing2(careOf), destOptsHome(home)}, protoTCP, ports(1, 2, 20)),
	}
	for _, f := range frames {
		if n := testing.AllocsPerRun(100, func() { h.Hash(f) }); n != 0 {
			t.Errorf("Hash allocates %v times per frame", n)
		}
	}
}

// Any frame: the report is one of the enabled types (or NONE, with a
// zero hash), never a panic or a read past the frame, and the same frame
// hashes the same.
func FuzzHasher(f *testing.F) {
	f.Add(frametest.Spec{Src: exSrc, Dst: exDst, Proto: frametest.ProtoTCP, SrcPort: 1, DstPort: 2}.Build(), uint32(HashAll))
	f.Add(ipv6Frame(exSrc, exDst, []ext{hopByHop, routing2(careOf), destOptsHome(home)}, protoUDP, ports(1, 2, 8)), uint32(HashAll))
	f.Add(frametest.Spec{VLANs: []uint16{frametest.EtherVLAN}, Src: netip.MustParseAddr("10.0.0.1"),
		Dst: netip.MustParseAddr("10.0.0.2"), Proto: frametest.ProtoUDP, MF: true}.Build(), uint32(HashIPv4|HashUDPv4))
	hashers := map[HashTypes]*Hasher{} // a table is 36 KiB to build
	f.Fuzz(func(t *testing.T, frame []byte, types uint32) {
		h := hashers[HashTypes(types)&HashAll]
		if h == nil {
			var err error
			if h, err = NewHasher(msKey, HashTypes(types)&HashAll); err != nil {
				t.Fatal(err)
			}
			hashers[h.Types()] = h
		}
		v, r := h.Hash(frame)
		if r == HashReportNone && v != 0 {
			t.Fatalf("NONE with hash %#x", v)
		}
		if r != HashReportNone && r.Types()&h.Types() == 0 {
			t.Fatalf("report %s, enabled types %s", r, h.Types())
		}
		if v2, r2 := h.Hash(frame); v2 != v || r2 != r {
			t.Fatalf("second hash %#x %s, first %#x %s", v2, r2, v, r)
		}
	})
}

var hashSink uint32

func BenchmarkHasher(b *testing.B) {
	h, _ := NewHasher(msKey, HashAll)
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"IPv4_TCP", frametest.Spec{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"),
			Proto: frametest.ProtoTCP, SrcPort: 1, DstPort: 2}.Build()},
		{"IPv6_TCP", frametest.Spec{Src: exSrc, Dst: exDst, Proto: frametest.ProtoTCP, SrcPort: 1, DstPort: 2}.Build()},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				v, _ := h.Hash(c.frame)
				hashSink ^= v
			}
		})
	}
}
