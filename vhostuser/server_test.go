package vhostuser

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// runServer runs fn (Serve or Dial) in the background; stop cancels it and returns its
// result.
func runServer(t *testing.T, fn func(context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	stopped := false
	var err error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("server did not stop after its context was cancelled")
			}
		}
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func dialFrontEnd(t *testing.T, path string) *frontEnd {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return &frontEnd{t: t, c: c.(*net.UnixConn)}
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect to %s: %v", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startRing0 brings ring 0 of the fake device up the way DPDK's virtio-user does.
func startRing0(t *testing.T, fe *frontEnd) {
	t.Helper()
	fe.send(ReqSetFeatures, 0, U64(uint64(virtio.FVersion1)))
	mfd := memfd(t, guestSize)
	fe.send(ReqSetMemTable, 0, MemoryTable{Regions: []MemoryRegion{guestRegion()}}, mfd)
	unix.Close(mfd)
	fe.setUpRing(0, 256)
	fe.sync()
}

// checkGoroutines fails if more goroutines run than before, once they had time to end.
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("goroutines: got %d, want at most %d\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func TestServeReconnect(t *testing.T) {
	fdsBefore, goBefore := openFDs(t), runtime.NumGoroutine()
	path := filepath.Join(t.TempDir(), "vhost.sock")
	dev := newFakeDevice()
	srv := NewServer(dev, Options{})
	stop := runServer(t, func(ctx context.Context) error { return srv.Serve(ctx, path) })

	fe := dialFrontEnd(t, path)
	startRing0(t, fe)
	if _, ok := dev.queue(0); !ok {
		t.Fatalf("ring 0 not started; events %q", dev.eventList())
	}
	// A second front-end waits while the first is served.
	waiting := dialFrontEnd(t, path)
	fe.close()
	dev.waitEvent(t, "reset")
	if ev := dev.eventList(); len(ev) < 2 || ev[len(ev)-2] != "stop 0" {
		t.Errorf("device events: got %q, want ring 0 stopped before the reset", ev)
	}

	startRing0(t, waiting)
	if _, ok := dev.queue(0); !ok {
		t.Fatalf("second front-end: ring 0 not started; events %q", dev.eventList())
	}
	if err := stop(); err != nil {
		t.Fatalf("Serve after cancel: got %v, want nil", err)
	}
	waiting.expectClosed()
	waiting.close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file after Serve returned: got %v, want it removed", err)
	}
	if st := srv.Stats(); st.Sessions != 2 {
		t.Errorf("sessions: got %d, want 2", st.Sessions)
	}
	checkNoFDLeak(t, fdsBefore)
	checkGoroutines(t, goBefore)
}

func TestServeSocketPath(t *testing.T) {
	dir := t.TempDir()

	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	srv := NewServer(newFakeDevice(), Options{})
	stop := runServer(t, func(ctx context.Context) error { return srv.Serve(ctx, stale) })
	fe := dialFrontEnd(t, stale)
	fe.callU64(ReqGetFeatures, Empty{})
	fe.close()

	// The path is live now: a second server must not take it over.
	other := NewServer(newFakeDevice(), Options{})
	if err := other.Serve(context.Background(), stale); err == nil || !errors.Is(err, unix.EADDRINUSE) {
		t.Errorf("Serve on a live socket: got %v, want EADDRINUSE", err)
	}
	if err := stop(); err != nil {
		t.Errorf("Serve: %v", err)
	}

	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background(), regular); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Serve on a regular file: got %v, want refused", err)
	}
	if b, err := os.ReadFile(regular); err != nil || string(b) != "keep" {
		t.Errorf("regular file after Serve: got %q, %v; want it untouched", b, err)
	}
}

func TestServerServesOneFrontEndAtATime(t *testing.T) {
	srv := NewServer(newFakeDevice(), Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	fe.sync()
	c2, fe2 := socketPair(t)
	if err := srv.ServeConn(context.Background(), c2); !errors.Is(err, ErrBusy) {
		t.Errorf("second ServeConn: got %v, want ErrBusy", err)
	}
	fe2.expectClosed()
	fe2.close()
	if err := srv.Dial(context.Background(), "/nonexistent"); !errors.Is(err, ErrBusy) {
		t.Errorf("Dial while serving: got %v, want ErrBusy", err)
	}
	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
}

func TestDialReconnect(t *testing.T) {
	fdsBefore, goBefore := openFDs(t), runtime.NumGoroutine()
	path := filepath.Join(t.TempDir(), "qemu.sock")
	dev := newFakeDevice()
	srv := NewServer(dev, Options{RetryMin: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond})
	// The back-end starts first and retries until the front-end listens.
	stop := runServer(t, func(ctx context.Context) error { return srv.Dial(ctx, path) })
	time.Sleep(50 * time.Millisecond)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l.Close()
	accept := func() *frontEnd {
		t.Helper()
		l.SetDeadline(time.Now().Add(5 * time.Second))
		c, err := l.AcceptUnix()
		if err != nil {
			t.Fatalf("accept the back-end: %v", err)
		}
		return &frontEnd{t: t, c: c}
	}

	fe := accept()
	startRing0(t, fe)
	if _, ok := dev.queue(0); !ok {
		t.Fatalf("ring 0 not started; events %q", dev.eventList())
	}
	fe.close()
	dev.waitEvent(t, "reset")

	fe = accept()
	if got := fe.callU64(ReqGetQueueNum, Empty{}); got != 2 {
		t.Fatalf("GET_QUEUE_NUM after reconnecting: got %d, want 2", got)
	}
	if err := stop(); err != nil {
		t.Fatalf("Dial after cancel: got %v, want nil", err)
	}
	fe.expectClosed()
	fe.close()
	l.Close()
	checkNoFDLeak(t, fdsBefore)
	checkGoroutines(t, goBefore)
}
