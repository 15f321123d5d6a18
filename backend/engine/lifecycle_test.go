package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// Stopping, restarting and detaching a queue pair while frames flow.

// resume stops the queue pair and starts a new one on new device queues
// over the same rings, from where the old ones stopped, as vhost-user
// does across GET_VRING_BASE and SET_VRING_BASE or an embedding VMM across
// a live update.
func (r *rig) resume() {
	r.t.Helper()
	old := r.qp
	if err := old.Stop(); err != nil {
		r.t.Fatalf("stop: %v", err)
	}
	rxq := resumeQueue(r.t, r.rx, old.cfg.RX)
	txq := resumeQueue(r.t, r.tx, old.cfg.TX)
	cfg := old.cfg
	cfg.RX, cfg.TX, cfg.Counters = rxq, txq, nil
	qp, err := New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := qp.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.qp = qp
}

func resumeQueue(t *testing.T, g *virtiotest.Guest, q virtio.Queue) virtio.Queue {
	t.Helper()
	cfg := g.SplitConfig()
	cfg.NextAvail, cfg.NextUsed = q.NextAvail(), g.UsedIdx()
	nq, err := virtio.NewSplitQueue(g.Memory(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return nq
}

// tapStat reads a statistics counter of the rig's TAP.
func (nr *netRig) tapStat(name string) uint64 {
	nr.t.Helper()
	out := testutil.Exec(nr.t, nr.ns, "cat", "/sys/class/net/"+nr.tapName+"/statistics/"+name)
	v, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	if err != nil {
		nr.t.Fatal(err)
	}
	return v
}

// seqFrames makes the UDP frames of a numbered stream from the guest to
// the router's port 9000.
func (nr *netRig) seqFrame(seq int) []byte {
	f := flow{srcMAC: guestMAC, dstMAC: nr.tapMAC, src: guest4, dst: net.IPv4(10, 77, 0, 1).To4(), sport: 9000, dport: 9000}
	p := make([]byte, 64)
	binary.BigEndian.PutUint32(p, uint32(seq))
	return f.udp(p, false)
}

// Stop and start a new queue pair on the same rings twenty times while
// frames flow both ways: every frame the guest sent arrives once and in
// order, every frame the kernel queued for the guest arrives once and in
// order or was dropped by the TAP while no reader was there (counted in
// its tx_dropped), no receive buffer comes back empty, and no goroutine
// or file descriptor is left behind.
func TestTAPResetMidTraffic(t *testing.T) {
	nr := newNetRig(t, netOptions{})
	const total, restarts = 4000, 20
	sink := listenUDP(t, nr.ns, "udp4", "10.77.0.1:9000")
	src := listenUDP(t, nr.ns, "udp4", "10.77.0.1:0")

	nr.stop()
	runtime.GC()
	fds0, gor0 := testutil.OpenFds(t), runtime.NumGoroutine()
	nr.start(nr.features)

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
		dst := &net.UDPAddr{IP: guest4, Port: 9001}
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
		for _, u := range nr.rx.Reap() {
			if len(u.Data) <= nr.hdrLen {
				empty++
			} else if p, err := peekPacket(u.Data[nr.hdrLen:]); err == nil && p.proto == protUDP && p.dport == 9001 {
				got = append(got, int(binary.BigEndian.Uint32(p.payload)))
			}
			nr.postRX(1, nr.rxBuf)
		}
	}
	every := total / restarts
	for seq := 0; seq < total; seq++ {
		for nr.tx.InFlight() >= 128 {
			nr.tx.Reap()
			reap()
			time.Sleep(50 * time.Microsecond)
		}
		nr.sendTX(nr.seqFrame(seq))
		reap()
		if seq%16 == 15 {
			// Keep pace with the source, so restarts fall among
			// frames both ways.
			time.Sleep(time.Millisecond)
		}
		if seq%every == every/2 {
			nr.resume()
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
	for time.Now().Before(deadline) && uint64(len(got))+nr.tapStat("tx_dropped") < uint64(n) {
		reap()
		time.Sleep(time.Millisecond)
	}
	tx := <-sunk
	if len(tx) != total || !ascending(tx, total) {
		t.Errorf("sink got %d of %d guest frames, in order: %v", len(tx), total, ascending(tx, total))
	}
	dropped := nr.tapStat("tx_dropped")
	if !strictlyRising(got) || uint64(len(got))+dropped != uint64(n) {
		t.Errorf("guest got %d of %d frames in order %v, the TAP dropped %d", len(got), n, strictlyRising(got), dropped)
	}
	if empty != 0 {
		t.Errorf("%d receive buffers came back empty", empty)
	}
	t.Logf("%d restarts; guest got %d of %d frames, the TAP dropped %d while no reader was there", restarts, len(got), n, dropped)

	nr.stop()
	waitFor(t, func() bool { return runtime.NumGoroutine() <= gor0 }, fmt.Sprintf("goroutines back to %d", gor0))
	if fds := testutil.OpenFds(t); fds != fds0 {
		t.Errorf("open fds: %d after, %d before", fds, fds0)
	}
	nr.start(nr.features)
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
	nr := newNetRig(t, netOptions{})
	src := listenUDP(t, nr.ns, "udp4", "10.77.0.1:0")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		dst := &net.UDPAddr{IP: guest4, Port: 9001}
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
		for _, u := range nr.rx.Reap() {
			if bytes.Contains(u.Data, []byte("to the guest")) {
				n++
			}
			nr.postRX(1, nr.rxBuf)
		}
		return n
	}
	waitFor(t, func() bool { return drain() > 0 }, "frames to the guest")

	if err := nr.dev.DisableQueue(0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	drain()
	// Guest traffic while detached: written or refused, never a spin.
	for i := range 10 {
		nr.sendTX(nr.seqFrame(i))
	}
	if w := idleWakeups(nr.qp, 200*time.Millisecond); w > 20 {
		t.Errorf("detached queue: %d wakeups in 200 ms (counters %s)", w, nr.qp.Counters().Snapshot())
	}
	if n := drain(); n != 0 {
		t.Errorf("detached queue: %d frames reached the guest", n)
	}
	t.Logf("detached: counters %s", nr.qp.Counters().Snapshot())

	if err := nr.dev.EnableQueue(0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return drain() > 0 }, "frames to the guest after the queue is attached again")
}
