// Package testutil holds what vmnet's privileged tests share: the checks
// that decide whether a test may run here, fresh network namespaces, and fd
// counting. It is test support only.
package testutil

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cebpf "github.com/cilium/ebpf"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/netns"
)

// InCI reports whether the tests run under CI (CI=true), where a skip for
// a missing privilege or device hides a regression and so fails instead.
func InCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// Skip skips the test with a loud reason, or fails it under CI.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("cannot run under CI=true: %s", msg)
	}
	t.Skipf("SKIP (needs privileges or devices this machine lacks): %s", msg)
}

// RequireRoot skips (or fails under CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root (euid is %d)", os.Geteuid())
	}
}

// RequireTUN skips (or fails under CI) unless /dev/net/tun can be opened.
func RequireTUN(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		Skip(t, "cannot open /dev/net/tun: %v", err)
	}
	f.Close()
}

var nsSeq atomic.Uint64

// NetNS creates a fresh named network namespace for the test, with its
// loopback up, and removes it when the test ends. The caller's threads
// stay where they are; pass the name to Options.NetNS or run commands in
// it with Exec. It is netns.Add, the one way vmnet's tests and demo make
// namespaces (see there why).
func NetNS(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("vmnet-test-%d-%d", os.Getpid(), nsSeq.Add(1))
	del, err := netns.Add(context.Background(), name)
	if err != nil {
		t.Fatalf("create network namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := del(); err != nil {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	return name
}

// Exec runs a command in network namespace ns ("" for the current one)
// and fails the test if it fails. It returns the combined output.
func Exec(t testing.TB, ns string, name string, args ...string) string {
	t.Helper()
	out, err := Run(ns, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// Run runs a command in network namespace ns and returns its combined
// output and error.
func Run(ns string, name string, args ...string) (string, error) {
	if ns != "" {
		args = append([]string{"netns", "exec", ns, name}, args...)
		name = "ip"
	}
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// OpenFds counts this process's open file descriptors.
func OpenFds(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("list /proc/self/fd: %v", err)
	}
	// ReadDir's own directory fd is in the listing.
	return len(ents) - 1
}

// SettledFds counts this process's open file descriptors once the count
// has stopped changing (three equal looks 20 ms apart, at most 2 s):
// goroutines of an earlier test or round trip may still be closing theirs.
// It is the baseline for WaitFds.
func SettledFds(t testing.TB) int {
	t.Helper()
	n, same := OpenFds(t), 0
	for i := 0; i < 100 && same < 2; i++ {
		Sleep(20)
		if m := OpenFds(t); m == n {
			same++
		} else {
			n, same = m, 0
		}
	}
	return n
}

// WaitFds waits up to 2 s for the open descriptors to fall to at most
// before (a SettledFds count) and fails the test if they do not: a leak
// keeps them above it. Fewer is no leak: something open at the baseline
// closed meanwhile.
func WaitFds(t testing.TB, before int) {
	t.Helper()
	var got int
	for i := 0; i < 100; i++ {
		if got = OpenFds(t); got <= before {
			return
		}
		Sleep(20)
	}
	t.Errorf("open fds: got %d, want at most %d as before", got, before)
}

// Sleep pauses for ms milliseconds; polling loops use it between looks.
func Sleep(ms int) { time.Sleep(time.Duration(ms) * time.Millisecond) }

// InNetNS runs fn on a thread inside network namespace ns (sockets made
// there stay in it), failing the test on error.
func InNetNS(t testing.TB, ns string, fn func() error) {
	t.Helper()
	h, err := vnetns.GetFromName(ns)
	if err != nil {
		t.Fatalf("open network namespace %s: %v", ns, err)
	}
	defer h.Close()
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("read current network namespace: %v", err)
	}
	defer orig.Close()
	if err := vnetns.Set(h); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("enter network namespace %s: %v", ns, err)
	}
	ferr := fn()
	if err := vnetns.Set(orig); err != nil {
		// Left locked: the runtime retires the thread with the goroutine.
		t.Fatalf("return from network namespace %s: %v", ns, err)
	}
	runtime.UnlockOSThread()
	if ferr != nil {
		t.Fatalf("in network namespace %s: %v", ns, ferr)
	}
}

// SteeringPrograms lists the IDs of the loaded eBPF programs named like
// vmnet's steering program (ebpf.LoadHashProgram) that a process of uid
// loaded: a TAP holding one keeps it loaded after every process closed its
// descriptor. Programs are the host's, not a namespace's, and other tests
// load this one at the same time; a test tells its own by loading them as
// a uid no other process uses.
func SteeringPrograms(t testing.TB, uid uint32) map[uint32]bool {
	t.Helper()
	ids := map[uint32]bool{}
	var id cebpf.ProgramID
	for {
		next, err := cebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return ids
		}
		if err != nil {
			t.Fatalf("list eBPF programs: %v", err)
		}
		id = next
		p, err := cebpf.NewProgramFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		info, err := p.Info()
		p.Close()
		if err != nil || info.Name != "vmnet_steer" {
			continue
		}
		by, ok := info.CreatedByUID()
		if !ok {
			t.Fatalf("eBPF program %d: the kernel does not say which uid loaded it (Linux 4.15)", id)
		}
		if by == uid {
			ids[uint32(id)] = true
		}
	}
}

// SharedMemory maps n bytes of a fresh memfd, as a vhost-user front-end
// shares guest memory, unmapped and closed when the test ends. shrink
// truncates the file to nothing, as a hostile front-end may: a load from
// the mapping then raises SIGBUS.
func SharedMemory(t testing.TB, n int) (mem []byte, shrink func()) {
	t.Helper()
	fd, err := unix.MemfdCreate("vmnet-test-memory", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(n)); err != nil {
		t.Fatalf("size memfd to %d bytes: %v", n, err)
	}
	mem, err = unix.Mmap(fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("map memfd: %v", err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem, func() {
		if err := unix.Ftruncate(fd, 0); err != nil {
			t.Fatalf("shrink memfd: %v", err)
		}
	}
}
