package backend

import (
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
)

// The vhost-user adapter offers GUEST_ANNOUNCE, which a front-end that
// serves the control queue passes to the guest, and takes each ring's
// dirty log when the ring starts (QueueSetup.Log) and while it runs
// (SetQueueLog): the TX ring's used ring is marked at its log address
// exactly while it has a log.
func TestVhostUserDirtyLog(t *testing.T) {
	d, _, _ := newTestDevice(t, 1, Options{})
	vu := d.VhostUser()
	if !vu.Features().Has(virtio.NetFGuestAnnounce) {
		t.Fatalf("vhost-user offer %v lacks GUEST_ANNOUNCE", vu.Features())
	}
	if err := vu.SetFeatures(virtio.FVersion1 | virtio.NetFGuestAnnounce); err != nil {
		t.Fatalf("ack GUEST_ANNOUNCE over vhost-user: %v", err)
	}
	if err := d.SetFeatures(virtio.FVersion1 | virtio.NetFGuestAnnounce); err == nil {
		t.Error("GUEST_ANNOUNCE acked on the device itself, which does not serve its control queue: got nil error")
	}
	dl, ok := vu.(vhostuser.DirtyLogger)
	if !ok {
		t.Fatal("the adapter is no vhostuser.DirtyLogger")
	}
	if err := dl.SetQueueLog(1, virtio.RingLog{}); err == nil {
		t.Error("SetQueueLog of a ring not started: got nil error")
	}
	rx, tx := newRing(t), newRing(t)
	log := virtio.NewDirtyLog(64 << 20)
	const txLogAt = 40 << 20 // the TX ring's log_guest_addr
	setup := func(r *ring, l virtio.RingLog) vhostuser.QueueSetup {
		c := r.g.SplitConfig()
		return vhostuser.QueueSetup{Memory: r.g.Memory(), Size: c.Size, DescAddr: c.DescAddr, AvailAddr: c.AvailAddr,
			UsedAddr: c.UsedAddr, Kick: r.kick.File(), Call: r.call.File(), Log: l}
	}
	if err := vu.StartQueue(0, setup(rx, virtio.RingLog{})); err != nil {
		t.Fatal(err)
	}
	if err := vu.StartQueue(1, setup(tx, virtio.RingLog{Log: log, UsedAddr: txLogAt})); err != nil {
		t.Fatal(err)
	}
	usedPage := uint64(txLogAt / virtio.LogPageSize)
	send := func() map[uint64]bool {
		t.Helper()
		if _, err := tx.g.PostTX(make([]byte, virtio.HdrLenV1+60)); err != nil {
			t.Fatal(err)
		}
		tx.g.Kick()
		tx.kick.Notify()
		for deadline := time.Now().Add(5 * time.Second); len(tx.g.Reap()) == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("TX frame not used in 5 s")
			}
		}
		dst := make([]uint64, log.Pages()/64)
		if _, err := log.Take(dst); err != nil {
			t.Fatal(err)
		}
		m := map[uint64]bool{}
		for w, v := range dst {
			for b := range 64 {
				if v&(1<<b) != 0 {
					m[uint64(w)*64+uint64(b)] = true
				}
			}
		}
		return m
	}
	if m := send(); !m[usedPage] || len(m) != 1 {
		t.Errorf("TX with a log from the start: pages %v marked, want the used ring's at its log address, %d", m, usedPage)
	}
	if err := dl.SetQueueLog(1, virtio.RingLog{}); err != nil {
		t.Fatal(err)
	}
	if m := send(); len(m) != 0 {
		t.Errorf("TX after its log was taken away: pages %v marked", m)
	}
	if err := dl.SetQueueLog(1, virtio.RingLog{Log: log, UsedAddr: txLogAt}); err != nil {
		t.Fatal(err)
	}
	if m := send(); !m[usedPage] {
		t.Errorf("TX with its log set while running: pages %v marked, want %d", m, usedPage)
	}
	for _, i := range []int{1, 0} {
		if _, err := vu.StopQueue(i); err != nil {
			t.Fatal(err)
		}
	}
}
