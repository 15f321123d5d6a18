package offload

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
)

const (
	tunAll = TunCsum | TunTSO4 | TunTSO6 | TunTSOECN |
		TunUFO | TunUSO4 | TunUSO6
	tunNoUSO = tunAll &^ (TunUSO4 | TunUSO6)

	hostNoUSO = HostFeatures &^ virtio.NetFHostUSO
	guestUSO  = virtio.NetFGuestUSO4 | virtio.NetFGuestUSO6
)

func mustList(t *testing.T, s string) OfferList {
	t.Helper()
	l, err := ParseOfferList(s)
	if err != nil {
		t.Fatalf("ParseOfferList(%q): %v", s, err)
	}
	return l
}

func TestOffer(t *testing.T) {
	tests := []struct {
		name   string
		tun    TunFlags
		probed bool
		opts   OfferOptions
		list   string
		want   virtio.Features
	}{
		{"everything", tunAll, true, OfferOptions{}, "", AllFeatures},
		{"kernel without uso", tunNoUSO, true, OfferOptions{}, "",
			HostFeatures | GuestFeatures&^guestUSO},
		{"not probed", tunAll, false, OfferOptions{}, "", HostFeatures},
		{"not probed, no software", 0, false, OfferOptions{NoSoftware: true}, "", hostNoUSO},
		{"nothing accepted", 0, true, OfferOptions{}, "", HostFeatures},
		{"csum only", TunCsum, true, OfferOptions{}, "", HostFeatures | virtio.NetFGuestCsum},
		{"tso without csum", TunTSO4 | TunTSO6, true, OfferOptions{}, "", HostFeatures},
		{"uso4 alone", TunCsum | TunUSO4, true, OfferOptions{}, "",
			HostFeatures | virtio.NetFGuestCsum},
		{"ecn without tso", TunCsum | TunTSOECN, true, OfferOptions{}, "",
			HostFeatures | virtio.NetFGuestCsum},
		{"ecn with tso6", TunCsum | TunTSO6 | TunTSOECN, true, OfferOptions{}, "",
			HostFeatures | virtio.NetFGuestCsum | virtio.NetFGuestTSO6 | virtio.NetFGuestECN},
		{"no vnet header", tunAll, true, OfferOptions{NoVnetHdr: true}, "", HostFeatures},
		{"no vnet header, no software", tunAll, true, OfferOptions{NoVnetHdr: true, NoSoftware: true}, "", 0},
		{"no software, kernel uso", tunAll, true, OfferOptions{NoSoftware: true}, "", AllFeatures},
		{"no software, no kernel uso", tunNoUSO, true, OfferOptions{NoSoftware: true}, "",
			hostNoUSO | GuestFeatures&^guestUSO},
		{"list none", tunAll, true, OfferOptions{}, "none", 0},
		{"list csum,tso4", tunAll, true, OfferOptions{}, "csum,tso4",
			virtio.NetFCsum | virtio.NetFGuestCsum | virtio.NetFHostTSO4 | virtio.NetFGuestTSO4},
		{"list one way", tunAll, true, OfferOptions{}, "host_csum,host_uso,guest_csum",
			virtio.NetFCsum | virtio.NetFHostUSO | virtio.NetFGuestCsum},
		{"list ecn, kernel without tso_ecn", tunAll &^ TunTSOECN, true, OfferOptions{}, "csum,tso4,ecn",
			virtio.NetFCsum | virtio.NetFGuestCsum | virtio.NetFHostTSO4 | virtio.NetFGuestTSO4 | virtio.NetFHostECN},
		{"list guest tso, kernel without csum", 0, true, OfferOptions{}, "guest_csum,guest_tso4", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			if tt.list != "" {
				opts.List = mustList(t, tt.list)
			}
			if got := Offer(tt.tun, tt.probed, opts); got != tt.want {
				t.Errorf("Offer(%s, %v, %+v)\n got %s\nwant %s", tt.tun, tt.probed, tt.opts, got, tt.want)
			}
		})
	}
}

// TestOfferConsistent checks every combination of TUN flags and options:
// what is offered keeps the spec's dependency rules, nothing outside the
// offload bits, and acking all of it yields a TUNSETOFFLOAD set the kernel
// takes and accepted.
func TestOfferConsistent(t *testing.T) {
	lists := []OfferList{AllOffloads, NoOffloads, mustList(t, "csum,tso4,ecn"), mustList(t, "host_csum,host_uso,guest_csum,guest_uso")}
	for tun := range TunFlags(1 << 7) {
		for _, probed := range []bool{false, true} {
			for o := range 4 {
				for _, l := range lists {
					opts := OfferOptions{NoVnetHdr: o&1 != 0, NoSoftware: o&2 != 0, List: l}
					f := Offer(tun, probed, opts)
					if err := virtio.ValidateNet(f | virtio.FVersion1); err != nil {
						t.Errorf("Offer(%s, %v, %+v) = %s: %v", tun, probed, opts, f, err)
					}
					if extra := f &^ AllFeatures; extra != 0 {
						t.Errorf("Offer(%s, %v, %+v) = %s, has non-offload bits %s", tun, probed, opts, f, extra)
					}
					o := TunFlagsFor(f)
					if !o.Valid() || o&^tun != 0 {
						t.Errorf("TunFlagsFor(Offer(%s, %v, %+v)) = %s: invalid or not accepted", tun, probed, opts, o)
					}
				}
			}
		}
	}
}

func TestTunFlags(t *testing.T) {
	tests := []struct {
		acked virtio.Features
		want  TunFlags
	}{
		{0, 0},
		{virtio.NetFGuestCsum, TunCsum},
		{virtio.NetFGuestTSO4 | virtio.NetFGuestTSO6, 0},
		{GuestFeatures, tunAll},
		{AllFeatures | virtio.FVersion1 | virtio.NetFMrgRxbuf, tunAll},
		{HostFeatures, 0},
		{virtio.NetFGuestCsum | virtio.NetFGuestUSO4, TunCsum},
		{virtio.NetFGuestCsum | virtio.NetFGuestUSO6, TunCsum},
		{virtio.NetFGuestCsum | guestUSO, TunCsum | TunUSO4 | TunUSO6},
		{virtio.NetFGuestCsum | virtio.NetFGuestECN, TunCsum},
		{virtio.NetFGuestCsum | virtio.NetFGuestTSO6 | virtio.NetFGuestECN,
			TunCsum | TunTSO6 | TunTSOECN},
		{virtio.NetFGuestCsum | virtio.NetFGuestUFO, TunCsum | TunUFO},
	}
	for _, tt := range tests {
		if got := TunFlagsFor(tt.acked); got != tt.want {
			t.Errorf("TunFlagsFor(%s) = %s, want %s", tt.acked, got, tt.want)
		}
	}
	// Whatever the guest acks, the kernel must take the result.
	for bits := range 1 << 7 {
		var f virtio.Features
		for i, b := range []virtio.Features{virtio.NetFGuestCsum, virtio.NetFGuestTSO4, virtio.NetFGuestTSO6,
			virtio.NetFGuestECN, virtio.NetFGuestUFO, virtio.NetFGuestUSO4, virtio.NetFGuestUSO6} {
			if bits&(1<<i) != 0 {
				f |= b
			}
		}
		if o := TunFlagsFor(f); !o.Valid() {
			t.Errorf("TunFlagsFor(%s) = %s, which TUNSETOFFLOAD refuses", f, o)
		}
	}
}

func TestGuestOffloads(t *testing.T) {
	acked := virtio.FVersion1 | virtio.NetFCtrlVQ | virtio.NetFCtrlGuestOffloads | virtio.NetFCsum |
		virtio.NetFGuestCsum | virtio.NetFGuestTSO4 | virtio.NetFGuestUFO | guestUSO
	tests := []struct {
		name  string
		ctrl  virtio.Features
		acked virtio.Features
		want  TunFlags
		err   string
	}{
		{"all acked", virtio.NetFGuestCsum | virtio.NetFGuestTSO4 | virtio.NetFGuestUFO | guestUSO, acked,
			TunCsum | TunTSO4 | TunUFO | TunUSO4 | TunUSO6, ""},
		{"none", 0, acked, 0, ""},
		{"csum", virtio.NetFGuestCsum, acked, TunCsum, ""},
		{"tso without csum", virtio.NetFGuestTSO4, acked, 0, ""},
		{"one uso", virtio.NetFGuestCsum | virtio.NetFGuestUSO4, acked, TunCsum, ""},
		{"not acked", virtio.NetFGuestCsum | virtio.NetFGuestTSO6, acked, 0,
			"guest offloads NET_F_GUEST_CSUM|NET_F_GUEST_TSO6: NET_F_GUEST_TSO6: offload not negotiated"},
		{"host bit", virtio.NetFCsum, acked, 0, "NET_F_CSUM are not guest offloads"},
		{"other bit", virtio.NetFMrgRxbuf | virtio.NetFGuestCsum, acked | virtio.NetFMrgRxbuf, 0,
			"NET_F_MRG_RXBUF are not guest offloads"},
		{"unnamed bit", 1 << 4, acked, 0, "bit(4) are not guest offloads"},
		{"command not negotiated", virtio.NetFGuestCsum, acked &^ virtio.NetFCtrlGuestOffloads, 0,
			"NET_F_CTRL_GUEST_OFFLOADS: offload not negotiated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := GuestOffloads(uint64(tt.ctrl), tt.acked)
			if tt.err != "" {
				if !errors.Is(err, ErrNotNegotiated) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("GuestOffloads(%s) = %s, %v; want an error with %q", tt.ctrl, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("GuestOffloads(%s) = %s, %v; want %s", tt.ctrl, got, err, tt.want)
			}
		})
	}
}

func TestParseOfferList(t *testing.T) {
	tests := []struct {
		in   string
		want virtio.Features
		str  string
	}{
		{"auto", AllFeatures, "auto"},
		{" auto ", AllFeatures, "auto"},
		{"none", 0, "none"},
		{"csum", virtio.NetFCsum | virtio.NetFGuestCsum, "csum"},
		{"csum, tso4 ,tso6", virtio.NetFCsum | virtio.NetFGuestCsum | virtio.NetFHostTSO4 | virtio.NetFGuestTSO4 |
			virtio.NetFHostTSO6 | virtio.NetFGuestTSO6, "csum,tso4,tso6"},
		{"tso4,csum,ecn", virtio.NetFCsum | virtio.NetFGuestCsum | virtio.NetFHostTSO4 | virtio.NetFGuestTSO4 |
			virtio.NetFHostECN | virtio.NetFGuestECN, "csum,tso4,ecn"},
		{"csum,uso", virtio.NetFCsum | virtio.NetFGuestCsum | virtio.NetFHostUSO | guestUSO, "csum,uso"},
		{"host_csum,host_ufo", virtio.NetFCsum | virtio.NetFHostUFO, "host_csum,host_ufo"},
		{"guest_csum,guest_uso", virtio.NetFGuestCsum | guestUSO, "guest_csum,guest_uso"},
		{"host_csum,guest_csum", virtio.NetFCsum | virtio.NetFGuestCsum, "csum"},
		{"csum,csum", virtio.NetFCsum | virtio.NetFGuestCsum, "csum"},
		{"csum,tso4,tso6,ecn,ufo,uso", AllFeatures, "csum,tso4,tso6,ecn,ufo,uso"},
	}
	for _, tt := range tests {
		l, err := ParseOfferList(tt.in)
		if err != nil {
			t.Errorf("ParseOfferList(%q): %v", tt.in, err)
			continue
		}
		if got := l.Features(); got != tt.want {
			t.Errorf("ParseOfferList(%q).Features() = %s, want %s", tt.in, got, tt.want)
		}
		if got := l.String(); got != tt.str {
			t.Errorf("ParseOfferList(%q).String() = %q, want %q", tt.in, got, tt.str)
		}
		if back, err := ParseOfferList(l.String()); err != nil || back != l {
			t.Errorf("ParseOfferList(%q) does not round-trip: %v, %v", l.String(), back, err)
		}
	}
	if (OfferList{}).String() != "auto" || (OfferList{}).Features() != AllFeatures {
		t.Errorf("zero OfferList is %q with %s, want auto", OfferList{}, OfferList{}.Features())
	}
}

func TestParseOfferListErrors(t *testing.T) {
	tests := []struct {
		in, err string
	}{
		{"", "offload list is empty"},
		{"  ", "offload list is empty"},
		{"csum,", `offload list "csum,": empty name at position 2`},
		{"csum,,tso4", "empty name at position 2"},
		{"gso", `unknown offload "gso"`},
		{"CSUM", `unknown offload "CSUM"`},
		{"guest_uso4", `unknown offload "guest_uso4"`},
		{"host_", `unknown offload "host_"`},
		{"auto,csum", "auto stands alone"},
		{"csum,none", "none stands alone"},
		{"tso4", "tso4 needs csum"},
		{"csum,ecn", "ecn needs tso4 or tso6"},
		{"host_csum,tso6", "tso6 needs csum"},
		{"host_tso4", "host_tso4 needs host_csum"},
		{"guest_csum,guest_ecn", "guest_ecn needs guest_tso4 or guest_tso6"},
		{"guest_uso", "guest_uso needs guest_csum"},
	}
	for _, tt := range tests {
		l, err := ParseOfferList(tt.in)
		if !errors.Is(err, ErrBadList) || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("ParseOfferList(%q) = %v, %v; want an error with %q", tt.in, l, err, tt.err)
		}
	}
}

func TestFallback(t *testing.T) {
	native := TXCaps{VnetHdr: true, USO: true}
	oldKernel := TXCaps{VnetHdr: true}
	plain := TXCaps{}
	csum := virtio.NetHdr{Flags: virtio.NeedsCsum, CsumStart: 34, CsumOffset: 16}
	tso := virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOTCPv4, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	uso := virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOUDPL4, GSOSize: 1448, CsumStart: 34, CsumOffset: 6}
	ufo := virtio.NetHdr{GSOType: virtio.GSOUDP, GSOSize: 1480}
	tests := []struct {
		caps TXCaps
		h    virtio.NetHdr
		want Fallback
	}{
		{native, virtio.NetHdr{}, FallbackNone},
		{plain, virtio.NetHdr{}, FallbackNone},
		{plain, virtio.NetHdr{Flags: virtio.DataValid}, FallbackNone},
		{native, csum, FallbackNone},
		{oldKernel, csum, FallbackNone},
		{plain, csum, FallbackCsum},
		{native, tso, FallbackNone},
		{oldKernel, tso, FallbackNone},
		{plain, tso, FallbackSegment},
		{native, uso, FallbackNone},
		{oldKernel, uso, FallbackSegment},
		{plain, uso, FallbackSegment},
		{oldKernel, ufo, FallbackNone},
		{plain, ufo, FallbackSegment},
	}
	for _, tt := range tests {
		if got := tt.caps.Fallback(&tt.h); got != tt.want {
			t.Errorf("%+v.Fallback(%s) = %s, want %s", tt.caps, tt.h, got, tt.want)
		}
	}
}

func TestTXCapsFor(t *testing.T) {
	tests := []struct {
		tun    TunFlags
		probed bool
		opts   OfferOptions
		want   TXCaps
	}{
		{tunAll, true, OfferOptions{}, TXCaps{VnetHdr: true, USO: true}},
		{tunNoUSO, true, OfferOptions{}, TXCaps{VnetHdr: true}},
		{tunAll, false, OfferOptions{}, TXCaps{VnetHdr: true}},
		{tunAll, true, OfferOptions{NoVnetHdr: true}, TXCaps{}},
	}
	for _, tt := range tests {
		if got := TXCapsFor(tt.tun, tt.probed, tt.opts); got != tt.want {
			t.Errorf("TXCapsFor(%s, %v, %+v) = %+v, want %+v", tt.tun, tt.probed, tt.opts, got, tt.want)
		}
	}
	// Whatever Offer offers without software is what the kernel takes.
	for tun := range TunFlags(1 << 7) {
		for _, probed := range []bool{false, true} {
			for _, noVnet := range []bool{false, true} {
				opts := OfferOptions{NoVnetHdr: noVnet, NoSoftware: true}
				caps := TXCapsFor(tun, probed, opts)
				f := Offer(tun, probed, opts)
				for _, h := range []virtio.NetHdr{
					{Flags: virtio.NeedsCsum, CsumStart: 34, CsumOffset: 16},
					{Flags: virtio.NeedsCsum, GSOType: virtio.GSOTCPv4, GSOSize: 1448, CsumStart: 34, CsumOffset: 16},
					{Flags: virtio.NeedsCsum, GSOType: virtio.GSOUDPL4, GSOSize: 1448, CsumStart: 34, CsumOffset: 6},
				} {
					if ValidateTX(&h, 9000, f) == nil && caps.Fallback(&h) != FallbackNone {
						t.Errorf("tun %s probed %v no vnet %v: offered %s, yet %s needs %s", tun, probed, noVnet, f, h, caps.Fallback(&h))
					}
				}
			}
		}
	}
}

func TestFallbackString(t *testing.T) {
	for f, want := range map[Fallback]string{FallbackNone: "none", FallbackCsum: "csum", FallbackSegment: "segment", 7: "fallback(7)"} {
		if got := f.String(); got != want {
			t.Errorf("Fallback(%d).String() = %q, want %q", uint8(f), got, want)
		}
	}
}
