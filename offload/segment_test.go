package offload

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/virtio"
)

func TestSegment(t *testing.T) {
	const (
		tcp4 = virtio.GSOTCPv4
		tcp6 = virtio.GSOTCPv6
		uso  = virtio.GSOUDPL4
		ufo  = virtio.GSOUDP
	)
	tests := []struct {
		name string
		s    spec
		gso  virtio.GSOType
		mss  uint16
		want int // segments
	}{
		{"tso4 64k", spec{payload: 65535 - 40, flags: 0x18}, tcp4, 1448, 46},
		{"tso4 fin psh cwr", spec{payload: 5000, flags: 0x80 | 0x18 | 0x01}, tcp4 | virtio.GSOECN, 1448, 4},
		{"tso4 exact multiple", spec{payload: 4 * 1448, flags: 0x10}, tcp4, 1448, 4},
		{"tso4 one byte over", spec{payload: 1449, flags: 0x10}, tcp4, 1448, 2},
		{"tso4 fits one segment", spec{payload: 1000, flags: 0x19}, tcp4, 1448, 1},
		{"tso4 no payload", spec{flags: 0x11}, tcp4, 1448, 1},
		{"tso4 options", spec{ipOpts: 8, tcpOpts: 12, payload: 9000, df: true, flags: 0x10}, tcp4, 1400, 7},
		{"tso4 vlan", spec{vlans: 1, payload: 3000, flags: 0x10}, tcp4, 1448, 3},
		{"tso4 qinq", spec{vlans: 2, payload: 3000, flags: 0x10}, tcp4, 1448, 3},
		{"tso4 padding", spec{payload: 3000, pad: 6, flags: 0x10}, tcp4, 1448, 3},
		{"tso4 odd mss", spec{payload: 10001, flags: 0x10}, tcp4, 999, 11},
		{"tso4 mss 1", spec{payload: 17, flags: 0x18}, tcp4, 1, 17},
		{"tso6 64k", spec{v6: true, payload: 65535 - 20, flags: 0x18}, tcp6, 1440, 46},
		{"tso6 ext headers", spec{v6: true, ext: []byte{0, 60, 43, 60}, payload: 5000, flags: 0x10}, tcp6, 1400, 4},
		{"tso6 vlan ecn", spec{v6: true, vlans: 1, payload: 3000, flags: 0x80 | 0x10}, tcp6 | virtio.GSOECN, 1440, 3},
		{"uso4", spec{udp: true, payload: 5000}, uso, 1200, 5},
		{"uso6", spec{udp: true, v6: true, payload: 5000}, uso, 1200, 5},
		{"uso6 vlan ext", spec{udp: true, v6: true, vlans: 1, ext: []byte{0}, payload: 3000}, uso, 1000, 3},
		{"uso4 fits one", spec{udp: true, payload: 100}, uso, 1200, 1},
		{"ufo4", spec{udp: true, payload: 5000}, ufo, 1480, 4},
		{"ufo4 options df", spec{udp: true, ipOpts: 4, df: true, payload: 3000}, ufo, 1476, 3},
		{"ufo4 mss not a multiple of 8", spec{udp: true, payload: 3000}, ufo, 1001, 4},
		{"ufo4 fits one", spec{udp: true, payload: 1000}, ufo, 1480, 1},
		{"ufo6", spec{udp: true, v6: true, payload: 5000}, ufo, 1448, 4},
		{"ufo6 ext headers", spec{udp: true, v6: true, ext: []byte{0, 43, 60}, payload: 5000}, ufo, 1440, 4},
		{"ufo6 vlan dest opts", spec{udp: true, v6: true, vlans: 2, ext: []byte{60}, payload: 2000}, ufo, 1000, 3},
		{"ufo6 fits one", spec{udp: true, v6: true, payload: 1000}, ufo, 1448, 1},
	}
	for _, tt := range tests {
		for _, needsCsum := range []bool{true, false} {
			name := tt.name
			if !needsCsum {
				name += " without NEEDS_CSUM"
			}
			t.Run(name, func(t *testing.T) {
				frame, h := tt.s.offloaded(tt.gso, tt.mss)
				if !needsCsum {
					frame, _ = tt.s.build()
					h.Flags, h.CsumStart, h.CsumOffset = 0, 0, 0
				}
				orig := bytes.Clone(frame)
				segs := mustSegment(t, frame, &h, 64)
				if !bytes.Equal(frame, orig) {
					t.Fatal("Segment wrote to its input frame")
				}
				if len(segs) != tt.want {
					t.Errorf("%d segments, want %d", len(segs), tt.want)
				}
				if err := checkSegments(frame, &h, segs); err != nil {
					t.Errorf("%s: %v", tt.s, err)
				}
			})
		}
	}
}

// TestSegmentFields spot-checks fields by number, beside checkSegments.
func TestSegmentFields(t *testing.T) {
	frame, h := spec{payload: 3000, flags: 0x80 | 0x18 | 0x01}.offloaded(virtio.GSOTCPv4, 1448)
	segs := mustSegment(t, frame, &h, 4)
	tests := []struct {
		seg             int
		totLen, id      uint16
		seq             uint32
		flags           byte
		ipCsum, tcpCsum uint16
	}{
		{0, 20 + 20 + 1448, testID, testSeq, 0x80 | 0x10, 0, 0},
		{1, 20 + 20 + 1448, testID + 1, testSeq + 1448, 0x10, 0, 0},
		{2, 20 + 20 + 104, testID + 2, testSeq + 2896, 0x18 | 0x01, 0, 0},
	}
	if len(segs) != len(tests) {
		t.Fatalf("%d segments, want %d", len(segs), len(tests))
	}
	for _, tt := range tests {
		s := segs[tt.seg]
		ip, tcp := s[14:34], s[34:54]
		if got := binary.BigEndian.Uint16(ip[2:]); got != tt.totLen {
			t.Errorf("segment %d: total length %d, want %d", tt.seg, got, tt.totLen)
		}
		if got := binary.BigEndian.Uint16(ip[4:]); got != tt.id {
			t.Errorf("segment %d: id %#x, want %#x", tt.seg, got, tt.id)
		}
		if got := binary.BigEndian.Uint32(tcp[4:]); got != tt.seq {
			t.Errorf("segment %d: seq %#x, want %#x", tt.seg, got, tt.seq)
		}
		if got := tcp[13]; got != tt.flags {
			t.Errorf("segment %d: flags %#x, want %#x", tt.seg, got, tt.flags)
		}
		if got := frametest.Checksum(ip, 0); got != 0 {
			t.Errorf("segment %d: ipv4 header sums to %#x, want 0", tt.seg, got)
		}
	}
}

func TestSegmentErrors(t *testing.T) {
	tso, tsoHdr := spec{payload: 3000, flags: 0x10}.offloaded(virtio.GSOTCPv4, 1448)
	ufo6, ufo6Hdr := spec{udp: true, v6: true, payload: 3000}.offloaded(virtio.GSOUDP, 1448)
	routed, routedHdr := spec{v6: true, ext: []byte{43}, routed: true, payload: 3000}.offloaded(virtio.GSOTCPv6, 1448)
	with := func(h virtio.NetHdr, f func(*virtio.NetHdr)) virtio.NetHdr { f(&h); return h }
	patch := func(frame []byte, at int, b ...byte) []byte {
		f := bytes.Clone(frame)
		copy(f[at:], b)
		return f
	}
	tests := []struct {
		name  string
		frame []byte
		h     virtio.NetHdr
		nbuf  int
		size  int
		want  error
	}{
		{"gso none", tso, with(tsoHdr, func(h *virtio.NetHdr) { h.GSOType = virtio.GSONone }), 4, 2000, ErrBadHeader},
		{"gso unknown", tso, with(tsoHdr, func(h *virtio.NetHdr) { h.GSOType = 2 }), 4, 2000, ErrBadHeader},
		{"gso_size 0", tso, with(tsoHdr, func(h *virtio.NetHdr) { h.GSOSize = 0 }), 4, 2000, ErrBadHeader},
		{"too few buffers", tso, tsoHdr, 2, 2000, ErrShortBuffer},
		{"buffers too small", tso, tsoHdr, 4, 1500, ErrShortBuffer},
		{"runt", tso[:13], tsoHdr, 4, 2000, ErrMalformed},
		{"arp", patch(tso, 12, 0x08, 0x06), tsoHdr, 4, 2000, ErrMalformed},
		{"three vlan tags", patch(tso, 12, 0x81, 0, 0, 1, 0x81, 0, 0, 1, 0x81, 0), tsoHdr, 4, 2000, ErrMalformed},
		{"tcpv6 on ipv4", tso, with(tsoHdr, func(h *virtio.NetHdr) { h.GSOType = virtio.GSOTCPv6 }), 4, 2000, ErrMalformed},
		{"ip version", patch(tso, 14, 0x65), tsoHdr, 4, 2000, ErrMalformed},
		{"ihl 4", patch(tso, 14, 0x44), tsoHdr, 4, 2000, ErrMalformed},
		{"total length past frame", patch(tso, 16, 0xff, 0xff), tsoHdr, 4, 2000, ErrMalformed},
		{"fragment", patch(tso, 20, 0x20, 0), tsoHdr, 4, 2000, ErrMalformed},
		{"udp under tso", patch(tso, 23, 17), tsoHdr, 4, 2000, ErrMalformed},
		{"csum_start off", tso, with(tsoHdr, func(h *virtio.NetHdr) { h.CsumStart = 38 }), 4, 2000, ErrMalformed},
		{"tcp data offset 4", patch(tso, 46, 0x40), tsoHdr, 4, 2000, ErrMalformed},
		{"tcp data offset past end", patch(patch(tso[:60], 16, 0, 46), 46, 0xf0), tsoHdr, 4, 2000, ErrMalformed},
		{"ipv6 jumbogram", patch(ufo6, 18, 0, 0), ufo6Hdr, 4, 2000, ErrUnsupported},
		{"ipv6 payload past frame", patch(ufo6, 18, 0xff, 0xff), ufo6Hdr, 4, 2000, ErrMalformed},
		{"ipv6 fragment header", patch(ufo6, 20, 44), with(ufo6Hdr, func(h *virtio.NetHdr) { h.Flags = 0 }), 4, 2000, ErrMalformed},
		{"ipv6 routing with segments left", routed, routedHdr, 4, 2000, ErrUnsupported},
		{"ufo gso_size below 8", ufo6, with(ufo6Hdr, func(h *virtio.NetHdr) { h.GSOSize = 7 }), 4, 2000, ErrBadHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, guards := segmentBufs(tt.nbuf, tt.size)
			sizes := make([]int, tt.nbuf)
			n, err := Segment(tt.frame, &tt.h, out, sizes)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Segment = %d, %v; want %v", n, err, tt.want)
			}
			if n != 0 {
				t.Errorf("Segment = %d segments with an error, want 0", n)
			}
			if err := guards(); err != nil {
				t.Error(err)
			}
			for i, b := range out {
				if !bytes.Equal(b, bytes.Repeat([]byte{0xa5}, len(b))) {
					t.Errorf("buffer %d written before the error", i)
				}
			}
			t.Log(err)
		})
	}
}

// TestSegmentRoomFirst gives room for every segment but the last: nothing
// may be written.
func TestSegmentRoomFirst(t *testing.T) {
	frame, h := spec{payload: 3000, flags: 0x10}.offloaded(virtio.GSOTCPv4, 1448)
	out, guards := segmentBufs(3, 54+1448)
	out[2] = out[2][:54+103]
	sizes := make([]int, 3)
	n, err := Segment(frame, &h, out, sizes)
	if !errors.Is(err, ErrShortBuffer) || n != 0 {
		t.Fatalf("Segment = %d, %v; want 0, %v", n, err, ErrShortBuffer)
	}
	if err := guards(); err != nil {
		t.Error(err)
	}
	for i, b := range out {
		if !bytes.Equal(b, bytes.Repeat([]byte{0xa5}, len(b))) {
			t.Errorf("buffer %d written before the error", i)
		}
	}
}

func TestSegmentAllocs(t *testing.T) {
	for _, s := range []struct {
		s   spec
		gso virtio.GSOType
	}{
		{spec{payload: 60000, flags: 0x10}, virtio.GSOTCPv4},
		{spec{udp: true, v6: true, payload: 60000}, virtio.GSOUDPL4},
		{spec{udp: true, v6: true, payload: 60000}, virtio.GSOUDP},
	} {
		frame, h := s.s.offloaded(s.gso, 1400)
		out, _ := segmentBufs(64, 1600)
		sizes := make([]int, 64)
		if a := testing.AllocsPerRun(100, func() {
			if _, err := Segment(frame, &h, out, sizes); err != nil {
				t.Fatal(err)
			}
		}); a != 0 {
			t.Errorf("%s %s: %v allocations per Segment, want 0", s.s, s.gso, a)
		}
	}
}
