package backend

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

func newTestDevice(t *testing.T, queues int, opts Options) (*Device, *tap.Device, string) {
	t.Helper()
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	tp, err := tap.Create(tap.Options{NetNS: ns, Queues: queues})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	opts.TAP = tp
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d, tp, ns
}

func TestOfferedFeatures(t *testing.T) {
	d, tp, _ := newTestDevice(t, 2, Options{MTU: 9000})
	f := d.Features()
	for _, want := range []virtio.Features{virtio.FVersion1, virtio.FEventIdx, virtio.FIndirectDesc, virtio.FRingPacked,
		virtio.NetFMrgRxbuf, virtio.NetFMQ, virtio.NetFMTU, virtio.NetFMAC, virtio.NetFCsum, virtio.NetFGuestCsum} {
		if !f.Has(want) {
			t.Errorf("offered %v: lacks %v", f, want)
		}
	}
	if tp.DriverFeatures().Supports(offload.TunUSO4|offload.TunUSO6) && !f.Has(virtio.NetFGuestUSO4|virtio.NetFGuestUSO6) {
		t.Errorf("kernel takes USO, offered %v lacks GUEST_USO4/6", f)
	}
	cfg := d.Config()
	if cfg.MaxVirtqueuePairs != 2 || cfg.MTU != 9000 || cfg.Status&virtio.LinkUp != 0 || cfg.MAC[0]&3 != 2 {
		t.Errorf("config %+v: want 2 pairs, MTU 9000, link down (the TAP is), a local unicast MAC", cfg)
	}
	if f&ctrlFeatures != 0 {
		t.Errorf("offered %v without Options.ControlQueue", f&ctrlFeatures)
	}
	// Offloads "none" leaves only the ring and device features.
	d2, err := New(Options{TAP: tp, Offloads: offload.NoOffloads})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if f := d2.Features() & offload.AllFeatures; f != 0 {
		t.Errorf("--offloads none: offered offloads %v", f)
	}
}

func TestSetFeatures(t *testing.T) {
	d, tp, ns := newTestDevice(t, 1, Options{})
	acked := virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFCsum | virtio.NetFGuestCsum | virtio.NetFGuestTSO4 | virtio.NetFGuestTSO6
	if err := d.SetFeatures(acked); err != nil {
		t.Fatal(err)
	}
	if tp.VnetHdrSize() != virtio.HdrLenV1 {
		t.Errorf("vnet header %d, want 12", tp.VnetHdrSize())
	}
	out := testutil.Exec(t, ns, "ethtool", "-k", tp.Name())
	if !strings.Contains(out, "tcp-segmentation-offload: on") {
		t.Errorf("GUEST_TSO4/6 acked, ethtool -k says:\n%s", out)
	}
	// Without CTRL_GUEST_OFFLOADS the guest cannot change them at run time.
	if err := d.SetGuestOffloads(uint64(virtio.NetFGuestCsum)); err == nil {
		t.Error("GUEST_OFFLOADS_SET without CTRL_GUEST_OFFLOADS: got nil error")
	}
	if err := d.SetFeatures(virtio.Features(1) << 44); err == nil {
		t.Error("acking an unoffered bit: got nil error")
	}
	if err := d.SetFeatures(virtio.FVersion1 | virtio.NetFGuestTSO4); err == nil {
		t.Error("GUEST_TSO4 without GUEST_CSUM: got nil error")
	}
	if err := d.SetFeatures(virtio.NetFCsum); err != nil {
		t.Fatal(err)
	}
	if tp.VnetHdrSize() != virtio.HdrLenLegacy {
		t.Errorf("legacy features: vnet header %d, want 10", tp.VnetHdrSize())
	}
}

type ring struct {
	g    *virtiotest.Guest
	q    virtio.Queue
	kick *engine.EventFD
	call *engine.EventFD
}

func newRing(t *testing.T) *ring {
	t.Helper()
	return newRingSlots(t, 2048)
}

// newRingSlots is newRing with buffers of slot bytes.
func newRingSlots(t *testing.T, slot int) *ring {
	t.Helper()
	g, err := virtiotest.NewGuest(64, false, virtiotest.Options{SlotSize: slot})
	if err != nil {
		t.Fatal(err)
	}
	q, err := g.NewQueue()
	if err != nil {
		t.Fatal(err)
	}
	r := &ring{g: g, q: q}
	if r.kick, err = engine.NewEventFD(); err != nil {
		t.Fatal(err)
	}
	if r.call, err = engine.NewEventFD(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.kick.Close(); r.call.Close() })
	return r
}

// A pair's engine runs only while both its rings are started; the TAP
// queue is attached exactly then.
func TestQueuePairLifecycle(t *testing.T) {
	d, tp, _ := newTestDevice(t, 2, Options{})
	if info, _ := tp.Info(); info.Queues != 0 {
		t.Fatalf("before any ring starts: %d TAP queues attached, want 0", info.Queues)
	}
	if err := d.startQueue(0, newRing(t).q, nil, nil); err == nil {
		t.Fatal("StartQueue before SetFeatures: got nil error")
	}
	if err := d.SetFeatures(virtio.FVersion1 | virtio.NetFMrgRxbuf); err != nil {
		t.Fatal(err)
	}
	rx, tx := newRing(t), newRing(t)
	if err := d.startQueue(2, rx.q, rx.kick.File(), rx.call.File()); err != nil {
		t.Fatal(err)
	}
	if info, _ := tp.Info(); info.Queues != 0 {
		t.Errorf("RX ring only: %d TAP queues attached, want 0", info.Queues)
	}
	if err := d.startQueue(3, tx.q, tx.kick.File(), tx.call.File()); err != nil {
		t.Fatal(err)
	}
	if info, _ := tp.Info(); info.Queues != 1 {
		t.Errorf("pair 1 running: %d TAP queues attached, want 1", info.Queues)
	}
	if err := d.startQueue(3, tx.q, tx.kick.File(), tx.call.File()); err == nil {
		t.Error("starting a started ring: got nil error")
	}
	if err := d.startQueue(4, tx.q, tx.kick.File(), tx.call.File()); err == nil {
		t.Error("ring 4 of 2 pairs: got nil error")
	}
	q, err := d.stopQueue(3)
	if err != nil || q != tx.q {
		t.Fatalf("StopQueue(3): %v, %v", q, err)
	}
	if info, _ := tp.Info(); info.Queues != 0 {
		t.Errorf("pair 1 stopped: %d TAP queues attached, want 0", info.Queues)
	}
	if _, err := d.stopQueue(3); err == nil {
		t.Error("stopping a stopped ring: got nil error")
	}
	d.Reset()
	if err := d.startQueue(3, tx.q, tx.kick.File(), tx.call.File()); err == nil {
		t.Error("StartQueue after Reset without SetFeatures: got nil error")
	}
}

func TestAnnounce(t *testing.T) {
	d, tp, ns := newTestDevice(t, 1, Options{})
	if err := tp.SetUp(true); err != nil {
		t.Fatal(err)
	}
	mac := net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}
	done := make(chan string, 1)
	go func() {
		out, _ := testutil.Run(ns, "timeout", "5", "tcpdump", "-c", "1", "-n", "-e", "-i", tp.Name(), "rarp")
		done <- out
	}()
	time.Sleep(time.Second) // tcpdump attaches
	if err := d.Announce(mac); err != nil {
		t.Fatal(err)
	}
	got := <-done
	if !strings.Contains(got, mac.String()) || !strings.Contains(got, "Reverse Request") {
		t.Errorf("tcpdump saw:\n%s\nwant a RARP from %s", got, mac)
	}
}

// Announce attaches TAP queue 0 for its write only while no queue pair
// runs there, under the device's lock: a pair starting and stopping on
// queue 0 at the same time always finds its queue attached while it runs
// and detached once it stopped.
func TestAnnounceWhilePairStarts(t *testing.T) {
	d, tp, _ := newTestDevice(t, 1, Options{})
	if err := tp.SetUp(true); err != nil {
		t.Fatal(err)
	}
	if err := d.SetFeatures(virtio.FVersion1 | virtio.NetFMrgRxbuf); err != nil {
		t.Fatal(err)
	}
	mac := net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}
	stop := make(chan struct{})
	done := make(chan error)
	go func() {
		for {
			select {
			case <-stop:
				close(done)
				return
			default:
			}
			if err := d.Announce(mac); err != nil {
				done <- err
				return
			}
		}
	}()
	for i := 0; i < 200; i++ {
		rx, tx := newRing(t), newRing(t)
		if err := d.startQueue(0, rx.q, rx.kick.File(), rx.call.File()); err != nil {
			t.Fatal(err)
		}
		if err := d.startQueue(1, tx.q, tx.kick.File(), tx.call.File()); err != nil {
			t.Fatal(err)
		}
		if n := attached(t, tp); n != 1 {
			t.Fatalf("round %d, pair 0 running: %d TAP queues attached, want 1", i, n)
		}
		for _, q := range []int{1, 0} {
			if _, err := d.stopQueue(q); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := attached(t, tp); n != 0 {
		t.Errorf("pair 0 stopped: %d TAP queues attached, want 0", n)
	}
}
