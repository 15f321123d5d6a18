package virtio

import (
	"encoding/binary"
	"fmt"
)

// The hash of virtio 1.2 §5.1.6.4.3: which fields of a received frame the
// enabled hash types select, hashed with the Toeplitz function. A device
// computes it to pick the receive queue (VIRTIO_NET_F_RSS) and to report
// it in the 20-byte header (VIRTIO_NET_F_HASH_REPORT); ebpf.RSSProgram is
// the same parser in the kernel, and its tests hold the two to the same
// answers. Both stop at the same limits, so that a frame past them (more
// extension headers or options than anyone sends) gets the same hash
// from each.
const (
	// HashMaxVLANs is how many VLAN tags (802.1Q or 802.1ad) are skipped.
	HashMaxVLANs = 2
	// HashMaxExtHeaders is how many IPv6 extension headers are walked
	// looking for the transport header; behind more, there is none.
	HashMaxExtHeaders = 8
	// HashMaxOptions is how many options of a destination options header
	// are looked at for the home address option.
	HashMaxOptions = 8
)

// Frame fields the hash reads.
const (
	etherIPv4 = 0x0800
	etherIPv6 = 0x86dd
	etherVLAN = 0x8100
	etherQinQ = 0x88a8

	protoHopByHop = 0
	protoTCP      = 6
	protoUDP      = 17
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoNone     = 59
	protoDestOpts = 60
	protoMobility = 135

	routingType2 = 2    // the mobile IPv6 routing header: one address (RFC 6275 §6.4)
	optPad1      = 0    // the one-byte option
	optHomeAddr  = 0xc9 // the home address option (RFC 6275 §6.3)

	tcpHdrLen = 20
	udpHdrLen = 8
)

// Hasher computes the hash of virtio 1.2 §5.1.6.4.3 under one
// configuration: the enabled hash types and the key, from
// VIRTIO_NET_CTRL_MQ_RSS_CONFIG or HASH_CONFIG. It is immutable once made
// and safe for concurrent use: a device swaps in a new one when the driver
// sends a new configuration.
type Hasher struct {
	types HashTypes
	key   []byte
	table ToeplitzTable
}

// NewHasher makes the hasher of a configuration: the hash types the
// driver enabled and its key, of at most RSSKeySize bytes (a shorter key
// is zero-padded, as the hash defines key bits past the key).
func NewHasher(key []byte, types HashTypes) (*Hasher, error) {
	if len(key) > RSSKeySize {
		return nil, fmt.Errorf("hash key of %d bytes, at most %d", len(key), RSSKeySize)
	}
	if extra := types &^ HashAll; extra != 0 {
		return nil, fmt.Errorf("hash types %s: unknown bits %#x", types, uint32(extra))
	}
	h := &Hasher{types: types, key: append([]byte(nil), key...)}
	h.table = *NewToeplitzTable(key)
	return h, nil
}

// Types are the enabled hash types.
func (h *Hasher) Types() HashTypes { return h.types }

// Key is the key, as the driver gave it.
func (h *Hasher) Key() []byte { return append([]byte(nil), h.key...) }

// Table is the key's lookup table, which the steering program reads too.
func (h *Hasher) Table() *ToeplitzTable { return &h.table }

// Hash returns the hash of an Ethernet frame and the type it was computed
// as, or 0 and HashReportNone when the enabled types select no fields of
// this frame ("the device does not calculate the hash"). It allocates
// nothing and never reads outside frame; frame may be guest memory the
// guest rewrites meanwhile (the hash is then of whatever it read).
//
// Per §5.1.6.4.3, for IPv4 (fragments have no transport header):
// TCPv4 over the addresses and TCP ports, else UDPv4 with UDP ports,
// else IPv4 over the addresses. For IPv6 without extension headers the
// same with TCPv6, UDPv6 and IPv6. For IPv6 with extension headers, first
// TCP_EX, UDP_EX and IP_EX, which take the home address option's address
// (in a destination options header) for the source and the type 2
// routing header's for the destination, where present; then, skipping
// the extension headers, as without them. Up to HashMaxVLANs tags are
// skipped in front.
func (h *Hasher) Hash(frame []byte) (uint32, HashReport) {
	var in [RSSInputMax]byte
	n, r := h.input(frame, &in)
	if r == HashReportNone {
		return 0, HashReportNone
	}
	return h.table.Hash(in[:n]), r
}

// input writes the fields the hash covers into in and returns how many
// bytes they are and the report type.
func (h *Hasher) input(frame []byte, in *[RSSInputMax]byte) (int, HashReport) {
	be := binary.BigEndian
	if len(frame) < 14 {
		return 0, HashReportNone
	}
	etype, off := be.Uint16(frame[12:]), 14
	for range HashMaxVLANs {
		if etype != etherVLAN && etype != etherQinQ {
			break
		}
		if len(frame) < off+4 {
			return 0, HashReportNone
		}
		etype = be.Uint16(frame[off+2:])
		off += 4
	}
	switch etype {
	case etherIPv4:
		return h.ipv4(frame, off, in)
	case etherIPv6:
		return h.ipv6(frame, off, in)
	}
	return 0, HashReportNone
}

// transport is the transport header a hash may cover.
type transport int

const (
	noL4 transport = iota
	tcpL4
	udpL4
)

// l4At says whether frame holds a whole TCP or UDP header at off for IP
// protocol proto.
func l4At(frame []byte, off int, proto uint8) transport {
	switch {
	case proto == protoTCP && len(frame) >= off+tcpHdrLen:
		return tcpL4
	case proto == protoUDP && len(frame) >= off+udpHdrLen:
		return udpL4
	}
	return noL4
}

// §5.1.6.4.3.2.
func (h *Hasher) ipv4(frame []byte, off int, in *[RSSInputMax]byte) (int, HashReport) {
	if len(frame) < off+20 {
		return 0, HashReportNone
	}
	ip := frame[off : off+20]
	vihl := ip[0]
	ihl := int(vihl&0xf) * 4
	if vihl>>4 != 4 || ihl < 20 {
		return 0, HashReportNone
	}
	copy(in[:8], ip[12:20])
	l4 := noL4
	// Fragments (MF set or an offset) hash without ports: every fragment
	// of a datagram lands where the first does.
	if binary.BigEndian.Uint16(ip[6:])&0x3fff == 0 {
		l4 = l4At(frame, off+ihl, ip[9])
	}
	switch {
	case l4 == tcpL4 && h.types&HashTCPv4 != 0:
		copy(in[8:12], frame[off+ihl:])
		return 12, HashReportTCPv4
	case l4 == udpL4 && h.types&HashUDPv4 != 0:
		copy(in[8:12], frame[off+ihl:])
		return 12, HashReportUDPv4
	case h.types&HashIPv4 != 0:
		return 8, HashReportIPv4
	}
	return 0, HashReportNone
}

// isExtHeader says whether an IPv6 next header value is an extension
// header the walk steps over.
func isExtHeader(proto uint8) bool {
	switch proto {
	case protoHopByHop, protoRouting, protoFragment, protoAH, protoDestOpts, protoMobility:
		return true
	}
	return false
}

// §5.1.6.4.3.3 and §5.1.6.4.3.4.
func (h *Hasher) ipv6(frame []byte, off int, in *[RSSInputMax]byte) (int, HashReport) {
	if len(frame) < off+40 {
		return 0, HashReportNone
	}
	ip := frame[off : off+40]
	if ip[0]>>4 != 6 {
		return 0, HashReportNone
	}
	var homeAddr, rtAddr []byte // the _EX types' addresses, where present
	next, p := ip[6], off+40
	ext, frag := false, false
	for i := 0; i < HashMaxExtHeaders && isExtHeader(next); i++ {
		ext = true
		if next == protoFragment {
			// A fragment has no transport header to hash (the first
			// fragment's is not looked for either, as with IPv4).
			frag = true
			break
		}
		if len(frame) < p+8 {
			next = protoNone
			break
		}
		eh := frame[p : p+8]
		hl := (int(eh[1]) + 1) * 8
		if next == protoAH {
			hl = (int(eh[1]) + 2) * 4 // RFC 4302: in 4-byte units, less 2
		}
		switch next {
		case protoRouting:
			if eh[2] == routingType2 && eh[1] == 2 && len(frame) >= p+24 {
				rtAddr = frame[p+8 : p+24]
			}
		case protoDestOpts:
			if a := homeAddress(frame, p+2, p+hl); a != nil {
				homeAddr = a
			}
		}
		next, p = eh[0], p+hl
	}
	l4 := noL4
	if !frag {
		l4 = l4At(frame, p, next)
	}
	copy(in[:32], ip[8:40])
	if ext {
		ex := HashReportNone
		n := 32
		switch {
		case l4 == tcpL4 && h.types&HashTCPEx != 0:
			ex, n = HashReportTCPv6Ex, 36
		case l4 == udpL4 && h.types&HashUDPEx != 0:
			ex, n = HashReportUDPv6Ex, 36
		case h.types&HashIPEx != 0:
			ex = HashReportIPv6Ex
		}
		if ex != HashReportNone {
			if homeAddr != nil {
				copy(in[:16], homeAddr)
			}
			if rtAddr != nil {
				copy(in[16:32], rtAddr)
			}
			if n == 36 {
				copy(in[32:36], frame[p:])
			}
			return n, ex
		}
	}
	switch {
	case l4 == tcpL4 && h.types&HashTCPv6 != 0:
		copy(in[32:36], frame[p:])
		return 36, HashReportTCPv6
	case l4 == udpL4 && h.types&HashUDPv6 != 0:
		copy(in[32:36], frame[p:])
		return 36, HashReportUDPv6
	case h.types&HashIPv6 != 0:
		return 32, HashReportIPv6
	}
	return 0, HashReportNone
}

// homeAddress looks through the options of a destination options header,
// from q to end, for the home address option and returns its address, or
// nil.
func homeAddress(frame []byte, q, end int) []byte {
	for j := 0; j < HashMaxOptions && q < end; j++ {
		if len(frame) < q+2 {
			return nil
		}
		typ, n := frame[q], int(frame[q+1])
		if typ == optPad1 {
			q++
			continue
		}
		if typ == optHomeAddr && n == 16 {
			if len(frame) < q+18 {
				return nil
			}
			return frame[q+2 : q+18]
		}
		q += 2 + n
	}
	return nil
}

// Types is the hash type r reports (VIRTIO_NET_HASH_TYPE_XXX = 1 <<
// (VIRTIO_NET_HASH_REPORT_XXX - 1), virtio 1.2 §5.1.6.4.4), or 0 for
// HashReportNone and values the spec does not define.
func (r HashReport) Types() HashTypes {
	if r == HashReportNone || r > HashReportUDPv6Ex {
		return 0
	}
	return 1 << (r - 1)
}
