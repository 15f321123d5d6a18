package uring

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/testutil"
	"golang.org/x/sys/unix"
)

// seqpacket returns a non-blocking SOCK_SEQPACKET pair: one message per
// read or write, as a TAP queue has one frame.
func seqpacket(t *testing.T) (a, b int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

func newRing(t *testing.T, entries int) *Ring {
	t.Helper()
	r, err := New(entries)
	if err != nil {
		testutil.Skip(t, "no io_uring here: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func iov(bufs ...[]byte) []unix.Iovec {
	v := make([]unix.Iovec, len(bufs))
	for i, b := range bufs {
		v[i].Base = &b[0]
		v[i].SetLen(len(b))
	}
	return v
}

func TestWritesArriveInOrder(t *testing.T) {
	r := newRing(t, 8)
	a, b := seqpacket(t)
	var want [][]byte
	var vecs [][]unix.Iovec
	for i := range 8 {
		msg := bytes.Repeat([]byte{byte(i + 1)}, 10+i)
		want = append(want, msg)
		if i%2 == 0 {
			if !r.Write(a, msg) {
				t.Fatalf("write %d: batch full at %d of %d", i, r.Len(), r.Cap())
			}
		} else {
			v := iov(msg[:3], msg[3:])
			vecs = append(vecs, v)
			if !r.Writev(a, v) {
				t.Fatalf("writev %d: batch full at %d of %d", i, r.Len(), r.Cap())
			}
		}
	}
	if r.Write(a, want[0]) {
		t.Fatalf("a ninth operation fit a batch of %d", r.Cap())
	}
	res := make([]int32, 8)
	if err := r.Submit(res); err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(vecs) // the ring holds their addresses, not references
	if r.Len() != 0 {
		t.Fatalf("Len after Submit: got %d, want 0", r.Len())
	}
	buf := make([]byte, 64)
	for i, w := range want {
		if int(res[i]) != len(w) {
			t.Errorf("result %d: got %d, want %d", i, res[i], len(w))
		}
		n, err := unix.Read(b, buf)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], w) {
			t.Errorf("message %d: got % x, want % x", i, buf[:n], w)
		}
	}
	if n, err := unix.Read(b, buf); err != unix.EAGAIN {
		t.Errorf("after the batch: read %d bytes, error %v; want EAGAIN", n, err)
	}
}

func TestReadsDoNotWait(t *testing.T) {
	r := newRing(t, 8)
	a, b := seqpacket(t)
	for i := range 3 {
		if _, err := unix.Write(b, []byte(fmt.Sprintf("frame %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	bufs := make([][]byte, 5)
	for i := range bufs {
		bufs[i] = make([]byte, 32)
		if i == 1 {
			v := iov(bufs[i][:4], bufs[i][4:])
			if !r.Readv(a, v) {
				t.Fatal("batch full")
			}
			continue
		}
		if !r.Read(a, bufs[i]) {
			t.Fatal("batch full")
		}
	}
	res := make([]int32, 5)
	if err := r.Submit(res); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		want := fmt.Sprintf("frame %d", i)
		if int(res[i]) != len(want) || string(bufs[i][:len(want)]) != want {
			t.Errorf("read %d: got %d bytes %q, want %q", i, res[i], bufs[i][:max(res[i], 0)], want)
		}
	}
	// An empty socket completes the read with EAGAIN at once: nothing
	// is left armed to fill the buffer later.
	for i := 3; i < 5; i++ {
		if res[i] != -int32(unix.EAGAIN) {
			t.Errorf("read %d of an empty socket: got %d, want -EAGAIN (%d)", i, res[i], -int32(unix.EAGAIN))
		}
	}
	if _, err := unix.Write(b, []byte("late")); err != nil {
		t.Fatal(err)
	}
	if n, err := unix.Read(a, bufs[0]); err != nil || string(bufs[0][:n]) != "late" {
		t.Errorf("a frame after the batch: got %q, %v; want it for read(2), not for a parked read", bufs[0][:n], err)
	}
}

func TestResultsPerOperation(t *testing.T) {
	r := newRing(t, 4)
	a, _ := seqpacket(t)
	msg := []byte("hello")
	r.Write(a, msg)
	r.Write(-1, msg) // EBADF at submission: the rest still run
	r.Write(a, msg)
	res := make([]int32, 3)
	if err := r.Submit(res); err != nil {
		t.Fatal(err)
	}
	want := []int32{5, -int32(unix.EBADF), 5}
	for i := range want {
		if res[i] != want[i] {
			t.Errorf("result %d: got %d, want %d", i, res[i], want[i])
		}
	}
	r.Write(a, msg)
	if err := r.Submit(res[:0]); err == nil {
		t.Error("Submit with no room for results: got no error")
	}
}

func TestNewRejectsBadSizes(t *testing.T) {
	for _, n := range []int{0, -1, 3, 8192} {
		if r, err := New(n); err == nil {
			r.Close()
			t.Errorf("New(%d): got no error", n)
		}
	}
}

func TestCloseLeavesNothing(t *testing.T) {
	newRing(t, 1) // skips where there is no io_uring
	before := testutil.SettledFds(t)
	for range 100 {
		r, err := New(64)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	testutil.WaitFds(t, before)
}

func TestNoAllocations(t *testing.T) {
	r := newRing(t, 64)
	a, b := seqpacket(t)
	msg := make([]byte, 60)
	buf := make([]byte, 64)
	res := make([]int32, 64)
	allocs := testing.AllocsPerRun(100, func() {
		for range 16 {
			r.Write(a, msg)
		}
		if err := r.Submit(res); err != nil {
			t.Fatal(err)
		}
		for range 16 {
			r.Read(b, buf)
		}
		if err := r.Submit(res); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("got %v allocations per batch pair, want 0", allocs)
	}
}
