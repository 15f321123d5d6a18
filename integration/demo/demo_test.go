package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/integration/guest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// buildHelper builds vmnet-helper for the demo to run.
func buildHelper(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "vmnet-helper")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/vmnet-helper").CombinedOutput(); err != nil {
		t.Fatalf("build vmnet-helper: %v\n%s", err, out)
	}
	return bin
}

// demoNamespace is the namespace run makes, named after this process.
var demoNamespace = regexp.MustCompile(`network namespace (vmnet-demo-\d+)`)

// checkCleanedUp fails the test if the demo left its namespace or a
// process behind.
func checkCleanedUp(t *testing.T, stderr string) {
	t.Helper()
	if kids := children(t); len(kids) > 0 {
		t.Errorf("processes left running by the demo: %v", kids)
	}
	m := demoNamespace.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("demo did not say which namespace it created:\n%s", stderr)
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil || strings.Contains(string(out), m[1]) {
		t.Errorf("namespace %s after the demo returned: ip netns list: %v\n%s", m[1], err, out)
	}
}

// TestDemo runs `make demo`'s program, with short iperf3 runs, and checks
// its table and that nothing is left behind.
func TestDemo(t *testing.T) {
	testutil.RequireTUN(t)
	guest.Require(t)
	helper := buildHelper(t)
	var stdout, stderr syncBuilder
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := run(ctx, options{helper: helper, queues: 2, iperfTime: 2 * time.Second}, &stdout, &stderr); err != nil {
		t.Fatalf("demo: %v\nstderr:\n%s", err, stderr.String())
	}
	out := stdout.String()
	t.Logf("demo output:\n%s", out)
	for _, re := range []string{
		`ping RTT \(avg of 10\)\s+\d+\.\d+ ms\s+\d+\.\d+ ms`,
		`iperf3 TCP \(2s, 2 flows\)\s+\d+\.\d+ Gbit/s\s+\d+\.\d+ Gbit/s`,
		`(?m)^0\s+[1-9]\d*\s+[1-9]\d*\s+0$`,
		`(?m)^1\s+[1-9]\d*\s+[1-9]\d*\s+0$`,
		`vhost-user messages from QEMU: .*SET_VRING_KICK=4`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("demo output does not match %q", re)
		}
	}
	checkCleanedUp(t, stderr.String())
}

// TestDemoInterrupted cancels the demo, as Ctrl-C does, a second into its
// guest's boot: run must return at once, having stopped QEMU and the helper
// and deleted the namespace.
func TestDemoInterrupted(t *testing.T) {
	testutil.RequireTUN(t)
	guest.Require(t)
	helper := buildHelper(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &syncBuilder{onWrite: func(s string) {
		if strings.Contains(s, "==> booting the guest") {
			// QEMU runs by then; the boot takes seconds more.
			time.AfterFunc(time.Second, cancel)
		}
	}}
	var stdout syncBuilder
	start := time.Now()
	err := run(ctx, options{helper: helper, queues: 1, iperfTime: time.Second}, &stdout, stderr)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("demo cancelled while booting: got %v, want %v\nstderr:\n%s", err, context.Canceled, stderr.String())
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("demo took %s to return after its context ended", d)
	}
	checkCleanedUp(t, stderr.String())
}

// syncBuilder is a strings.Builder safe for concurrent writes that can
// watch what is written.
type syncBuilder struct {
	mu      sync.Mutex
	b       strings.Builder
	onWrite func(string)
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	n, err := s.b.Write(p)
	s.mu.Unlock()
	if s.onWrite != nil {
		s.onWrite(string(p))
	}
	return n, err
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// children lists this process's child processes and their commands.
func children(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil || len(files) == 0 {
		t.Fatalf("list child processes: %v", err)
	}
	var kids []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread exited
		}
		for _, pid := range strings.Fields(string(b)) {
			cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			kids = append(kids, pid+" "+strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
	return kids
}
