package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves g's metrics on /metrics, in the exposition format the
// scraper asks for, and c's Snapshot as JSON on /stats.
func Handler(g prometheus.Gatherer, c *Collector) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		b, err := json.MarshalIndent(c.Snapshot(), "", "  ")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(b, '\n'))
	})
	return mux
}

// SplitAddr reads a metrics address, vmnet-helper's --metrics: "unix:PATH"
// is a unix socket, anything else a TCP host:port such as
// 127.0.0.1:9464.
func SplitAddr(addr string) (network, address string, err error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return "", "", fmt.Errorf("metrics address %q: unix: without a socket path", addr)
		}
		return "unix", path, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("metrics address %q: want host:port or unix:PATH: %w", addr, err)
	}
	return "tcp", addr, nil
}

// Get fetches path ("/stats", "/metrics") from the Handler served at addr
// (SplitAddr's form) and returns the body.
func Get(ctx context.Context, addr, path string) ([]byte, error) {
	network, address, err := SplitAddr(addr)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, address)
		},
		DisableKeepAlives: true,
	}}
	host := address
	if network == "unix" {
		host = "vmnet" // any name: the dialer ignores it
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get %s from %s: %w", path, addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("get %s from %s: %w", path, addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get %s from %s: %s: %s", path, addr, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// FetchStats reads the Snapshot served on /stats at addr.
func FetchStats(ctx context.Context, addr string) (Snapshot, error) {
	b, err := Get(ctx, addr, "/stats")
	if err != nil {
		return Snapshot{}, err
	}
	var s Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return Snapshot{}, fmt.Errorf("read /stats from %s: %w", addr, err)
	}
	return s, nil
}
