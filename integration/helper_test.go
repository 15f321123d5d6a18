package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/integration/harness"
)

// helperBin is the vmnet-helper binary built once for the package's tests.
var helperBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vmnet-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	helperBin = filepath.Join(dir, "vmnet-helper")
	out, err := exec.Command("go", "build", "-o", helperBin, "../cmd/vmnet-helper").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build vmnet-helper: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// helperProc is a running vmnet-helper that the test stops when it ends.
type helperProc struct {
	*harness.Helper
	t      testing.TB
	tap    string // the first line it printed
	killed bool
}

// startHelper runs vmnet-helper with args and waits for the TAP name it
// prints first. When the test ends the helper gets SIGTERM and must exit
// cleanly, unless the test killed it.
func startHelper(t testing.TB, args ...string) *helperProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hh, err := harness.StartHelper(ctx, helperBin, args...)
	if err != nil {
		t.Fatal(err)
	}
	h := &helperProc{Helper: hh, t: t, tap: hh.TAP}
	t.Cleanup(func() {
		if h.killed {
			return
		}
		if err := h.Stop(); err != nil {
			t.Errorf("vmnet-helper: %v; stderr:\n%s", err, h.Stderr())
		}
	})
	return h
}

// kill ends the helper with SIGKILL, as a crash would.
func (h *helperProc) kill() {
	h.killed = true
	h.Kill()
}

// stop sends SIGTERM and waits for a clean exit.
func (h *helperProc) stop() error { return h.Stop() }

// counters reads the counters from the helper's /stats: it must run with
// --metrics (metricsArgs).
func (h *helperProc) counters(t testing.TB) harness.Stats {
	t.Helper()
	st, err := h.Stats()
	if err != nil {
		t.Fatalf("%v\nhelper stderr:\n%s", err, h.Stderr())
	}
	return st
}

// signalCounters asks for the counters with SIGUSR1 and parses what the
// helper prints.
func (h *helperProc) signalCounters(t *testing.T) harness.Stats {
	t.Helper()
	st, err := h.SignalStats()
	if err != nil {
		t.Fatalf("%v\nhelper stderr:\n%s", err, h.Stderr())
	}
	return st
}

// scrape reads the helper's /metrics.
func (h *helperProc) scrape(t *testing.T) ([]byte, harness.Scrape) {
	t.Helper()
	b, err := h.Scrape()
	if err != nil {
		t.Fatalf("%v\nhelper stderr:\n%s", err, h.Stderr())
	}
	s, err := harness.ParseScrape(b)
	if err != nil {
		t.Fatalf("%v:\n%s", err, harness.Tail(string(b), 3000))
	}
	return b, s
}

// metricsArgs are the flags that make a helper serve its counters on a
// unix socket in dir, where counters and scrape read them.
func metricsArgs(dir string) []string {
	return []string{"--metrics", "unix:" + filepath.Join(dir, "metrics.sock")}
}
