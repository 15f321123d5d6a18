package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmnet-dev/vmnet/internal/metrics"
)

// Helper is a running vmnet-helper.
type Helper struct {
	// TAP is the first line the helper printed: the name of its TAP.
	TAP string
	// Metrics is the address of its --metrics, "" without.
	Metrics string

	cmd    *exec.Cmd
	stderr lockedBuffer
	done   chan struct{} // closed when the process has been waited for
	err    error         // Wait's result, valid once done is closed
}

// StartHelper runs the vmnet-helper binary bin with args and waits, until
// ctx ends, for the TAP name it prints first. The helper is killed if this
// process dies.
func StartHelper(ctx context.Context, bin string, args ...string) (*Helper, error) {
	h := &Helper{cmd: exec.Command(bin, args...), done: make(chan struct{}), Metrics: metricsFlag(args)}
	h.cmd.Stderr = &h.stderr
	// A test binary or demo that dies takes its helper along.
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start vmnet-helper: %w", err)
	}
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start vmnet-helper: %w", err)
	}
	first := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		l, _ := r.ReadString('\n')
		first <- strings.TrimSpace(l)
		io.Copy(io.Discard, r)
	}()
	go func() {
		h.err = h.cmd.Wait()
		close(h.done)
	}()
	select {
	case h.TAP = <-first:
	case <-ctx.Done():
		h.Kill()
		return nil, fmt.Errorf("start vmnet-helper %s: no TAP name printed: %w; stderr:\n%s",
			strings.Join(args, " "), ctx.Err(), h.Stderr())
	}
	if h.TAP == "" {
		<-h.done
		return nil, fmt.Errorf("start vmnet-helper %s: exited (%v) without printing a TAP name; stderr:\n%s",
			strings.Join(args, " "), h.err, h.Stderr())
	}
	return h, nil
}

// Pid is the helper's process id.
func (h *Helper) Pid() int { return h.cmd.Process.Pid }

// Stderr is everything the helper wrote to its standard error so far.
func (h *Helper) Stderr() string { return h.stderr.String() }

// Exited is closed once the helper has exited.
func (h *Helper) Exited() <-chan struct{} { return h.done }

// Stop sends SIGTERM and waits up to 10 s for the helper to exit; it
// returns the exit error, nil for a clean exit. Stopping a helper that has
// exited returns how it exited.
func (h *Helper) Stop() error {
	select {
	case <-h.done:
		return h.err
	default:
	}
	h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
		return h.err
	case <-time.After(10 * time.Second):
		h.Kill()
		return errors.New("vmnet-helper did not exit within 10s of SIGTERM")
	}
}

// Kill sends SIGKILL, as a crash would end it, and waits for the exit.
func (h *Helper) Kill() {
	select {
	case <-h.done:
		return
	default:
	}
	h.cmd.Process.Signal(syscall.SIGKILL)
	<-h.done
}

// metricsFlag is the value of --metrics in a command line.
func metricsFlag(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--metrics="); ok {
			return v
		}
		if a == "--metrics" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// Stats reads the helper's counters as JSON from its /stats: the helper
// must have been started with --metrics.
func (h *Helper) Stats() (Stats, error) {
	if h.Metrics == "" {
		return Stats{}, errors.New("read vmnet-helper's counters: started without --metrics")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := metrics.Get(ctx, h.Metrics, "/stats")
	if err != nil {
		return Stats{}, fmt.Errorf("read vmnet-helper's counters: %w", err)
	}
	var s metrics.Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return Stats{}, fmt.Errorf("read vmnet-helper's counters: %w:\n%s", err, Tail(string(b), 2000))
	}
	return StatsOf(s, string(b))
}

// Scrape returns the helper's /metrics, in the text exposition format.
func (h *Helper) Scrape() ([]byte, error) {
	if h.Metrics == "" {
		return nil, errors.New("scrape vmnet-helper: started without --metrics")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return metrics.Get(ctx, h.Metrics, "/metrics")
}

// SignalStats asks the helper for its counters with SIGUSR1 and parses
// what it prints.
func (h *Helper) SignalStats() (Stats, error) {
	before := h.stderr.Len()
	if err := h.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return Stats{}, fmt.Errorf("ask vmnet-helper for counters: %w", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := h.stderr.From(before)
		if strings.Contains(s, statsEnd) {
			return ParseStats(s)
		}
		if time.Now().After(deadline) {
			return Stats{}, fmt.Errorf("vmnet-helper printed no counters within 5s of SIGUSR1; it printed:\n%s", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lockedBuffer is an io.Writer that readers may look at while it grows.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// From returns what was written from offset n on.
func (l *lockedBuffer) From(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()[n:]
}
