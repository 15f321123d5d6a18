package engine

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/virtio"
)

// Frames for the tests, built (internal/frametest) the way a Linux guest
// builds them: IPv4 or IPv6, TCP or UDP, with complete checksums or with
// NEEDS_CSUM and the pseudo-header's sum in the checksum field
// (tcp_v4_send_check, udp4_hwcsum and their IPv6 twins), and a checker for
// what arrives.

// tcp is f as a TCP segment; opts must be a multiple of 4 bytes. With
// partial, its checksum field holds the pseudo-header's sum.
func tcp(f frametest.Spec, seq, ack uint32, flags uint8, win uint16, opts, payload []byte, partial bool) []byte {
	f.Proto, f.Seq, f.Ack, f.Flags, f.Window, f.TCPOptions = frametest.ProtoTCP, seq, ack, flags, win, opts
	f.Payload, f.Partial = payload, partial
	return f.Build()
}

// udp is f as a UDP datagram. With partial, its checksum field holds the
// pseudo-header's sum.
func udp(f frametest.Spec, payload []byte, partial bool) []byte {
	f.Proto, f.Payload, f.Partial = frametest.ProtoUDP, payload, partial
	return f.Build()
}

// gsoHdr is the header a Linux guest writes for frame b sent with gso
// (GSONone for a partial checksum only).
func gsoHdr(b []byte, gso virtio.GSOType, gsoSize int) virtio.NetHdr {
	p, err := frametest.Parse(b)
	if err != nil {
		panic(err)
	}
	h := virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: gso, CsumStart: uint16(p.L4), CsumOffset: uint16(p.CsumOffset())}
	if gso != virtio.GSONone {
		h.GSOSize = uint16(gsoSize)
		h.HdrLen = uint16(p.HdrEnd)
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

// parsePacket parses an Ethernet/IP/TCP-or-UDP frame (frametest.Parse),
// checking the UDP length and every checksum, but a fragment's transport
// checksum. With partial, the L4 checksum field must hold the
// pseudo-header's sum, as a NEEDS_CSUM frame carries it.
func parsePacket(b []byte, partial bool) (*frametest.Packet, error) {
	return parse(b, partial, true)
}

// peekPacket parses a frame without checking checksums.
func peekPacket(b []byte) (*frametest.Packet, error) { return parse(b, false, false) }

func parse(b []byte, partial, verify bool) (*frametest.Packet, error) {
	p, err := frametest.Parse(b)
	if err != nil {
		return nil, err
	}
	if verify && !p.HeaderSumOK() {
		return nil, fmt.Errorf("ipv4 header checksum wrong")
	}
	if p.Fragment {
		return &p, nil
	}
	seg := b[p.L4:p.End]
	if n := binary.BigEndian.Uint16(seg[4:]); p.Proto == frametest.ProtoUDP && int(n) != len(seg) {
		return nil, fmt.Errorf("udp datagram of %d bytes, length field %d", len(seg), n)
	}
	switch {
	case !verify:
	case partial:
		if !p.PartialOK() {
			return nil, fmt.Errorf("partial checksum field %#04x, want the pseudo-header sum %#04x", p.Csum(), p.Pseudo())
		}
	case p.Proto == frametest.ProtoUDP && p.Csum() == 0 && !p.V6:
		return nil, fmt.Errorf("udp datagram without checksum")
	case !p.SumOK():
		name := "tcp"
		if p.Proto == frametest.ProtoUDP {
			name = "udp"
		}
		return nil, fmt.Errorf("%s checksum %#04x wrong", name, p.Csum())
	}
	return &p, nil
}

// writeRaw writes b to fd as one message.
func writeRaw(fd int, b []byte) (int, error) { return unix.Write(fd, b) }
