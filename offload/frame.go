package offload

import (
	"encoding/binary"
	"fmt"

	"github.com/vmnet-dev/vmnet/virtio"
)

// Protocol numbers and the IPv6 extension headers the parser walks.
const (
	etherTypeIPv4  = 0x0800
	etherTypeIPv6  = 0x86dd
	etherTypeVLAN  = 0x8100 // 802.1Q
	etherTypeQinQ  = 0x88a8 // 802.1ad
	vlanTagLen     = 4
	maxVLANTags    = 2
	protoTCP       = 6
	protoUDP       = 17
	ipv6HopByHop   = 0
	ipv6Routing    = 43
	ipv6Fragment   = 44
	ipv6DestOpts   = 60
	ipv6FragHdrLen = 8

	ipv4FlagMF     = 0x2000
	ipv4FragOffset = 0x1fff
	ipv6FlagM      = 0x0001
)

// layout says where the headers of a frame to segment are.
type layout struct {
	l3     int  // network header
	v6     bool // IPv6, else IPv4
	l4     int  // transport header
	hdrEnd int  // end of the transport header: what every segment repeats
	end    int  // end of the IP packet; bytes past it are link padding
	proto  byte // transport protocol

	// An IPv6 routing header with segments left: the pseudo-header's
	// destination is not the one in the IPv6 header (RFC 8200 §8.1).
	routed bool

	// IPv6 fragmentation: the fragment header goes at fragAt, after the
	// headers every fragment carries, and the Next Header byte at fragNext
	// names what it displaces (ip6_find_1stfragopt).
	fragAt, fragNext int
}

func be16(b []byte) int { return int(binary.BigEndian.Uint16(b)) }

// parseFrame finds the headers of a GSO frame of type gso (ECN bit
// cleared). With NEEDS_CSUM, csum_start must name the transport header the
// IP headers lead to.
func parseFrame(frame []byte, h *virtio.NetHdr, gso virtio.GSOType) (layout, error) {
	var l layout
	if len(frame) < ethHdrLen {
		return l, fmt.Errorf("frame of %d bytes holds no ethernet header: %w", len(frame), ErrMalformed)
	}
	at := 12
	et := be16(frame[at:])
	for tags := 0; et == etherTypeVLAN || et == etherTypeQinQ; tags++ {
		if tags == maxVLANTags {
			return l, fmt.Errorf("more than %d vlan tags: %w", maxVLANTags, ErrMalformed)
		}
		at += vlanTagLen
		if at+2 > len(frame) {
			return l, fmt.Errorf("vlan tag %d ends past the end of a %d-byte frame: %w", tags+1, len(frame), ErrMalformed)
		}
		et = be16(frame[at:])
	}
	l.l3 = at + 2

	proto := byte(protoUDP)
	switch gso {
	case virtio.GSOTCPv4:
		proto = protoTCP
		if et != etherTypeIPv4 {
			return l, fmt.Errorf("gso_type %s on ethertype %#04x: %w", gso, et, ErrMalformed)
		}
	case virtio.GSOTCPv6:
		proto = protoTCP
		if et != etherTypeIPv6 {
			return l, fmt.Errorf("gso_type %s on ethertype %#04x: %w", gso, et, ErrMalformed)
		}
	}
	var err error
	switch et {
	case etherTypeIPv4:
		err = l.parseIPv4(frame, proto)
	case etherTypeIPv6:
		err = l.parseIPv6(frame, proto)
	default:
		return l, fmt.Errorf("ethertype %#04x is neither ipv4 nor ipv6: %w", et, ErrMalformed)
	}
	if err != nil {
		return l, err
	}
	l.proto = proto
	if h.Flags&virtio.NeedsCsum != 0 && int(h.CsumStart) != l.l4 {
		return l, fmt.Errorf("csum_start %d, but the transport header is at byte %d: %w", h.CsumStart, l.l4, ErrMalformed)
	}

	if proto == protoTCP {
		if l.l4+tcpMinLen > l.end {
			return l, fmt.Errorf("tcp header at byte %d past the end of the %d-byte ip packet: %w", l.l4, l.end-l.l3, ErrMalformed)
		}
		doff := int(frame[l.l4+12]>>4) * 4
		if doff < tcpMinLen || l.l4+doff > l.end {
			return l, fmt.Errorf("tcp data offset %d at byte %d, ip packet ends at %d: %w", doff, l.l4, l.end, ErrMalformed)
		}
		l.hdrEnd = l.l4 + doff
	} else {
		if l.l4+udpHdrLen > l.end {
			return l, fmt.Errorf("udp header at byte %d past the end of the %d-byte ip packet: %w", l.l4, l.end-l.l3, ErrMalformed)
		}
		l.hdrEnd = l.l4 + udpHdrLen
	}
	return l, nil
}

func (l *layout) parseIPv4(frame []byte, proto byte) error {
	ip := frame[l.l3:]
	if len(ip) < ipv4MinLen {
		return fmt.Errorf("ipv4 header at byte %d past the end of a %d-byte frame: %w", l.l3, len(frame), ErrMalformed)
	}
	if v := ip[0] >> 4; v != 4 {
		return fmt.Errorf("ip version %d under ethertype ipv4: %w", v, ErrMalformed)
	}
	ihl := int(ip[0]&0xf) * 4
	total := be16(ip[2:])
	switch {
	case ihl < ipv4MinLen:
		return fmt.Errorf("ipv4 header length %d: %w", ihl, ErrMalformed)
	case total < ihl || total > len(ip):
		return fmt.Errorf("ipv4 total length %d, header %d, %d bytes in the frame: %w", total, ihl, len(ip), ErrMalformed)
	case be16(ip[6:])&(ipv4FlagMF|ipv4FragOffset) != 0:
		return fmt.Errorf("ipv4 packet is a fragment already (flags and offset %#04x): %w", be16(ip[6:]), ErrMalformed)
	case ip[9] != proto:
		return fmt.Errorf("ipv4 protocol %d, want %d: %w", ip[9], proto, ErrMalformed)
	}
	l.l4 = l.l3 + ihl
	l.end = l.l3 + total
	return nil
}

// parseIPv6 walks the extension headers to the transport header. The
// headers up to the first that is not hop-by-hop, routing or destination
// options, or up to destination options after a routing header, stay in
// front of a fragment header (ip6_find_1stfragopt, RFC 8200 §4.5).
func (l *layout) parseIPv6(frame []byte, proto byte) error {
	ip := frame[l.l3:]
	if len(ip) < ipv6HdrLen {
		return fmt.Errorf("ipv6 header at byte %d past the end of a %d-byte frame: %w", l.l3, len(frame), ErrMalformed)
	}
	if v := ip[0] >> 4; v != 6 {
		return fmt.Errorf("ip version %d under ethertype ipv6: %w", v, ErrMalformed)
	}
	payload := be16(ip[4:])
	if payload == 0 {
		return fmt.Errorf("ipv6 jumbogram (payload length 0): %w", ErrUnsupported)
	}
	if ipv6HdrLen+payload > len(ip) {
		return fmt.Errorf("ipv6 payload length %d, %d bytes in the frame: %w", payload, len(ip)-ipv6HdrLen, ErrMalformed)
	}
	l.v6 = true
	l.end = l.l3 + ipv6HdrLen + payload
	next, nextAt, at := ip[6], l.l3+6, l.l3+ipv6HdrLen
	l.fragAt, l.fragNext = -1, 0
	routing := false
	for next != proto {
		switch next {
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
		case ipv6Fragment:
			return fmt.Errorf("ipv6 packet is a fragment already: %w", ErrMalformed)
		default:
			return fmt.Errorf("ipv6 next header %d at byte %d, want %d: %w", next, at, proto, ErrMalformed)
		}
		if at+8 > l.end {
			return fmt.Errorf("ipv6 extension header %d at byte %d past the end of the packet at %d: %w", next, at, l.end, ErrMalformed)
		}
		n := (int(frame[at+1]) + 1) * 8
		if at+n > l.end {
			return fmt.Errorf("ipv6 extension header %d of %d bytes at byte %d past the end of the packet at %d: %w", next, n, at, l.end, ErrMalformed)
		}
		if l.fragAt < 0 && next == ipv6DestOpts && routing {
			l.fragAt, l.fragNext = at, nextAt
		}
		if next == ipv6Routing {
			routing = true
			if frame[at+3] != 0 {
				l.routed = true
			}
		}
		next, nextAt, at = frame[at], at, at+n
	}
	if l.fragAt < 0 {
		l.fragAt, l.fragNext = at, nextAt
	}
	l.l4 = at
	return nil
}
