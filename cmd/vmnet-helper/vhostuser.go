package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/internal/metrics"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/vhostuser"
)

// vhostUserFlags is the command line of `vmnet-helper vhost-user`.
type vhostUserFlags struct {
	socket   string
	client   bool
	tap      string
	queues   int
	netns    string
	persist  bool
	mac      string
	mtu      int
	offloads string
	busyPoll time.Duration
	ioURing  bool
	steering string
	metrics  metricsFlag
	log      logFlags
}

// parsed is the checked form of the flags: everything is validated before
// anything is created.
type vhostUserConfig struct {
	vhostUserFlags
	mac     net.HardwareAddr
	offer   offload.OfferList
	logger  hclog.Logger
	literal bool // --tap is a name, not a template
	steer   ebpf.Steering
}

func parseVhostUser(args []string, stderr io.Writer) (*vhostUserConfig, error) {
	fs := newFlagSet("vhost-user")
	var f vhostUserFlags
	fs.StringVar(&f.socket, "socket", "", "unix socket path (required)")
	fs.BoolVar(&f.client, "client", false, "connect to a front-end that listens (QEMU server=on) instead of listening")
	fs.StringVar(&f.tap, "tap", tap.DefaultName, "TAP name (used as given, created if missing) or template with one %d")
	fs.IntVar(&f.queues, "queues", 1, "queue pairs (1 to 255)")
	fs.StringVar(&f.netns, "netns", "", "network namespace the TAP lives in (the helper itself stays where it started)")
	fs.BoolVar(&f.persist, "persist", false, "keep the TAP after vmnet-helper exits")
	fs.StringVar(&f.mac, "mac", "", "the guest's MAC address (default: random, locally administered)")
	fs.IntVar(&f.mtu, "mtu", 0, "MTU of the TAP, offered to the guest ("+mtuRange+"; 0: the kernel's 1500, not offered)")
	fs.StringVar(&f.offloads, "offloads", "auto", "offloads to offer: auto, none, or a list such as csum,tso4,tso6,guest_ufo")
	fs.DurationVar(&f.busyPoll, "busy-poll", 0, "keep each queue pair polling this long after its last work (e.g. 50us)")
	fs.BoolVar(&f.ioURing, "io-uring", true, "batch TAP reads and writes through io_uring where the kernel allows (false: one system call per frame)")
	fs.StringVar(&f.steering, "steering", "auto", "queue steering: auto (hash with several queues), kernel (tun's flow table), hash (eBPF: a flow keeps its queue) or queue:N (every frame to queue N, for debugging)")
	f.metrics.register(fs)
	f.log.register(fs)
	logger, err := parseCommand(fs, args, stderr, &f.log)
	if err != nil {
		return nil, err
	}
	c := &vhostUserConfig{vhostUserFlags: f, logger: logger}
	switch {
	case f.socket == "":
		return nil, usagef("vhost-user: --socket is required")
	case f.queues < 1 || f.queues > tap.MaxQueues:
		return nil, usagef("vhost-user: --queues %d: want 1 to %d", f.queues, tap.MaxQueues)
	case f.busyPoll < 0 || f.busyPoll > time.Second:
		return nil, usagef("vhost-user: --busy-poll %v: want 0 to 1s", f.busyPoll)
	}
	if err := checkMTUFlag("vhost-user", f.mtu); err != nil {
		return nil, err
	}
	if err := f.metrics.check("vhost-user"); err != nil {
		return nil, err
	}
	if dir := filepath.Dir(f.socket); dir != "" {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return nil, usagef("vhost-user: --socket %s: directory %s does not exist", f.socket, dir)
		}
	}
	if err := tap.ValidateName(f.tap, true); err != nil {
		return nil, usagef("vhost-user: --tap: %v", err)
	}
	c.literal = !tap.IsTemplate(f.tap)
	if f.mac != "" {
		if c.mac, err = parseMACFlag("vhost-user", f.mac); err != nil {
			return nil, err
		}
	}
	if c.offer, err = offload.ParseOfferList(f.offloads); err != nil {
		return nil, usagef("vhost-user: --offloads: %v", err)
	}
	if c.steer, err = parseSteering("vhost-user", f.steering, true, f.queues); err != nil {
		return nil, err
	}
	if f.netns != "" {
		if err := tap.CheckNetNS(f.netns); err != nil {
			return nil, usagef("vhost-user: --netns %s: %v", f.netns, err)
		}
	}
	return c, nil
}

// runVhostUser serves a vhost-user-net device over a TAP until ctx ends.
func runVhostUser(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseVhostUser(args, stderr)
	if err != nil {
		return err
	}
	log := c.logger
	tp, err := openOrCreateTap(c)
	if err != nil {
		return err
	}
	defer tp.Close()
	if c.mtu != 0 {
		if err := tp.SetMTU(c.mtu); err != nil {
			return err
		}
	}
	if err := tp.SetUp(true); err != nil {
		return err
	}
	dev, err := backend.New(backend.Options{TAP: tp, MAC: c.mac, MTU: c.mtu, Offloads: c.offer, Steering: c.steer, BusyPoll: c.busyPoll,
		NoIOURing: !c.ioURing, Logger: log})
	if err != nil {
		return err
	}
	defer dev.Close()
	if c.persist {
		if err := tp.SetPersist(true); err != nil {
			return err
		}
	}
	srv := vhostuser.NewServer(dev.VhostUser(), vhostuser.Options{Logger: log})
	// Listening before the TAP's name is printed: whoever reads it can
	// scrape at once.
	ms, err := c.metrics.listen()
	if err != nil {
		return err
	}
	col := metrics.NewCollector()
	col.AddDevice(dev)
	col.AddServer(srv, tp.Name())
	ms.serve(col, log)
	defer ms.stop()
	fmt.Fprintln(stdout, tp.Name())

	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-usr1:
				printStats(stderr, tp.Name(), dev, srv)
			}
		}
	}()

	log.Info("serving vhost-user", "socket", c.socket, "client", c.client, "tap", tp.Name(),
		"queues", dev.Pairs(), "features", dev.Features().String())
	if c.client {
		err = srv.Dial(ctx, c.socket)
	} else {
		err = srv.Serve(ctx, c.socket)
	}
	printStats(stderr, tp.Name(), dev, srv)
	return err
}

// openOrCreateTap uses an existing device named by a literal --tap, and
// creates one otherwise.
func openOrCreateTap(c *vhostUserConfig) (*tap.Device, error) {
	opts := tap.Options{Name: c.tap, Queues: c.queues, NetNS: c.netns, Logger: c.logger}
	if c.literal {
		if _, err := tap.Lookup(c.tap, c.netns); err == nil {
			return tap.Open(c.tap, opts)
		}
	}
	return tap.Create(opts)
}

// printStats writes the per-queue counters, the answer to SIGUSR1.
func printStats(w io.Writer, tapName string, dev *backend.Device, srv *vhostuser.Server) {
	for i := 0; i < dev.Pairs(); i++ {
		fmt.Fprintf(w, "vmnet-helper: tap %s queue %d: %s\n", tapName, i, dev.Counters(i).Snapshot())
	}
	fmt.Fprintf(w, "vmnet-helper: vhost-user %v\n", srv.Stats())
}
