package backend_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// vmRig is a two-pair device that serves its control queue, on a TAP in
// a namespace of its own where the host is 10.0.0.1, and a Go guest
// whose driver lays out its queues as the acked features say.
type vmRig struct {
	t      *testing.T
	ns     string
	tap    *tap.Device
	dev    *backend.Device
	acked  virtio.Features
	vm     *virtiotest.Machine
	queues []backend.QueueConfig
}

func newVMRig(t *testing.T, pairs int) *vmRig {
	t.Helper()
	testutil.RequireTUN(t)
	r := &vmRig{t: t, ns: testutil.NetNS(t)}
	var err error
	if r.tap, err = tap.Create(tap.Options{Queues: pairs, NetNS: r.ns}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.tap.Close() })
	testutil.Exec(t, r.ns, "ip", "addr", "add", "10.0.0.1/24", "dev", r.tap.Name())
	testutil.Exec(t, r.ns, "ip", "link", "set", r.tap.Name(), "up")
	if r.dev, err = backend.New(backend.Options{TAP: r.tap, MAC: guestMAC, ControlQueue: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.dev.Close)
	return r
}

// layOut acks features and lays out every queue of the device in one
// guest memory, as the driver does between FEATURES_OK and DRIVER_OK,
// with fresh eventfds for each.
func (r *vmRig) layOut(acked virtio.Features) {
	r.t.Helper()
	if err := r.dev.SetFeatures(acked); err != nil {
		r.t.Fatal(err)
	}
	r.acked = acked
	specs := make([]virtiotest.QueueSpec, r.dev.Queues())
	for i := range specs {
		specs[i] = virtiotest.QueueSpec{Size: 256, SlotSize: 2048,
			Packed: acked.Has(virtio.FRingPacked), EventIdx: acked.Has(virtio.FEventIdx)}
	}
	var err error
	if r.vm, err = virtiotest.NewMachine(virtiotest.MachineOptions{}, specs...); err != nil {
		r.t.Fatal(err)
	}
	r.queues = make([]backend.QueueConfig, len(specs))
	for i := range r.queues {
		a := r.vm.Queue(i).Areas()
		r.queues[i] = backend.QueueConfig{Size: a.Size, DescAddr: a.Desc, DriverAddr: a.Driver, DeviceAddr: a.Device,
			Kick: newEventFD(), Call: newEventFD()}
		q := r.queues[i]
		r.t.Cleanup(func() { q.Kick.Close(); q.Call.Close() })
	}
}

// arp has the guest ask for 10.0.0.1 on transmit queue p, resending
// until the kernel's reply arrives on one of the first pairs receive
// queues (the hash steering program sends what is not IP to queue 0),
// and fails the test if none does.
func (r *vmRig) arp(p, pairs int) {
	r.t.Helper()
	for i := 0; i < pairs; i++ {
		rx := r.vm.Queue(2 * i)
		for {
			if _, err := rx.PostRX(2048); err != nil {
				break
			}
		}
		kick(rx, r.queues[2*i].Kick)
	}
	tx := r.vm.Queue(2*p + 1)
	hdr := make([]byte, virtio.HdrLenFor(r.acked))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if _, err := tx.PostTX(append(hdr, arpRequest(guestMAC, guestIP, hostIP)...)); err != nil {
			r.t.Fatal(err)
		}
		kick(tx, r.queues[2*p+1].Kick)
		if r.replied(pairs, len(hdr), 500*time.Millisecond) {
			tx.Reap()
			return
		}
	}
	r.t.Fatalf("TX %d: no ARP reply in 10 s; counters %v", p, r.dev.Counters(p).Snapshot())
}

// replied waits up to d for an ARP reply on the first pairs receive
// queues, each announced by its interrupt.
func (r *vmRig) replied(pairs, hdrLen int, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		for i := 0; i < pairs; i++ {
			g, call := r.vm.Queue(2*i), r.queues[2*i].Call
			var n [8]byte
			call.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if _, err := call.Read(n[:]); err != nil {
				continue
			}
			// As Linux's NAPI poll does: reap, ask for the next interrupt
			// (EVENT_IDX's used_event), then reap once more what the
			// device used before it could see the request
			// (virtqueue_enable_cb_prepare, virtqueue_poll).
			used := g.Reap()
			g.EnableInterrupts()
			used = append(used, g.Reap()...)
			for _, u := range used {
				f := u.Data[hdrLen:]
				if len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 {
					return true
				}
			}
			if err := g.Err(); err != nil {
				r.t.Fatal(err)
			}
		}
	}
	return false
}

// ctrl sends one control command on the control queue and returns the
// device's ack.
func (r *vmRig) ctrl(index int, cmd virtio.CtrlCommand) virtio.CtrlAck {
	r.t.Helper()
	g := r.vm.Queue(index)
	b := cmd.Append(nil, virtio.LittleEndian)
	if _, err := g.Post([][]byte{b[:2], b[2:]}, []int{1}); err != nil {
		r.t.Fatal(err)
	}
	kick(g, r.queues[index].Kick)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if u := g.Reap(); len(u) == 1 && u[0].Len == 1 {
			return virtio.CtrlAck(u[0].Data[0])
		}
	}
	r.t.Fatal("no answer from the control queue in 5 s")
	return 0
}

func (r *vmRig) attached() int {
	r.t.Helper()
	info, err := r.tap.Info()
	if err != nil {
		r.t.Fatal(err)
	}
	return info.Queues
}

// linuxAcks is what a Linux guest acks of the device's offer, with the
// ring layout under test.
func linuxAcks(dev *backend.Device, packed, eventIdx bool) virtio.Features {
	f := dev.Features() &^ (virtio.FRingPacked | virtio.FEventIdx)
	if packed {
		f |= virtio.FRingPacked
	}
	if eventIdx {
		f |= virtio.FEventIdx
	}
	return f
}

// Activate builds the rings the acked features say from the driver's
// areas alone: frames move on each layout, VQ_PAIRS_SET brings in the
// second pair, Reset reports where each queue stopped, and Activate with
// those states resumes the rings where they were; nothing is left open.
func TestActivate(t *testing.T) {
	for _, layout := range []struct{ packed, eventIdx bool }{{false, false}, {false, true}, {true, false}, {true, true}} {
		t.Run(fmt.Sprintf("packed=%v,event_idx=%v", layout.packed, layout.eventIdx), func(t *testing.T) {
			r := newVMRig(t, 2)
			fds := testutil.SettledFds(t)
			r.layOut(linuxAcks(r.dev, layout.packed, layout.eventIdx))
			if err := r.dev.Activate(r.vm.Memory(), r.queues); err != nil {
				t.Fatal(err)
			}
			if err := r.dev.Activate(r.vm.Memory(), r.queues); err == nil {
				t.Error("Activate on an active device: got nil error")
			}
			r.arp(0, 1)
			if n := r.attached(); n != 1 {
				t.Errorf("before VQ_PAIRS_SET: %d TAP queues attached, want 1", n)
			}
			if ack := r.ctrl(4, virtio.CtrlCommand{Class: virtio.CtrlMQ, Command: virtio.CtrlMQVQPairsSet, Pairs: 2}); ack != virtio.CtrlOK {
				t.Fatalf("VQ_PAIRS_SET 2: ack %d", ack)
			}
			if n := r.attached(); n != 2 {
				t.Errorf("after VQ_PAIRS_SET 2: %d TAP queues attached, want 2", n)
			}
			r.arp(1, 2)

			sent := r.dev.Counters(0).Snapshot()
			states := r.dev.Reset()
			if len(states) != r.dev.Queues() {
				t.Fatalf("Reset: %d states, want %d", len(states), r.dev.Queues())
			}
			if n := r.attached(); n != 0 {
				t.Errorf("after Reset: %d TAP queues attached, want 0", n)
			}
			// Queue 1 (TX 0) stopped after every frame it sent (one
			// descriptor each); queue 4 (control) after its one command.
			if got := states[1].NextAvail &^ virtio.PackedWrap; uint64(got) != sent[engine.TXPackets] {
				t.Errorf("TX 0 stopped at %d, want %d (frames sent)", got, sent[engine.TXPackets])
			}
			// A packed ring counts descriptors, a split one chains: the
			// command was one chain of three.
			want := uint16(1)
			if layout.packed {
				want = 3
			}
			if got := states[4].NextAvail &^ virtio.PackedWrap; got != want {
				t.Errorf("control queue stopped at %d, want %d", got, want)
			}

			// The same rings, resumed where they stopped.
			if err := r.dev.SetFeatures(r.acked); err != nil {
				t.Fatal(err)
			}
			for i := range r.queues {
				r.queues[i].Resume = &states[i]
			}
			if err := r.dev.Activate(r.vm.Memory(), r.queues); err != nil {
				t.Fatal(err)
			}
			r.arp(0, 1)
			r.dev.Reset()
			for _, q := range r.queues {
				q.Kick.Close()
				q.Call.Close()
			}
			r.dev.Close()
			testutil.WaitFds(t, fds)
		})
	}
}

// Activate refuses what the acked features rule out, and whatever it
// refuses leaves nothing running: no queue pair, no attached TAP queue,
// no duplicated eventfd.
func TestActivateRefuses(t *testing.T) {
	r := newVMRig(t, 2)
	fds := testutil.SettledFds(t)
	if err := r.dev.Activate(nil, nil); err == nil {
		t.Error("Activate without memory: got nil error")
	}
	acked := linuxAcks(r.dev, false, true) &^ virtio.NetFMQ // one pair: the control queue is virtqueue 2
	r.layOut(acked)
	mem := r.vm.Memory()
	outside := r.queues[1]
	outside.DescAddr = 1 << 40
	noKick := r.queues[1]
	noKick.Kick = nil
	for _, tc := range []struct {
		name   string
		queues []backend.QueueConfig
		want   string
	}{
		{"more queues than the device has", append(r.queues[:5:5], r.queues[0]), "the device has 5"},
		{"pair 1 without MQ", r.queues[:4], "queue 3 is enabled"},
		{"no kick", []backend.QueueConfig{r.queues[0], noKick}, "kick and a call"},
		{"TX ring outside guest memory", []backend.QueueConfig{r.queues[0], outside}, "queue 1"},
	} {
		err := r.dev.Activate(mem, tc.queues)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error saying %q", tc.name, err, tc.want)
		}
		if n := r.attached(); n != 0 {
			t.Errorf("%s: %d TAP queues attached after the refusal, want 0", tc.name, n)
		}
	}
	// What was refused left the device as it was: the right queues start.
	// Without MQ, virtqueue 2 is the control queue (virtio 1.2 §5.1.2).
	if err := r.dev.Activate(mem, r.queues[:3]); err != nil {
		t.Fatal(err)
	}
	r.arp(0, 1)
	if ack := r.ctrl(2, virtio.CtrlCommand{Class: virtio.CtrlRX, Command: virtio.CtrlRXPromisc, On: true}); ack != virtio.CtrlOK {
		t.Errorf("RX PROMISC on virtqueue 2: ack %d, want OK", ack)
	}
	r.dev.Reset()
	if err := r.dev.Activate(mem, r.queues[:3]); err == nil {
		t.Error("Activate after Reset without SetFeatures: got nil error")
	}
	for _, q := range r.queues {
		q.Kick.Close()
		q.Call.Close()
	}
	r.dev.Close()
	testutil.WaitFds(t, fds)
}
