package frametest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Packet is what Parse read in a frame: where its headers are and what
// they say. Options and Payload are slices of the frame.
type Packet struct {
	L3     int // the IP header
	L4     int // the transport header, or a later fragment's data
	HdrEnd int // the end of the transport header (L4 in a later fragment)
	End    int // the end of the IP packet: link padding may follow

	V6       bool
	Proto    uint8 // the transport protocol, past IPv6 extension headers
	Src, Dst netip.Addr
	ID       uint16 // IPv4 identification

	// Fragment is set for an IPv4 fragment or an IPv6 packet with a
	// fragment header (at FragAt, with identification FragID).
	Fragment   bool
	More       bool // more fragments follow
	FragOffset int  // in bytes
	FragAt     int
	FragID     uint32

	SrcPort, DstPort uint16
	Seq, Ack         uint32 // TCP
	Flags            uint8  // TCP
	Window           uint16 // TCP
	Options          []byte // TCP
	Payload          []byte // from HdrEnd to End

	frame []byte
}

// Parse reads an Ethernet frame with at most two VLAN tags, IPv4 or IPv6
// (walking hop-by-hop, routing, destination options and fragment headers),
// and TCP or UDP, or the data of a later fragment of anything. It checks
// that every header and length fits the frame, and nothing else: the
// checksums are for SumOK, HeaderSumOK and PartialOK to judge.
func Parse(b []byte) (Packet, error) {
	p := Packet{frame: b}
	if len(b) < EthLen {
		return p, fmt.Errorf("frame of %d bytes", len(b))
	}
	at := 12
	for tags := 0; ; tags++ {
		et := binary.BigEndian.Uint16(b[at:])
		if et != EtherVLAN && et != EtherQinQ {
			break
		}
		if tags == 2 || at+6 > len(b) {
			return p, errors.New("vlan tags: more than two, or cut short")
		}
		at += 4
	}
	et := binary.BigEndian.Uint16(b[at:])
	p.L3 = at + 2
	ip := b[p.L3:]
	switch et {
	case EtherIPv4:
		if len(ip) < IPv4Len || ip[0]>>4 != 4 {
			return p, fmt.Errorf("no ipv4 header in %d bytes", len(ip))
		}
		ihl := int(ip[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if ihl < IPv4Len || total < ihl || total > len(ip) {
			return p, fmt.Errorf("ipv4 header length %d, total length %d, %d bytes in the frame", ihl, total, len(ip))
		}
		p.L4, p.End, p.Proto = p.L3+ihl, p.L3+total, ip[9]
		p.Src, p.Dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		p.ID = binary.BigEndian.Uint16(ip[4:])
		fo := binary.BigEndian.Uint16(ip[6:])
		p.FragOffset, p.More = int(fo&0x1fff)*8, fo&0x2000 != 0
		p.Fragment = p.More || p.FragOffset != 0
	case EtherIPv6:
		if len(ip) < IPv6Len || ip[0]>>4 != 6 {
			return p, fmt.Errorf("no ipv6 header in %d bytes", len(ip))
		}
		p.V6 = true
		p.End = p.L3 + IPv6Len + int(binary.BigEndian.Uint16(ip[4:]))
		if p.End > len(b) {
			return p, fmt.Errorf("ipv6 payload length %d, %d bytes in the frame", p.End-p.L3-IPv6Len, len(ip)-IPv6Len)
		}
		p.Src, p.Dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		next, at := ip[6], p.L3+IPv6Len
		for next == HopByHop || next == Routing || next == DestOpts || next == Fragment {
			if at+8 > p.End {
				return p, fmt.Errorf("extension header %d cut short", next)
			}
			n := (int(b[at+1]) + 1) * 8
			if next == Fragment {
				n = 8
				fo := binary.BigEndian.Uint16(b[at+2:])
				p.Fragment, p.FragAt, p.FragOffset, p.More = true, at, int(fo&^7), fo&1 != 0
				p.FragID = binary.BigEndian.Uint32(b[at+4:])
				if p.FragOffset != 0 {
					// A later fragment: what follows is data.
					next, at = b[at], at+n
					break
				}
			}
			if at+n > p.End {
				return p, fmt.Errorf("extension header %d of %d bytes past the packet's end", next, n)
			}
			next, at = b[at], at+n
		}
		p.L4, p.Proto = at, next
	default:
		return p, fmt.Errorf("ethertype %#04x", et)
	}
	switch {
	case p.FragOffset != 0:
		p.HdrEnd = p.L4 // a later fragment: no transport header
	case p.Proto == ProtoTCP:
		if p.L4+TCPLen > p.End {
			return p, fmt.Errorf("tcp header cut short: %d bytes", p.End-p.L4)
		}
		t := b[p.L4:]
		doff := int(t[12]>>4) * 4
		if doff < TCPLen {
			return p, fmt.Errorf("tcp data offset %d", doff)
		}
		p.HdrEnd = p.L4 + doff
		p.SrcPort, p.DstPort = binary.BigEndian.Uint16(t), binary.BigEndian.Uint16(t[2:])
		p.Seq, p.Ack = binary.BigEndian.Uint32(t[4:]), binary.BigEndian.Uint32(t[8:])
		p.Flags, p.Window = t[13], binary.BigEndian.Uint16(t[14:])
	case p.Proto == ProtoUDP:
		if p.L4+UDPLen > p.End {
			return p, fmt.Errorf("udp header cut short: %d bytes", p.End-p.L4)
		}
		p.HdrEnd = p.L4 + UDPLen
		p.SrcPort, p.DstPort = binary.BigEndian.Uint16(b[p.L4:]), binary.BigEndian.Uint16(b[p.L4+2:])
	default:
		return p, fmt.Errorf("ip protocol %d", p.Proto)
	}
	if p.HdrEnd > p.End {
		return p, fmt.Errorf("transport header ends at %d, past the packet's end at %d", p.HdrEnd, p.End)
	}
	if p.Proto == ProtoTCP && p.FragOffset == 0 {
		p.Options = b[p.L4+TCPLen : p.HdrEnd]
	}
	p.Payload = b[p.HdrEnd:p.End]
	return p, nil
}

// Pseudo is the folded pseudo-header sum of the transport segment, from L4
// to End.
func (p *Packet) Pseudo() uint16 { return Pseudo(p.Src, p.Dst, p.Proto, p.End-p.L4) }

// CsumOffset is where the transport checksum field is, from L4: what a
// NEEDS_CSUM header's csum_offset says.
func (p *Packet) CsumOffset() int {
	if p.Proto == ProtoUDP {
		return 6
	}
	return 16
}

// Csum is the transport checksum field.
func (p *Packet) Csum() uint16 {
	return binary.BigEndian.Uint16(p.frame[p.L4+p.CsumOffset():])
}

// SumOK reports whether the transport checksum holds over the segment.
func (p *Packet) SumOK() bool {
	return Fold(Sum(p.frame[p.L4:p.End], uint64(p.Pseudo()))) == 0xffff
}

// PartialOK reports whether the transport checksum field holds the
// pseudo-header sum, as a NEEDS_CSUM frame carries it.
func (p *Packet) PartialOK() bool { return p.Csum() == p.Pseudo() }

// HeaderSumOK reports whether the IPv4 header checksum holds; an IPv6
// header has none.
func (p *Packet) HeaderSumOK() bool {
	return p.V6 || Fold(Sum(p.frame[p.L3:p.L4], 0)) == 0xffff
}
