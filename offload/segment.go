package offload

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"math/rand/v2"

	"github.com/vmnet-dev/vmnet/virtio"
)

// TCP flags Segment adjusts.
const (
	tcpFlagFIN = 0x01
	tcpFlagPSH = 0x08
	tcpFlagCWR = 0x80
)

// Segment does in software what the kernel does for a GSO frame the TAP
// cannot take: it cuts frame, whose header h has a GSO type, into frames
// of at most gso_size bytes of payload each, with complete checksums, and
// writes them into out[0], out[1], ..., their lengths into sizes. Each is a
// whole Ethernet frame (with the VLAN tags of the original, if any) and
// no vnet header. It returns how many it wrote.
//
//   - TCPV4, TCPV6 (TSO): each segment repeats the headers, with the IP
//     length, IPv4 id (one more per segment) and header checksum, and TCP
//     sequence number updated; FIN and PSH stay on the last segment only,
//     CWR on the first only (tcp_gso_segment).
//   - UDP_L4 (USO): each segment is a UDP datagram of its own, with its
//     length and checksum, and IPv4 ids as for TSO (__udp_gso_segment).
//   - UDP (UFO): the datagram is cut into IP fragments of gso_size bytes
//     rounded down to a multiple of 8, all with the datagram's IPv4 id, or
//     with a fragment header and a random identification for IPv6 (RFC
//     7739 §5.1). Only with NEEDS_CSUM is the UDP checksum completed;
//     otherwise it stays as the guest wrote it.
//
// A frame whose payload fits into one segment comes out as one frame with
// complete checksums. Bytes past the end the IP header gives are link
// padding and dropped. With NEEDS_CSUM, csum_start must be the offset of
// the transport header the IP headers lead to; the checksum field's
// contents are not used.
//
// Segment reads frame and h and writes only out[i][:sizes[i]] for i < n;
// out must not overlap frame. Before writing anything it checks that out
// and sizes have room for every segment, and returns an error wrapping
// ErrShortBuffer if not, ErrMalformed if frame does not hold what h says,
// ErrUnsupported for the rare frames it does not handle. It does not
// allocate.
func Segment(frame []byte, h *virtio.NetHdr, out [][]byte, sizes []int) (n int, err error) {
	gso := h.GSOType &^ virtio.GSOECN
	switch {
	case h.GSOType == virtio.GSONone:
		return 0, fmt.Errorf("gso_type NONE: nothing to segment: %w", ErrBadHeader)
	case gso != virtio.GSOTCPv4 && gso != virtio.GSOTCPv6 && gso != virtio.GSOUDP && gso != virtio.GSOUDPL4:
		return 0, fmt.Errorf("gso_type %s: %w", h.GSOType, ErrBadHeader)
	case h.GSOSize == 0:
		return 0, fmt.Errorf("gso_type %s with gso_size 0: %w", h.GSOType, ErrBadHeader)
	}
	l, err := parseFrame(frame, h, gso)
	if err != nil {
		return 0, err
	}
	if gso == virtio.GSOUDP {
		return fragment(frame, h, &l, out, sizes)
	}
	if l.routed {
		return 0, fmt.Errorf("ipv6 routing header with segments left: %w", ErrUnsupported)
	}
	mss := int(h.GSOSize)
	payload := l.end - l.hdrEnd
	n = max(1, (payload+mss-1)/mss)
	if err := checkRoom(out, sizes, n, l.hdrEnd, mss, payload); err != nil {
		return 0, err
	}

	pseudo := pseudoSum(frame, &l)
	tcp := gso != virtio.GSOUDPL4
	var seq uint32
	var id uint16
	if tcp {
		seq = binary.BigEndian.Uint32(frame[l.l4+4:])
	}
	if !l.v6 {
		id = binary.BigEndian.Uint16(frame[l.l3+4:])
	}
	for i := range n {
		data := frame[l.hdrEnd+i*mss : l.hdrEnd+min((i+1)*mss, payload)]
		seg := out[i]
		copy(seg, frame[:l.hdrEnd])
		size := l.hdrEnd + copy(seg[l.hdrEnd:], data)
		seg = seg[:size]
		putIPLength(seg, &l, id+uint16(i))
		l4 := seg[l.l4:]
		csumAt := udpCsumOff
		if tcp {
			csumAt = tcpCsumOff
			binary.BigEndian.PutUint32(l4[4:], seq+uint32(i*mss))
			if i < n-1 {
				l4[13] &^= tcpFlagFIN | tcpFlagPSH
			}
			if i > 0 {
				l4[13] &^= tcpFlagCWR
			}
		} else {
			binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		}
		l4[csumAt], l4[csumAt+1] = 0, 0
		binary.BigEndian.PutUint16(l4[csumAt:], finish(sum(l4, addBE(pseudo, uint16(len(l4))))))
		sizes[i] = size
	}
	return n, nil
}

// checkRoom checks that out and sizes hold n segments of hdr bytes of
// headers and mss bytes of a payload of the given length each, the last
// one what is left.
func checkRoom(out [][]byte, sizes []int, n, hdr, mss, payload int) error {
	if len(out) < n || len(sizes) < n {
		return fmt.Errorf("%d segments, %d buffers and %d sizes: %w", n, len(out), len(sizes), ErrShortBuffer)
	}
	for i := range n {
		need := hdr + min(mss, payload-i*mss)
		if len(out[i]) < need {
			return fmt.Errorf("segment %d of %d needs %d bytes, its buffer has %d: %w", i, n, need, len(out[i]), ErrShortBuffer)
		}
	}
	return nil
}

// pseudoSum is the sum of the pseudo-header's addresses and protocol
// (RFC 793 §3.1, RFC 768; RFC 8200 §8.1), without the length.
func pseudoSum(frame []byte, l *layout) uint64 {
	var acc uint64
	if l.v6 {
		acc = sum(frame[l.l3+8:l.l3+ipv6HdrLen], 0)
	} else {
		acc = sum(frame[l.l3+12:l.l3+ipv4MinLen], 0)
	}
	return addBE(acc, uint16(l.proto))
}

// putIPLength sets the length of the IP packet in seg, which ends with
// seg, and for IPv4 the id and header checksum.
func putIPLength(seg []byte, l *layout, id uint16) {
	ip := seg[l.l3:]
	if l.v6 {
		binary.BigEndian.PutUint16(ip[4:], uint16(len(ip)-ipv6HdrLen))
		return
	}
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], id)
	ipv4Csum(ip[:l.l4-l.l3])
}

// ipv4Csum recomputes the header checksum of the IPv4 header hdr.
func ipv4Csum(hdr []byte) {
	hdr[10], hdr[11] = 0, 0
	binary.BigEndian.PutUint16(hdr[10:], ^bits.ReverseBytes16(fold(sum(hdr, 0))))
}

// udpCsum returns the complete checksum of the UDP datagram at
// frame[l.l4:l.end], ignoring its checksum field, with its length field
// taken to be the datagram's length.
func udpCsum(frame []byte, l *layout) uint16 {
	dgram := frame[l.l4:l.end]
	n := uint16(len(dgram))
	acc := addBE(pseudoSum(frame, l), n)
	acc = sum(dgram[:4], acc) // ports
	acc = addBE(acc, n)       // length
	return finish(sum(dgram[udpHdrLen:], acc))
}

// fragment cuts the UDP datagram of a UFO frame into IP fragments.
func fragment(frame []byte, h *virtio.NetHdr, l *layout, out [][]byte, sizes []int) (int, error) {
	needsCsum := h.Flags&virtio.NeedsCsum != 0
	if needsCsum && l.routed {
		return 0, fmt.Errorf("ipv6 routing header with segments left: %w", ErrUnsupported)
	}
	var csum uint16
	if needsCsum {
		csum = udpCsum(frame, l)
	}
	dgramLen := l.end - l.l4
	if dgramLen <= int(h.GSOSize) {
		if err := checkRoom(out, sizes, 1, l.end, 0, 0); err != nil {
			return 0, err
		}
		seg := out[0][:copy(out[0], frame[:l.end])]
		if needsCsum {
			binary.BigEndian.PutUint16(seg[l.l4+4:], uint16(dgramLen))
			binary.BigEndian.PutUint16(seg[l.l4+udpCsumOff:], csum)
		}
		sizes[0] = len(seg)
		return 1, nil
	}

	// Fragment offsets count 8-byte units (RFC 791, RFC 8200 §4.5).
	fs := int(h.GSOSize) &^ 7
	if fs == 0 {
		return 0, fmt.Errorf("ufo gso_size %d is less than one 8-byte fragment unit: %w", h.GSOSize, ErrBadHeader)
	}
	unfrag, fragHdr := l.l4, 0
	if l.v6 {
		unfrag, fragHdr = l.fragAt, ipv6FragHdrLen
		if l.l4+udpHdrLen-l.fragAt > fs {
			return 0, fmt.Errorf("ipv6 headers after the per-fragment ones end at byte %d, past the first fragment of %d: %w",
				l.l4+udpHdrLen, fs, ErrUnsupported)
		}
	}
	data := frame[unfrag:l.end]
	n := (len(data) + fs - 1) / fs
	if err := checkRoom(out, sizes, n, unfrag+fragHdr, fs, len(data)); err != nil {
		return 0, err
	}
	var ident uint32
	if l.v6 {
		ident = rand.Uint32()
	}
	for i := range n {
		seg := out[i]
		copy(seg, frame[:unfrag])
		chunk := data[i*fs : min((i+1)*fs, len(data))]
		size := unfrag + fragHdr + copy(seg[unfrag+fragHdr:], chunk)
		seg = seg[:size]
		more := 0
		if i < n-1 {
			more = 1
		}
		if l.v6 {
			f := seg[unfrag:]
			f[0], f[1] = frame[l.fragNext], 0
			binary.BigEndian.PutUint16(f[2:], uint16(i*fs)|uint16(more*ipv6FlagM))
			binary.BigEndian.PutUint32(f[4:], ident)
			seg[l.fragNext] = ipv6Fragment
			binary.BigEndian.PutUint16(seg[l.l3+4:], uint16(size-l.l3-ipv6HdrLen))
		} else {
			ip := seg[l.l3:]
			// The flags are assigned, not or-ed: DF goes, as in
			// inet_gso_segment for UFO.
			binary.BigEndian.PutUint16(ip[6:], uint16(i*fs/8)|uint16(more*ipv4FlagMF))
			binary.BigEndian.PutUint16(ip[2:], uint16(size-l.l3))
			ipv4Csum(ip[:l.l4-l.l3])
		}
		if i == 0 && needsCsum {
			udp := seg[l.l4+fragHdr:]
			binary.BigEndian.PutUint16(udp[4:], uint16(dgramLen))
			binary.BigEndian.PutUint16(udp[udpCsumOff:], csum)
		}
		sizes[i] = size
	}
	return n, nil
}
