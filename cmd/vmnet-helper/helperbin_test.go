package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/fdpass"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// The privileged modes drop the privileges of the process they run in,
// so their tests run the real binary, built as `make build` builds it
// (CGO_ENABLED=0), the way QEMU and users run it; the privilege tests
// build it with cgo too, as `go install` does.

// publicDir returns a fresh directory that other users can enter and
// read, for binaries they run.
func publicDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// buildHelper builds vmnet-helper into dir. ldflags are passed on (tests
// set main.defaultACL with -X, as a packager would).
func buildHelper(t *testing.T, dir string, ldflags ...string) string {
	t.Helper()
	return goBuild(t, dir, "vmnet-helper", ".", ldflags...)
}

// goBuild builds pkg with CGO_ENABLED=0.
func goBuild(t *testing.T, dir, name, pkg string, ldflags ...string) string {
	t.Helper()
	return goBuildCgo(t, false, dir, name, pkg, ldflags...)
}

// goBuildCgo builds pkg with CGO_ENABLED=1 when cgo is true, 0 otherwise.
func goBuildCgo(t *testing.T, cgo bool, dir, name, pkg string, ldflags ...string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	args := []string{"build", "-o", out}
	if len(ldflags) > 0 {
		args = append(args, "-ldflags", strings.Join(ldflags, " "))
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if cgo {
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "CC="+cCompiler(t))
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s (cgo %v): %v\n%s", pkg, cgo, err, b)
	}
	return out
}

// cCompiler is the C compiler for a cgo build: go env CC (gcc) when it is
// installed, else clang, which the eBPF packages bring.
func cCompiler(t *testing.T) string {
	t.Helper()
	cc := "gcc"
	if out, err := exec.Command("go", "env", "CC").Output(); err == nil && strings.TrimSpace(string(out)) != "" {
		cc = strings.TrimSpace(string(out))
	}
	for _, c := range []string{cc, "clang"} {
		if _, err := exec.LookPath(c); err == nil {
			return c
		}
	}
	testutil.Skip(t, "no C compiler (%s or clang) for a cgo build", cc)
	return ""
}

// installCopy copies bin to dir/name/vmnet-helper and runs setup (a
// command to which the copy's path is appended: chmod 4755, setcap ...)
// on it, as a packager installs the helper.
func installCopy(t *testing.T, bin, dir, name string, setup ...string) string {
	t.Helper()
	d := filepath.Join(dir, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(d, "vmnet-helper")
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if len(setup) > 0 {
		if out, err := exec.Command(setup[0], append(setup[1:], p)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", setup, err, out)
		}
	}
	return p
}

// writeACL writes an access list that root owns and nobody else may
// write, in a folder anyone may enter.
func writeACL(t *testing.T, dir, text string) string {
	t.Helper()
	path := filepath.Join(dir, "bridge.conf")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// helperResult is how one run of the bridge helper ended.
type helperResult struct {
	files  []*os.File
	code   int
	stderr string
}

// runBridgeHelperAs runs argv the way QEMU runs a helper: with one end of
// a SOCK_STREAM socketpair as fd 3 (and --fd=3 among the arguments), and
// collects the descriptors it sends.
func runBridgeHelperAs(t *testing.T, env []string, argv ...string) helperResult {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours := os.NewFile(uintptr(fds[0]), "qemu end")
	theirs := os.NewFile(uintptr(fds[1]), "helper end")
	defer ours.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	c, err := net.FileConn(ours)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	_, files, rerr := fdpass.Recv(c.(*net.UnixConn), make([]byte, 1), 1)
	err = cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if rerr != nil {
		t.Fatalf("receive from helper: %v (stderr %s)", rerr, stderr.String())
	}
	for _, f := range files {
		t.Cleanup(func() { f.Close() })
	}
	return helperResult{files: files, code: code, stderr: stderr.String()}
}

// tapName reads which TAP a TUN file is attached to (fdinfo's "iff:").
func tapName(t *testing.T, pid int, fd int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "iff:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func fileFd(t *testing.T, f *os.File) int {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	rc.Control(func(fd uintptr) { n = int(fd) })
	return n
}

// freeUID finds a uid (and same-numbered gid) that no account and no
// process uses: the unprivileged user a test creates.
func freeUID(t *testing.T, from int) int {
	t.Helper()
	used := map[string]bool{}
	statuses, _ := filepath.Glob("/proc/[0-9]*/status")
	for _, path := range statuses {
		if st, err := readStatus(path); err == nil {
			for _, k := range []string{"Uid", "Gid"} {
				for _, id := range strings.Fields(st[k]) {
					used[id] = true
				}
			}
		}
	}
	for uid := from; uid < from+1000; uid++ {
		id := strconv.Itoa(uid)
		if used[id] {
			continue
		}
		if _, err := user.LookupId(id); err == nil {
			continue
		}
		if _, err := user.LookupGroupId(id); err == nil {
			continue
		}
		return uid
	}
	t.Fatalf("no free uid from %d", from)
	return 0
}

// procStatus reads fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	st, err := readStatus(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// children lists the child processes of pid, whichever of its threads
// forked them.
func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return -1
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test
// reading.
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

// socketpairConn returns a connected SOCK_SEQPACKET pair.
func socketpairConn(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}
