package backend

import (
	"testing"

	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// TestNegotiated follows what the device reports as negotiated through
// FEATURES_OK, GUEST_OFFLOADS_SET and a reset.
func TestNegotiated(t *testing.T) {
	d, tp, _ := newTestDevice(t, 1, Options{ControlQueue: true})
	if d.TAP() != tp {
		t.Errorf("TAP: got %p, want Options.TAP %p", d.TAP(), tp)
	}
	if f, o, ok := d.Negotiated(); ok || f != 0 || o != 0 {
		t.Errorf("before SetFeatures: got %v, %v, %v; want nothing negotiated", f, o, ok)
	}
	acked := virtio.FVersion1 | virtio.NetFCsum | virtio.NetFGuestCsum | virtio.NetFGuestTSO4 | virtio.NetFGuestTSO6 |
		virtio.NetFCtrlVQ | virtio.NetFCtrlGuestOffloads
	if err := d.SetFeatures(acked); err != nil {
		t.Fatal(err)
	}
	if f, o, ok := d.Negotiated(); !ok || f != acked || o != offload.TunFlagsFor(acked) {
		t.Errorf("after SetFeatures(%v): got %v, %v, %v; want them and %v", acked, f, o, ok, offload.TunFlagsFor(acked))
	}
	if err := d.SetGuestOffloads(uint64(virtio.NetFGuestCsum)); err != nil {
		t.Fatal(err)
	}
	want, _ := offload.GuestOffloads(uint64(virtio.NetFGuestCsum), acked)
	if _, o, _ := d.Negotiated(); o != want || o == offload.TunFlagsFor(acked) {
		t.Errorf("after GUEST_OFFLOADS_SET of GUEST_CSUM: offloads %v, want %v", o, want)
	}
	d.Reset()
	if _, _, ok := d.Negotiated(); ok {
		t.Error("after Reset: still negotiated")
	}
}
