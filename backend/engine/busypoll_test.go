package engine

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// While the worker busy-polls the TX ring the driver is told not to kick
// (as vhost_net_busy_poll does), and frames posted without a kick still
// go; once polling ends the worker asks for kicks again before it sleeps,
// so a frame posted then is not left waiting, and an idle worker does
// not wake.
func TestBusyPollSuppressesKicks(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		t.Run(fmt.Sprintf("event_idx=%v", eventIdx), func(t *testing.T) {
			f := virtio.FVersion1
			if eventIdx {
				f |= virtio.FEventIdx
			}
			// A window long enough that a loaded machine's scheduling
			// delays fall inside it: the test posts frames 2 to 5 within
			// it, then waits for it to end, whatever the load.
			const window = time.Second
			r := newRig(t, rigOptions{features: f, guest: virtiotest.Options{EventIdx: eventIdx},
				mod: func(c *Config) { c.BusyPoll = window }})
			post := func(seq int) bool {
				if _, err := r.tx.PostTX(append(make([]byte, r.hdrLen), frame(60, seq)...)); err != nil {
					t.Fatal(err)
				}
				return r.tx.Kick()
			}
			expect := func(seq int) {
				t.Helper()
				got := r.readPeer(5 * time.Second)
				if got == nil || !bytes.Equal(got[r.hdrLen:], frame(60, seq)) {
					t.Fatalf("frame %d: got %x (counters %s, used flags %#x, avail %d)", seq, got, r.qp.Counters().Snapshot(), r.tx.UsedFlags(), r.tx.NextAvail())
				}
			}
			// kicksWanted reports whether the device asks for a kick for
			// the next chain posted (virtio 1.2 §2.7.7, §2.7.10).
			kicksWanted := func() bool {
				if eventIdx {
					return r.tx.AvailEvent() == r.tx.NextAvail()
				}
				return r.tx.UsedFlags()&1 == 0
			}
			// awaitSleep waits for the worker to end its polling window:
			// it asks for kicks again before it sleeps.
			awaitSleep := func(what string) {
				t.Helper()
				for deadline := time.Now().Add(window + 5*time.Second); !kicksWanted(); time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("%s: the worker never asked for kicks again (used flags %#x, avail event %d, avail %d)",
							what, r.tx.UsedFlags(), r.tx.AvailEvent(), r.tx.NextAvail())
					}
				}
			}
			awaitSleep("start")
			if !post(1) {
				t.Fatal("frame 1: the sleeping worker asked for no kick")
			}
			r.txKick.Notify()
			expect(1)
			// The worker polls for a window after that frame.
			for seq := 2; seq < 6; seq++ {
				if post(seq) {
					t.Errorf("frame %d: kick asked for while the worker polls", seq)
				}
				expect(seq)
			}
			awaitSleep("after polling")
			if w := idleWakeups(r.qp, 50*time.Millisecond); w > 2 {
				t.Errorf("%d wakeups of an idle worker after polling", w)
			}
			if !post(6) {
				t.Fatal("frame 6: the worker went to sleep without asking for a kick")
			}
			r.txKick.Notify()
			expect(6)
		})
	}
}
