package harness

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmnet-dev/vmnet/internal/netns"
)

// NewNetNS creates the network namespace name with its loopback up and
// returns the function that deletes it, and everything left in it. It is
// internal/netns.Add, which makes every namespace vmnet's tests and demo
// use, one ip netns add at a time across processes (see there why).
func NewNetNS(ctx context.Context, name string) (del func() error, err error) {
	return netns.Add(ctx, name)
}

// Run runs a command in network namespace ns ("" for this one) and returns
// its combined output; the error carries the output.
func Run(ctx context.Context, ns, name string, args ...string) (string, error) {
	cmd := Command(ctx, ns, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(Tail(string(out), 2000)))
	}
	return string(out), nil
}

// Command is exec.CommandContext in network namespace ns ("" for this one).
func Command(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	if ns != "" {
		args = append([]string{"netns", "exec", ns, name}, args...)
		name = "ip"
	}
	return exec.CommandContext(ctx, name, args...)
}

// LinkStats are a link's kernel counters (ip -s link): for a TAP, rx is
// what the helper wrote into it and tx what the kernel sent to it.
type LinkStats struct {
	RXPackets, RXBytes, RXDropped, TXPackets, TXBytes, TXDropped uint64
}

// ReadLinkStats reads dev's counters in namespace ns from sysfs.
func ReadLinkStats(ctx context.Context, ns, dev string) (LinkStats, error) {
	names := []string{"rx_packets", "rx_bytes", "rx_dropped", "tx_packets", "tx_bytes", "tx_dropped"}
	script := "cd /sys/class/net/" + dev + "/statistics && cat " + strings.Join(names, " ")
	out, err := Run(ctx, ns, "sh", "-c", script)
	if err != nil {
		return LinkStats{}, fmt.Errorf("read counters of %s: %w", dev, err)
	}
	f := strings.Fields(out)
	if len(f) != len(names) {
		return LinkStats{}, fmt.Errorf("read counters of %s: got %q, want %d numbers", dev, out, len(names))
	}
	v := make([]uint64, len(f))
	for i, s := range f {
		if v[i], err = strconv.ParseUint(s, 10, 64); err != nil {
			return LinkStats{}, fmt.Errorf("read %s of %s: %w", names[i], dev, err)
		}
	}
	return LinkStats{v[0], v[1], v[2], v[3], v[4], v[5]}, nil
}

// IperfServer is iperf3 -s listening in a network namespace.
type IperfServer struct {
	cmd  *exec.Cmd
	out  lockedBuffer
	done chan struct{}
}

// StartIperfServer runs iperf3 -s bound to addr:port in ns and waits until
// it listens.
func StartIperfServer(ctx context.Context, ns, addr string, port int) (*IperfServer, error) {
	s := &IperfServer{done: make(chan struct{})}
	s.cmd = Command(context.Background(), ns, "iperf3", "-s", "-B", addr, "-p", strconv.Itoa(port))
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start iperf3 server: %w", err)
	}
	go func() {
		s.cmd.Wait()
		close(s.done)
	}()
	for {
		out, _ := Run(ctx, ns, "ss", "-Hltn", "sport = :"+strconv.Itoa(port))
		if strings.Contains(out, "LISTEN") {
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("iperf3 server on %s:%d exited: %s", addr, port, s.out.String())
		case <-ctx.Done():
			s.Stop()
			return nil, fmt.Errorf("iperf3 server on %s:%d does not listen: %w", addr, port, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop kills the server and waits for it.
func (s *IperfServer) Stop() {
	s.cmd.Process.Kill()
	<-s.done
}
