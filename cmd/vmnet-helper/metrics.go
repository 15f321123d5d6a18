package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/metrics"
)

// metricsFlag is --metrics ADDR, which vhost-user and serve-fds take: the
// counters served to Prometheus on /metrics and as JSON on /stats.
type metricsFlag struct{ addr string }

func (m *metricsFlag) register(fs *flag.FlagSet) {
	fs.StringVar(&m.addr, "metrics", "", "serve metrics on /metrics and counters as JSON on /stats at host:port (127.0.0.1:9464) or unix:PATH")
}

// check refuses an address that is neither host:port nor unix:PATH.
func (m *metricsFlag) check(cmd string) error {
	if m.addr == "" {
		return nil
	}
	if _, _, err := metrics.SplitAddr(m.addr); err != nil {
		return usagef("%s: --metrics: %v", cmd, err)
	}
	return nil
}

// metricsServer serves a Collector's registry at --metrics.
type metricsServer struct {
	srv  *http.Server
	l    net.Listener
	done chan struct{}
}

// listen binds the address, before anything is served or privileges are
// dropped; nil without --metrics. A unix socket a dead process left is
// replaced; a socket someone listens on, or any other file, is an error.
// The socket takes the umask's permissions: root's 022 lets only root
// connect.
func (m *metricsFlag) listen() (*metricsServer, error) {
	if m.addr == "" {
		return nil, nil
	}
	network, address, err := metrics.SplitAddr(m.addr)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen(network, address)
	if err != nil && network == "unix" && errors.Is(err, unix.EADDRINUSE) {
		l, err = replaceStaleSocket(address)
	}
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", m.addr, err)
	}
	return &metricsServer{l: l, done: make(chan struct{})}, nil
}

func replaceStaleSocket(path string) (net.Listener, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return nil, fmt.Errorf("%s exists and is not a socket (mode %s)", path, fi.Mode())
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: another process listens there", path)
	}
	if err := os.Remove(path); err != nil {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	return net.Listen("unix", path)
}

// serve serves c, with the process and Go collectors, until stop.
func (s *metricsServer) serve(c *metrics.Collector, logger hclog.Logger) {
	if s == nil {
		return
	}
	log := logger.Named("metrics")
	s.srv = &http.Server{
		Handler:           metrics.Handler(metrics.NewRegistry(c), c),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	log.Info("serving metrics", "address", s.l.Addr().String())
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(s.l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "error", err)
		}
	}()
}

// stop closes the listener (and removes a unix socket), waits up to 5s for
// the scrapes under way, and returns once the server's goroutine has.
func (s *metricsServer) stop() {
	if s == nil {
		return
	}
	if s.srv == nil {
		s.l.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	<-s.done
}

// runStats prints the /stats of a helper serving --metrics, as JSON.
func runStats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("stats")
	var lf logFlags
	lf.register(fs)
	socket := fs.String("socket", "", "the unix socket of a helper's --metrics unix:PATH")
	var m metricsFlag
	fs.StringVar(&m.addr, "metrics", "", "a helper's --metrics address: host:port or unix:PATH")
	if _, err := parseCommand(fs, args, stderr, &lf); err != nil {
		return err
	}
	switch {
	case *socket != "" && m.addr != "":
		return usagef("stats: --socket and --metrics both given: want one")
	case *socket != "":
		m.addr = "unix:" + *socket
	case m.addr == "":
		return usagef("stats: --socket PATH or --metrics ADDR is required")
	}
	if err := m.check("stats"); err != nil {
		return err
	}
	s, err := metrics.FetchStats(ctx, m.addr)
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	_, err = stdout.Write(append(b, '\n'))
	return err
}
