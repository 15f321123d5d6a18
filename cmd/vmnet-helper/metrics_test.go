package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/internal/metrics"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

func TestMetricsBadArguments(t *testing.T) {
	sock := t.TempDir() + "/vu.sock"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"vhost-user no port", []string{"vhost-user", "--socket", sock, "--metrics", "localhost"}, "--metrics"},
		{"vhost-user empty unix", []string{"vhost-user", "--socket", sock, "--metrics", "unix:"}, "without a socket path"},
		{"serve-fds", []string{"serve-fds", "--socket", sock, "--metrics", "9464"}, "--metrics"},
		{"stats alone", []string{"stats"}, "--socket PATH or --metrics ADDR is required"},
		{"stats both", []string{"stats", "--socket", sock, "--metrics", "127.0.0.1:1"}, "both given"},
		{"stats bad address", []string{"stats", "--metrics", "nowhere"}, "--metrics"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runHelper(tc.args...)
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want a usage error containing %q", err, tc.want)
			}
		})
	}
	_, _, err := runHelper("stats", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	var ue *usageError
	if err == nil || errors.As(err, &ue) {
		t.Errorf("stats of a socket nobody serves: got %v, want a failure (exit 1)", err)
	}
}

// TestVhostUserMetrics runs vhost-user with --metrics unix:PATH, reads it
// back with the stats command and scrapes /metrics, which promtool must
// accept; the socket goes when the helper does.
func TestVhostUserMetrics(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	dir := t.TempDir()
	msock := filepath.Join(dir, "metrics.sock")
	// A socket file left by a dead helper is replaced.
	if err := os.WriteFile(msock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	args := []string{"vhost-user", "--socket", filepath.Join(dir, "vu.sock"), "--netns", ns, "--tap", "vm%d", "--queues", "2",
		"--metrics", "unix:" + msock}
	go func() { done <- run(ctx, args, &stdout, &stderr) }()
	select {
	case err := <-done:
		cancel()
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("over a regular file: got %v, want it refused; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("vhost-user did not refuse a --metrics path that is a regular file")
	}
	os.Remove(msock)

	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- run(ctx, args, &stdout, &stderr) }()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.HasSuffix(stdout.String(), "\n") {
		if time.Now().After(deadline) {
			t.Fatalf("no TAP name printed; stderr:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	tapName := strings.TrimSpace(stdout.String())

	out, _, err := runHelper("stats", "--socket", msock)
	if err != nil {
		t.Fatal(err)
	}
	var s metrics.Snapshot
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("stats printed %q: %v", out, err)
	}
	if len(s.Devices) != 1 || s.Devices[0].TAP != tapName || len(s.Devices[0].Queues) != 2 || s.Devices[0].Link == nil ||
		!s.Devices[0].Link.Up || len(s.VhostUser) != 1 || s.VhostUser[0].TAP != tapName {
		t.Errorf("stats: got %s, want device %s with 2 queue pairs, its TAP up, and its server", out, tapName)
	}
	scrape, err := metrics.Get(ctx, "unix:"+msock, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`vmnet_queue_tx_packets_total{queue="1",tap="` + tapName + `"} 0`,
		`vmnet_device_info{features="",offloads="",steering="hash",tap="` + tapName + `"} 1`,
		`vmnet_vhost_user_sessions_total{tap="` + tapName + `"} 0`, "\nprocess_open_fds ", "\ngo_goroutines "} {
		if !strings.Contains(string(scrape), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, scrape)
		}
	}
	testutil.PromtoolCheckMetrics(t, scrape)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("vhost-user after its context ended: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("vhost-user did not return after its context ended")
	}
	if _, err := os.Lstat(msock); err == nil {
		t.Error("metrics socket left after the helper returned")
	}
}
