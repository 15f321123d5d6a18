package virtio

import (
	"errors"
	"testing"
)

func TestFeaturesHas(t *testing.T) {
	f := FVersion1 | NetFCsum | NetFMrgRxbuf
	tests := []struct {
		x    Features
		want bool
	}{
		{0, true},
		{FVersion1, true},
		{NetFCsum | NetFMrgRxbuf, true},
		{NetFGuestCsum, false},
		{NetFCsum | NetFGuestCsum, false},
	}
	for _, tt := range tests {
		if got := f.Has(tt.x); got != tt.want {
			t.Errorf("(%s).Has(%s) = %v, want %v", f, tt.x, got, tt.want)
		}
	}
}

func TestFeaturesBits(t *testing.T) {
	tests := []struct {
		f   Features
		bit uint
	}{
		{NetFCsum, 0}, {NetFGuestCsum, 1}, {NetFCtrlGuestOffloads, 2}, {NetFMTU, 3},
		{NetFMAC, 5}, {NetFGuestTSO4, 7}, {NetFGuestTSO6, 8}, {NetFGuestECN, 9},
		{NetFGuestUFO, 10}, {NetFHostTSO4, 11}, {NetFHostTSO6, 12}, {NetFHostECN, 13},
		{NetFHostUFO, 14}, {NetFMrgRxbuf, 15}, {NetFStatus, 16}, {NetFCtrlVQ, 17},
		{NetFCtrlRx, 18}, {NetFCtrlVLAN, 19}, {NetFCtrlRxExtra, 20}, {NetFGuestAnnounce, 21},
		{NetFMQ, 22}, {NetFCtrlMACAddr, 23}, {NetFNotfCoal, 53}, {NetFGuestUSO4, 54},
		{NetFGuestUSO6, 55}, {NetFHostUSO, 56}, {NetFHashReport, 57}, {NetFGuestHdrLen, 59},
		{NetFRSS, 60}, {NetFRSCExt, 61}, {NetFStandby, 62}, {NetFSpeedDuplex, 63},
		{FIndirectDesc, 28}, {FEventIdx, 29}, {FVersion1, 32}, {FAccessPlatform, 33},
		{FRingPacked, 34}, {FInOrder, 35}, {FOrderPlatform, 36}, {FSRIOV, 37},
		{FNotificationData, 38}, {FNotifConfigData, 39}, {FRingReset, 40},
	}
	for _, tt := range tests {
		if want := Features(1) << tt.bit; tt.f != want {
			t.Errorf("%s = %#x, want bit %d (%#x)", tt.f, uint64(tt.f), tt.bit, uint64(want))
		}
	}
}

func TestFeaturesString(t *testing.T) {
	tests := []struct {
		f    Features
		want string
	}{
		{0, "0"},
		{NetFCsum, "NET_F_CSUM"},
		{FVersion1 | NetFCsum | NetFMrgRxbuf, "NET_F_CSUM|NET_F_MRG_RXBUF|VERSION_1"},
		{FIndirectDesc | FEventIdx | FRingPacked | FRingReset, "INDIRECT_DESC|EVENT_IDX|RING_PACKED|RING_RESET"},
		{NetFHashReport | NetFSpeedDuplex, "NET_F_HASH_REPORT|NET_F_SPEED_DUPLEX"},
		{1<<4 | 1<<6 | 1<<30 | 1<<58, "bit(4)|bit(6)|bit(30)|bit(58)"},
		{NetFMAC | 1<<41, "NET_F_MAC|bit(41)"},
	}
	for _, tt := range tests {
		if got := tt.f.String(); got != tt.want {
			t.Errorf("Features(%#x).String() = %q, want %q", uint64(tt.f), got, tt.want)
		}
	}
}

func TestFeaturesStringNamesEveryConstant(t *testing.T) {
	all := FIndirectDesc | FEventIdx | FVersion1 | FAccessPlatform | FRingPacked | FInOrder |
		FOrderPlatform | FSRIOV | FNotificationData | FNotifConfigData | FRingReset |
		NetFCsum | NetFGuestCsum | NetFCtrlGuestOffloads | NetFMTU | NetFMAC | NetFGuestTSO4 |
		NetFGuestTSO6 | NetFGuestECN | NetFGuestUFO | NetFHostTSO4 | NetFHostTSO6 | NetFHostECN |
		NetFHostUFO | NetFMrgRxbuf | NetFStatus | NetFCtrlVQ | NetFCtrlRx | NetFCtrlVLAN |
		NetFCtrlRxExtra | NetFGuestAnnounce | NetFMQ | NetFCtrlMACAddr | NetFNotfCoal |
		NetFGuestUSO4 | NetFGuestUSO6 | NetFHostUSO | NetFHashReport | NetFGuestHdrLen | NetFRSS |
		NetFRSCExt | NetFStandby | NetFSpeedDuplex
	for n := range 64 {
		bit := Features(1) << n
		named := featureNames[n] != ""
		if want := all&bit != 0; named != want {
			t.Errorf("bit %d: named %v, want %v", n, named, want)
		}
	}
}

func TestValidateNet(t *testing.T) {
	const v1 = FVersion1
	tests := []struct {
		name     string
		f        Features
		feature  Features
		requires Features
		msg      string
	}{
		{"guest tso4", NetFGuestTSO4, NetFGuestTSO4, NetFGuestCsum,
			"feature NET_F_GUEST_TSO4 requires NET_F_GUEST_CSUM"},
		{"guest tso6", NetFGuestTSO6, NetFGuestTSO6, NetFGuestCsum,
			"feature NET_F_GUEST_TSO6 requires NET_F_GUEST_CSUM"},
		{"guest ecn", NetFGuestCsum | NetFGuestECN, NetFGuestECN, NetFGuestTSO4 | NetFGuestTSO6,
			"feature NET_F_GUEST_ECN requires NET_F_GUEST_TSO4 or NET_F_GUEST_TSO6"},
		{"guest ufo", NetFGuestUFO, NetFGuestUFO, NetFGuestCsum,
			"feature NET_F_GUEST_UFO requires NET_F_GUEST_CSUM"},
		{"guest uso4", v1 | NetFGuestUSO4, NetFGuestUSO4, NetFGuestCsum,
			"feature NET_F_GUEST_USO4 requires NET_F_GUEST_CSUM"},
		{"guest uso6", v1 | NetFGuestUSO6, NetFGuestUSO6, NetFGuestCsum,
			"feature NET_F_GUEST_USO6 requires NET_F_GUEST_CSUM"},
		{"host tso4", NetFHostTSO4, NetFHostTSO4, NetFCsum,
			"feature NET_F_HOST_TSO4 requires NET_F_CSUM"},
		{"host tso6", NetFHostTSO6, NetFHostTSO6, NetFCsum,
			"feature NET_F_HOST_TSO6 requires NET_F_CSUM"},
		{"host ecn", NetFCsum | NetFHostECN, NetFHostECN, NetFHostTSO4 | NetFHostTSO6,
			"feature NET_F_HOST_ECN requires NET_F_HOST_TSO4 or NET_F_HOST_TSO6"},
		{"host ufo", NetFHostUFO, NetFHostUFO, NetFCsum,
			"feature NET_F_HOST_UFO requires NET_F_CSUM"},
		{"host uso", v1 | NetFHostUSO, NetFHostUSO, NetFCsum,
			"feature NET_F_HOST_USO requires NET_F_CSUM"},
		{"ctrl rx", NetFCtrlRx, NetFCtrlRx, NetFCtrlVQ,
			"feature NET_F_CTRL_RX requires NET_F_CTRL_VQ"},
		{"ctrl vlan", NetFCtrlVLAN, NetFCtrlVLAN, NetFCtrlVQ,
			"feature NET_F_CTRL_VLAN requires NET_F_CTRL_VQ"},
		{"guest announce", NetFGuestAnnounce, NetFGuestAnnounce, NetFCtrlVQ,
			"feature NET_F_GUEST_ANNOUNCE requires NET_F_CTRL_VQ"},
		{"mq", NetFMQ, NetFMQ, NetFCtrlVQ,
			"feature NET_F_MQ requires NET_F_CTRL_VQ"},
		{"ctrl mac addr", NetFCtrlMACAddr, NetFCtrlMACAddr, NetFCtrlVQ,
			"feature NET_F_CTRL_MAC_ADDR requires NET_F_CTRL_VQ"},
		{"notf coal", v1 | NetFNotfCoal, NetFNotfCoal, NetFCtrlVQ,
			"feature NET_F_NOTF_COAL requires NET_F_CTRL_VQ"},
		{"rsc ext", v1 | NetFCsum | NetFRSCExt, NetFRSCExt, NetFHostTSO4 | NetFHostTSO6,
			"feature NET_F_RSC_EXT requires NET_F_HOST_TSO4 or NET_F_HOST_TSO6"},
		{"rss", v1 | NetFRSS, NetFRSS, NetFCtrlVQ,
			"feature NET_F_RSS requires NET_F_CTRL_VQ"},
		{"hash report", v1 | NetFHashReport, NetFHashReport, NetFCtrlVQ,
			"feature NET_F_HASH_REPORT requires NET_F_CTRL_VQ"},
		{"ctrl rx extra", NetFCtrlRxExtra, NetFCtrlRxExtra, NetFCtrlVQ,
			"feature NET_F_CTRL_RX_EXTRA requires NET_F_CTRL_VQ"},
		{"rss without version 1", NetFCtrlVQ | NetFRSS, NetFRSS, FVersion1,
			"feature NET_F_RSS requires VERSION_1"},
		{"packed ring without version 1", FRingPacked | FAccessPlatform, FAccessPlatform, FVersion1,
			"feature ACCESS_PLATFORM requires VERSION_1"},
		{"unknown high bit without version 1", 1 << 45, 1 << 45, FVersion1,
			"feature bit(45) requires VERSION_1"},
		{"first rule in spec order wins", NetFMQ | NetFGuestTSO4, NetFGuestTSO4, NetFGuestCsum,
			"feature NET_F_GUEST_TSO4 requires NET_F_GUEST_CSUM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateNet(tt.f)
			var de *DependencyError
			if !errors.As(err, &de) {
				t.Fatalf("ValidateNet(%s) = %v, want a *DependencyError", tt.f, err)
			}
			if de.Feature != tt.feature || de.Requires != tt.requires {
				t.Errorf("got Feature %s Requires %s, want %s and %s", de.Feature, de.Requires, tt.feature, tt.requires)
			}
			if got := err.Error(); got != tt.msg {
				t.Errorf("got message %q, want %q", got, tt.msg)
			}
		})
	}
}

func TestValidateNetAccepts(t *testing.T) {
	tests := []struct {
		name string
		f    Features
	}{
		{"nothing", 0},
		{"minimal legacy", NetFMAC},
		{"legacy with offloads", NetFMAC | NetFCsum | NetFGuestCsum | NetFHostTSO4 | NetFGuestTSO6 |
			NetFGuestECN | NetFHostECN | NetFMrgRxbuf | NetFCtrlVQ | NetFCtrlRx | NetFCtrlRxExtra |
			NetFMQ | NetFCtrlVLAN | NetFGuestAnnounce | NetFCtrlMACAddr | FIndirectDesc | FEventIdx},
		{"qemu-like modern", FVersion1 | FRingPacked | FInOrder | FAccessPlatform | NetFCsum |
			NetFGuestCsum | NetFHostTSO4 | NetFHostTSO6 | NetFHostUSO | NetFGuestTSO4 | NetFGuestTSO6 |
			NetFGuestUSO4 | NetFGuestUSO6 | NetFCtrlVQ | NetFRSS | NetFHashReport | NetFRSCExt |
			NetFNotfCoal | NetFSpeedDuplex | NetFStandby | NetFGuestHdrLen | NetFMTU | NetFStatus},
		{"ctrl rx extra without ctrl rx", NetFCtrlVQ | NetFCtrlRxExtra},
		{"unknown low bits", 1<<4 | 1<<6 | 1<<24 | 1<<27 | 1<<30},
	}
	for _, tt := range tests {
		if err := ValidateNet(tt.f); err != nil {
			t.Errorf("%s: ValidateNet(%s) = %v, want nil", tt.name, tt.f, err)
		}
	}
}

func TestNegotiate(t *testing.T) {
	offered := FVersion1 | NetFCsum | NetFHostTSO4 | NetFGuestCsum | NetFGuestTSO4 | NetFMrgRxbuf | NetFCtrlVQ | NetFMQ
	tests := []struct {
		name    string
		acked   Features
		want    Features
		wantErr string
	}{
		{"everything", offered, offered, ""},
		{"nothing", 0, 0, ""},
		{"subset", FVersion1 | NetFMrgRxbuf, FVersion1 | NetFMrgRxbuf, ""},
		{"not offered", FVersion1 | NetFRSS | NetFGuestUFO, 0,
			"features NET_F_GUEST_UFO|NET_F_RSS acknowledged but not offered"},
		{"dependency dropped", FVersion1 | NetFHostTSO4, 0,
			"feature NET_F_HOST_TSO4 requires NET_F_CSUM"},
		{"mq without ctrl vq", NetFMQ, 0,
			"feature NET_F_MQ requires NET_F_CTRL_VQ"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Negotiate(offered, tt.acked)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("Negotiate = %s, %v; want %s, nil", got, err, tt.want)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("Negotiate = %s, %v; want error %q", got, err, tt.wantErr)
			}
			if got != 0 {
				t.Errorf("Negotiate returned %s with an error, want 0", got)
			}
		})
	}
}

func TestNegotiateNotOfferedError(t *testing.T) {
	_, err := Negotiate(NetFCsum, NetFCsum|NetFMQ|1<<50)
	var ne *NotOfferedError
	if !errors.As(err, &ne) {
		t.Fatalf("Negotiate error %v, want a *NotOfferedError", err)
	}
	if want := NetFMQ | 1<<50; ne.Bits != want {
		t.Errorf("Bits = %s, want %s", ne.Bits, want)
	}
}
