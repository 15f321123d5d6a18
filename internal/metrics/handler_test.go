package metrics

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

func TestSplitAddr(t *testing.T) {
	for _, tc := range []struct{ addr, network, address string }{
		{"127.0.0.1:9464", "tcp", "127.0.0.1:9464"},
		{"[::1]:9464", "tcp", "[::1]:9464"},
		{":9464", "tcp", ":9464"},
		{"unix:/run/vmnet/m.sock", "unix", "/run/vmnet/m.sock"},
		{"unix:rel.sock", "unix", "rel.sock"},
	} {
		n, a, err := SplitAddr(tc.addr)
		if err != nil || n != tc.network || a != tc.address {
			t.Errorf("SplitAddr(%q): got %q, %q, %v; want %q, %q", tc.addr, n, a, err, tc.network, tc.address)
		}
	}
	for _, bad := range []string{"", "unix:", "9464", "localhost", "/run/m.sock"} {
		if _, _, err := SplitAddr(bad); err == nil {
			t.Errorf("SplitAddr(%q): got no error", bad)
		}
	}
}

// TestHandler serves an empty Collector's registry on a unix socket and
// reads it back as vmnet-helper stats does.
func TestHandler(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCollector()
	srv := &http.Server{Handler: Handler(NewRegistry(c), c)}
	go srv.Serve(l)
	defer srv.Close()
	addr := "unix:" + path
	s, err := FetchStats(context.Background(), addr)
	if err != nil || s.Devices == nil || len(s.Devices) != 0 || s.VhostUser != nil {
		t.Errorf("FetchStats of an empty collector: got %+v, %v; want no devices", s, err)
	}
	b, err := Get(context.Background(), addr, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nprocess_open_fds ", "\ngo_goroutines "} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, b)
		}
	}
	if _, err := Get(context.Background(), addr, "/nothing"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("GET /nothing: got %v, want a 404", err)
	}
	if _, err := FetchStats(context.Background(), "unix:"+filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Error("FetchStats from a socket nobody serves: got no error")
	}
}
