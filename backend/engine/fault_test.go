package engine

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// memfdGuest returns an Alloc for virtiotest guests that maps a memfd per
// guest (testutil.SharedMemory), and a function that shrinks them all.
func memfdGuest(t *testing.T) (alloc func(int) ([]byte, error), shrink func()) {
	var shrinks []func()
	alloc = func(n int) ([]byte, error) {
		m, shrink := testutil.SharedMemory(t, n)
		shrinks = append(shrinks, shrink)
		return m, nil
	}
	return alloc, func() {
		for _, shrink := range shrinks {
			shrink()
		}
	}
}

// A front-end that shrinks the memory it shared (the worker's next load
// from a ring raises SIGBUS) stops that queue pair with ErrMemoryFault and
// a counter, not the process; the worker leaves no descriptor behind.
func TestGuestMemoryFault(t *testing.T) {
	alloc, shrink := memfdGuest(t)
	before := testutil.SettledFds(t)
	r := newRig(t, rigOptions{size: 64, guest: virtiotest.Options{Alloc: alloc}})
	r.sendTX(frame(100, 1))
	if got := r.readPeer(2 * time.Second); got == nil || !bytes.Equal(got[r.hdrLen:], frame(100, 1)) {
		t.Fatal("frame before the fault did not arrive")
	}
	shrink()
	// The test must not touch guest memory now: kick without the guest.
	r.txKick.Notify()
	waitFor(t, func() bool { return r.qp.Counters().Load(MemoryFaults) == 1 }, "memory_faults=1")
	err := r.qp.Stop()
	if !errors.Is(err, ErrMemoryFault) {
		t.Fatalf("Stop: got %v, want ErrMemoryFault", err)
	}
	// What the rig holds until cleanup stays (a socketpair, four
	// eventfds, two memfds); the queue pair's own descriptors (epoll, its
	// stop eventfd, io_uring) are gone.
	testutil.WaitFds(t, before+8)
}
