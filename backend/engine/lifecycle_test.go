package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// Stopping, restarting and detaching a queue pair while frames flow.

// seqFrame is frame seq of a numbered stream of UDP datagrams from the
// guest to the router's port 9000.
func (r *rig) seqFrame(seq int) []byte {
	p := make([]byte, 64)
	binary.BigEndian.PutUint32(p, uint32(seq))
	return udp(r.toHost(9000, 9000), p, false)
}

// Stop and start a new queue pair on the same rings twenty times while
// frames flow both ways: every frame the guest sent arrives once and in
// order, every frame the kernel queued for the guest arrives once and in
// order or was dropped by the TAP while no reader was there (counted in
// its tx_dropped), no receive buffer comes back empty, and no goroutine
// or file descriptor is left behind.
func TestTAPResetMidTraffic(t *testing.T) {
	r := newRig(t, rigOptions{net: true})
	const total, restarts = 4000, 20
	sink := listenUDP(t, r.ns, "udp4", "10.77.0.1:9000")
	src := listenUDP(t, r.ns, "udp4", "10.77.0.1:0")

	r.stop()
	runtime.GC()
	fds0, gor0 := testutil.OpenFds(t), runtime.NumGoroutine()
	r.start(r.features)

	// The sink reads what the guest sends; the source paces frames to the
	// guest.
	sunk := make(chan []int, 1)
	go func() {
		var got []int
		buf := make([]byte, 2048)
		for len(got) < total {
			sink.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := sink.Read(buf)
			if err != nil || n != 64 {
				break
			}
			got = append(got, int(binary.BigEndian.Uint32(buf)))
		}
		sunk <- got
	}()
	sent := make(chan int, 1)
	go func() {
		p := make([]byte, 64)
		dst := &net.UDPAddr{IP: guest4.AsSlice(), Port: 9001}
		i := 0
		for ; i < total; i++ {
			binary.BigEndian.PutUint32(p, uint32(i))
			if _, err := src.WriteToUDP(p, dst); err != nil {
				break
			}
			if i%16 == 15 {
				time.Sleep(time.Millisecond)
			}
		}
		sent <- i
	}()

	var got []int
	empty := 0
	reap := func() {
		for _, u := range r.rx.Reap() {
			if len(u.Data) <= r.hdrLen {
				empty++
			} else if p, err := peekPacket(u.Data[r.hdrLen:]); err == nil && p.Proto == frametest.ProtoUDP && p.DstPort == 9001 {
				got = append(got, int(binary.BigEndian.Uint32(p.Payload)))
			}
			r.postRX(1, r.o.rxSlot)
		}
	}
	every := total / restarts
	for seq := 0; seq < total; seq++ {
		for r.tx.InFlight() >= 128 {
			r.tx.Reap()
			reap()
			time.Sleep(50 * time.Microsecond)
		}
		r.sendTX(r.seqFrame(seq))
		reap()
		if seq%16 == 15 {
			// Keep pace with the source, so restarts fall among
			// frames both ways.
			time.Sleep(time.Millisecond)
		}
		if seq%every == every/2 {
			r.resume()
		}
	}
	n := -1
	for n < 0 {
		select {
		case n = <-sent:
		default:
			reap()
			time.Sleep(100 * time.Microsecond)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && uint64(len(got))+r.tapStat("tx_dropped") < uint64(n) {
		reap()
		time.Sleep(time.Millisecond)
	}
	tx := <-sunk
	if len(tx) != total || !ascending(tx, total) {
		t.Errorf("sink got %d of %d guest frames, in order: %v", len(tx), total, ascending(tx, total))
	}
	dropped := r.tapStat("tx_dropped")
	if !strictlyRising(got) || uint64(len(got))+dropped != uint64(n) {
		t.Errorf("guest got %d of %d frames in order %v, the TAP dropped %d", len(got), n, strictlyRising(got), dropped)
	}
	if empty != 0 {
		t.Errorf("%d receive buffers came back empty", empty)
	}
	t.Logf("%d restarts; guest got %d of %d frames, the TAP dropped %d while no reader was there", restarts, len(got), n, dropped)

	r.stop()
	waitFor(t, func() bool { return runtime.NumGoroutine() <= gor0 }, fmt.Sprintf("goroutines back to %d", gor0))
	if fds := testutil.OpenFds(t); fds != fds0 {
		t.Errorf("open fds: %d after, %d before", fds, fds0)
	}
	r.start(r.features)
}

// ascending reports whether got is 0, 1, ..., n-1.
func ascending(got []int, n int) bool {
	if len(got) != n {
		return false
	}
	for i, v := range got {
		if v != i {
			return false
		}
	}
	return true
}

func strictlyRising(got []int) bool {
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			return false
		}
	}
	return true
}

// idleWakeups counts the worker's wakeups over d.
func idleWakeups(qp *QueuePair, d time.Duration) uint64 {
	w0 := qp.Counters().Load(Wakeups)
	time.Sleep(d)
	return qp.Counters().Load(Wakeups) - w0
}

// Detaching the queue (the guest turned the queue pair off, or the VMM
// disabled the ring) while the namespace keeps sending to the guest: the
// worker sleeps instead of spinning, and frames flow again once the queue
// is attached.
func TestTAPDisableQueueMidTraffic(t *testing.T) {
	r := newRig(t, rigOptions{net: true})
	src := listenUDP(t, r.ns, "udp4", "10.77.0.1:0")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		dst := &net.UDPAddr{IP: guest4.AsSlice(), Port: 9001}
		for {
			select {
			case <-stop:
				return
			default:
			}
			src.WriteToUDP([]byte("to the guest"), dst)
			time.Sleep(50 * time.Microsecond)
		}
	}()
	defer func() { close(stop); <-done }()
	drain := func() int {
		n := 0
		for _, u := range r.rx.Reap() {
			if bytes.Contains(u.Data, []byte("to the guest")) {
				n++
			}
			r.postRX(1, r.o.rxSlot)
		}
		return n
	}
	waitFor(t, func() bool { return drain() > 0 }, "frames to the guest")

	if err := r.dev.DisableQueue(0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	drain()
	// Guest traffic while detached: written or refused, never a spin.
	for i := range 10 {
		r.sendTX(r.seqFrame(i))
	}
	if w := idleWakeups(r.qp, 200*time.Millisecond); w > 20 {
		t.Errorf("detached queue: %d wakeups in 200 ms (counters %s)", w, r.qp.Counters().Snapshot())
	}
	if n := drain(); n != 0 {
		t.Errorf("detached queue: %d frames reached the guest", n)
	}
	t.Logf("detached: counters %s", r.qp.Counters().Snapshot())

	if err := r.dev.EnableQueue(0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return drain() > 0 }, "frames to the guest after the queue is attached again")
}
