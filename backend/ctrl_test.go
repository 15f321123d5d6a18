package backend

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
)

// ctrlAcked is what a Linux guest acks of a ControlQueue device.
const ctrlAcked = virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFCsum | virtio.NetFGuestCsum |
	virtio.NetFGuestTSO4 | virtio.NetFGuestTSO6 | virtio.NetFMQ | ctrlFeatures

// sendCtrl posts one command the way Linux's virtnet_send_command does
// (header, then data, in two readable buffers, and a one-byte writable
// ack), kicks, and waits for the device's answer.
func sendCtrl(t *testing.T, r *ring, cmd []byte) virtio.CtrlAck {
	t.Helper()
	if len(cmd) < 2 {
		t.Fatalf("command of %d bytes", len(cmd))
	}
	readable := [][]byte{cmd[:2]}
	if len(cmd) > 2 {
		readable = append(readable, cmd[2:])
	}
	if _, err := r.g.Post(readable, []int{1}); err != nil {
		t.Fatal(err)
	}
	used := kickAndReap(t, r)
	if used.Len != 1 {
		t.Fatalf("command % x: device wrote %d bytes, want the 1-byte ack", cmd, used.Len)
	}
	return virtio.CtrlAck(used.Data[0])
}

// drained waits up to d for e to be signalled, and drains it.
func drained(e *engine.EventFD, d time.Duration) bool {
	for deadline := time.Now().Add(d); !e.Drain(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// kickAndReap kicks r and waits for one used chain.
func kickAndReap(t *testing.T, r *ring) struct {
	Len  uint32
	Data []byte
} {
	t.Helper()
	r.g.Kick()
	if err := r.kick.Notify(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if u := r.g.Reap(); len(u) > 0 {
			if len(u) != 1 {
				t.Fatalf("reaped %d chains, want 1", len(u))
			}
			// The device publishes the used chain, then interrupts.
			if !drained(r.call, time.Second) {
				t.Error("chain returned without an interrupt")
			}
			return struct {
				Len  uint32
				Data []byte
			}{u[0].Len, u[0].Data}
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no answer from the control queue in 5s")
	panic("unreachable")
}

func cmdBytes(c virtio.CtrlCommand) []byte { return c.Append(nil, virtio.LittleEndian) }

func attached(t *testing.T, tp *tap.Device) int {
	t.Helper()
	info, err := tp.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.Queues
}

// TestControlQueue serves the control queue as an embedding VMM would have
// the device do, with the Go guest driver sending Linux's commands: pair
// changes attach and detach TAP queues, offload changes reach the TAP,
// and every bad command is refused, counted and answered.
func TestControlQueue(t *testing.T) {
	cfgIRQ, err := engine.NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer cfgIRQ.Close()
	d, tp, ns := newTestDevice(t, 4, Options{ControlQueue: true, ConfigInterrupt: cfgIRQ.File()})
	if f := d.Features(); !f.Has(ctrlFeatures | virtio.NetFMQ) {
		t.Errorf("offered %v: want the control features and MQ", f)
	}
	// GUEST_ANNOUNCE is the front-end's to pass on: it announces a
	// migrated guest through its own control queue.
	if f := d.VhostUser().Features(); f&ctrlFeatures != virtio.NetFGuestAnnounce {
		t.Errorf("vhost-user offered %v: want GUEST_ANNOUNCE alone of the control features (the front-end serves the control queue)", f&ctrlFeatures)
	}
	if d.Queues() != 9 {
		t.Errorf("Queues: got %d, want 9 (4 pairs and the control queue)", d.Queues())
	}
	if err := d.SetFeatures(ctrlAcked); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ {
		r := newRing(t)
		if err := d.startQueue(i, r.q, r.kick.File(), r.call.File()); err != nil {
			t.Fatal(err)
		}
	}
	ctrl := newRingSlots(t, maxCtrlLen+4096)
	if err := d.startQueue(8, ctrl.q, ctrl.kick.File(), ctrl.call.File()); err != nil {
		t.Fatal(err)
	}
	if err := d.startQueue(8, ctrl.q, ctrl.kick.File(), ctrl.call.File()); err == nil {
		t.Error("starting the started control queue: got nil error")
	}
	if n := attached(t, tp); n != 1 || d.ActivePairs() != 1 {
		t.Errorf("before VQ_PAIRS_SET: %d TAP queues attached, %d pairs active; want 1, 1 (multiqueue starts off)", n, d.ActivePairs())
	}

	ok, bad := uint64(0), uint64(0)
	expect := func(t *testing.T, what string, cmd []byte, want virtio.CtrlAck) {
		t.Helper()
		if got := sendCtrl(t, ctrl, cmd); got != want {
			t.Errorf("%s: ack %d, want %d", what, got, want)
		}
		if want == virtio.CtrlOK {
			ok++
		} else {
			bad++
		}
	}
	pairs := func(n uint16) []byte {
		return cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlMQ, Command: virtio.CtrlMQVQPairsSet, Pairs: n})
	}

	t.Run("VQ_PAIRS_SET", func(t *testing.T) {
		expect(t, "pairs 3", pairs(3), virtio.CtrlOK)
		if n := attached(t, tp); n != 3 || d.ActivePairs() != 3 {
			t.Errorf("after VQ_PAIRS_SET 3: %d TAP queues attached, %d active; want 3, 3", n, d.ActivePairs())
		}
		expect(t, "pairs 5 of 4", pairs(5), virtio.CtrlErr)
		expect(t, "pairs 0", pairs(0), virtio.CtrlErr)
		if n := attached(t, tp); n != 3 {
			t.Errorf("after refused VQ_PAIRS_SET: %d TAP queues attached, want 3 still", n)
		}
		expect(t, "pairs 1", pairs(1), virtio.CtrlOK)
		if n := attached(t, tp); n != 1 {
			t.Errorf("after VQ_PAIRS_SET 1: %d TAP queues attached, want 1", n)
		}
		expect(t, "pairs 4", pairs(4), virtio.CtrlOK)
		if n := attached(t, tp); n != 4 {
			t.Errorf("after VQ_PAIRS_SET 4: %d TAP queues attached, want 4", n)
		}
	})

	t.Run("GUEST_OFFLOADS_SET", func(t *testing.T) {
		set := func(f virtio.Features) []byte {
			return cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlGuestOffloads, Command: virtio.CtrlGuestOffloadsSet, Offloads: f})
		}
		tso := func() string {
			out := testutil.Exec(t, ns, "ethtool", "-k", tp.Name())
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "tcp-segmentation-offload:") {
					return strings.TrimSpace(strings.TrimPrefix(l, "tcp-segmentation-offload:"))
				}
			}
			t.Fatalf("ethtool -k %s has no tcp-segmentation-offload line:\n%s", tp.Name(), out)
			return ""
		}
		if got := tso(); got != "on" {
			t.Fatalf("TAP TSO with GUEST_TSO4/6 acked: %q, want on", got)
		}
		expect(t, "checksum only (ethtool -K eth0 gro off)", set(virtio.NetFGuestCsum), virtio.CtrlOK)
		if got := tso(); got != "off" {
			t.Errorf("TAP TSO after GUEST_OFFLOADS_SET csum: %q, want off", got)
		}
		expect(t, "UFO, never acked", set(virtio.NetFGuestCsum|virtio.NetFGuestUFO), virtio.CtrlErr)
		expect(t, "back on", set(virtio.NetFGuestCsum|virtio.NetFGuestTSO4|virtio.NetFGuestTSO6), virtio.CtrlOK)
		if got := tso(); got != "on" {
			t.Errorf("TAP TSO after GUEST_OFFLOADS_SET csum|tso4|tso6: %q, want on", got)
		}
	})

	t.Run("MAC and RX mode", func(t *testing.T) {
		mac := virtio.MAC{0x52, 0x54, 0, 1, 2, 3}
		expect(t, "ADDR_SET", cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlMAC, Command: virtio.CtrlMACAddrSet, MAC: mac}), virtio.CtrlOK)
		if got := d.Config().MAC; got != mac {
			t.Errorf("config MAC after ADDR_SET: %s, want %s", got, mac)
		}
		expect(t, "ADDR_SET multicast", cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlMAC, Command: virtio.CtrlMACAddrSet, MAC: virtio.MAC{1, 0, 0x5e, 0, 0, 1}}), virtio.CtrlErr)
		expect(t, "PROMISC on", cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlRX, Command: virtio.CtrlRXPromisc, On: true}), virtio.CtrlOK)
		expect(t, "ALLMULTI on", cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlRX, Command: virtio.CtrlRXAllMulti, On: true}), virtio.CtrlOK)
		table := virtio.CtrlCommand{Class: virtio.CtrlMAC, Command: virtio.CtrlMACTableSet,
			Unicast: virtio.MACList{0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2}, Multicast: virtio.MACList{1, 0, 0x5e, 0, 0, 0xfb}}
		expect(t, "TABLE_SET", cmdBytes(table), virtio.CtrlOK)
		want := RXMode{Promisc: true, AllMulti: true, Unicast: 2, Multicast: 1}
		if got := d.RXMode(); got != want {
			t.Errorf("RX mode: got %+v, want %+v", got, want)
		}
		expect(t, "ALLUNI without CTRL_RX_EXTRA", cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlRX, Command: virtio.CtrlRXAllUni, On: true}), virtio.CtrlErr)
		expect(t, "VLAN ADD, never offered", cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlVLAN, Command: virtio.CtrlVLANAdd, VLAN: 10}), virtio.CtrlErr)
		expect(t, "RSS_CONFIG, not acked", []byte{byte(virtio.CtrlMQ), virtio.CtrlMQRSSConfig, 0, 0, 0, 0}, virtio.CtrlErr)
		expect(t, "unknown class", []byte{77, 0, 1}, virtio.CtrlErr)
		expect(t, "PROMISC without its byte", []byte{byte(virtio.CtrlRX), virtio.CtrlRXPromisc}, virtio.CtrlErr)
		expect(t, "pairs with a byte too many", append(pairs(2), 0), virtio.CtrlErr)
		if n := attached(t, tp); n != 4 {
			t.Errorf("after a malformed VQ_PAIRS_SET: %d TAP queues attached, want 4 still", n)
		}
	})

	t.Run("announce", func(t *testing.T) {
		cfgIRQ.Drain()
		if err := d.AnnounceGuest(); err != nil {
			t.Fatal(err)
		}
		if d.Config().Status&virtio.Announce == 0 {
			t.Error("AnnounceGuest with GUEST_ANNOUNCE: status lacks ANNOUNCE")
		}
		if !cfgIRQ.Drain() {
			t.Error("AnnounceGuest: no config change interrupt")
		}
		expect(t, "ANNOUNCE_ACK", cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlAnnounce, Command: virtio.CtrlAnnounceAck}), virtio.CtrlOK)
		if d.Config().Status&virtio.Announce != 0 {
			t.Error("after ANNOUNCE_ACK: status still has ANNOUNCE")
		}
	})

	t.Run("bad chains", func(t *testing.T) {
		// No writable byte: nowhere to put the ack.
		if _, err := ctrl.g.Post([][]byte{pairs(2)}, nil); err != nil {
			t.Fatal(err)
		}
		if u := kickAndReap(t, ctrl); u.Len != 0 {
			t.Errorf("chain without an ack byte: used length %d, want 0", u.Len)
		}
		// Longer than the device reads.
		big := append(cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlMAC, Command: virtio.CtrlMACTableSet}), make([]byte, maxCtrlLen)...)
		expect(t, "a command over 64 KiB", big, virtio.CtrlErr)
	})

	st := d.CtrlStats()
	if st[CtrlCommands] != ok || st[CtrlErrors] != bad || st[CtrlBadChains] != 1 || st[CtrlKicks] == 0 {
		t.Errorf("control stats %+v: want %d commands, %d errors, 1 bad chain, some kicks", st, ok, bad)
	}

	q, err := d.stopQueue(8)
	if err != nil || q != ctrl.q {
		t.Fatalf("StopQueue(8): %v, %v; want the control queue", q, err)
	}
	if _, err := d.stopQueue(8); err == nil {
		t.Error("stopping the stopped control queue: got nil error")
	}
	d.Reset()
	if cfg := d.Config(); cfg.MAC == (virtio.MAC{0x52, 0x54, 0, 1, 2, 3}) {
		t.Errorf("config MAC after reset: %s, want the device's own back", cfg.MAC)
	}
	if n := attached(t, tp); n != 0 {
		t.Errorf("after reset: %d TAP queues attached, want 0", n)
	}
}

// Without CTRL_VQ acked, the control queue cannot start; without MQ the
// driver has the first pair only.
func TestControlQueueNotNegotiated(t *testing.T) {
	d, tp, _ := newTestDevice(t, 2, Options{ControlQueue: true})
	if err := d.SetFeatures(virtio.FVersion1 | virtio.NetFMrgRxbuf); err != nil {
		t.Fatal(err)
	}
	r := newRing(t)
	if err := d.startQueue(4, r.q, r.kick.File(), r.call.File()); err == nil {
		t.Error("control queue without CTRL_VQ: got nil error")
	}
	if err := d.SetFeatures(virtio.FVersion1 | virtio.NetFMQ); err == nil {
		t.Error("MQ without CTRL_VQ on a device that serves the control queue: got nil error")
	}
	if err := d.SetFeatures(virtio.FVersion1 | virtio.NetFMrgRxbuf); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		r := newRing(t)
		if err := d.startQueue(i, r.q, r.kick.File(), r.call.File()); err != nil {
			t.Fatal(err)
		}
	}
	// Without MQ the driver has one pair (virtio 1.2 §5.1.2): the rings
	// of the others do not exist.
	for i := 2; i < 4; i++ {
		r := newRing(t)
		if err := d.startQueue(i, r.q, r.kick.File(), r.call.File()); err == nil {
			t.Errorf("queue %d without MQ: got nil error", i)
		}
	}
	if n := attached(t, tp); n != 1 {
		t.Errorf("no MQ: %d TAP queues attached, want 1", n)
	}
}

// The config space's LINK_UP follows the TAP's administrative state, and
// each change raises the config interrupt.
func TestLinkStatus(t *testing.T) {
	cfgIRQ, err := engine.NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer cfgIRQ.Close()
	d, tp, ns := newTestDevice(t, 1, Options{ConfigInterrupt: cfgIRQ.File()})
	if d.Config().Status&virtio.LinkUp != 0 {
		t.Error("TAP down: config status has LINK_UP")
	}
	// A device made over a TAP that is up says so at once, and raises no
	// interrupt for it: the driver reads the config when it starts.
	testutil.Exec(t, ns, "ip", "link", "set", tp.Name(), "up")
	d2, err := New(Options{TAP: tp, ConfigInterrupt: cfgIRQ.File()})
	if err != nil {
		t.Fatal(err)
	}
	if d2.Config().Status&virtio.LinkUp == 0 {
		t.Error("device made over a TAP that is up: config status lacks LINK_UP")
	}
	d2.Close()
	testutil.Exec(t, ns, "ip", "link", "set", tp.Name(), "down")
	time.Sleep(200 * time.Millisecond)
	cfgIRQ.Drain() // d's own interrupts for the up and down above
	waitStatus := func(up bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if (d.Config().Status&virtio.LinkUp != 0) == up {
				// The watch changes the status, then interrupts.
				if !drained(cfgIRQ, time.Second) {
					t.Errorf("link up=%v: no config change interrupt", up)
				}
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("config status %v after 5s, want LINK_UP=%v", d.Config().Status, up)
	}
	for _, up := range []bool{true, false, true} {
		if err := tp.SetUp(up); err != nil {
			t.Fatal(err)
		}
		waitStatus(up)
	}
	// MTU changes are link changes too, but not of the status: no
	// interrupt for them.
	if err := tp.SetMTU(1400); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if cfgIRQ.Drain() {
		t.Error("MTU change raised a config interrupt")
	}
}

// Close stops the link watch: no goroutine or descriptor stays behind.
func TestCloseLeavesNothing(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	tp, err := tap.Create(tap.Options{NetNS: ns, Queues: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	r := newRing(t)
	fds, goroutines := testutil.SettledFds(t), runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		d, err := New(Options{TAP: tp, ControlQueue: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.SetFeatures(ctrlAcked); err != nil {
			t.Fatal(err)
		}
		if err := d.startQueue(4, r.q, r.kick.File(), r.call.File()); err != nil {
			t.Fatal(err)
		}
		d.Close()
		d.Close()
	}
	testutil.WaitFds(t, fds)
	for i := 0; i < 100 && runtime.NumGoroutine() > goroutines; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		t.Errorf("goroutines: %d after 20 devices closed, want at most %d as before", n, goroutines)
	}
}
