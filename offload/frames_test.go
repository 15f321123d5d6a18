package offload

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
)

// This file builds test frames and checks segments with code of its own:
// nothing here calls into the package, so a bug there cannot hide itself.

// refSum is RFC 1071 the slow way: big-endian words one at a time.
func refSum(b []byte, acc uint64) uint64 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint64(b[i])<<8 | uint64(b[i+1])
	}
	if len(b)%2 == 1 {
		acc += uint64(b[len(b)-1]) << 8
	}
	return acc
}

func refFold(acc uint64) uint16 {
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return uint16(acc)
}

func refChecksum(b []byte, initial uint16) uint16 {
	return ^refFold(refSum(b, uint64(initial)))
}

// spec describes a test frame.
type spec struct {
	vlans   int    // 802.1Q tags, outermost 802.1ad when there are two
	v6      bool   // IPv6, else IPv4
	udp     bool   // UDP, else TCP
	ipOpts  int    // IPv4 option bytes, a multiple of 4
	tcpOpts int    // TCP option bytes, a multiple of 4
	ext     []byte // IPv6 extension headers in order: 0, 43, 60
	routed  bool   // the routing header has segments left
	payload int
	flags   byte // TCP flags
	df      bool
	pad     int // link padding after the IP packet
}

func (s spec) String() string {
	fam, l4 := "v4", "tcp"
	if s.v6 {
		fam = "v6"
	}
	if s.udp {
		l4 = "udp"
	}
	return fmt.Sprintf("%s/%s vlans=%d ipopts=%d tcpopts=%d ext=%v payload=%d flags=%#x pad=%d",
		fam, l4, s.vlans, s.ipOpts, s.tcpOpts, s.ext, s.payload, s.flags, s.pad)
}

var (
	srcMAC = []byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	dstMAC = []byte{0x52, 0x54, 0, 0xab, 0xcd, 0xef}
	src4   = []byte{10, 0, 0, 1}
	dst4   = []byte{10, 0, 0, 2}
	src6   = []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
	dst6   = []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}
)

const (
	testSeq = 0xfffff000 // wraps within a 64 KiB frame
	testID  = 0xfff0     // wraps within 16 segments
)

// build returns the frame and the offset of its transport header. The
// transport checksum is complete.
func (s spec) build() ([]byte, int) {
	var f []byte
	f = append(f, dstMAC...)
	f = append(f, srcMAC...)
	for i := range s.vlans {
		tpid := uint16(0x8100)
		if s.vlans == 2 && i == 0 {
			tpid = 0x88a8
		}
		f = binary.BigEndian.AppendUint16(f, tpid)
		f = binary.BigEndian.AppendUint16(f, uint16(100+i))
	}
	proto := byte(6)
	l4Len := 20 + s.tcpOpts + s.payload
	if s.udp {
		proto, l4Len = 17, 8+s.payload
	}
	l3 := len(f) + 2
	var l4 int
	if s.v6 {
		f = binary.BigEndian.AppendUint16(f, 0x86dd)
		extLen := 8 * len(s.ext)
		next := proto
		if len(s.ext) > 0 {
			next = s.ext[0]
		}
		f = append(f, 0x60, 0x01, 0x23, 0x45)
		f = binary.BigEndian.AppendUint16(f, uint16(extLen+l4Len))
		f = append(f, next, 64)
		f = append(f, src6...)
		f = append(f, dst6...)
		for i, typ := range s.ext {
			next := proto
			if i+1 < len(s.ext) {
				next = s.ext[i+1]
			}
			switch typ {
			case 43:
				left := byte(0)
				if s.routed {
					left = 1
				}
				f = append(f, next, 0, 4, left, 0, 0, 0, 0)
			default:
				f = append(f, next, 0, 1, 4, 0, 0, 0, 0) // PadN
			}
		}
	} else {
		f = binary.BigEndian.AppendUint16(f, 0x0800)
		ihl := 20 + s.ipOpts
		f = append(f, 0x40|byte(ihl/4), 0x02)
		f = binary.BigEndian.AppendUint16(f, uint16(ihl+l4Len))
		f = binary.BigEndian.AppendUint16(f, testID)
		frag := uint16(0)
		if s.df {
			frag = 0x4000
		}
		f = binary.BigEndian.AppendUint16(f, frag)
		f = append(f, 64, proto, 0, 0)
		f = append(f, src4...)
		f = append(f, dst4...)
		for range s.ipOpts {
			f = append(f, 1) // NOP
		}
		binary.BigEndian.PutUint16(f[l3+10:], refChecksum(f[l3:l3+ihl], 0))
	}
	l4 = len(f)
	if s.udp {
		f = binary.BigEndian.AppendUint16(f, 40000)
		f = binary.BigEndian.AppendUint16(f, 4789)
		f = binary.BigEndian.AppendUint16(f, uint16(l4Len))
		f = append(f, 0, 0)
	} else {
		f = binary.BigEndian.AppendUint16(f, 40000)
		f = binary.BigEndian.AppendUint16(f, 80)
		f = binary.BigEndian.AppendUint32(f, testSeq)
		f = binary.BigEndian.AppendUint32(f, 0x01020304)
		f = append(f, byte((20+s.tcpOpts)/4)<<4, s.flags)
		f = binary.BigEndian.AppendUint16(f, 0xfaf0)
		f = append(f, 0, 0, 0, 0)
		for range s.tcpOpts {
			f = append(f, 1) // NOP
		}
	}
	for i := range s.payload {
		f = append(f, byte(i*7+i>>8+3))
	}
	at := l4 + 16
	if s.udp {
		at = l4 + 6
	}
	c := refChecksum(f[l4:], refPseudo(f, l3, s.v6, proto, l4Len))
	if c == 0 && s.udp {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(f[at:], c)
	for range s.pad {
		f = append(f, 0)
	}
	return f, l4
}

// refPseudo is the folded pseudo-header sum of the packet whose IP header
// is at l3.
func refPseudo(f []byte, l3 int, v6 bool, proto byte, l4Len int) uint16 {
	var acc uint64
	if v6 {
		acc = refSum(f[l3+8:l3+40], 0)
	} else {
		acc = refSum(f[l3+12:l3+20], 0)
	}
	return refFold(acc + uint64(proto) + uint64(l4Len))
}

// offloaded turns a built frame into what a Linux guest hands the device
// for gso (NONE for a checksum offload only): the pseudo-header sum in the
// checksum field, NEEDS_CSUM at the transport header.
func (s spec) offloaded(gso virtio.GSOType, mss uint16) ([]byte, virtio.NetHdr) {
	f, l4 := s.build()
	proto, off, hdrEnd := byte(6), uint16(16), l4+20+s.tcpOpts
	if s.udp {
		proto, off, hdrEnd = 17, 6, l4+8
	}
	l3 := 14 + 4*s.vlans
	end := len(f) - s.pad
	binary.BigEndian.PutUint16(f[l4+int(off):], refPseudo(f, l3, s.v6, proto, end-l4))
	h := virtio.NetHdr{
		Flags: virtio.NeedsCsum, GSOType: gso, GSOSize: mss, HdrLen: uint16(hdrEnd),
		CsumStart: uint16(l4), CsumOffset: off,
	}
	if gso == virtio.GSONone {
		h.GSOSize, h.HdrLen = 0, 0
	}
	return f, h
}

// pkt is what checkSegments reads out of a frame.
type pkt struct {
	l3, l4, hdrEnd, end int
	v6                  bool
	proto               byte
	fragAt              int // IPv6: offset of a fragment header, or 0
	fragOff             int // fragment offset in bytes
	more                bool
	ident               uint32
}

// parsePkt reads a frame with its own logic, independent of the package.
func parsePkt(f []byte) (pkt, error) {
	var p pkt
	if len(f) < 14 {
		return p, fmt.Errorf("%d bytes", len(f))
	}
	at := 12
	for tags := 0; ; tags++ {
		et := binary.BigEndian.Uint16(f[at:])
		if et != 0x8100 && et != 0x88a8 {
			break
		}
		if tags == 2 || at+6 > len(f) {
			return p, fmt.Errorf("vlan tags")
		}
		at += 4
	}
	et := binary.BigEndian.Uint16(f[at:])
	p.l3 = at + 2
	ip := f[p.l3:]
	switch et {
	case 0x0800:
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return p, fmt.Errorf("ipv4 header")
		}
		ihl := int(ip[0]&15) * 4
		tot := int(binary.BigEndian.Uint16(ip[2:]))
		if ihl < 20 || tot < ihl || tot > len(ip) {
			return p, fmt.Errorf("ipv4 lengths ihl %d total %d in %d", ihl, tot, len(ip))
		}
		p.l4, p.end, p.proto = p.l3+ihl, p.l3+tot, ip[9]
		fo := binary.BigEndian.Uint16(ip[6:])
		p.fragOff, p.more = int(fo&0x1fff)*8, fo&0x2000 != 0
	case 0x86dd:
		if len(ip) < 40 || ip[0]>>4 != 6 {
			return p, fmt.Errorf("ipv6 header")
		}
		p.v6 = true
		p.end = p.l3 + 40 + int(binary.BigEndian.Uint16(ip[4:]))
		if p.end > len(f) {
			return p, fmt.Errorf("ipv6 payload length")
		}
		next, at := ip[6], p.l3+40
		for next == 0 || next == 43 || next == 60 || next == 44 {
			if at+8 > p.end {
				return p, fmt.Errorf("extension header")
			}
			n := (int(f[at+1]) + 1) * 8
			if next == 44 {
				n = 8
				fo := binary.BigEndian.Uint16(f[at+2:])
				p.fragAt, p.fragOff, p.more = at, int(fo&^7), fo&1 != 0
				p.ident = binary.BigEndian.Uint32(f[at+4:])
				if p.fragOff != 0 {
					// A later fragment: what follows is data.
					next, at = f[at], at+n
					break
				}
			}
			if at+n > p.end {
				return p, fmt.Errorf("extension header length")
			}
			next, at = f[at], at+n
		}
		p.l4, p.proto = at, next
	default:
		return p, fmt.Errorf("ethertype %#x", et)
	}
	switch {
	case p.fragOff != 0:
		p.hdrEnd = p.l4 // a later fragment: no transport header
	case p.proto == 6:
		if p.l4+20 > p.end {
			return p, fmt.Errorf("tcp header")
		}
		p.hdrEnd = p.l4 + int(f[p.l4+12]>>4)*4
	case p.proto == 17:
		p.hdrEnd = p.l4 + 8
	default:
		return p, fmt.Errorf("protocol %d", p.proto)
	}
	if p.hdrEnd > p.end {
		return p, fmt.Errorf("transport header past the end")
	}
	return p, nil
}

// l4Valid reports whether the transport checksum of a whole packet holds.
func l4Valid(f []byte, p pkt) bool {
	return refFold(refSum(f[p.l4:p.end], uint64(refPseudo(f, p.l3, p.v6, p.proto, p.end-p.l4)))) == 0xffff
}

// checkSegments checks the segments Segment made of orig under h: every
// header field that must change did so correctly, every other one did
// not, every checksum holds, and the payloads add up to the original.
func checkSegments(orig []byte, h *virtio.NetHdr, segs [][]byte) error {
	o, err := parsePkt(orig)
	if err != nil {
		return fmt.Errorf("original: %v", err)
	}
	if h.GSOType&^virtio.GSOECN == virtio.GSOUDP {
		return checkFragments(orig, o, h, segs)
	}
	mss := int(h.GSOSize)
	var payload []byte
	for i, s := range segs {
		p, err := parsePkt(s)
		if err != nil {
			return fmt.Errorf("segment %d: %v", i, err)
		}
		if p.end != len(s) {
			return fmt.Errorf("segment %d: ip packet ends at %d of %d bytes", i, p.end, len(s))
		}
		if p.l4 != o.l4 || p.hdrEnd != o.hdrEnd || p.proto != o.proto {
			return fmt.Errorf("segment %d: headers at %d/%d proto %d, want %d/%d proto %d", i, p.l4, p.hdrEnd, p.proto, o.l4, o.hdrEnd, o.proto)
		}
		data := s[p.hdrEnd:]
		if last := i == len(segs)-1; len(data) > mss || (!last && len(data) != mss) {
			return fmt.Errorf("segment %d of %d: %d bytes of payload, mss %d", i, len(segs), len(data), mss)
		}
		payload = append(payload, data...)
		if !l4Valid(s, p) {
			return fmt.Errorf("segment %d: transport checksum does not hold", i)
		}
		// Link and IP headers: the same but for length, id and checksum.
		if !bytes.Equal(s[:p.l3], orig[:o.l3]) {
			return fmt.Errorf("segment %d: link header changed", i)
		}
		want := append([]byte(nil), orig[o.l3:o.l4]...)
		got := append([]byte(nil), s[p.l3:p.l4]...)
		if p.v6 {
			binary.BigEndian.PutUint16(want[4:], uint16(len(s)-p.l3-40))
		} else {
			if refFold(refSum(got, 0)) != 0xffff {
				return fmt.Errorf("segment %d: ipv4 header checksum does not hold", i)
			}
			binary.BigEndian.PutUint16(want[2:], uint16(len(s)-p.l3))
			binary.BigEndian.PutUint16(want[4:], binary.BigEndian.Uint16(orig[o.l3+4:])+uint16(i))
			want[10], want[11], got[10], got[11] = 0, 0, 0, 0
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("segment %d: ip header\n got % x\nwant % x", i, got, want)
		}
		// Transport header: the same but for the fields that change.
		want = append(want[:0], orig[o.l4:o.hdrEnd]...)
		got = append(got[:0], s[p.l4:p.hdrEnd]...)
		if o.proto == 6 {
			binary.BigEndian.PutUint32(want[4:], binary.BigEndian.Uint32(want[4:])+uint32(i*mss))
			if i < len(segs)-1 {
				want[13] &^= 0x01 | 0x08
			}
			if i > 0 {
				want[13] &^= 0x80
			}
			want[16], want[17], got[16], got[17] = 0, 0, 0, 0
		} else {
			if binary.BigEndian.Uint16(got[6:]) == 0 {
				return fmt.Errorf("segment %d: udp checksum 0", i)
			}
			binary.BigEndian.PutUint16(want[4:], uint16(len(s)-p.l4))
			want[6], want[7], got[6], got[7] = 0, 0, 0, 0
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("segment %d: transport header\n got % x\nwant % x", i, got, want)
		}
	}
	if !bytes.Equal(payload, orig[o.hdrEnd:o.end]) {
		return fmt.Errorf("payloads: %d bytes, want %d, or different", len(payload), o.end-o.hdrEnd)
	}
	return nil
}

// checkFragments checks UFO output by reassembling it.
func checkFragments(orig []byte, o pkt, h *virtio.NetHdr, segs [][]byte) error {
	needsCsum := h.Flags&virtio.NeedsCsum != 0
	whole := append([]byte(nil), orig[:o.end]...)
	if len(segs) == 1 {
		// Not really GSO: the packet itself.
		p, err := parsePkt(segs[0])
		if err != nil {
			return fmt.Errorf("segment 0: %v", err)
		}
		if needsCsum {
			if !l4Valid(segs[0], p) {
				return fmt.Errorf("udp checksum does not hold")
			}
			copy(whole[o.l4+4:o.l4+8], segs[0][o.l4+4:o.l4+8])
		}
		if !bytes.Equal(segs[0], whole) {
			return fmt.Errorf("one segment, but not the packet itself")
		}
		return nil
	}
	var data, unfrag []byte
	var ident uint32
	for i, s := range segs {
		p, err := parsePkt(s)
		if err != nil {
			return fmt.Errorf("fragment %d: %v", i, err)
		}
		if p.end != len(s) {
			return fmt.Errorf("fragment %d: ip packet ends at %d of %d bytes", i, p.end, len(s))
		}
		if p.fragOff != len(data) || p.more != (i < len(segs)-1) {
			return fmt.Errorf("fragment %d: offset %d more %v, want %d %v", i, p.fragOff, p.more, len(data), i < len(segs)-1)
		}
		dataAt := p.l4
		if p.v6 {
			dataAt = p.fragAt + 8
		}
		if i < len(segs)-1 && (len(s)-dataAt)%8 != 0 {
			return fmt.Errorf("fragment %d: %d bytes of data, not a multiple of 8", i, len(s)-dataAt)
		}
		if p.v6 {
			if p.fragAt == 0 {
				return fmt.Errorf("fragment %d: no fragment header", i)
			}
			if i == 0 {
				ident = p.ident
			} else if p.ident != ident {
				return fmt.Errorf("fragment %d: identification %#x, want %#x", i, p.ident, ident)
			}
			u := append([]byte(nil), s[:p.fragAt]...)
			// Undo the fragment header: restore Next Header and length.
			prev := p.l3 + 6
			for at := p.l3 + 40; at < p.fragAt; at += (int(s[at+1]) + 1) * 8 {
				prev = at
			}
			u[prev] = s[p.fragAt]
			binary.BigEndian.PutUint16(u[p.l3+4:], 0)
			if i == 0 {
				unfrag = u
			} else if !bytes.Equal(u, unfrag) {
				return fmt.Errorf("fragment %d: per-fragment headers differ", i)
			}
			data = append(data, s[p.fragAt+8:]...)
			continue
		}
		ip := s[p.l3:p.l4]
		if refFold(refSum(ip, 0)) != 0xffff {
			return fmt.Errorf("fragment %d: ipv4 header checksum does not hold", i)
		}
		want := append([]byte(nil), orig[o.l3:o.l4]...)
		got := append([]byte(nil), ip...)
		for _, b := range []int{2, 3, 6, 7, 10, 11} {
			want[b], got[b] = 0, 0
		}
		if !bytes.Equal(got, want) || !bytes.Equal(s[:p.l3], orig[:o.l3]) {
			return fmt.Errorf("fragment %d: headers changed", i)
		}
		if binary.BigEndian.Uint16(ip[2:]) != uint16(len(s)-p.l3) {
			return fmt.Errorf("fragment %d: total length", i)
		}
		unfrag = orig[:o.l4]
		data = append(data, s[p.l4:]...)
	}
	start := o.l4
	if o.v6 {
		start = len(unfrag)
		binary.BigEndian.PutUint16(unfrag[o.l3+4:], binary.BigEndian.Uint16(orig[o.l3+4:]))
		if !bytes.Equal(unfrag, orig[:start]) {
			return fmt.Errorf("reassembled headers differ")
		}
	}
	got := append(append([]byte(nil), orig[:start]...), data...)
	if len(got) != len(whole) {
		return fmt.Errorf("reassembled %d bytes, want %d", len(got), len(whole))
	}
	if needsCsum {
		p := o
		if !l4Valid(got, p) {
			return fmt.Errorf("udp checksum of the reassembled datagram does not hold")
		}
		if binary.BigEndian.Uint16(got[o.l4+6:]) == 0 && o.v6 {
			return fmt.Errorf("ipv6 udp checksum 0")
		}
		copy(whole[o.l4+4:o.l4+8], got[o.l4+4:o.l4+8])
	}
	if !bytes.Equal(got, whole) {
		return fmt.Errorf("reassembled datagram differs")
	}
	return nil
}

// segmentBufs returns n buffers of size bytes each, each followed by guard
// bytes inside the same array, and a function that reports a guard byte
// that changed.
func segmentBufs(n, size int) ([][]byte, func() error) {
	const guard = 16
	backing := bytes.Repeat([]byte{0xa5}, n*(size+guard))
	out := make([][]byte, n)
	for i := range out {
		at := i * (size + guard)
		out[i] = backing[at : at+size : at+size]
	}
	return out, func() error {
		for i := range n {
			at := i*(size+guard) + size
			for j, b := range backing[at : at+guard] {
				if b != 0xa5 {
					return fmt.Errorf("guard byte %d after buffer %d overwritten: %#x", j, i, b)
				}
			}
		}
		return nil
	}
}

func mustSegment(t testing.TB, frame []byte, h *virtio.NetHdr, nbuf int) [][]byte {
	t.Helper()
	out, guards := segmentBufs(nbuf, 9216)
	sizes := make([]int, nbuf)
	n, err := Segment(frame, h, out, sizes)
	if err != nil {
		t.Fatalf("Segment: %v", err)
	}
	if err := guards(); err != nil {
		t.Fatal(err)
	}
	segs := make([][]byte, n)
	for i := range n {
		segs[i] = out[i][:sizes[i]]
	}
	return segs
}
