package frametest

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
)

func TestChecksum(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want uint16
	}{
		{"rfc 1071 §3", []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, ^uint16(0xddf2)},
		{"ipv4 header", []byte{0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7}, 0xb861},
		{"odd length", []byte{0x12, 0x34, 0x56}, ^uint16(0x1234 + 0x5600)},
		{"empty", nil, 0xffff},
	} {
		if got := Checksum(tc.b, 0); got != tc.want {
			t.Errorf("%s: Checksum %#04x, want %#04x", tc.name, got, tc.want)
		}
	}
}

// The IPv4 header Build writes, byte for byte, against one checksummed by
// hand.
func TestBuildIPv4Header(t *testing.T) {
	b := Spec{Src: netip.MustParseAddr("192.168.0.1"), Dst: netip.MustParseAddr("192.168.0.199"), DF: true,
		Proto: ProtoUDP, Payload: make([]byte, 0x73-IPv4Len-UDPLen)}.Build()
	want := []byte{0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7}
	if got := b[EthLen : EthLen+IPv4Len]; !bytes.Equal(got, want) {
		t.Errorf("ipv4 header\n got % x\nwant % x", got, want)
	}
}

var (
	a4, b4 = netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	a6, b6 = netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
)

// Every shape Build writes, Parse reads back: offsets, fields, payload,
// checksums that hold, and fail once a byte changes.
func TestBuildParse(t *testing.T) {
	data := []byte("0123456789abcdefghijklmnopqrstuvwxyz!")
	tcp4 := Spec{Src: a4, Dst: b4, Proto: ProtoTCP, SrcPort: 40000, DstPort: 80, Seq: 0xfffff000, Ack: 7,
		Flags: ACK | PSH, Window: 500, Payload: data, DF: true, ID: 0xfff0}
	for _, tc := range []struct {
		name         string
		s            Spec
		l4, hdrEnd   int
		fragment     bool
		checksummed  bool // SumOK applies
		headerOffset int  // of the IP header
	}{
		{"tcp4", tcp4, 34, 54, false, true, 14},
		{"tcp4 options vlan", with(tcp4, func(s *Spec) {
			s.VLANs, s.IPOptions, s.TCPOptions = []uint16{EtherVLAN}, []byte{1, 1, 1, 1}, []byte{1, 1, 1, 0}
		}), 42, 66, false, true, 18},
		{"tcp4 partial qinq", with(tcp4, func(s *Spec) {
			s.VLANs, s.Partial = []uint16{EtherQinQ, EtherVLAN}, true
		}), 42, 62, false, false, 22},
		{"udp4 padded", Spec{Src: a4, Dst: b4, Proto: ProtoUDP, SrcPort: 1, DstPort: 2, Payload: data[:3], Pad: 10},
			34, 42, false, true, 14},
		{"udp6 ext", Spec{Src: a6, Dst: b6, Proto: ProtoUDP, SrcPort: 1, DstPort: 2, Payload: data,
			Ext: []uint8{HopByHop, Routing, DestOpts}, FlowLabel: 0x12345}, 78, 86, false, true, 14},
		{"tcp6 partial", Spec{Src: a6, Dst: b6, Proto: ProtoTCP, Payload: data, Partial: true}, 54, 74, false, false, 14},
		{"udp4 first fragment", Spec{Src: a4, Dst: b4, Proto: ProtoUDP, MF: true, Payload: data}, 34, 42, true, false, 14},
		{"udp4 later fragment", Spec{Src: a4, Dst: b4, Proto: ProtoUDP, FragOffset: 1480, Payload: data}, 34, 34, true, false, 14},
		{"udp6 later fragment", Spec{Src: a6, Dst: b6, Proto: ProtoUDP, Ext: []uint8{Fragment}, FragOffset: 8, MF: true,
			ID: 9, Payload: data}, 62, 62, true, false, 14},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.s.Build()
			p, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if p.L3 != tc.headerOffset || p.L4 != tc.l4 || p.HdrEnd != tc.hdrEnd || p.End != len(b)-tc.s.Pad {
				t.Errorf("offsets %d/%d/%d/%d, want %d/%d/%d/%d", p.L3, p.L4, p.HdrEnd, p.End,
					tc.headerOffset, tc.l4, tc.hdrEnd, len(b)-tc.s.Pad)
			}
			if p.Src != tc.s.Src || p.Dst != tc.s.Dst || p.Proto != tc.s.Proto || p.Fragment != tc.fragment ||
				p.FragOffset != tc.s.FragOffset || p.More != tc.s.MF {
				t.Errorf("got %v>%v proto %d fragment %v at %d more %v", p.Src, p.Dst, p.Proto, p.Fragment, p.FragOffset, p.More)
			}
			if !bytes.Equal(p.Payload, tc.s.Payload) {
				t.Errorf("payload %q, want %q", p.Payload, tc.s.Payload)
			}
			if !tc.fragment && (p.SrcPort != tc.s.SrcPort || p.DstPort != tc.s.DstPort || p.Seq != tc.s.Seq ||
				p.Ack != tc.s.Ack || p.Flags != tc.s.Flags || p.Window != tc.s.Window) {
				t.Errorf("transport fields %+v, want those of %+v", p, tc.s)
			}
			if p.Proto == ProtoTCP && !bytes.Equal(p.Options, tc.s.TCPOptions) {
				t.Errorf("tcp options % x, want % x", p.Options, tc.s.TCPOptions)
			}
			if !p.HeaderSumOK() {
				t.Error("ipv4 header checksum does not hold")
			}
			if tc.s.Partial && !p.PartialOK() {
				t.Errorf("checksum field %#04x, want the pseudo-header sum %#04x", p.Csum(), p.Pseudo())
			}
			if !tc.checksummed {
				return
			}
			if !p.SumOK() {
				t.Error("transport checksum does not hold")
			}
			b[p.End-1]++
			if p.SumOK() {
				t.Error("transport checksum holds with a byte changed")
			}
		})
	}
}

func with(s Spec, f func(*Spec)) Spec { f(&s); return s }

func TestICMP(t *testing.T) {
	b := Spec{Src: a4, Dst: b4, Proto: ProtoICMP, Type: 8, Payload: []byte{0x76, 0x6d, 0, 1, 'h', 'i'}}.Build()
	if c := Checksum(b[34:], 0); c != 0 || b[34] != 8 {
		t.Errorf("icmp echo request % x: checksum sums to %#04x, want 0", b[34:], c)
	}
	b = Spec{Src: a6, Dst: b6, Proto: ProtoICMPv6, Type: 128, Payload: []byte{0, 1, 0, 1}}.Build()
	if c := Checksum(b[54:], Pseudo(a6, b6, ProtoICMPv6, len(b)-54)); c != 0 {
		t.Errorf("icmpv6 echo request % x: checksum sums to %#04x, want 0", b[54:], c)
	}
	if _, err := Parse(b); err == nil {
		t.Error("Parse read an ICMPv6 packet, want an error: it reads TCP and UDP")
	}
}

func TestParseErrors(t *testing.T) {
	tcp := Spec{Src: a4, Dst: b4, Proto: ProtoTCP, Payload: make([]byte, 10)}.Build()
	patch := func(b []byte, at int, v ...byte) []byte {
		b = bytes.Clone(b)
		copy(b[at:], v)
		return b
	}
	for name, b := range map[string][]byte{
		"runt":              tcp[:13],
		"three tags":        Spec{Src: a4, Dst: b4, Proto: ProtoTCP, VLANs: []uint16{EtherQinQ, EtherVLAN, EtherVLAN}}.Build(),
		"arp":               ARP{Op: ARPRequest, SenderIP: a4, TargetIP: b4}.Build(),
		"ipv4 cut short":    tcp[:14+19],
		"ihl 4":             patch(tcp, 14, 0x44),
		"total past frame":  patch(tcp, 16, 0xff, 0xff),
		"tcp data offset 4": patch(tcp, 46, 0x40),
		"tcp past the end":  patch(tcp, 46, 0xf0),
		"ipv6 ext cut":      Spec{Src: a6, Dst: b6, Proto: ProtoUDP, Ext: []uint8{DestOpts}}.Build()[:14+40+4],
	} {
		if _, err := Parse(b); err == nil {
			t.Errorf("%s: Parse read it, want an error", name)
		}
	}
}

func TestARP(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	req := ARP{Op: ARPRequest, SenderMAC: mac, SenderIP: a4, TargetIP: b4}.Build()
	want := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 8, 6,
		0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2}
	if !bytes.Equal(req, want) {
		t.Errorf("arp request\n got % x\nwant % x", req, want)
	}
	a, err := ParseARP(req)
	if err != nil || a.Op != ARPRequest || !bytes.Equal(a.SenderMAC, mac) || a.SenderIP != a4 || a.TargetIP != b4 {
		t.Errorf("ParseARP: %+v, %v", a, err)
	}
}
