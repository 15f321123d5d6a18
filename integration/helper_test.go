package integration

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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

// helperProc is a running vmnet-helper.
type helperProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	tap    string // the first line it printed
	mu     sync.Mutex
	stderr strings.Builder
	done   chan error
}

// startHelper runs vmnet-helper with args and waits for the TAP name it
// prints first.
func startHelper(t *testing.T, args ...string) *helperProc {
	t.Helper()
	h := &helperProc{t: t, cmd: exec.Command(helperBin, args...), done: make(chan error, 1)}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.cmd.Stderr = writerFunc(func(p []byte) (int, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.stderr.Write(p)
	})
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		l, _ := r.ReadString('\n')
		lines <- strings.TrimSpace(l)
		io.Copy(io.Discard, r)
	}()
	go func() { h.done <- h.cmd.Wait() }()
	select {
	case h.tap = <-lines:
	case <-time.After(10 * time.Second):
		h.kill()
		t.Fatalf("vmnet-helper %v printed no TAP name; stderr:\n%s", args, h.Stderr())
	}
	if h.tap == "" {
		err := <-h.done
		t.Fatalf("vmnet-helper %v exited (%v); stderr:\n%s", args, err, h.Stderr())
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Errorf("vmnet-helper: %v; stderr:\n%s", err, h.Stderr())
		}
	})
	return h
}

func (h *helperProc) Stderr() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stderr.String()
}

// stop sends SIGTERM and waits for a clean exit.
func (h *helperProc) stop() error {
	if h.cmd.ProcessState != nil {
		return nil
	}
	h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-h.done:
		h.done <- err
		return err
	case <-time.After(10 * time.Second):
		h.kill()
		return fmt.Errorf("did not exit within 10s of SIGTERM")
	}
}

func (h *helperProc) kill() {
	h.cmd.Process.Kill()
}

// stats asks for the counters with SIGUSR1 and returns the lines printed.
func (h *helperProc) stats() string {
	before := len(h.Stderr())
	h.cmd.Process.Signal(syscall.SIGUSR1)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		s := h.Stderr()[before:]
		if strings.Contains(s, "vhost-user sessions=") {
			return s
		}
		time.Sleep(20 * time.Millisecond)
	}
	return h.Stderr()[before:]
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
