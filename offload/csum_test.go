package offload

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/virtio"
)

func TestChecksum(t *testing.T) {
	tests := []struct {
		name    string
		b       []byte
		initial uint16
		want    uint16
	}{
		{"empty", nil, 0, 0xffff},
		{"rfc 1071 §3", []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, 0, ^uint16(0xddf2)},
		{"ipv4 header", []byte{0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7}, 0, 0xb861},
		{"odd length", []byte{0x12, 0x34, 0x56}, 0, ^uint16(0x1234 + 0x5600)},
		{"one byte", []byte{0xab}, 0, ^uint16(0xab00)},
		{"initial", []byte{0x00, 0x01}, 0x1000, ^uint16(0x1001)},
		{"carry", []byte{0xff, 0xff, 0x00, 0x02}, 0, ^uint16(0x0002)},
		{"all ones", bytes.Repeat([]byte{0xff}, 1000), 0, 0},
		{"all ones, 64 KiB", bytes.Repeat([]byte{0xff}, 65536), 0xffff, 0},
		{"zero data, initial", make([]byte, 100), 0x1234, ^uint16(0x1234)},
	}
	for _, tt := range tests {
		if got := Checksum(tt.b, tt.initial); got != tt.want {
			t.Errorf("%s: Checksum = %#04x, want %#04x", tt.name, got, tt.want)
		}
		if got := frametest.Checksum(tt.b, tt.initial); got != tt.want {
			t.Errorf("%s: the reference says %#04x, want %#04x", tt.name, got, tt.want)
		}
	}
}

// TestChecksumLengths covers every tail length and alignment against the
// reference.
func TestChecksumLengths(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for off := range 8 {
		for n := 0; off+n <= len(buf); n += 1 + n/16 {
			b := buf[off : off+n]
			init := uint16(r.Uint32())
			if got, want := Checksum(b, init), frametest.Checksum(b, init); got != want {
				t.Fatalf("Checksum(buf[%d:%d], %#x) = %#04x, want %#04x", off, off+n, init, got, want)
			}
		}
	}
}

func TestPartialCsum(t *testing.T) {
	for _, s := range []spec{
		{payload: 100, flags: 0x18},
		{payload: 0, flags: 0x10},
		{payload: 1, flags: 0x18},
		{udp: true, payload: 1401},
		{udp: true, v6: true, vlans: 1, payload: 1000},
		{v6: true, ext: []byte{0, 60}, tcpOpts: 12, payload: 777},
		{udp: true, payload: 18, pad: 0}, // a 60-byte frame
	} {
		full, l4 := s.build()
		frame, h := s.offloaded(virtio.GSONone, 0)
		off, c, err := PartialCsum(frame, &h)
		if err != nil {
			t.Fatalf("%s: PartialCsum: %v", s, err)
		}
		if want := int(h.CsumStart + h.CsumOffset); off != want {
			t.Errorf("%s: offset %d, want %d", s, off, want)
		}
		if want := binary.BigEndian.Uint16(full[off:]); c != want {
			t.Errorf("%s: checksum %#04x, want %#04x", s, c, want)
		}
		vec := [][]byte{frame[:l4-1], frame[l4-1 : l4+3], frame[l4+3 : l4+3], frame[l4+3:]}
		if voff, vc, err := PartialCsumVec(vec, &h); err != nil || voff != off || vc != c {
			t.Errorf("%s: PartialCsumVec = %d, %#04x, %v; want %d, %#04x", s, voff, vc, err, off, c)
		}
		orig := bytes.Clone(frame)
		if err := CompleteCsum(frame, &h); err != nil {
			t.Fatalf("%s: CompleteCsum: %v", s, err)
		}
		binary.BigEndian.PutUint16(orig[off:], c)
		if !bytes.Equal(frame, orig) {
			t.Errorf("%s: CompleteCsum changed more than the checksum field", s)
		}
	}
}

// TestPartialCsumZero checks that a checksum that comes out 0 is stored as
// 0xffff, which UDP reads as a checksum and not as none.
func TestPartialCsumZero(t *testing.T) {
	s := spec{udp: true, payload: 64}
	frame, h := s.offloaded(virtio.GSONone, 0)
	_, c, err := PartialCsum(frame, &h)
	if err != nil {
		t.Fatal(err)
	}
	// Adding c to a word of the data makes the sum all ones.
	w := binary.BigEndian.Uint16(frame[len(frame)-2:])
	binary.BigEndian.PutUint16(frame[len(frame)-2:], frametest.Fold(uint64(w)+uint64(c)))
	if _, c, err := PartialCsum(frame, &h); err != nil || c != 0xffff {
		t.Errorf("PartialCsum = %#04x, %v; want 0xffff", c, err)
	}
	if got := Checksum(frame[h.CsumStart:], 0); got != 0 {
		t.Errorf("Checksum = %#04x, want 0", got)
	}
}

func TestPartialCsumVec(t *testing.T) {
	frame, h := spec{udp: true, v6: true, payload: 301}.offloaded(virtio.GSONone, 0)
	_, want, err := PartialCsum(frame, &h)
	if err != nil {
		t.Fatal(err)
	}
	// Every split into three pieces.
	for i := 0; i <= len(frame); i += 1 + i/64 {
		for j := i; j <= len(frame); j += 1 + j/32 {
			vec := [][]byte{frame[:i], frame[i:j], frame[j:]}
			if _, got, err := PartialCsumVec(vec, &h); err != nil || got != want {
				t.Fatalf("split at %d and %d: %#04x, %v; want %#04x", i, j, got, err, want)
			}
		}
	}
}

func TestPartialCsumErrors(t *testing.T) {
	frame, h := spec{udp: true, payload: 10}.offloaded(virtio.GSONone, 0)
	tests := []struct {
		name  string
		frame []byte
		h     virtio.NetHdr
		want  error
	}{
		{"no NEEDS_CSUM", frame, virtio.NetHdr{CsumStart: 34, CsumOffset: 6}, ErrBadHeader},
		{"field past the end", frame[:41], h, ErrMalformed},
		{"start past the end", frame, virtio.NetHdr{Flags: virtio.NeedsCsum, CsumStart: 0xffff, CsumOffset: 0xffff}, ErrMalformed},
	}
	for _, tt := range tests {
		if _, _, err := PartialCsum(tt.frame, &tt.h); !errors.Is(err, tt.want) {
			t.Errorf("%s: PartialCsum: %v, want %v", tt.name, err, tt.want)
		}
		if _, _, err := PartialCsumVec([][]byte{tt.frame}, &tt.h); !errors.Is(err, tt.want) {
			t.Errorf("%s: PartialCsumVec: %v, want %v", tt.name, err, tt.want)
		}
		if err := CompleteCsum(tt.frame, &tt.h); !errors.Is(err, tt.want) {
			t.Errorf("%s: CompleteCsum: %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestPartialCsumAllocs(t *testing.T) {
	frame, h := spec{payload: 1448, flags: 0x10}.offloaded(virtio.GSONone, 0)
	vec := [][]byte{frame[:100], frame[100:]}
	if a := testing.AllocsPerRun(1000, func() {
		if _, _, err := PartialCsum(frame, &h); err != nil {
			t.Fatal(err)
		}
		if _, _, err := PartialCsumVec(vec, &h); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("%v allocations per PartialCsum and PartialCsumVec, want 0", a)
	}
}
