package tap

import (
	"errors"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
)

func TestCheckMTU(t *testing.T) {
	for _, tt := range []struct {
		mtu  int
		want string // "" when valid
	}{
		{MinMTU, ""},
		{1500, ""},
		{9000, ""},
		{MaxMTU, ""},
		{67, "invalid mtu 67: want 68 to 65521 (tun.c MIN_MTU, MAX_MTU less ETH_HLEN)"},
		{0, "invalid mtu 0: want 68 to 65521 (tun.c MIN_MTU, MAX_MTU less ETH_HLEN)"},
		{65522, "invalid mtu 65522: want 68 to 65521 (tun.c MIN_MTU, MAX_MTU less ETH_HLEN)"},
		// The config field takes it; the TAP does not.
		{virtio.MaxMTU, "invalid mtu 65535: want 68 to 65521 (tun.c MIN_MTU, MAX_MTU less ETH_HLEN)"},
	} {
		err := CheckMTU(tt.mtu)
		var got string
		if err != nil {
			got = err.Error()
			var oe *OptionError
			if !errors.As(err, &oe) || oe.Option != "mtu" {
				t.Errorf("CheckMTU(%d) = %#v, want an *OptionError for mtu", tt.mtu, err)
			}
		}
		if got != tt.want {
			t.Errorf("CheckMTU(%d) = %q, want %q", tt.mtu, got, tt.want)
		}
	}
}

// The TAP's bounds lie within the config field's: an MTU set on the TAP
// can always be offered to the guest.
func TestMTUWithinVirtio(t *testing.T) {
	if MinMTU < virtio.MinMTU || MaxMTU > virtio.MaxMTU {
		t.Errorf("tap MTU %d to %d, want within virtio's %d to %d", MinMTU, MaxMTU, virtio.MinMTU, virtio.MaxMTU)
	}
}
