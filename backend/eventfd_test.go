package backend_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
)

// notEventFD is a file handed over as an eventfd that is not one the
// device takes, and what the refusal must say of it.
type notEventFD struct {
	name string
	f    *os.File
	says string
}

// notEventFDs makes what a hostile front-end or a confused VMM could hand
// over as a kick, call or err eventfd: a regular file, a pipe whose writer
// closed, a socket, and a semaphore eventfd written with 2^63. They stay
// open until the test ends.
func notEventFDs(t *testing.T) []notEventFD {
	t.Helper()
	reg, err := os.CreateTemp(t.TempDir(), "kick")
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pw.Close()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(sp[1])
	sem, err := unix.Eventfd(0, unix.EFD_SEMAPHORE|unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(sem, binary.NativeEndian.AppendUint64(nil, 1<<63)); err != nil {
		t.Fatal(err)
	}
	bad := []notEventFD{
		{"regular file", reg, "is a regular file, not an eventfd"},
		{"pipe", pr, "is a pipe (pipe:["},
		{"socket", os.NewFile(uintptr(sp[0]), "socket"), "socket is a socket (socket:["},
		{"semaphore eventfd", os.NewFile(uintptr(sem), "semaphore"), "is an eventfd made with EFD_SEMAPHORE"},
	}
	for _, b := range bad {
		t.Cleanup(func() { b.f.Close() })
	}
	return bad
}

// refused checks that err refuses b as role of queue q.
func refused(t *testing.T, what string, err error, q int, role string, b notEventFD) {
	t.Helper()
	prefix := fmt.Sprintf("queue %d: %s: fd %d: ", q, role, b.f.Fd())
	if !errors.Is(err, engine.ErrNotEventFD) || !strings.Contains(err.Error(), prefix) || !strings.Contains(err.Error(), b.says) {
		t.Errorf("%s with a %s as %s: got %v, want an error matching engine.ErrNotEventFD saying %q and %q", what, b.name, role, err, prefix, b.says)
		return
	}
	t.Logf("%s: %v", what, err)
}

// Activate, vhost-user's StartQueue and New take kick, call and err fds
// only when they are eventfds without EFD_SEMAPHORE: anything else is
// refused with an error that names the fd and what it is, and leaves
// nothing running, attached or open; the same queues then start with
// proper eventfds.
func TestNotEventFDRefused(t *testing.T) {
	r := newVMRig(t, 2)
	bad := notEventFDs(t)
	r.layOut(linuxAcks(r.dev, false, true))
	mem := r.vm.Memory()
	fds := testutil.SettledFds(t)
	vu := r.dev.VhostUser()
	setup := func(i int) vhostuser.QueueSetup {
		a := r.vm.Queue(i).Areas()
		return vhostuser.QueueSetup{Memory: mem, Size: a.Size, DescAddr: a.Desc, AvailAddr: a.Driver, UsedAddr: a.Device,
			EventIdx: true, Kick: r.queues[i].Kick, Call: r.queues[i].Call}
	}
	for _, b := range bad {
		for _, role := range []string{"kick", "call"} {
			qs := append([]backend.QueueConfig(nil), r.queues[:5]...)
			s := setup(1)
			if role == "kick" {
				qs[1].Kick, s.Kick = b.f, b.f
			} else {
				qs[1].Call, s.Call = b.f, b.f
			}
			refused(t, "Activate", r.dev.Activate(mem, qs), 1, role, b)
			refused(t, "StartQueue", vu.StartQueue(1, s), 1, role, b)
		}
		s := setup(0)
		s.Err = b.f
		refused(t, "StartQueue", vu.StartQueue(0, s), 0, "err", b)
		if n := r.attached(); n != 0 {
			t.Errorf("%s: %d TAP queues attached after the refusals, want 0", b.name, n)
		}
		cfg, err := backend.New(backend.Options{TAP: r.tap, ConfigInterrupt: b.f})
		if !errors.Is(err, engine.ErrNotEventFD) || !strings.Contains(err.Error(), "config interrupt: fd ") {
			t.Errorf("New with a %s as config interrupt: got %v, want an error matching engine.ErrNotEventFD", b.name, err)
		}
		if cfg != nil {
			cfg.Close()
		}
	}
	testutil.WaitFds(t, fds)

	// The refusals left nothing behind: the rings start, through either
	// path, and move frames.
	if err := vu.StartQueue(0, setup(0)); err != nil {
		t.Fatal(err)
	}
	if err := vu.StartQueue(1, setup(1)); err != nil {
		t.Fatal(err)
	}
	r.arp(0, 1)
	for i := range 2 {
		if _, err := vu.StopQueue(i); err != nil {
			t.Fatal(err)
		}
	}
	r.dev.Reset()
	r.layOut(linuxAcks(r.dev, false, true))
	if err := r.dev.Activate(r.vm.Memory(), r.queues); err != nil {
		t.Fatal(err)
	}
	r.arp(0, 1)
	r.dev.Reset()
}

// lineBuffer is a log sink the device's goroutines and the test share.
type lineBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *lineBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *lineBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A guest that breaks its control ring (an available index 1000 ahead of
// the device's, in a ring of 256) and goes on kicking it: the control
// queue stops at the first kick, counted once in broken_rings and logged
// once, and the kicks after it wake nothing.
func TestControlRingBrokenOnce(t *testing.T) {
	r := newVMRig(t, 1)
	var out lineBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Warn})
	r.dev.Close()
	var err error
	if r.dev, err = backend.New(backend.Options{TAP: r.tap, MAC: guestMAC, ControlQueue: true, Logger: log}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.dev.Close)
	acked := linuxAcks(r.dev, false, false)
	r.layOut(acked)
	if err := r.dev.Activate(r.vm.Memory(), r.queues); err != nil {
		t.Fatal(err)
	}
	ci := r.dev.Queues() - 1
	if ack := r.ctrl(ci, virtio.CtrlCommand{Class: virtio.CtrlRX, Command: virtio.CtrlRXPromisc, On: true}); ack != virtio.CtrlOK {
		t.Fatalf("RX PROMISC: ack %d", ack)
	}
	g := r.vm.Queue(ci)
	g.SetAvailIdx(g.NextAvail() + 1000)
	one := binary.NativeEndian.AppendUint64(nil, 1)
	for range 1000 {
		if _, err := r.queues[ci].Kick.Write(one); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for r.dev.CtrlStats()[backend.CtrlBrokenRings] == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if cpu := testutil.CPUShare(t, 500*time.Millisecond); cpu > 0.05 {
		t.Errorf("%.0f%% of a CPU after the control ring broke, want under 5%%", 100*cpu)
	}
	st := r.dev.CtrlStats()
	if st[backend.CtrlBrokenRings] != 1 || st[backend.CtrlCommands] != 1 {
		t.Errorf("control counters %s: want broken_rings=1 and the one command answered", st)
	}
	if n := strings.Count(out.String(), "control queue unusable until the device is reset"); n != 1 {
		t.Errorf("%d lines saying the control queue is unusable, want 1:\n%s", n, out.String())
	}
	if n := strings.Count(out.String(), "\n"); n > 3 {
		t.Errorf("%d log lines at warn and above, want a handful:\n%s", n, out.String())
	}
}
