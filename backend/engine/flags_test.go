package engine

import (
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// Without GUEST_CSUM the header's flags reach the guest as zero, whatever
// the kernel wrote (virtio 1.2 §5.1.6.4.1); with it, they pass. The TAP is
// given TUN_F_CSUM in both cases so the kernel does write flags
// (NEEDS_CSUM for a local UDP datagram).
func TestRXFlagsFollowGuestCsum(t *testing.T) {
	for _, tc := range []struct {
		features  virtio.Features
		wantFlags bool
	}{
		{virtio.FVersion1 | virtio.NetFMrgRxbuf, false},
		{virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFGuestCsum, true},
	} {
		r := newRig(t, rigOptions{tap: true, features: tc.features})
		if err := r.dev.SetOffload(offload.TunCsum); err != nil {
			t.Fatal(err)
		}
		r.postRX(64, 1536)
		c := listenUDP(t, r.ns, "udp4", ":0")
		if _, err := c.WriteToUDP([]byte("flags"), &net.UDPAddr{IP: guest4.AsSlice(), Port: 6000}); err != nil {
			t.Fatal(err)
		}
		var flags byte
		found := false
		deadline := time.Now().Add(3 * time.Second)
		for !found && time.Now().Before(deadline) {
			for _, u := range r.rx.Reap() {
				f := u.Data[r.hdrLen:]
				if len(f) > 42 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 17 {
					flags, found = u.Data[0], true
				}
			}
			time.Sleep(time.Millisecond)
		}
		if !found {
			t.Fatalf("features %v: no UDP frame reached the guest", tc.features)
		}
		if !tc.wantFlags && flags != 0 {
			t.Errorf("features %v: header flags %#x, want 0", tc.features, flags)
		}
		if tc.wantFlags && flags&byte(virtio.NeedsCsum) == 0 {
			t.Errorf("features %v: header flags %#x, want NEEDS_CSUM from the kernel", tc.features, flags)
		}
	}
}
