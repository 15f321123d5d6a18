package droplog

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// fakeClock stands in for the clock for the length of a test.
func fakeClock(t *testing.T) *atomic.Int64 {
	var now atomic.Int64
	old := clock
	clock = now.Load
	t.Cleanup(func() { clock = old })
	return &now
}

// A fault repeated 10,000 times in a burst is logged once; once the
// interval has passed, once more, with the count so far.
func TestWarner(t *testing.T) {
	now := fakeClock(t)
	var out bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Trace})
	var w Warner
	for range 10000 {
		w.Warn(log, "interrupt failed", errors.New("broken pipe"))
	}
	if got := strings.Count(out.String(), "\n"); got != 1 {
		t.Fatalf("10,000 faults in one burst: %d lines, want 1:\n%s", got, out.String())
	}
	if !strings.Contains(out.String(), "[WARN]  interrupt failed: error=\"broken pipe\" times=1") {
		t.Errorf("first line: got %q", out.String())
	}
	now.Add(int64(Interval) - 1)
	w.Warn(log, "interrupt failed", nil)
	if got := strings.Count(out.String(), "\n"); got != 1 {
		t.Errorf("before the interval: %d lines, want 1", got)
	}
	now.Add(1)
	w.Error(log, "interrupt failed", nil)
	if got := strings.Count(out.String(), "\n"); got != 2 || !strings.Contains(out.String(), "[ERROR] interrupt failed: error=<nil> times=10002") {
		t.Errorf("after the interval: got %q, want a second line with times=10002", out.String())
	}
}

// Goroutines that hit one Warner at once get one line between them, and
// every fault is counted.
func TestWarnerConcurrent(t *testing.T) {
	fakeClock(t)
	var w Warner
	var lines atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if _, ok := w.Next(); ok {
					lines.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n, _ := w.Next(); lines.Load() != 1 || n-1 != 8000 {
		t.Errorf("8 goroutines, 1000 faults each: %d lines, count %d; want 1 line, count 8000", lines.Load(), n-1)
	}
}

// Next costs nothing on the path that does not log.
func TestWarnerAllocs(t *testing.T) {
	var w Warner
	w.Next()
	if a := testing.AllocsPerRun(1000, func() { w.Next() }); a != 0 {
		t.Errorf("Next: %v allocations, want 0", a)
	}
}
