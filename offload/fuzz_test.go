package offload

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/virtio"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpora in testdata/fuzz from the seeds below")

// writeSeeds writes one corpus file per seed under testdata/fuzz/name, in
// the format go test -fuzz reads.
func writeSeeds(t *testing.T, name string, seeds map[string][]any) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for file, args := range seeds {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for _, a := range args {
			switch v := a.(type) {
			case []byte:
				fmt.Fprintf(&b, "[]byte(%q)\n", v)
			case uint8:
				fmt.Fprintf(&b, "byte(%q)\n", v)
			default:
				fmt.Fprintf(&b, "%T(%v)\n", v, v)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWriteSeeds(t *testing.T) {
	if !*updateCorpus {
		t.Skip("rewrites testdata/fuzz only with -update-corpus")
	}
	writeSeeds(t, "FuzzValidateTX", validateSeeds())
	writeSeeds(t, "FuzzChecksum", checksumSeeds())
	writeSeeds(t, "FuzzSegment", segmentSeeds())
}

func validateSeeds() map[string][]any {
	all := uint64(HostFeatures | virtio.FVersion1)
	seed := func(h virtio.NetHdr, frameLen uint32, acked uint64) []any {
		return []any{uint8(h.Flags), uint8(h.GSOType), h.HdrLen, h.GSOSize, h.CsumStart, h.CsumOffset, frameLen, acked}
	}
	return map[string][]any{
		"plain":      seed(virtio.NetHdr{}, 60, 0),
		"csum":       seed(virtio.NetHdr{Flags: virtio.NeedsCsum, CsumStart: 34, CsumOffset: 6}, 60, all),
		"tso4":       seed(virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}, 65549, all),
		"tso6-ecn":   seed(virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOTCPv6 | virtio.GSOECN, HdrLen: 74, GSOSize: 1440, CsumStart: 54, CsumOffset: 16}, 65549, all),
		"uso":        seed(virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOUDPL4, HdrLen: 42, GSOSize: 1472, CsumStart: 34, CsumOffset: 6}, 60000, all),
		"ufo":        seed(virtio.NetHdr{GSOType: virtio.GSOUDP, GSOSize: 1480}, 9000, all),
		"bad-offset": seed(virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOTCPv4, GSOSize: 1448, CsumStart: 34, CsumOffset: 6}, 9000, all),
		"huge":       seed(virtio.NetHdr{Flags: 0xff, GSOType: 0xff, HdrLen: 0xffff, GSOSize: 0xffff, CsumStart: 0xffff, CsumOffset: 0xffff}, 0xffffffff, ^uint64(0)),
	}
}

func checksumSeeds() map[string][]any {
	frame, _ := spec{payload: 100, flags: 0x18}.build()
	return map[string][]any{
		"empty":    {[]byte{}, uint16(0), uint16(0)},
		"rfc1071":  {[]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, uint16(0), uint16(3)},
		"odd":      {[]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, uint16(0xffff), uint16(5)},
		"all-ones": {bytes.Repeat([]byte{0xff}, 200), uint16(0xffff), uint16(64)},
		"frame":    {frame, uint16(0x1234), uint16(35)},
	}
}

func segmentSeeds() map[string][]any {
	seeds := map[string][]any{}
	add := func(name string, s spec, gso virtio.GSOType, mss uint16, needsCsum bool) {
		frame, h := s.offloaded(gso, mss)
		if !needsCsum {
			frame, _ = s.build()
			h.Flags, h.CsumStart, h.CsumOffset = 0, 0, 0
		}
		seeds[name] = []any{frame, uint8(h.Flags), uint8(h.GSOType), h.GSOSize, h.CsumStart, h.CsumOffset, uint8(16), uint16(1600)}
	}
	add("tso4", spec{payload: 2000, flags: 0x80 | 0x18 | 0x01}, virtio.GSOTCPv4|virtio.GSOECN, 500, true)
	add("tso4-opts-vlan", spec{vlans: 1, ipOpts: 4, tcpOpts: 12, payload: 1000, df: true, flags: 0x10}, virtio.GSOTCPv4, 300, false)
	add("tso6-ext", spec{v6: true, ext: []byte{0, 60}, payload: 1200, flags: 0x18}, virtio.GSOTCPv6, 400, true)
	add("tso6-qinq", spec{v6: true, vlans: 2, payload: 900, flags: 0x10, pad: 4}, virtio.GSOTCPv6, 256, false)
	add("uso4", spec{udp: true, payload: 1500}, virtio.GSOUDPL4, 400, true)
	add("uso6-ext", spec{udp: true, v6: true, ext: []byte{0}, payload: 1000}, virtio.GSOUDPL4, 333, true)
	add("ufo4", spec{udp: true, payload: 1500, df: true}, virtio.GSOUDP, 400, true)
	add("ufo4-nocsum", spec{udp: true, ipOpts: 8, payload: 1000}, virtio.GSOUDP, 301, false)
	add("ufo6-ext", spec{udp: true, v6: true, ext: []byte{0, 43, 60}, payload: 1500}, virtio.GSOUDP, 400, true)
	add("ufo6-nocsum", spec{udp: true, v6: true, vlans: 1, payload: 700}, virtio.GSOUDP, 200, false)
	add("one-segment", spec{payload: 100, flags: 0x18}, virtio.GSOTCPv4, 1448, true)
	return seeds
}

// FuzzValidateTX checks that ValidateTX never panics, that every error
// carries a reason, and that what it accepts keeps the rules it states,
// written out here independently.
func FuzzValidateTX(f *testing.F) {
	f.Fuzz(func(t *testing.T, flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset uint16, frameLen uint32, acked uint64) {
		h := virtio.NetHdr{Flags: virtio.HdrFlags(flags), GSOType: virtio.GSOType(gsoType), HdrLen: hdrLen,
			GSOSize: gsoSize, CsumStart: csumStart, CsumOffset: csumOffset}
		n := int(frameLen % (1 << 20))
		f := virtio.Features(acked)
		err := ValidateTX(&h, n, f)
		if err != nil {
			r := ReasonOf(err)
			if r == ReasonNone || r >= NumReasons || !errors.Is(err, ErrBadHeader) || err.Error() == "" {
				t.Fatalf("ValidateTX(%s, %d, %s) = %v: reason %s", h, n, f, err, r)
			}
			if err2 := ValidateTX(&h, n, f); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("ValidateTX is not deterministic: %v, then %v", err, err2)
			}
			return
		}
		fail := func(rule string) { t.Fatalf("ValidateTX(%s, %d, %s) accepted it, but %s", h, n, f, rule) }
		if n < 14 {
			fail("the frame has no ethernet header")
		}
		start, end := int(csumStart), int(csumStart)+int(csumOffset)+2
		needsCsum := h.Flags&virtio.NeedsCsum != 0
		if needsCsum && (!f.Has(virtio.NetFCsum) || end > n || start < 20) {
			fail("the checksum is not negotiated or does not fit")
		}
		eff := int(hdrLen)
		if needsCsum {
			eff = max(eff, end)
		}
		if eff > n || (eff != 0 && eff < 14) {
			fail("hdr_len is out of range")
		}
		if h.GSOType == virtio.GSONone {
			return
		}
		if gsoSize == 0 || gsoSize == 0xffff {
			fail("gso_size is 0 or GSO_BY_FRAGS")
		}
		if h.GSOType&virtio.GSOECN != 0 && !f.Has(virtio.NetFHostECN) {
			fail("ECN is not negotiated")
		}
		need := map[virtio.GSOType]virtio.Features{
			virtio.GSOTCPv4: virtio.NetFHostTSO4, virtio.GSOTCPv6: virtio.NetFHostTSO6,
			virtio.GSOUDP: virtio.NetFHostUFO, virtio.GSOUDPL4: virtio.NetFHostUSO,
		}[h.GSOType&^virtio.GSOECN]
		if need == 0 || !f.Has(need) {
			fail("the GSO type is unknown or not negotiated")
		}
		switch h.GSOType &^ virtio.GSOECN {
		case virtio.GSOTCPv4, virtio.GSOTCPv6:
			if needsCsum && (csumOffset != 16 || start+20 > n) {
				fail("the TCP checksum field or header is wrong")
			}
		case virtio.GSOUDPL4:
			if !needsCsum || csumOffset != 6 || h.GSOType&virtio.GSOECN != 0 || n-start-8 > int(gsoSize)*128 {
				fail("USO needs NEEDS_CSUM at the UDP checksum, no ECN, at most 128 segments")
			}
		}
	})
}

// FuzzChecksum compares Checksum with the word-at-a-time reference
// (frametest.Checksum), and PartialCsum with PartialCsumVec over the input
// cut in two.
func FuzzChecksum(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte, initial, cut uint16) {
		if got, want := Checksum(b, initial), frametest.Checksum(b, initial); got != want {
			t.Fatalf("Checksum(% x, %#x) = %#04x, want %#04x", b, initial, got, want)
		}
		if len(b) < 2 {
			return
		}
		start := int(initial) % (len(b) - 1)
		h := virtio.NetHdr{Flags: virtio.NeedsCsum, CsumStart: uint16(start)}
		off, c, err := PartialCsum(b, &h)
		if err != nil || off != start {
			t.Fatalf("PartialCsum at %d of %d bytes: %d, %v", start, len(b), off, err)
		}
		want := frametest.Checksum(b[start:], 0)
		if want == 0 {
			want = 0xffff
		}
		if c != want {
			t.Fatalf("PartialCsum at %d = %#04x, want %#04x", start, c, want)
		}
		at := int(cut) % (len(b) + 1)
		if _, vc, err := PartialCsumVec([][]byte{b[:at], b[at:]}, &h); err != nil || vc != c {
			t.Fatalf("PartialCsumVec cut at %d = %#04x, %v; want %#04x", at, vc, err, c)
		}
	})
}

// FuzzSegment checks Segment on any frame and header: no panic, no write
// outside the buffers or into the frame, none at all on error, and on
// success segments that checkSegments, which parses them with code of its
// own, finds correct: checksums hold, fields follow, payloads add up.
func FuzzSegment(f *testing.F) {
	f.Fuzz(func(t *testing.T, frame []byte, flags, gsoType uint8, gsoSize, csumStart, csumOffset uint16, nbuf uint8, bufSize uint16) {
		h := virtio.NetHdr{Flags: virtio.HdrFlags(flags), GSOType: virtio.GSOType(gsoType), GSOSize: gsoSize,
			CsumStart: csumStart, CsumOffset: csumOffset}
		size := int(bufSize) % 9300
		out, guards := segmentBufs(int(nbuf%64), size)
		sizes := make([]int, len(out)+int(nbuf%3)) // at times more sizes than buffers
		orig := bytes.Clone(frame)
		n, err := Segment(frame, &h, out, sizes)
		if gerr := guards(); gerr != nil {
			t.Fatal(gerr)
		}
		if !bytes.Equal(frame, orig) {
			t.Fatal("Segment wrote to its input frame")
		}
		if err != nil {
			if n != 0 {
				t.Fatalf("Segment = %d, %v", n, err)
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrShortBuffer) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrBadHeader) {
				t.Fatalf("Segment: %v matches no sentinel error", err)
			}
			for i, b := range out {
				if bytes.Count(b, []byte{0xa5}) != len(b) {
					t.Fatalf("Segment: %v, yet buffer %d was written", err, i)
				}
			}
			return
		}
		if n < 1 || n > len(out) {
			t.Fatalf("Segment = %d segments into %d buffers", n, len(out))
		}
		segs := make([][]byte, n)
		for i := range n {
			if sizes[i] > len(out[i]) {
				t.Fatalf("segment %d: size %d, buffer %d", i, sizes[i], len(out[i]))
			}
			segs[i] = out[i][:sizes[i]]
		}
		if err := checkSegments(frame, &h, segs); err != nil {
			t.Fatalf("header %s: %v", h, err)
		}
	})
}
