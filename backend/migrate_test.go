package backend_test

import (
	"encoding/json"
	"errors"
	"net"
	"reflect"
	"testing"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/virtio"
)

// pagesOf lists and clears the pages marked in l.
func pagesOf(t *testing.T, l *virtio.DirtyLog) map[uint64]bool {
	t.Helper()
	dst := make([]uint64, l.Pages()/64)
	if _, err := l.Take(dst); err != nil {
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

// memEnd is where the rig's guest memory ends in guest physical space.
func (r *vmRig) memEnd() uint64 {
	var end uint64
	for _, g := range r.vm.Memory().Regions() {
		end = max(end, g.GuestAddr+uint64(len(g.Host)))
	}
	return end
}

// TestMigrateEmbedded is what a Go VMM does to live-migrate a guest with
// the device, on one device standing for both sides: dirty logging
// marks the pages of frames received, of the rings and of the control
// queue's acks while the guest runs; at the switch-over the control
// queue's state is saved, Reset gives each queue's state, and after
// SetFeatures and Activate with those states RestoreCtrlState brings
// back the pairs in use, the MAC, the receive mode, the guest offloads,
// the hash and RSS, and frames flow on both pairs; StopDirtyLog ends the
// marking.
func TestMigrateEmbedded(t *testing.T) {
	r := newVMRig(t, 2)
	acked := linuxAcks(r.dev, false, true)
	r.layOut(acked)
	if err := r.dev.StartDirtyLog(virtio.NewDirtyLog(1 << 20)); err != nil {
		t.Fatalf("StartDirtyLog before Activate: %v", err)
	}
	if err := r.dev.Activate(r.vm.Memory(), r.queues); !errors.Is(err, virtio.ErrLogTooSmall) {
		t.Fatalf("Activate with a log smaller than guest memory: %v, want ErrLogTooSmall", err)
	}
	r.dev.StopDirtyLog()
	if err := r.dev.Activate(r.vm.Memory(), r.queues); err != nil {
		t.Fatal(err)
	}
	if err := r.dev.StartDirtyLog(virtio.NewDirtyLog(1 << 20)); !errors.Is(err, virtio.ErrLogTooSmall) {
		t.Fatalf("StartDirtyLog with a log smaller than guest memory: %v, want ErrLogTooSmall", err)
	}
	log := virtio.NewDirtyLog(r.memEnd())
	if err := r.dev.StartDirtyLog(log); err != nil {
		t.Fatal(err)
	}
	page := func(gpa uint64) uint64 { return gpa / virtio.LogPageSize }

	// Frames both ways on pair 0, then control commands.
	r.arp(0, 1)
	ctrl := 4
	cmds := []virtio.CtrlCommand{
		{Class: virtio.CtrlMQ, Command: virtio.CtrlMQVQPairsSet, Pairs: 2},
		{Class: virtio.CtrlMAC, Command: virtio.CtrlMACAddrSet, MAC: virtio.MAC{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}},
		{Class: virtio.CtrlRX, Command: virtio.CtrlRXPromisc, On: true},
		{Class: virtio.CtrlGuestOffloads, Command: virtio.CtrlGuestOffloadsSet, Offloads: virtio.NetFGuestCsum},
		{Class: virtio.CtrlMQ, Command: virtio.CtrlMQHashConfig, Hash: virtio.HashConfig{
			HashTypes: virtio.HashTCPv4 | virtio.HashIPv4, Key: make([]byte, virtio.RSSKeySize)}},
	}
	rss := acked.Has(virtio.NetFRSS)
	if rss {
		cmds = append(cmds, virtio.CtrlCommand{Class: virtio.CtrlMQ, Command: virtio.CtrlMQRSSConfig, RSS: virtio.RSSConfig{
			HashTypes: virtio.HashTCPv4 | virtio.HashIPv4, IndirectionTable: []uint16{1, 0, 1, 1}, MaxTxVQ: 2,
			Key: append(make([]byte, virtio.RSSKeySize-1), 7)}})
	} else {
		t.Log("RSS not offered (no CAP_BPF?): the state carries no RSS configuration")
	}
	for _, c := range cmds {
		if ack := r.ctrl(ctrl, c); ack != virtio.CtrlOK {
			t.Fatalf("%s: ack %d", c.Name(), ack)
		}
	}
	marked := pagesOf(t, log)
	for _, q := range []struct {
		name string
		i    int
	}{{"RX 0", 0}, {"TX 0", 1}, {"control", ctrl}} {
		if a := r.vm.Queue(q.i).Areas(); !marked[page(a.Device)] {
			t.Errorf("%s: used ring page %d (guest %#x) not marked", q.name, page(a.Device), a.Device)
		}
	}
	// The acks went to the control queue's buffers, the ARP reply to RX
	// 0's: pages outside every ring.
	rings := map[uint64]bool{}
	for i := range r.queues {
		a := r.vm.Queue(i).Areas()
		for _, gpa := range []uint64{a.Desc, a.Driver, a.Device} {
			rings[page(gpa)] = true
		}
	}
	buffers := 0
	for p := range marked {
		if !rings[p] {
			buffers++
		}
	}
	if buffers < 2 {
		t.Errorf("%d buffer pages marked, want those of the ARP reply and of the acks", buffers)
	}

	// The switch-over.
	st := r.dev.CtrlState()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var restored = st
	if err := json.Unmarshal(b, &restored); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(restored, st) {
		t.Fatalf("CtrlState through JSON: %+v, want %+v", restored, st)
	}
	t.Logf("control queue state: %s", b)
	if st.Pairs != 2 || st.GuestOffloads == nil || *st.GuestOffloads != uint64(virtio.NetFGuestCsum) ||
		!st.RXMode.Promisc || st.Hash == nil || (st.RSS != nil) != rss {
		t.Errorf("CtrlState = %+v: want 2 pairs, the offloads, promiscuous mode, a hash and RSS %t", st, rss)
	}
	states := r.dev.Reset()
	pagesOf(t, log)
	if err := r.dev.SetFeatures(acked); err != nil {
		t.Fatal(err)
	}
	for i := range r.queues {
		r.queues[i].Resume = &states[i]
	}
	if err := r.dev.Activate(r.vm.Memory(), r.queues); err != nil {
		t.Fatal(err)
	}
	if err := r.dev.RestoreCtrlState(restored); err != nil {
		t.Fatal(err)
	}
	if got := r.dev.CtrlState(); !reflect.DeepEqual(got, st) {
		t.Errorf("CtrlState after RestoreCtrlState = %+v, want %+v", got, st)
	}
	if n := r.dev.ActivePairs(); n != 2 {
		t.Errorf("ActivePairs after the restore = %d, want 2", n)
	}
	if mac := r.dev.MAC(); mac.String() != "52:54:00:aa:bb:cc" {
		t.Errorf("MAC after the restore = %s", mac)
	}
	if _, on := r.dev.RSS(); on != rss {
		t.Errorf("RSS steers after the restore: %t, want %t", on, rss)
	}
	r.arp(1, 2)
	if len(pagesOf(t, log)) == 0 {
		t.Error("no page marked by the frames after the resume: the restarted queues do not log")
	}
	r.dev.StopDirtyLog()
	r.arp(0, 2)
	if p := pagesOf(t, log); len(p) != 0 {
		t.Errorf("%d pages marked after StopDirtyLog", len(p))
	}
}

// RestoreCtrlState checks what it is given as the commands would be.
func TestRestoreCtrlStateRefuses(t *testing.T) {
	r := newVMRig(t, 2)
	acked := linuxAcks(r.dev, false, true)
	r.layOut(acked)
	good := func() backend.CtrlState { return r.dev.CtrlState() }
	if err := r.dev.RestoreCtrlState(good()); err == nil {
		t.Error("RestoreCtrlState before Activate: got nil error")
	}
	if err := r.dev.Activate(r.vm.Memory(), r.queues); err != nil {
		t.Fatal(err)
	}
	bad := func(change func(*backend.CtrlState)) backend.CtrlState {
		s := good()
		change(&s)
		return s
	}
	offl := uint64(virtio.NetFHostTSO4)
	for _, tc := range []struct {
		name string
		st   backend.CtrlState
	}{
		{"no pairs", bad(func(s *backend.CtrlState) { s.Pairs = 0 })},
		{"more pairs than the device", bad(func(s *backend.CtrlState) { s.Pairs = 3 })},
		{"group MAC", bad(func(s *backend.CtrlState) { s.MAC = net.HardwareAddr{1, 0, 0, 0, 0, 1} })},
		{"offloads not for the guest", bad(func(s *backend.CtrlState) { s.GuestOffloads = &offl })},
		{"RSS queue past the device", bad(func(s *backend.CtrlState) {
			s.RSS = &virtio.RSSConfig{IndirectionTable: []uint16{0, 9}, Key: make([]byte, virtio.RSSKeySize)}
		})},
		{"RSS table not a power of two", bad(func(s *backend.CtrlState) {
			s.RSS = &virtio.RSSConfig{IndirectionTable: []uint16{0, 1, 0}, Key: make([]byte, virtio.RSSKeySize)}
		})},
	} {
		if err := r.dev.RestoreCtrlState(tc.st); err == nil {
			t.Errorf("%s: RestoreCtrlState succeeded", tc.name)
		}
	}
	if err := r.dev.RestoreCtrlState(good()); err != nil {
		t.Errorf("RestoreCtrlState of the device's own state: %v", err)
	}
}
