package engine

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
)

// badKicks make the kicks a hostile front-end would send if nothing
// checked them (KickFromFile refuses both): the read end of a pipe whose
// writer closed, which polls readable at end of file for ever, and a
// semaphore eventfd holding 2^63, which gives up 1 per read. They are
// wrapped as they are, as an EventFD nobody checked.
var badKicks = []struct {
	name string
	make func(t *testing.T) *EventFD
}{
	{"pipe whose writer closed", func(t *testing.T) *EventFD {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		unix.Close(p[1])
		return &EventFD{f: os.NewFile(uintptr(p[0]), "pipe"), fd: p[0]}
	}},
	{"semaphore eventfd at 2^63", func(t *testing.T) *EventFD {
		fd, err := unix.Eventfd(0, unix.EFD_SEMAPHORE|unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeCount(fd, 1<<63); err != nil {
			t.Fatal(err)
		}
		return &EventFD{f: os.NewFile(uintptr(fd), "semaphore eventfd"), fd: fd}
	}},
}

// A kick that stays readable whatever the worker reads never makes it
// spin: over the second after the start the process uses under 5% of a
// CPU. The pipe, which will never kick again, breaks its ring (counted
// once in broken_rings) and leaves the epoll set; the semaphore wakes the
// worker once per write, as a kick should, and its ring works. Either way
// the other ring moves frames.
func TestBadKick(t *testing.T) {
	frame := udp(guestToHost(), []byte("to and fro"), false)
	for _, ring := range []string{"TX", "RX"} {
		for _, bad := range badKicks {
			t.Run(ring+" kick is a "+bad.name, func(t *testing.T) {
				r := newRig(t, rigOptions{stopped: true})
				k := bad.make(t)
				defer k.Close()
				if ring == "TX" {
					r.txKick = k
				} else {
					r.rxKick = k
				}
				r.start(r.features)
				defer r.stop()
				cpu := testutil.CPUShare(t, time.Second)
				if cpu > 0.05 {
					t.Errorf("%.0f%% of a CPU over the second after the start, want under 5%% (counters %s)", 100*cpu, r.qp.Counters().Snapshot())
				}
				t.Logf("%.1f%% of a CPU over the second after the start", 100*cpu)
				broken := uint64(0)
				if strings.HasPrefix(bad.name, "pipe") {
					broken = 1
				}
				if got := r.qp.Counters().Load(BrokenRings); got != broken {
					t.Errorf("broken_rings %d, want %d", got, broken)
				}
				// The other ring; and the semaphore's own.
				moveTX := ring == "RX" || broken == 0
				moveRX := ring == "TX" || broken == 0
				if moveTX {
					r.sendTX(frame)
					if got := r.readN(1); !bytes.Equal(got[0][r.hdrLen:], frame) {
						t.Errorf("TX: the TAP got %x, want %x", got[0][r.hdrLen:], frame)
					}
				}
				if moveRX {
					r.postRX(4, 2048)
					r.writePeer(frame)
					if got := r.reapFrames(1, 2*time.Second); len(got) != 1 || !bytes.Equal(got[0], frame) {
						t.Errorf("RX: the guest got %x, want %x (counters %s)", got, frame, r.qp.Counters().Snapshot())
					}
				}
				if w := idleWakeups(r.qp, 200*time.Millisecond); w > 2 {
					t.Errorf("%d wakeups in 200 ms of nothing to do", w)
				}
				t.Logf("counters %s", r.qp.Counters().Snapshot())
			})
		}
	}
}

// guestToHost is a UDP flow from the guest to the host.
func guestToHost() frametest.Spec {
	return frametest.Spec{SrcMAC: guestMAC, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Src: guest4, Dst: host4,
		SrcPort: 9000, DstPort: 9000}
}

// failingCall is a call notifier that fails every time, as a call fd the
// front-end broke would, and tells the test of each call.
type failingCall struct {
	calls  atomic.Uint64
	called chan struct{}
}

func (c *failingCall) Notify() error {
	c.calls.Add(1)
	c.called <- struct{}{}
	return fmt.Errorf("signal eventfd 99: %w", unix.EPIPE)
}

// syncBuffer is a log sink the worker and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A call notifier that fails for each of 10,000 frames is counted 10,000
// times in interrupt_errors and logged once: the front-end does not
// decide how much the helper logs.
func TestInterruptFailureLogged(t *testing.T) {
	const frames = 10000
	var out syncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Trace})
	call := &failingCall{called: make(chan struct{}, 1)}
	r := newRig(t, rigOptions{mod: func(c *Config) { c.TXCall, c.Logger = call, log }})
	frame := udp(guestToHost(), []byte("one interrupt each"), false)
	hdr := []virtio.NetHdr{{}}
	buf := make([]byte, 2048)
	for i := range frames {
		r.send(hdr, [][]byte{frame})
		select {
		case <-call.called:
		case <-time.After(2 * time.Second):
			t.Fatalf("frame %d: no interrupt in 2 s (counters %s)", i, r.qp.Counters().Snapshot())
		}
		// Written before the interrupt: the read does not wait.
		if _, err := unix.Read(r.peer, buf); err != nil {
			t.Fatalf("frame %d: read peer: %v", i, err)
		}
	}
	c := r.qp.Counters().Snapshot()
	if c[InterruptErrors] != frames || c[TXInterrupts] != 0 || call.calls.Load() != frames {
		t.Errorf("interrupt_errors %d, tx_interrupts %d, calls %d; want %d, 0, %d", c[InterruptErrors], c[TXInterrupts], call.calls.Load(), frames, frames)
	}
	if lines := strings.Count(out.String(), "\n"); lines != 1 || !strings.Contains(out.String(), "TX interrupt failed") {
		t.Errorf("%d log lines, want 1 saying TX interrupt failed:\n%s", lines, out.String())
	}
}
