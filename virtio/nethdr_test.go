package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// A TSOv4 header for a 14+20+20-byte header stack, MSS 1448, as Linux sends it.
var (
	tsoHdr = NetHdr{
		Flags: NeedsCsum, GSOType: GSOTCPv4 | GSOECN, HdrLen: 54, GSOSize: 1448,
		CsumStart: 34, CsumOffset: 16, NumBuffers: 3, HashValue: 0xdeadbeef, HashReport: HashReportTCPv4,
	}
	tsoLE = []byte{
		0x01, 0x81, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 3, 0,
		0xef, 0xbe, 0xad, 0xde, 2, 0, 0, 0,
	}
	tsoBE = []byte{0x01, 0x81, 0, 54, 0x05, 0xa8, 0, 34, 0, 16, 0, 3}
)

func TestDecodeNetHdr(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		size int
		e    Endian
		want NetHdr
	}{
		{"legacy", tsoLE, HdrLenLegacy, LittleEndian, NetHdr{
			Flags: NeedsCsum, GSOType: GSOTCPv4 | GSOECN, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}},
		{"v1", tsoLE, HdrLenV1, LittleEndian, NetHdr{
			Flags: NeedsCsum, GSOType: GSOTCPv4 | GSOECN, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16,
			NumBuffers: 3}},
		{"hash", tsoLE, HdrLenHash, LittleEndian, tsoHdr},
		{"legacy big-endian", tsoBE, HdrLenLegacy, BigEndian, NetHdr{
			Flags: NeedsCsum, GSOType: GSOTCPv4 | GSOECN, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}},
		{"mrg_rxbuf big-endian", tsoBE, HdrLenV1, BigEndian, NetHdr{
			Flags: NeedsCsum, GSOType: GSOTCPv4 | GSOECN, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16,
			NumBuffers: 3}},
		{"padding ignored", append(append([]byte{}, tsoLE[:18]...), 0xff, 0xff), HdrLenHash, LittleEndian, tsoHdr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeNetHdr(tt.b, tt.size, tt.e)
			if err != nil {
				t.Fatalf("DecodeNetHdr: %v", err)
			}
			if got != tt.want {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
			reused := NetHdr{NumBuffers: 9, HashValue: 9, HashReport: 9}
			if err := reused.Decode(tt.b, tt.size, tt.e); err != nil || reused != tt.want {
				t.Errorf("Decode into a used header: got %v, %v; want %v", reused, err, tt.want)
			}
		})
	}
}

func TestNetHdrEncode(t *testing.T) {
	tests := []struct {
		name string
		size int
		e    Endian
		want []byte
	}{
		{"legacy", HdrLenLegacy, LittleEndian, tsoLE[:10]},
		{"v1", HdrLenV1, LittleEndian, tsoLE[:12]},
		{"hash", HdrLenHash, LittleEndian, tsoLE},
		{"legacy big-endian", HdrLenLegacy, BigEndian, tsoBE[:10]},
		{"mrg_rxbuf big-endian", HdrLenV1, BigEndian, tsoBE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := bytes.Repeat([]byte{0xaa}, tt.size+4)
			if err := tsoHdr.Encode(b, tt.size, tt.e); err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if !bytes.Equal(b[:tt.size], tt.want) {
				t.Errorf("got  % x\nwant % x", b[:tt.size], tt.want)
			}
			if want := bytes.Repeat([]byte{0xaa}, 4); !bytes.Equal(b[tt.size:], want) {
				t.Errorf("bytes past the header: got % x, want % x", b[tt.size:], want)
			}
		})
	}
}

func TestNetHdrErrors(t *testing.T) {
	tests := []struct {
		name    string
		n, size int
		e       Endian
		is      error
		msg     string
	}{
		{"short legacy", 9, HdrLenLegacy, LittleEndian, ErrShortBuffer,
			"net header of 10 bytes in a buffer of 9: buffer too short"},
		{"short v1", 10, HdrLenV1, BigEndian, ErrShortBuffer,
			"net header of 12 bytes in a buffer of 10: buffer too short"},
		{"short hash", 12, HdrLenHash, LittleEndian, ErrShortBuffer,
			"net header of 20 bytes in a buffer of 12: buffer too short"},
		{"empty", 0, HdrLenV1, LittleEndian, ErrShortBuffer,
			"net header of 12 bytes in a buffer of 0: buffer too short"},
		{"size 11", 64, 11, LittleEndian, ErrHdrSize,
			"net header of 11 bytes, want 10, 12 or 20: bad net header size"},
		{"size 0", 64, 0, LittleEndian, ErrHdrSize,
			"net header of 0 bytes, want 10, 12 or 20: bad net header size"},
		{"size -1", 64, -1, BigEndian, ErrHdrSize,
			"net header of -1 bytes, want 10, 12 or 20: bad net header size"},
		{"hash big-endian", 64, HdrLenHash, BigEndian, ErrHdrSize,
			"net header of 20 bytes in big-endian: no such layout: bad net header size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := make([]byte, tt.n)
			_, derr := DecodeNetHdr(b, tt.size, tt.e)
			var h NetHdr
			eerr := h.Encode(b, tt.size, tt.e)
			for _, err := range []error{derr, eerr} {
				if !errors.Is(err, tt.is) {
					t.Fatalf("got %v, want errors.Is %v", err, tt.is)
				}
				if err.Error() != tt.msg {
					t.Errorf("got %q, want %q", err.Error(), tt.msg)
				}
			}
			if !bytes.Equal(b, make([]byte, tt.n)) {
				t.Errorf("failed Encode wrote % x", b)
			}
			h = tsoHdr
			if err := h.Decode(b, tt.size, tt.e); !errors.Is(err, tt.is) || h != tsoHdr {
				t.Errorf("failed Decode: got %v and %v, want %v and the header untouched", err, h, tt.is)
			}
		})
	}
}

func TestPutNumBuffers(t *testing.T) {
	tests := []struct {
		name string
		n    int
		e    Endian
		want []byte
	}{
		{"v1", HdrLenV1, LittleEndian, []byte{0x34, 0x12}},
		{"hash", HdrLenHash, LittleEndian, []byte{0x34, 0x12}},
		{"big-endian", HdrLenV1, BigEndian, []byte{0x12, 0x34}},
	}
	for _, tt := range tests {
		b := bytes.Repeat([]byte{0xaa}, tt.n)
		if err := PutNumBuffers(b, 0x1234, tt.e); err != nil {
			t.Fatalf("%s: PutNumBuffers: %v", tt.name, err)
		}
		want := bytes.Repeat([]byte{0xaa}, tt.n)
		copy(want[10:], tt.want)
		if !bytes.Equal(b, want) {
			t.Errorf("%s: got % x, want % x", tt.name, b, want)
		}
	}
	err := PutNumBuffers(make([]byte, HdrLenLegacy), 1, LittleEndian)
	if want := "num_buffers ends at byte 12 of a 10-byte buffer: buffer too short"; err == nil || err.Error() != want {
		t.Errorf("short buffer: got %v, want %q", err, want)
	}
}

func TestHdrLenFor(t *testing.T) {
	tests := []struct {
		f    Features
		want int
	}{
		{0, HdrLenLegacy},
		{NetFCsum | NetFGuestCsum, HdrLenLegacy},
		{NetFMrgRxbuf, HdrLenV1},
		{FVersion1, HdrLenV1},
		{FVersion1 | NetFMrgRxbuf, HdrLenV1},
		{FVersion1 | NetFCtrlVQ | NetFHashReport, HdrLenHash},
		{FVersion1 | NetFMrgRxbuf | NetFCtrlVQ | NetFHashReport, HdrLenHash},
	}
	for _, tt := range tests {
		if got := HdrLenFor(tt.f); got != tt.want {
			t.Errorf("HdrLenFor(%s) = %d, want %d", tt.f, got, tt.want)
		}
	}
}

func TestEndianFor(t *testing.T) {
	tests := []struct {
		f        Features
		guestBig bool
		want     Endian
	}{
		{0, false, LittleEndian},
		{0, true, BigEndian},
		{NetFMrgRxbuf, true, BigEndian},
		{FVersion1, false, LittleEndian},
		{FVersion1, true, LittleEndian},
	}
	for _, tt := range tests {
		if got := EndianFor(tt.f, tt.guestBig); got != tt.want {
			t.Errorf("EndianFor(%s, %v) = %s, want %s", tt.f, tt.guestBig, got, tt.want)
		}
	}
}

func TestNetHdrStrings(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{HdrFlags(0).String(), "0"},
		{NeedsCsum.String(), "NEEDS_CSUM"},
		{(NeedsCsum | DataValid | RSCInfo).String(), "NEEDS_CSUM|DATA_VALID|RSC_INFO"},
		{(DataValid | 0x30).String(), "DATA_VALID|0x30"},
		{GSONone.String(), "NONE"},
		{GSOTCPv4.String(), "TCPV4"},
		{GSOUDP.String(), "UDP"},
		{GSOTCPv6.String(), "TCPV6"},
		{GSOUDPL4.String(), "UDP_L4"},
		{(GSOTCPv6 | GSOECN).String(), "TCPV6|ECN"},
		{GSOECN.String(), "NONE|ECN"},
		{GSOType(2).String(), "0x2"},
		{HashReportNone.String(), "NONE"},
		{HashReportUDPv6Ex.String(), "UDPv6_EX"},
		{HashReport(10).String(), "HashReport(10)"},
		{LittleEndian.String(), "little-endian"},
		{BigEndian.String(), "big-endian"},
		{tsoHdr.String(), "flags=NEEDS_CSUM gso=TCPV4|ECN hdr_len=54 gso_size=1448 csum_start=34 csum_offset=16 " +
			"num_buffers=3 hash=0xdeadbeef hash_report=TCPv4"},
		{NetHdr{}.String(), "flags=0 gso=NONE hdr_len=0 gso_size=0 csum_start=0 csum_offset=0 num_buffers=0"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

var hdrCases = []struct {
	name string
	size int
	e    Endian
}{
	{"legacy", HdrLenLegacy, LittleEndian},
	{"legacy-be", HdrLenLegacy, BigEndian},
	{"v1", HdrLenV1, LittleEndian},
	{"v1-be", HdrLenV1, BigEndian},
	{"hash", HdrLenHash, LittleEndian},
}

func TestNetHdrZeroAllocs(t *testing.T) {
	b := make([]byte, HdrLenHash)
	for _, c := range hdrCases {
		allocs := testing.AllocsPerRun(1000, func() {
			h, err := DecodeNetHdr(tsoLE, c.size, c.e)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.Decode(tsoBE, HdrLenV1, BigEndian); err != nil {
				t.Fatal(err)
			}
			if err := h.Encode(b, c.size, c.e); err != nil {
				t.Fatal(err)
			}
			if err := PutNumBuffers(b, 2, c.e); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per decode+encode+PutNumBuffers, want 0", c.name, allocs)
		}
	}
}

var sinkHdr NetHdr

// BenchmarkNetHdr measures the per-packet header work: DecodeNetHdr returns
// a copy, (*NetHdr).Decode fills a header the caller keeps per queue.
func BenchmarkNetHdr(b *testing.B) {
	buf := make([]byte, HdrLenHash)
	for _, c := range hdrCases {
		b.Run("DecodeNetHdr/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				h, err := DecodeNetHdr(tsoLE, c.size, c.e)
				if err != nil {
					b.Fatal(err)
				}
				sinkHdr = h
			}
		})
		b.Run("Decode/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			var h NetHdr
			for b.Loop() {
				if err := h.Decode(tsoLE, c.size, c.e); err != nil {
					b.Fatal(err)
				}
			}
			sinkHdr = h
		})
		b.Run("Encode/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := tsoHdr.Encode(buf, c.size, c.e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func FuzzNetHdr(f *testing.F) {
	f.Add(tsoLE)
	f.Add(tsoBE)
	f.Add([]byte{})
	f.Add(make([]byte, 11))
	f.Add(bytes.Repeat([]byte{0xff}, 24))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, c := range []struct {
			size int
			e    Endian
		}{
			{HdrLenLegacy, LittleEndian}, {HdrLenLegacy, BigEndian},
			{HdrLenV1, LittleEndian}, {HdrLenV1, BigEndian},
			{HdrLenHash, LittleEndian}, {HdrLenHash, BigEndian},
		} {
			h, err := DecodeNetHdr(data, c.size, c.e)
			switch {
			case c.size == HdrLenHash && c.e == BigEndian:
				if !errors.Is(err, ErrHdrSize) {
					t.Fatalf("size %d %s: got %v, want ErrHdrSize", c.size, c.e, err)
				}
				continue
			case len(data) < c.size:
				if !errors.Is(err, ErrShortBuffer) {
					t.Fatalf("size %d %s, %d bytes: got %v, want ErrShortBuffer", c.size, c.e, len(data), err)
				}
				continue
			case err != nil:
				t.Fatalf("size %d %s, %d bytes: %v", c.size, c.e, len(data), err)
			}
			if c.size < HdrLenV1 && h.NumBuffers != 0 {
				t.Errorf("size %d decoded num_buffers %d", c.size, h.NumBuffers)
			}
			if c.size < HdrLenHash && (h.HashValue != 0 || h.HashReport != 0) {
				t.Errorf("size %d decoded hash %#x report %d", c.size, h.HashValue, h.HashReport)
			}

			// Encoding what was decoded gives back the same bytes, padding
			// zeroed, and touches nothing past the header.
			buf := bytes.Repeat([]byte{0x5a}, c.size+2)
			if err := h.Encode(buf, c.size, c.e); err != nil {
				t.Fatalf("size %d %s: Encode: %v", c.size, c.e, err)
			}
			want := append([]byte{}, data[:c.size]...)
			if c.size == HdrLenHash {
				want[18], want[19] = 0, 0
			}
			if !bytes.Equal(buf[:c.size], want) {
				t.Fatalf("size %d %s: round trip\n got % x\nwant % x", c.size, c.e, buf[:c.size], want)
			}
			if buf[c.size] != 0x5a || buf[c.size+1] != 0x5a {
				t.Fatalf("size %d %s: Encode wrote past the header: % x", c.size, c.e, buf[c.size:])
			}

			// Both byte orders read the same bytes, swapped.
			if c.size < HdrLenHash {
				other, err := DecodeNetHdr(data, c.size, !c.e)
				if err != nil {
					t.Fatalf("size %d %s: %v", c.size, !c.e, err)
				}
				sw := func(v uint16) uint16 { return v<<8 | v>>8 }
				if other.Flags != h.Flags || other.GSOType != h.GSOType || other.HdrLen != sw(h.HdrLen) ||
					other.GSOSize != sw(h.GSOSize) || other.CsumStart != sw(h.CsumStart) ||
					other.CsumOffset != sw(h.CsumOffset) || other.NumBuffers != sw(h.NumBuffers) {
					t.Fatalf("size %d: %s %v and %s %v are not byte swaps", c.size, c.e, h, !c.e, other)
				}
			}

			if c.size >= HdrLenV1 {
				n := c.e.uint16(data[4:]) // any value the fuzzer chose
				if err := PutNumBuffers(buf, n, c.e); err != nil {
					t.Fatalf("PutNumBuffers: %v", err)
				}
				got, err := DecodeNetHdr(buf, c.size, c.e)
				if err != nil {
					t.Fatal(err)
				}
				h.NumBuffers = n
				if got != h {
					t.Fatalf("after PutNumBuffers(%d): got %v, want %v", n, got, h)
				}
				if le := binary.LittleEndian.Uint16(buf[10:]); c.e == LittleEndian && le != n {
					t.Fatalf("num_buffers bytes % x, want %d little-endian", buf[10:12], n)
				}
			}
		}
	})
}
