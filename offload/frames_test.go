package offload

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/virtio"
)

// This file describes test frames by their shape and checks segments;
// frametest builds and parses the frames, with code that shares nothing
// with the package, so a bug here cannot hide itself.

// spec describes a test frame; frame fills in the rest.
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
	srcMAC = net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	dstMAC = net.HardwareAddr{0x52, 0x54, 0, 0xab, 0xcd, 0xef}
	src4   = netip.MustParseAddr("10.0.0.1")
	dst4   = netip.MustParseAddr("10.0.0.2")
	src6   = netip.MustParseAddr("fd00::1")
	dst6   = netip.MustParseAddr("fd00::2")
)

const (
	testSeq = 0xfffff000 // wraps within a 64 KiB frame
	testID  = 0xfff0     // wraps within 16 segments
)

// frame is the frame s describes: TCP from port 40000 to 80 or UDP to
// 4789, options of NOPs, an IPv4 TOS of ECT(0), an IPv6 flow label, a
// complete transport checksum.
func (s spec) frame() frametest.Spec {
	f := frametest.Spec{SrcMAC: srcMAC, DstMAC: dstMAC, Src: src4, Dst: dst4, TOS: 0x02, ID: testID, DF: s.df,
		IPOptions: nops(s.ipOpts), Proto: frametest.ProtoTCP, SrcPort: 40000, DstPort: 80, Seq: testSeq,
		Ack: 0x01020304, Flags: s.flags, Window: 0xfaf0, TCPOptions: nops(s.tcpOpts), Pad: s.pad}
	for i := range s.vlans {
		tpid := uint16(frametest.EtherVLAN)
		if s.vlans == 2 && i == 0 {
			tpid = frametest.EtherQinQ
		}
		f.VLANs = append(f.VLANs, tpid)
	}
	if s.v6 {
		f.Src, f.Dst, f.TOS, f.FlowLabel, f.Ext = src6, dst6, 0, 0x12345, s.ext
		if s.routed {
			f.SegmentsLeft = 1
		}
	}
	if s.udp {
		f.Proto, f.DstPort = frametest.ProtoUDP, 4789
	}
	f.Payload = make([]byte, s.payload)
	for i := range f.Payload {
		f.Payload[i] = byte(i*7 + i>>8 + 3)
	}
	return f
}

// nops is n bytes of NOP options.
func nops(n int) []byte { return bytes.Repeat([]byte{1}, n) }

// build returns the frame and the offset of its transport header. The
// transport checksum is complete.
func (s spec) build() ([]byte, int) {
	f := s.frame().Build()
	return f, mustParse(f).L4
}

// offloaded is the frame as a Linux guest hands it to the device for gso
// (NONE for a checksum offload only): the pseudo-header sum in the
// checksum field, NEEDS_CSUM at the transport header.
func (s spec) offloaded(gso virtio.GSOType, mss uint16) ([]byte, virtio.NetHdr) {
	fs := s.frame()
	fs.Partial = true
	f := fs.Build()
	p := mustParse(f)
	h := virtio.NetHdr{
		Flags: virtio.NeedsCsum, GSOType: gso, GSOSize: mss, HdrLen: uint16(p.HdrEnd),
		CsumStart: uint16(p.L4), CsumOffset: uint16(p.CsumOffset()),
	}
	if gso == virtio.GSONone {
		h.GSOSize, h.HdrLen = 0, 0
	}
	return f, h
}

func mustParse(f []byte) frametest.Packet {
	p, err := frametest.Parse(f)
	if err != nil {
		panic(fmt.Sprintf("a frame the tests built: %v", err))
	}
	return p
}

// checkSegments checks the segments Segment made of orig under h: every
// header field that must change did so correctly, every other one did
// not, every checksum holds, and the payloads add up to the original.
func checkSegments(orig []byte, h *virtio.NetHdr, segs [][]byte) error {
	o, err := frametest.Parse(orig)
	if err != nil {
		return fmt.Errorf("original: %v", err)
	}
	if h.GSOType&^virtio.GSOECN == virtio.GSOUDP {
		return checkFragments(orig, o, h, segs)
	}
	mss := int(h.GSOSize)
	var payload []byte
	for i, s := range segs {
		p, err := frametest.Parse(s)
		if err != nil {
			return fmt.Errorf("segment %d: %v", i, err)
		}
		if p.End != len(s) {
			return fmt.Errorf("segment %d: ip packet ends at %d of %d bytes", i, p.End, len(s))
		}
		if p.L4 != o.L4 || p.HdrEnd != o.HdrEnd || p.Proto != o.Proto {
			return fmt.Errorf("segment %d: headers at %d/%d proto %d, want %d/%d proto %d", i, p.L4, p.HdrEnd, p.Proto, o.L4, o.HdrEnd, o.Proto)
		}
		data := s[p.HdrEnd:]
		if last := i == len(segs)-1; len(data) > mss || (!last && len(data) != mss) {
			return fmt.Errorf("segment %d of %d: %d bytes of payload, mss %d", i, len(segs), len(data), mss)
		}
		payload = append(payload, data...)
		if !p.SumOK() {
			return fmt.Errorf("segment %d: transport checksum does not hold", i)
		}
		// Link and IP headers: the same but for length, id and checksum.
		if !bytes.Equal(s[:p.L3], orig[:o.L3]) {
			return fmt.Errorf("segment %d: link header changed", i)
		}
		want := append([]byte(nil), orig[o.L3:o.L4]...)
		got := append([]byte(nil), s[p.L3:p.L4]...)
		if p.V6 {
			binary.BigEndian.PutUint16(want[4:], uint16(len(s)-p.L3-40))
		} else {
			if !p.HeaderSumOK() {
				return fmt.Errorf("segment %d: ipv4 header checksum does not hold", i)
			}
			binary.BigEndian.PutUint16(want[2:], uint16(len(s)-p.L3))
			binary.BigEndian.PutUint16(want[4:], binary.BigEndian.Uint16(orig[o.L3+4:])+uint16(i))
			want[10], want[11], got[10], got[11] = 0, 0, 0, 0
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("segment %d: ip header\n got % x\nwant % x", i, got, want)
		}
		// Transport header: the same but for the fields that change.
		want = append(want[:0], orig[o.L4:o.HdrEnd]...)
		got = append(got[:0], s[p.L4:p.HdrEnd]...)
		if o.Proto == 6 {
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
			binary.BigEndian.PutUint16(want[4:], uint16(len(s)-p.L4))
			want[6], want[7], got[6], got[7] = 0, 0, 0, 0
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("segment %d: transport header\n got % x\nwant % x", i, got, want)
		}
	}
	if !bytes.Equal(payload, orig[o.HdrEnd:o.End]) {
		return fmt.Errorf("payloads: %d bytes, want %d, or different", len(payload), o.End-o.HdrEnd)
	}
	return nil
}

// checkFragments checks UFO output by reassembling it.
func checkFragments(orig []byte, o frametest.Packet, h *virtio.NetHdr, segs [][]byte) error {
	needsCsum := h.Flags&virtio.NeedsCsum != 0
	whole := append([]byte(nil), orig[:o.End]...)
	if len(segs) == 1 {
		// Not really GSO: the packet itself.
		p, err := frametest.Parse(segs[0])
		if err != nil {
			return fmt.Errorf("segment 0: %v", err)
		}
		if needsCsum {
			if !p.SumOK() {
				return fmt.Errorf("udp checksum does not hold")
			}
			copy(whole[o.L4+4:o.L4+8], segs[0][o.L4+4:o.L4+8])
		}
		if !bytes.Equal(segs[0], whole) {
			return fmt.Errorf("one segment, but not the packet itself")
		}
		return nil
	}
	var data, unfrag []byte
	var ident uint32
	for i, s := range segs {
		p, err := frametest.Parse(s)
		if err != nil {
			return fmt.Errorf("fragment %d: %v", i, err)
		}
		if p.End != len(s) {
			return fmt.Errorf("fragment %d: ip packet ends at %d of %d bytes", i, p.End, len(s))
		}
		if p.FragOffset != len(data) || p.More != (i < len(segs)-1) {
			return fmt.Errorf("fragment %d: offset %d more %v, want %d %v", i, p.FragOffset, p.More, len(data), i < len(segs)-1)
		}
		dataAt := p.L4
		if p.V6 {
			dataAt = p.FragAt + 8
		}
		if i < len(segs)-1 && (len(s)-dataAt)%8 != 0 {
			return fmt.Errorf("fragment %d: %d bytes of data, not a multiple of 8", i, len(s)-dataAt)
		}
		if p.V6 {
			if p.FragAt == 0 {
				return fmt.Errorf("fragment %d: no fragment header", i)
			}
			if i == 0 {
				ident = p.FragID
			} else if p.FragID != ident {
				return fmt.Errorf("fragment %d: identification %#x, want %#x", i, p.FragID, ident)
			}
			u := append([]byte(nil), s[:p.FragAt]...)
			// Undo the fragment header: restore Next Header and length.
			prev := p.L3 + 6
			for at := p.L3 + 40; at < p.FragAt; at += (int(s[at+1]) + 1) * 8 {
				prev = at
			}
			u[prev] = s[p.FragAt]
			binary.BigEndian.PutUint16(u[p.L3+4:], 0)
			if i == 0 {
				unfrag = u
			} else if !bytes.Equal(u, unfrag) {
				return fmt.Errorf("fragment %d: per-fragment headers differ", i)
			}
			data = append(data, s[p.FragAt+8:]...)
			continue
		}
		ip := s[p.L3:p.L4]
		if !p.HeaderSumOK() {
			return fmt.Errorf("fragment %d: ipv4 header checksum does not hold", i)
		}
		want := append([]byte(nil), orig[o.L3:o.L4]...)
		got := append([]byte(nil), ip...)
		for _, b := range []int{2, 3, 6, 7, 10, 11} {
			want[b], got[b] = 0, 0
		}
		if !bytes.Equal(got, want) || !bytes.Equal(s[:p.L3], orig[:o.L3]) {
			return fmt.Errorf("fragment %d: headers changed", i)
		}
		if binary.BigEndian.Uint16(ip[2:]) != uint16(len(s)-p.L3) {
			return fmt.Errorf("fragment %d: total length", i)
		}
		unfrag = orig[:o.L4]
		data = append(data, s[p.L4:]...)
	}
	start := o.L4
	if o.V6 {
		start = len(unfrag)
		binary.BigEndian.PutUint16(unfrag[o.L3+4:], binary.BigEndian.Uint16(orig[o.L3+4:]))
		if !bytes.Equal(unfrag, orig[:start]) {
			return fmt.Errorf("reassembled headers differ")
		}
	}
	got := append(append([]byte(nil), orig[:start]...), data...)
	if len(got) != len(whole) {
		return fmt.Errorf("reassembled %d bytes, want %d", len(got), len(whole))
	}
	if needsCsum {
		// Its headers are the original's: it parses as the original did.
		p, err := frametest.Parse(got)
		if err != nil {
			return fmt.Errorf("reassembled datagram: %v", err)
		}
		if !p.SumOK() {
			return fmt.Errorf("udp checksum of the reassembled datagram does not hold")
		}
		if binary.BigEndian.Uint16(got[o.L4+6:]) == 0 && o.V6 {
			return fmt.Errorf("ipv6 udp checksum 0")
		}
		copy(whole[o.L4+4:o.L4+8], got[o.L4+4:o.L4+8])
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
