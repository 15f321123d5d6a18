package engine

import (
	"encoding/binary"
	"fmt"
	"net"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// Frames for the tests, built the way a Linux guest builds them: IPv4 or
// IPv6, TCP or UDP, with complete checksums or with NEEDS_CSUM and the
// pseudo-header's sum in the checksum field (tcp_v4_send_check,
// udp4_hwcsum and their IPv6 twins), and a checker for what arrives.

const (
	ethLen  = 14
	ip4Len  = 20
	ip6Len  = 40
	tcpLen  = 20
	udpLen  = 8
	protTCP = 6
	protUDP = 17
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpECE = 0x40
	tcpCWR = 0x80
)

// flow is one direction of a conversation between two addresses.
type flow struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       net.IP // both 4 or both 16 bytes
	sport, dport   uint16
}

func (f *flow) v6() bool { return f.src.To4() == nil }

// l3 returns the Ethernet and IP headers for an L4 payload of n bytes of
// protocol proto, and the offset of the L4 header.
func (f *flow) l3(proto byte, n int) ([]byte, int) {
	if f.v6() {
		b := make([]byte, ethLen+ip6Len, ethLen+ip6Len+n)
		copy(b, f.dstMAC)
		copy(b[6:], f.srcMAC)
		binary.BigEndian.PutUint16(b[12:], 0x86dd)
		ip := b[ethLen:]
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(n))
		ip[6], ip[7] = proto, 64
		copy(ip[8:], f.src.To16())
		copy(ip[24:], f.dst.To16())
		return b, ethLen + ip6Len
	}
	b := make([]byte, ethLen+ip4Len, ethLen+ip4Len+n)
	copy(b, f.dstMAC)
	copy(b[6:], f.srcMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[ethLen:]
	ip[0], ip[8], ip[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(ip4Len+n))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF, as Linux TCP sets it
	copy(ip[12:], f.src.To4())
	copy(ip[16:], f.dst.To4())
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip[:ip4Len], 0)))
	return b, ethLen + ip4Len
}

// pseudo is the pseudo-header's sum for an L4 segment of n bytes.
func (f *flow) pseudo(proto byte, n int) uint32 {
	if f.v6() {
		return sum(f.src.To16(), sum(f.dst.To16(), 0)) + uint32(proto) + uint32(n)
	}
	return sum(f.src.To4(), sum(f.dst.To4(), 0)) + uint32(proto) + uint32(n)
}

// finishL4 fills the checksum at csumAt of the L4 segment at l4: complete,
// or (partial) the folded pseudo-header sum a NEEDS_CSUM frame carries.
func (f *flow) finishL4(b []byte, l4, csumAt int, proto byte, partial bool) {
	seg := b[l4:]
	ps := f.pseudo(proto, len(seg))
	if partial {
		binary.BigEndian.PutUint16(seg[csumAt:], fold(ps))
		return
	}
	c := ^fold(sum(seg, ps))
	if c == 0 && proto == protUDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(seg[csumAt:], c)
}

// tcp builds a TCP segment; opts must be a multiple of 4 bytes.
func (f *flow) tcp(seq, ack uint32, flags byte, win uint16, opts, payload []byte, partial bool) []byte {
	n := tcpLen + len(opts) + len(payload)
	b, l4 := f.l3(protTCP, n)
	b = b[:l4+n]
	t := b[l4:]
	binary.BigEndian.PutUint16(t[0:], f.sport)
	binary.BigEndian.PutUint16(t[2:], f.dport)
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], ack)
	t[12] = byte((tcpLen + len(opts)) / 4 << 4)
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], win)
	copy(t[tcpLen:], opts)
	copy(t[tcpLen+len(opts):], payload)
	f.finishL4(b, l4, 16, protTCP, partial)
	return b
}

// udp builds a UDP datagram.
func (f *flow) udp(payload []byte, partial bool) []byte {
	n := udpLen + len(payload)
	b, l4 := f.l3(protUDP, n)
	b = b[:l4+n]
	u := b[l4:]
	binary.BigEndian.PutUint16(u[0:], f.sport)
	binary.BigEndian.PutUint16(u[2:], f.dport)
	binary.BigEndian.PutUint16(u[4:], uint16(n))
	copy(u[udpLen:], payload)
	f.finishL4(b, l4, 6, protUDP, partial)
	return b
}

// l4Offset returns the offset of the transport header of an IPv4 or IPv6
// (no extension headers) frame.
func l4Offset(b []byte) int {
	if binary.BigEndian.Uint16(b[12:]) == 0x86dd {
		return ethLen + ip6Len
	}
	return ethLen + int(b[ethLen]&0xf)*4
}

// gsoHdr is the header a Linux guest writes for frame b sent with gso
// (GSONone for a partial checksum only).
func gsoHdr(b []byte, gso virtio.GSOType, gsoSize int) virtio.NetHdr {
	l4 := l4Offset(b)
	h := virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: gso, CsumStart: uint16(l4), CsumOffset: 16}
	proto := b[ethLen+9]
	if binary.BigEndian.Uint16(b[12:]) == 0x86dd {
		proto = b[ethLen+6]
	}
	hdrEnd := l4 + udpLen
	if proto == protUDP {
		h.CsumOffset = 6
	} else {
		hdrEnd = l4 + int(b[l4+12]>>4)*4
	}
	if gso != virtio.GSONone {
		h.GSOSize = uint16(gsoSize)
		h.HdrLen = uint16(hdrEnd)
	}
	return h
}

// withHdr returns frame behind the hdrLen-byte encoding of h.
func withHdr(h virtio.NetHdr, hdrLen int, frame []byte) []byte {
	b := make([]byte, hdrLen, hdrLen+len(frame))
	if err := h.Encode(b, hdrLen, virtio.LittleEndian); err != nil {
		panic(err)
	}
	return append(b, frame...)
}

// packet is what checkPacket found in a frame.
type packet struct {
	v6             bool
	proto          byte
	src, dst       net.IP
	sport, dport   uint16
	seq, ack       uint32 // TCP
	flags          byte   // TCP
	win            uint16 // TCP
	opts, payload  []byte
	ipID           uint16 // IPv4
	l4             int
	fragment, more bool // an IP fragment, and one with more after it
	fragOff        int  // its offset in bytes
}

// parsePacket parses an Ethernet/IP/TCP-or-UDP frame, checking lengths and
// (unless partial) every checksum. With partial, the L4 checksum field
// must hold the pseudo-header's sum, as a NEEDS_CSUM frame carries it.
func parsePacket(b []byte, partial bool) (*packet, error) {
	return parse(b, partial, true)
}

// peekPacket parses a frame without checking checksums.
func peekPacket(b []byte) (*packet, error) { return parse(b, false, false) }

func parse(b []byte, partial, verify bool) (*packet, error) {
	if len(b) < ethLen {
		return nil, fmt.Errorf("frame of %d bytes", len(b))
	}
	p := &packet{}
	var end int
	switch et := binary.BigEndian.Uint16(b[12:]); et {
	case 0x0800:
		ip := b[ethLen:]
		if len(ip) < ip4Len || ip[0]>>4 != 4 {
			return nil, fmt.Errorf("bad ipv4 header")
		}
		ihl := int(ip[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if total > len(ip) || total < ihl {
			return nil, fmt.Errorf("ipv4 total length %d, %d bytes in the frame", total, len(ip))
		}
		if c := fold(sum(ip[:ihl], 0)); c != 0xffff && verify {
			return nil, fmt.Errorf("ipv4 header checksum wrong (sum %#04x)", c)
		}
		p.proto, p.src, p.dst = ip[9], net.IP(ip[12:16]), net.IP(ip[16:20])
		p.ipID = binary.BigEndian.Uint16(ip[4:])
		fo := binary.BigEndian.Uint16(ip[6:])
		p.more, p.fragOff = fo&0x2000 != 0, int(fo&0x1fff)*8
		p.fragment = p.more || p.fragOff != 0
		p.l4, end = ethLen+ihl, ethLen+total
	case 0x86dd:
		ip := b[ethLen:]
		if len(ip) < ip6Len || ip[0]>>4 != 6 {
			return nil, fmt.Errorf("bad ipv6 header")
		}
		pl := int(binary.BigEndian.Uint16(ip[4:]))
		if ip6Len+pl > len(ip) {
			return nil, fmt.Errorf("ipv6 payload length %d, %d bytes in the frame", pl, len(ip)-ip6Len)
		}
		p.v6, p.proto, p.src, p.dst = true, ip[6], net.IP(ip[8:24]), net.IP(ip[24:40])
		p.l4, end = ethLen+ip6Len, ethLen+ip6Len+pl
		if p.proto == 44 { // fragment header
			fh := b[p.l4:]
			fo := binary.BigEndian.Uint16(fh[2:])
			p.proto, p.more, p.fragOff, p.fragment = fh[0], fo&1 != 0, int(fo&^7), true
			p.l4 += 8
		}
	default:
		return nil, fmt.Errorf("ethertype %#04x", et)
	}
	if p.fragment {
		if p.fragOff == 0 && p.proto == protUDP {
			u := b[p.l4:end]
			p.sport, p.dport = binary.BigEndian.Uint16(u), binary.BigEndian.Uint16(u[2:])
			p.payload = u[udpLen:]
		} else {
			p.payload = b[p.l4:end]
		}
		return p, nil
	}
	seg := b[p.l4:end]
	ps := sum(p.src, sum(p.dst, 0)) + uint32(p.proto) + uint32(len(seg))
	csumAt := 6
	switch p.proto {
	case protTCP:
		if len(seg) < tcpLen {
			return nil, fmt.Errorf("tcp segment of %d bytes", len(seg))
		}
		doff := int(seg[12]>>4) * 4
		if doff < tcpLen || doff > len(seg) {
			return nil, fmt.Errorf("tcp data offset %d in %d bytes", doff, len(seg))
		}
		p.sport, p.dport = binary.BigEndian.Uint16(seg), binary.BigEndian.Uint16(seg[2:])
		p.seq, p.ack = binary.BigEndian.Uint32(seg[4:]), binary.BigEndian.Uint32(seg[8:])
		p.flags, p.win = seg[13], binary.BigEndian.Uint16(seg[14:])
		p.opts, p.payload = seg[tcpLen:doff], seg[doff:]
		csumAt = 16
	case protUDP:
		if len(seg) < udpLen || int(binary.BigEndian.Uint16(seg[4:])) != len(seg) {
			return nil, fmt.Errorf("udp datagram of %d bytes, length field %d", len(seg), binary.BigEndian.Uint16(seg[4:]))
		}
		p.sport, p.dport = binary.BigEndian.Uint16(seg), binary.BigEndian.Uint16(seg[2:])
		p.payload = seg[udpLen:]
	default:
		return nil, fmt.Errorf("ip protocol %d", p.proto)
	}
	field := binary.BigEndian.Uint16(seg[csumAt:])
	switch {
	case !verify:
	case partial:
		if want := fold(ps); field != want {
			return nil, fmt.Errorf("partial checksum field %#04x, want the pseudo-header sum %#04x", field, want)
		}
	case p.proto == protUDP && field == 0 && !p.v6:
		return nil, fmt.Errorf("udp datagram without checksum")
	default:
		if c := fold(sum(seg, ps)); c != 0xffff {
			return nil, fmt.Errorf("%s checksum %#04x wrong (sum %#04x)", protoName(p.proto), field, c)
		}
	}
	return p, nil
}

func protoName(p byte) string {
	if p == protTCP {
		return "tcp"
	}
	return "udp"
}

// writeRaw writes b to fd as one message.
func writeRaw(fd int, b []byte) (int, error) { return unix.Write(fd, b) }
