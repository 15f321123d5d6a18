package offload

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
)

func TestValidateTX(t *testing.T) {
	const all = HostFeatures | virtio.FVersion1
	tso4 := virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOTCPv4, GSOSize: 1448, HdrLen: 54, CsumStart: 34, CsumOffset: 16}
	tso6 := virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOTCPv6, GSOSize: 1440, HdrLen: 74, CsumStart: 54, CsumOffset: 16}
	uso := virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOUDPL4, GSOSize: 1472, HdrLen: 42, CsumStart: 34, CsumOffset: 6}
	ufo := virtio.NetHdr{GSOType: virtio.GSOUDP, GSOSize: 1480}
	csum := virtio.NetHdr{Flags: virtio.NeedsCsum, CsumStart: 34, CsumOffset: 6}
	with := func(h virtio.NetHdr, f func(*virtio.NetHdr)) virtio.NetHdr { f(&h); return h }
	tests := []struct {
		name     string
		h        virtio.NetHdr
		frameLen int
		acked    virtio.Features
		want     Reason
		msg      string // a part of the message
	}{
		{"plain", virtio.NetHdr{}, 60, 0, ReasonNone, ""},
		{"plain, offloads acked", virtio.NetHdr{}, 1514, all, ReasonNone, ""},
		{"ethernet header only", virtio.NetHdr{}, 14, 0, ReasonNone, ""},
		{"data_valid and rsc_info ignored", virtio.NetHdr{Flags: virtio.DataValid | virtio.RSCInfo | 0x80}, 60, 0, ReasonNone, ""},
		{"csum", csum, 60, virtio.NetFCsum, ReasonNone, ""},
		{"csum at the very end", with(csum, func(h *virtio.NetHdr) { h.CsumOffset = 24 }), 60, virtio.NetFCsum, ReasonNone, ""},
		{"tso4", tso4, 65549, all, ReasonNone, ""},
		{"tso4 ecn", with(tso4, func(h *virtio.NetHdr) { h.GSOType |= virtio.GSOECN }), 65549, all, ReasonNone, ""},
		{"tso6", tso6, 65549, all, ReasonNone, ""},
		{"uso", uso, 14 + 20 + 8 + 128*1472, all, ReasonNone, ""},
		{"ufo without csum", ufo, 9000, all, ReasonNone, ""},
		{"tso4 without csum", with(tso4, func(h *virtio.NetHdr) { h.Flags = 0 }), 9000, all, ReasonNone, ""},
		{"gso smaller than gso_size", tso4, 100, all, ReasonNone, ""},
		{"gso_size larger than the frame", with(tso4, func(h *virtio.NetHdr) { h.GSOSize = 0xfffe }), 1514, all, ReasonNone, ""},
		{"hdr_len 0", with(tso4, func(h *virtio.NetHdr) { h.HdrLen = 0 }), 9000, all, ReasonNone, ""},
		{"hdr_len raised by the checksum", with(csum, func(h *virtio.NetHdr) { h.HdrLen = 1 }), 60, virtio.NetFCsum, ReasonNone, ""},

		{"runt", virtio.NetHdr{}, 13, all, ReasonFrameTooShort, "tx frame of 13 bytes, want at least 14"},
		{"empty", virtio.NetHdr{}, 0, all, ReasonFrameTooShort, "0 bytes"},
		{"hdr_len 13", virtio.NetHdr{HdrLen: 13}, 60, 0, ReasonHdrLenTooShort, "hdr_len 13, want 0 or at least 14"},
		{"hdr_len past frame", virtio.NetHdr{HdrLen: 61}, 60, 0, ReasonHdrLenOutOfFrame, "hdr_len 61 past the end of a 60-byte frame"},
		{"tso hdr_len past frame", with(tso4, func(h *virtio.NetHdr) { h.HdrLen = 9001 }), 9000, all, ReasonHdrLenOutOfFrame, "hdr_len 9001"},
		{"csum not negotiated", csum, 60, 0, ReasonCsumNotNegotiated, "flags NEEDS_CSUM without NET_F_CSUM"},
		{"csum past the end", with(csum, func(h *virtio.NetHdr) { h.CsumOffset = 25 }), 60, all, ReasonCsumOutOfFrame,
			"csum_start 34 + csum_offset 25 ends past the end of a 60-byte frame"},
		{"csum_start past the end", with(csum, func(h *virtio.NetHdr) { h.CsumStart = 0xffff; h.CsumOffset = 0xffff }), 60, all, ReasonCsumOutOfFrame,
			"csum_start 65535"},
		{"csum_start in the ipv4 header", with(csum, func(h *virtio.NetHdr) { h.CsumStart = 19 }), 60, all, ReasonCsumStartTooLow,
			"csum_start 19, want at least 20"},
		{"tso6 csum_start too low", with(tso6, func(h *virtio.NetHdr) { h.CsumStart = 39 }), 9000, all, ReasonCsumStartTooLow,
			"csum_start 39, want at least 40"},
		{"tso csum_offset", with(tso4, func(h *virtio.NetHdr) { h.CsumOffset = 6 }), 9000, all, ReasonCsumOffset,
			"csum_offset 6 for gso_type TCPV4, want 16"},
		{"uso csum_offset", with(uso, func(h *virtio.NetHdr) { h.CsumOffset = 16 }), 9000, all, ReasonCsumOffset,
			"csum_offset 16 for gso_type UDP_L4, want 6"},
		{"gso type 2", virtio.NetHdr{GSOType: 2, GSOSize: 1}, 9000, all, ReasonGSOTypeUnknown, "gso_type 0x2 is no GSO type"},
		{"udp tunnel bit", with(tso4, func(h *virtio.NetHdr) { h.GSOType |= 0x20 }), 9000, all, ReasonGSOTypeUnknown, "gso_type 0x21"},
		{"tso4 not negotiated", tso4, 9000, all &^ virtio.NetFHostTSO4, ReasonGSOTypeNotNegotiated,
			"gso_type TCPV4 without NET_F_HOST_TSO4"},
		{"tso6 not negotiated", tso6, 9000, all &^ virtio.NetFHostTSO6, ReasonGSOTypeNotNegotiated, "NET_F_HOST_TSO6"},
		{"ufo not negotiated", ufo, 9000, all &^ virtio.NetFHostUFO, ReasonGSOTypeNotNegotiated, "NET_F_HOST_UFO"},
		{"uso not negotiated", uso, 9000, all &^ virtio.NetFHostUSO, ReasonGSOTypeNotNegotiated, "NET_F_HOST_USO"},
		{"gso with nothing negotiated", tso4, 9000, 0, ReasonGSOTypeNotNegotiated, "NET_F_HOST_TSO4"},
		{"ecn not negotiated", with(tso4, func(h *virtio.NetHdr) { h.GSOType |= virtio.GSOECN }), 9000, all &^ virtio.NetFHostECN,
			ReasonECNNotNegotiated, "gso_type TCPV4|ECN without NET_F_HOST_ECN"},
		{"ecn alone", virtio.NetHdr{GSOType: virtio.GSOECN}, 9000, all, ReasonECNInvalid, "gso_type NONE|ECN"},
		{"ecn on uso", with(uso, func(h *virtio.NetHdr) { h.GSOType |= virtio.GSOECN }), 9000, all, ReasonECNInvalid, "UDP_L4|ECN"},
		{"gso_size 0", with(tso4, func(h *virtio.NetHdr) { h.GSOSize = 0 }), 9000, all, ReasonGSOSizeZero, "gso_type TCPV4 with gso_size 0"},
		{"gso_size GSO_BY_FRAGS", with(ufo, func(h *virtio.NetHdr) { h.GSOSize = 0xffff }), 9000, all, ReasonGSOSizeInvalid, "0xffff"},
		{"uso without csum", with(uso, func(h *virtio.NetHdr) { h.Flags = 0 }), 9000, all, ReasonGSONeedsCsum, "UDP_L4 without NEEDS_CSUM"},
		{"tso headers past the end", with(tso4, func(h *virtio.NetHdr) { h.CsumStart = 60; h.HdrLen = 0 }), 79, all,
			ReasonGSOHeadersOutOfFrame, "headers end at byte 80, past the end of a 79-byte frame"},
		{"ufo headers past the end", ufo, 27, all, ReasonGSOHeadersOutOfFrame, "headers end at byte 28"},
		{"tso6 without csum headers past the end", with(tso6, func(h *virtio.NetHdr) { h.Flags = 0; h.HdrLen = 0 }), 59, all,
			ReasonGSOHeadersOutOfFrame, "headers end at byte 60"},
		{"uso too many segments", uso, 14 + 20 + 8 + 128*1472 + 1, all, ReasonGSOTooManySegments,
			"gso_size 1472 cuts a 188459-byte frame into more than 128 segments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateTX(&tt.h, tt.frameLen, tt.acked)
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("ValidateTX(%s, %d, %s) = %v (reason %s), want reason %s", tt.h, tt.frameLen, tt.acked, err, got, tt.want)
			}
			if tt.want == ReasonNone {
				return
			}
			if !errors.Is(err, ErrBadHeader) {
				t.Errorf("error %v does not match ErrBadHeader", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q, want it to contain %q", err, tt.msg)
			}
			var e *TXError
			if !errors.As(err, &e) || e.Hdr != tt.h || e.FrameLen != tt.frameLen {
				t.Errorf("error %#v does not carry the header and frame length", err)
			}
		})
	}
}

func TestReasonString(t *testing.T) {
	seen := map[string]Reason{}
	for r := range NumReasons {
		s := r.String()
		if s == "" || strings.ContainsAny(s, " \t") || strings.HasPrefix(s, "reason(") {
			t.Errorf("Reason(%d).String() = %q, want a counter key", r, s)
		}
		if o, dup := seen[s]; dup {
			t.Errorf("Reason(%d) and Reason(%d) are both %q", r, o, s)
		}
		seen[s] = r
	}
	if got := NumReasons.String(); got != "reason(17)" {
		t.Errorf("NumReasons.String() = %q, want reason(17)", got)
	}
	if got := ReasonOf(errors.New("other")); got != ReasonNone {
		t.Errorf("ReasonOf(other error) = %s, want none", got)
	}
}

func TestValidateTXAllocs(t *testing.T) {
	h := virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOTCPv4 | virtio.GSOECN, GSOSize: 1448, HdrLen: 54, CsumStart: 34, CsumOffset: 16}
	acked := HostFeatures | virtio.FVersion1
	if a := testing.AllocsPerRun(1000, func() {
		if err := ValidateTX(&h, 65549, acked); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("%v allocations per ValidateTX, want 0", a)
	}
}
