package engine

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
)

// The batch paths: many frames per pass, through io_uring or one system
// call each, and the fallback from io_uring to system calls.

var ioModes = []struct {
	name string
	mod  func(*Config)
}{
	{"iouring", nil},
	{"syscalls", func(c *Config) { c.NoIOURing = true }},
}

// requireRing fails the test (skips outside CI) when a queue pair that
// should batch through io_uring does not.
func requireRing(t *testing.T, r *rig, mode string) {
	t.Helper()
	if got, want := r.qp.IOURing(), mode == "iouring"; got != want {
		if want {
			testutil.Skip(t, "no io_uring on this kernel: the queue pair uses system calls")
		}
		t.Fatalf("IOURing: got %v, want %v", got, want)
	}
}

// txBatchFrames are the frames of the TX batch tests: small ones that go
// as a copy, larger ones straight from guest memory, and bad ones that
// never reach the TAP, interleaved.
func txBatchFrames(hdrLen int) (msgs, want [][]byte) {
	sizes := []int{60, 1514, copyBreak, copyBreak + 1, 9000}
	for i := range 200 {
		hdr := make([]byte, hdrLen)
		f := frame(sizes[i%len(sizes)], i)
		switch {
		case i%17 == 5:
			f = f[:13] // a runt
		case i%23 == 7:
			hdr[1] = byte(virtio.GSOTCPv4) // not negotiated
		default:
			want = append(want, f)
		}
		msgs = append(msgs, append(hdr, f...))
	}
	return msgs, want
}

func TestTXBatch(t *testing.T) {
	for _, m := range ioModes {
		for _, packed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/packed=%v", m.name, packed), func(t *testing.T) {
				r := newRig(t, rigOptions{packed: packed, size: 256, txSlot: 9100, mod: m.mod})
				requireRing(t, r, m.name)
				msgs, want := txBatchFrames(r.hdrLen)
				for _, msg := range msgs {
					if _, err := r.tx.PostTX(msg); err != nil {
						t.Fatal(err)
					}
				}
				r.tx.Kick()
				r.txKick.Notify()
				for i, w := range want {
					got := r.readPeer(2 * time.Second)
					if got == nil {
						t.Fatalf("frame %d of %d: nothing arrived (counters %s)", i, len(want), r.qp.Counters().Snapshot())
					}
					if !bytes.Equal(got[r.hdrLen:], w) {
						t.Fatalf("frame %d: got %d bytes (seq %d), want %d bytes (seq %d)", i, len(got)-r.hdrLen,
							seqOf(got[r.hdrLen:]), len(w), seqOf(w))
					}
				}
				if extra := r.readPeer(50 * time.Millisecond); extra != nil {
					t.Errorf("a frame more than sent reached the TAP: %d bytes", len(extra))
				}
				waitFor(t, func() bool { r.tx.Reap(); return r.tx.InFlight() == 0 }, "TX chains returned")
				waitFor(t, func() bool { return r.qp.Counters().Load(TXPackets) == uint64(len(want)) }, "tx_packets")
				s := r.qp.Counters().Snapshot()
				if bad := uint64(len(msgs) - len(want)); s[TXDropBadHeader] != bad || s[TXDropKernel] != 0 {
					t.Errorf("counters %s: want tx_drop_bad_header=%d, tx_drop_kernel=0", s, bad)
				}
				// One kick, 200 chains: a few passes of up to Budget
				// (64) frames, not one per frame.
				if s[TXBatches] > 8 {
					t.Errorf("tx_batches %d for 200 chains posted at once, want at most 8", s[TXBatches])
				}
			})
		}
	}
}

func seqOf(f []byte) int {
	if len(f) < 18 {
		return -1
	}
	return int(uint32(f[14])<<24 | uint32(f[15])<<16 | uint32(f[16])<<8 | uint32(f[17]))
}

func TestRXBatch(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features virtio.Features
		rxSlot   int
		sizes    []int
		tooBig   int // every 7th frame, dropped
	}{
		// Chains that each hold the largest frame: read in batches.
		{"mtu buffers", virtio.FVersion1, 2048, []int{60, 1514, 1518, 100}, 2036},
		{"mergeable mtu", virtio.FVersion1 | virtio.NetFMrgRxbuf, 2048, []int{60, 1514, 1518, 100}, 3000},
		{"big buffers", virtio.FVersion1 | virtio.NetFGuestCsum | virtio.NetFGuestTSO4, 65550 + 12,
			[]int{60, 65550, 1514, 30000}, 0},
		// Chains smaller than the largest frame: one read at a time for
		// large frames ...
		{"mergeable gso", virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFGuestCsum | virtio.NetFGuestTSO4, 4096,
			[]int{60, 65550, 1514, 9000}, 0},
		// ... bounce batches for small ones, a large one now and then
		// copied out of its bounce buffer.
		{"mergeable gso small frames", virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFGuestCsum | virtio.NetFGuestTSO4, 2048,
			[]int{60, 1514, 100, 2036, 300, 60, 1000, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 9000, 60, 60,
				60, 60, 60, 60, 60, 60, 60, 60, 65550, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60}, 0},
	} {
		for _, m := range ioModes {
			for _, packed := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/packed=%v", tc.name, m.name, packed), func(t *testing.T) {
					r := newRig(t, rigOptions{features: tc.features, rxSlot: tc.rxSlot, packed: packed, size: 256, mod: m.mod})
					requireRing(t, r, m.name)
					// The frames wait in the "TAP" before the guest posts
					// a buffer, so that the engine finds many at once.
					var want [][]byte
					n := 120
					if tc.rxSlot > 4096 || tc.features.Has(virtio.NetFGuestTSO4) {
						n = 40 // keep the socket's 4 MiB for big frames
					}
					n = max(n, len(tc.sizes))
					for i := range n {
						f := frame(tc.sizes[i%len(tc.sizes)], i)
						if tc.tooBig != 0 && i%7 == 3 {
							f = frame(tc.tooBig, i)
						} else {
							want = append(want, f)
						}
						r.writePeer(f)
					}
					r.postRX(int(r.rx.Size()), tc.rxSlot)
					got := r.reapFrames(len(want), 3*time.Second)
					if len(got) != len(want) {
						t.Fatalf("got %d frames, want %d (counters %s)", len(got), len(want), r.qp.Counters().Snapshot())
					}
					for i := range want {
						if !bytes.Equal(got[i], want[i]) {
							t.Fatalf("frame %d: got %d bytes (seq %d), want %d bytes (seq %d)", i, len(got[i]), seqOf(got[i]),
								len(want[i]), seqOf(want[i]))
						}
					}
					waitFor(t, func() bool { return r.qp.Counters().Load(RXPackets) == uint64(len(want)) }, "rx_packets")
					s := r.qp.Counters().Snapshot()
					if tooBig := uint64(n - len(want)); s[RXDropTruncated] != tooBig || s[RXDropKernel] != 0 {
						t.Errorf("counters %s: want rx_drop_truncated=%d, rx_drop_kernel=0", s, tooBig)
					}
				})
			}
		}
	}
}

// fakeRing does a batch's operations itself, one system call each, so that
// tests can make the kernel's answers what they need.
type fakeRing struct {
	mu      sync.Mutex
	ops     []fakeOp
	refuse  bool                      // every operation: EOPNOTSUPP, nothing done
	fail    bool                      // Submit fails, nothing done
	miss    func(submit, op int) bool // reads to answer EAGAIN without reading
	submits int                       // Submits with operations
	most    int                       // the most operations in one
	sizes   []int                     // the operations of each
	closed  bool
}

type fakeOp struct {
	write bool
	fd    int
	b     []byte
	iov   []unix.Iovec
}

func (f *fakeRing) add(op fakeOp) bool         { f.ops = append(f.ops, op); return true }
func (f *fakeRing) Read(fd int, b []byte) bool { return f.add(fakeOp{fd: fd, b: b}) }
func (f *fakeRing) Readv(fd int, iov []unix.Iovec) bool {
	return f.add(fakeOp{fd: fd, iov: iov})
}
func (f *fakeRing) Write(fd int, b []byte) bool { return f.add(fakeOp{write: true, fd: fd, b: b}) }
func (f *fakeRing) Writev(fd int, iov []unix.Iovec) bool {
	return f.add(fakeOp{write: true, fd: fd, iov: iov})
}

func (f *fakeRing) Submit(res []int32) error {
	ops := f.ops
	f.ops = f.ops[:0]
	f.mu.Lock()
	f.submits++
	f.most = max(f.most, len(ops))
	f.sizes = append(f.sizes, len(ops))
	sub := f.submits
	f.mu.Unlock()
	if f.fail {
		for i := range ops {
			res[i] = -int32(unix.ECANCELED)
		}
		return errors.New("fake io_uring failure")
	}
	for i, op := range ops {
		var n int
		var err error
		switch {
		case f.refuse:
			err = unix.EOPNOTSUPP
		case !op.write && f.miss != nil && f.miss(sub, i):
			err = unix.EAGAIN
		case op.write && op.b != nil:
			n, err = writeFd(op.fd, op.b)
		case op.write:
			io := iovecs{v: op.iov}
			n, err = io.writev(op.fd)
		case op.b != nil:
			n, err = unix.Read(op.fd, op.b)
		default:
			io := iovecs{v: op.iov}
			n, err = io.readv(op.fd)
		}
		res[i] = int32(n)
		if errno, ok := err.(unix.Errno); ok {
			res[i] = -int32(errno)
		}
	}
	return nil
}

func (f *fakeRing) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeRing) stats() (submits, most int, closed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.submits, f.most, f.closed
}

// withFakeRing makes the queue pairs the test starts use f.
func withFakeRing(t *testing.T, f *fakeRing) {
	old := newBatchRing
	newBatchRing = func(int) (batchRing, error) { return f, nil }
	t.Cleanup(func() { newBatchRing = old })
}

// A ring that refuses (a kernel or file without RWF_NOWAIT) or fails
// hands over to system calls without losing or reordering a frame, and is
// closed; a ring that works carries whole batches.
func TestBatchRingFallback(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		refuse, fail, missAll bool
		keepRing              bool
	}{
		{"works", false, false, false, true},
		{"refuses", true, false, false, false},
		{"fails", false, true, false, false},
		// A ring whose reads find nothing where read(2) finds frames:
		// slow, but every frame arrives and the worker does not spin.
		{"misses every read", false, false, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeRing{refuse: tc.refuse, fail: tc.fail}
			if tc.missAll {
				f.miss = func(int, int) bool { return true }
			}
			withFakeRing(t, f)
			r := newRig(t, rigOptions{size: 256, txSlot: 9100})
			msgs, want := txBatchFrames(r.hdrLen)
			for _, msg := range msgs {
				r.tx.PostTX(msg)
			}
			r.tx.Kick()
			r.txKick.Notify()
			for i, w := range want {
				got := r.readPeer(2 * time.Second)
				if got == nil || !bytes.Equal(got[r.hdrLen:], w) {
					t.Fatalf("TX frame %d: got seq %d, want seq %d", i, seqOf(got[min(r.hdrLen, len(got)):]), seqOf(w))
				}
			}
			for i := range 50 {
				r.writePeer(frame(1000, i))
			}
			r.postRX(int(r.rx.Size()), 2048)
			got := r.reapFrames(50, 3*time.Second)
			if len(got) != 50 {
				t.Fatalf("RX: got %d frames, want 50", len(got))
			}
			for i := range got {
				if !bytes.Equal(got[i], frame(1000, i)) {
					t.Fatalf("RX frame %d: got seq %d", i, seqOf(got[i]))
				}
			}
			if got := r.qp.IOURing(); got != tc.keepRing {
				t.Errorf("IOURing after traffic: got %v, want %v", got, tc.keepRing)
			}
			submits, most, closed := f.stats()
			if closed == tc.keepRing {
				t.Errorf("ring closed: got %v, want %v", closed, !tc.keepRing)
			}
			if tc.keepRing && (submits == 0 || most < 8) {
				t.Errorf("ring carried %d batches of at most %d operations, want batches of 8 or more", submits, most)
			}
			if !tc.keepRing && submits != 1 {
				t.Errorf("a refusing ring got %d batches, want 1 (then system calls)", submits)
			}
			if s := r.qp.Counters().Snapshot(); s[TXDropKernel]+s[RXDropKernel]+s[RXDropTruncated] != 0 {
				t.Errorf("counters %s: want no drops", s)
			}
		})
	}
}

// A read of a batch that finds the TAP empty while a later one gets a
// frame (one arrived in between) still leaves the delivered chains first
// and the rest pending in order: frames in order, and Stop gives every
// unfilled buffer back to the ring, none returned empty.
func TestRXBatchReadRace(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprintf("packed=%v", packed), func(t *testing.T) {
			f := &fakeRing{miss: func(submit, op int) bool { return submit == 1 && (op == 0 || op == 2) }}
			withFakeRing(t, f)
			r := newRig(t, rigOptions{size: 64, packed: packed, features: virtio.FVersion1 | virtio.NetFMrgRxbuf})
			for i := range 10 {
				r.writePeer(frame(200+i, i))
			}
			r.postRX(int(r.rx.Size()), 2048)
			got := r.reapFrames(10, 3*time.Second)
			if len(got) != 10 {
				t.Fatalf("got %d frames, want 10 (counters %s)", len(got), r.qp.Counters().Snapshot())
			}
			for i := range got {
				if !bytes.Equal(got[i], frame(200+i, i)) {
					t.Fatalf("frame %d: got %d bytes seq %d, want %d bytes seq %d", i, len(got[i]), seqOf(got[i]), 200+i, i)
				}
			}
			if err := r.qp.Stop(); err != nil {
				t.Fatal(err)
			}
			// Everything not filled went back to the avail ring: the
			// guest sees no used buffer beyond the 10 frames.
			if extra := r.rx.Reap(); len(extra) != 0 {
				t.Errorf("Stop returned %d unfilled buffers as used, want 0", len(extra))
			}
			if got, want := r.rx.InFlight(), int(r.rx.Size())-10; got != want {
				t.Errorf("buffers still posted: got %d, want %d", got, want)
			}
			if err := r.qp.Start(); err != nil {
				t.Fatal(err)
			}
			r.writePeer(frame(300, 99))
			if got := r.reapFrames(1, 2*time.Second); len(got) != 1 || !bytes.Equal(got[0], frame(300, 99)) {
				t.Fatalf("after restart: got %d frames", len(got))
			}
		})
	}
}

// Small mergeable chains with a receive offload (a Linux guest's
// default): once small frames come in a row, reads go in batches with
// bounce buffers. A frame that spills out of its chain is copied with the
// rest of its batch into the chains from the first free one on; a frame
// read in a batch that then finds too few buffers is dropped and counted;
// a read that finds nothing while a later one gets a frame leaves no gap.
func TestRXBounceBatch(t *testing.T) {
	const small, big = 200, 30000
	var sizes []int
	for range smallStreak {
		sizes = append(sizes, small) // read one at a time: the streak
	}
	// The first bounce batch: a spill first, two more large frames,
	// small ones; the third large frame finds the guest's buffers gone.
	sizes = append(sizes, big, big, big, small, small, small, small, small)
	// A new streak, then a batch whose second read finds nothing.
	for range 2 * smallStreak {
		sizes = append(sizes, small)
	}
	f := &fakeRing{miss: func(submit, op int) bool { return submit == 2 && op == 1 }}
	withFakeRing(t, f)
	r := newRig(t, rigOptions{size: 128, rxSlot: 2048,
		features: virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFGuestCsum | virtio.NetFGuestTSO4})
	for i, n := range sizes {
		r.writePeer(frame(n, i))
	}
	// 45 buffers: 8 for the streak, 30 for two large frames, 5 for the
	// small frames of the batch: too few for the third large one. They
	// are posted while the queue pair is stopped, so that it sees all of
	// them at once and the batches fall the same way on every run.
	if err := r.qp.Stop(); err != nil {
		t.Fatal(err)
	}
	r.postRX(45, 2048)
	if err := r.qp.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return r.qp.Counters().Load(RXDropNoBuffers) == 1 }, "rx_drop_no_buffers=1")
	r.postRX(64, 2048)
	var want [][]byte
	for i, n := range sizes {
		if i != smallStreak+2 {
			want = append(want, frame(n, i))
		}
	}
	got := r.reapFrames(len(want), 3*time.Second)
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d (counters %s)", len(got), len(want), r.qp.Counters().Snapshot())
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d: got %d bytes (seq %d), want %d bytes (seq %d)", i, len(got[i]), seqOf(got[i]), len(want[i]), seqOf(want[i]))
		}
	}
	if submits, most, _ := f.stats(); submits < 2 || most < 8 {
		t.Errorf("%d batches of at most %d reads, want two bounce batches of 8", submits, most)
	}
	s := r.qp.Counters().Snapshot()
	if s[RXDropTruncated]+s[RXDropKernel] != 0 || s[RXDropNoBuffers] != 1 {
		t.Errorf("counters %s: want rx_drop_no_buffers=1 and no other drop", s)
	}
	if err := r.qp.Stop(); err != nil {
		t.Fatal(err)
	}
	if extra := r.rx.Reap(); len(extra) != 0 {
		t.Errorf("Stop returned %d unfilled buffers as used, want 0", len(extra))
	}
	if err := r.qp.Start(); err != nil {
		t.Fatal(err)
	}
}

// The reads of a batch follow the traffic: twice the frames the last
// batch got, so a lone frame costs two reads, not a budget's worth of
// reads that find nothing.
func TestRXBatchSizeFollowsTraffic(t *testing.T) {
	f := &fakeRing{}
	withFakeRing(t, f)
	r := newRig(t, rigOptions{size: 256})
	r.postRX(int(r.rx.Size()), 2048)
	for i := range 10 {
		r.writePeer(frame(100, i))
		if got := r.reapFrames(1, 2*time.Second); len(got) != 1 || !bytes.Equal(got[0], frame(100, i)) {
			t.Fatalf("frame %d did not arrive", i)
		}
	}
	f.mu.Lock()
	sizes := append([]int(nil), f.sizes...)
	f.mu.Unlock()
	if len(sizes) < 10 {
		t.Fatalf("%d batches for 10 frames, want one each at least", len(sizes))
	}
	// The first batch may be a budget's worth; after a frame, two.
	for i, n := range sizes[1:] {
		if n > 2 {
			t.Errorf("batch %d: %d reads after batches of one frame, want 2 (all: %v)", i+1, n, sizes)
		}
	}
}
