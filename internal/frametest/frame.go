package frametest

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// EtherTypes.
const (
	EtherIPv4 = 0x0800
	EtherARP  = 0x0806
	EtherVLAN = 0x8100 // 802.1Q
	EtherIPv6 = 0x86dd
	EtherQinQ = 0x88a8 // 802.1ad, the outer tag of two
)

// IP protocols, and the IPv6 extension headers Build writes.
const (
	HopByHop    = 0
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	Routing     = 43
	Fragment    = 44
	ProtoICMPv6 = 58
	DestOpts    = 60
)

// TCP flags.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
	ECE = 0x40
	CWR = 0x80
)

// Header lengths without options.
const (
	EthLen  = 14
	IPv4Len = 20
	IPv6Len = 40
	TCPLen  = 20
	UDPLen  = 8
)

// Spec describes a frame; Build writes it. The zero value of a field is
// the plain choice: no tags, no options, zero identification and flags.
type Spec struct {
	SrcMAC, DstMAC net.HardwareAddr // nil writes zeros
	// VLANs are the TPIDs of the frame's tags, outermost first
	// (EtherQinQ, then EtherVLAN); tag i carries VID 100+i.
	VLANs []uint16
	// EtherType is the type after the tags. Zero is IPv4 or IPv6, as Src
	// is; with no Src, the frame is this type and Payload follows it.
	EtherType uint16

	// Src and Dst are both IPv4 or both IPv6 addresses.
	Src, Dst  netip.Addr
	TOS       uint8  // IPv4 TOS, IPv6 traffic class
	FlowLabel uint32 // IPv6
	// ID is the IPv4 identification, or the IPv6 fragment header's.
	ID     uint16
	DF, MF bool // IPv4 flags; MF also sets the IPv6 fragment header's M
	// FragOffset is the fragment's offset in bytes, a multiple of 8
	// (IPv4, or an IPv6 fragment header). A fragment past the first
	// carries Payload as it is, with no transport header.
	FragOffset int
	IPOptions  []byte // IPv4, a multiple of 4 bytes
	// IHL is written as the IPv4 header length field instead of the
	// true one, for a malformed header; zero writes the true one.
	IHL uint8
	// Ext are the IPv6 extension headers in order, 8 bytes each:
	// HopByHop and DestOpts carry a PadN option, Routing is of type 4
	// with SegmentsLeft, Fragment takes FragOffset, MF and ID.
	Ext          []uint8
	SegmentsLeft uint8

	// Proto is the transport protocol. TCP, UDP, ICMP and ICMPv6 get
	// their header in front of Payload; any other protocol's packet is
	// Payload alone.
	Proto            uint8
	SrcPort, DstPort uint16 // TCP, UDP
	Seq, Ack         uint32 // TCP
	Flags            uint8  // TCP
	Window           uint16 // TCP
	TCPOptions       []byte // a multiple of 4 bytes
	Type, Code       uint8  // ICMP, ICMPv6: the rest of the header is Payload's
	Payload          []byte

	// Partial leaves the transport checksum field holding the folded
	// pseudo-header sum, as a guest's NEEDS_CSUM frame carries it
	// (tcp_v4_send_check, udp4_hwcsum and their IPv6 twins); else it is
	// complete (a UDP checksum of 0 is sent as 0xffff).
	Partial bool
	// Pad is zero bytes of link padding after the IP packet.
	Pad int
}

// Build writes the frame.
func (s Spec) Build() []byte {
	b := make([]byte, 0, EthLen+4*len(s.VLANs)+IPv6Len+len(s.IPOptions)+8*len(s.Ext)+
		TCPLen+len(s.TCPOptions)+len(s.Payload)+s.Pad)
	b = append(b, mac(s.DstMAC)...)
	b = append(b, mac(s.SrcMAC)...)
	for i, tpid := range s.VLANs {
		b = binary.BigEndian.AppendUint16(b, tpid)
		b = binary.BigEndian.AppendUint16(b, uint16(100+i))
	}
	src, dst := s.Src.Unmap(), s.Dst.Unmap()
	et := s.EtherType
	switch {
	case !src.IsValid() && et == 0:
		panic("frametest: a frame needs addresses or an EtherType")
	case !src.IsValid():
		b = binary.BigEndian.AppendUint16(b, et)
		b = append(b, s.Payload...)
		return append(b, make([]byte, s.Pad)...)
	case src.Is4() != dst.Is4():
		panic(fmt.Sprintf("frametest: addresses %s and %s of two families", src, dst))
	case s.FragOffset%8 != 0 || len(s.IPOptions)%4 != 0 || len(s.TCPOptions)%4 != 0:
		panic("frametest: fragment offset or options not in units of 8 and 4 bytes")
	case et == 0 && src.Is4():
		et = EtherIPv4
	case et == 0:
		et = EtherIPv6
	}
	b = binary.BigEndian.AppendUint16(b, et)
	l3 := len(b)
	later := s.FragOffset != 0 && (src.Is4() || slices.Contains(s.Ext, Fragment))
	l4Len := s.transportLen(later)
	if src.Is4() {
		ihl := IPv4Len + len(s.IPOptions)
		field := s.IHL
		if field == 0 {
			field = uint8(ihl / 4)
		}
		b = append(b, 0x40|field&0xf, s.TOS)
		b = binary.BigEndian.AppendUint16(b, uint16(ihl+l4Len))
		b = binary.BigEndian.AppendUint16(b, s.ID)
		frag := uint16(s.FragOffset / 8)
		if s.DF {
			frag |= 0x4000
		}
		if s.MF {
			frag |= 0x2000
		}
		b = binary.BigEndian.AppendUint16(b, frag)
		b = append(b, 64, s.Proto, 0, 0)
		b = append(b, src.AsSlice()...)
		b = append(b, dst.AsSlice()...)
		b = append(b, s.IPOptions...)
		binary.BigEndian.PutUint16(b[l3+10:], Checksum(b[l3:l3+ihl], 0))
	} else {
		b = binary.BigEndian.AppendUint32(b, 6<<28|uint32(s.TOS)<<20|s.FlowLabel&0xfffff)
		b = binary.BigEndian.AppendUint16(b, uint16(8*len(s.Ext)+l4Len))
		b = append(b, s.nextAfter(-1), 64)
		b = append(b, src.AsSlice()...)
		b = append(b, dst.AsSlice()...)
		for i, typ := range s.Ext {
			next := s.nextAfter(i)
			switch typ {
			case HopByHop, DestOpts:
				b = append(b, next, 0, 1, 4, 0, 0, 0, 0) // PadN
			case Routing:
				b = append(b, next, 0, 4, s.SegmentsLeft, 0, 0, 0, 0)
			case Fragment:
				off := uint16(s.FragOffset)
				if s.MF {
					off |= 1
				}
				b = append(b, next, 0)
				b = binary.BigEndian.AppendUint16(b, off)
				b = binary.BigEndian.AppendUint32(b, uint32(s.ID))
			default:
				panic(fmt.Sprintf("frametest: IPv6 extension header %d", typ))
			}
		}
	}
	l4 := len(b)
	csumAt := -1
	switch {
	case later:
	case s.Proto == ProtoTCP:
		b = binary.BigEndian.AppendUint16(b, s.SrcPort)
		b = binary.BigEndian.AppendUint16(b, s.DstPort)
		b = binary.BigEndian.AppendUint32(b, s.Seq)
		b = binary.BigEndian.AppendUint32(b, s.Ack)
		b = append(b, byte((TCPLen+len(s.TCPOptions))/4<<4), s.Flags)
		b = binary.BigEndian.AppendUint16(b, s.Window)
		b = append(b, 0, 0, 0, 0) // checksum, urgent pointer
		b = append(b, s.TCPOptions...)
		csumAt = l4 + 16
	case s.Proto == ProtoUDP:
		b = binary.BigEndian.AppendUint16(b, s.SrcPort)
		b = binary.BigEndian.AppendUint16(b, s.DstPort)
		b = binary.BigEndian.AppendUint16(b, uint16(l4Len))
		b = append(b, 0, 0)
		csumAt = l4 + 6
	case s.Proto == ProtoICMP || s.Proto == ProtoICMPv6:
		b = append(b, s.Type, s.Code, 0, 0)
		csumAt = l4 + 2
	}
	b = append(b, s.Payload...)
	switch {
	case csumAt < 0:
	case s.Proto == ProtoICMP: // no pseudo-header
		binary.BigEndian.PutUint16(b[csumAt:], Checksum(b[l4:], 0))
	case s.Partial:
		binary.BigEndian.PutUint16(b[csumAt:], Pseudo(src, dst, s.Proto, len(b)-l4))
	default:
		c := Checksum(b[l4:], Pseudo(src, dst, s.Proto, len(b)-l4))
		if c == 0 && s.Proto == ProtoUDP {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(b[csumAt:], c)
	}
	return append(b, make([]byte, s.Pad)...)
}

// transportLen is the length of the transport segment: header and
// payload, or the payload alone of a later fragment.
func (s Spec) transportLen(later bool) int {
	n := len(s.Payload)
	switch {
	case later:
	case s.Proto == ProtoTCP:
		n += TCPLen + len(s.TCPOptions)
	case s.Proto == ProtoUDP:
		n += UDPLen
	case s.Proto == ProtoICMP || s.Proto == ProtoICMPv6:
		n += 4
	}
	return n
}

// nextAfter is the Next Header field after IPv6 extension header i (-1:
// the fixed header).
func (s Spec) nextAfter(i int) uint8 {
	if i+1 < len(s.Ext) {
		return s.Ext[i+1]
	}
	return s.Proto
}

// mac is a 6-byte address, zeros for nil.
func mac(a net.HardwareAddr) []byte {
	switch len(a) {
	case 0:
		return make([]byte, 6)
	case 6:
		return a
	}
	panic(fmt.Sprintf("frametest: MAC address %s is not 6 bytes", a))
}
