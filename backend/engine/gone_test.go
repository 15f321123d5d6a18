package engine

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// The TAP device disappears under a running queue pair (ip link del, or
// its namespace goes): reads fail with EBADFD and the fd reports EPOLLERR
// for good, whatever epoll was asked to watch. The worker must neither
// spin on it, whether the guest has receive buffers or not, nor stop
// serving the guest's TX ring (its writes are counted as kernel drops).
func TestTAPDeviceGoneMidTraffic(t *testing.T) {
	r := newRig(t, rigOptions{net: true})
	src := listenUDP(t, r.ns, "udp4", "10.77.0.1:0")
	for _, starved := range []bool{false, true} {
		t.Run(fmt.Sprintf("starved=%v", starved), func(t *testing.T) {
			r.use(t)
			r.useTAP(false, r.hdrLen, 0)
			r.start(r.features)
			if starved {
				// Use up every receive buffer: the worker stops
				// watching the TAP.
				for i := 0; i < 300; i++ {
					src.WriteToUDP([]byte("to the guest"), &net.UDPAddr{IP: guest4.AsSlice(), Port: 9001})
				}
				waitFor(t, func() bool { return r.qp.Counters().Load(RXWaitBuffers) > 0 }, "rx_wait_buffers")
			}
			testutil.Exec(t, r.ns, "ip", "link", "del", "dev", r.tapName)
			if w := idleWakeups(r.qp, 200*time.Millisecond); w > 20 {
				t.Errorf("device gone: %d wakeups in 200 ms (counters %s)", w, r.qp.Counters().Snapshot())
			}
			if starved {
				// Buffers again: the worker watches the TAP, finds it
				// gone, and leaves it.
				r.rx.Reap()
				r.postRX(int(r.rx.Size())-r.rx.InFlight(), r.o.rxSlot)
				waitFor(t, func() bool { return r.qp.Counters().Load(RXKicks) > 0 }, "rx_kicks")
				if w := idleWakeups(r.qp, 200*time.Millisecond); w > 20 {
					t.Errorf("device gone, buffers posted: %d wakeups in 200 ms (counters %s)", w, r.qp.Counters().Snapshot())
				}
			}
			before := r.qp.Counters().Load(TXDropKernel)
			for i := range 5 {
				r.sendTX(r.seqFrame(i))
			}
			waitFor(t, func() bool { return r.qp.Counters().Load(TXDropKernel) == before+5 }, "TX frames counted as dropped")
			if w := idleWakeups(r.qp, 200*time.Millisecond); w > 20 {
				t.Errorf("device gone, after TX: %d wakeups in 200 ms (counters %s)", w, r.qp.Counters().Snapshot())
			}
			t.Logf("counters %s", r.qp.Counters().Snapshot())
		})
	}
}
