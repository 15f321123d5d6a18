package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/integration/guest"
	"github.com/vmnet-dev/vmnet/integration/harness"
)

// The link between the guest and the helper's TAP.
const (
	hostAddr  = "10.0.2.2"
	guestAddr = "10.0.2.15"
	prefixLen = "/24"
	firstPort = 5201 // iperf3 servers listen on firstPort, firstPort+1, ...
	pings     = 10
)

type options struct {
	helper    string
	queues    int
	iperfTime time.Duration
	verbose   bool
	steering  string // vmnet-helper vhost-user --steering
}

// results are what the demo measured.
type results struct {
	steering          string
	qemu              string
	boot              time.Duration
	ns, tap           string
	queues            int
	pingOut, pingIn   harness.Ping  // from the guest to the host, and back
	iperfOut, iperfIn harness.Iperf // guest to host, host to guest; all flows
	flows             int
	stats             harness.Stats
	offloads          []string
	iperfTime         time.Duration
}

// run does the whole demo. Everything it starts or creates is stopped or
// removed before it returns, whatever happens; ctx ends with Ctrl-C.
func run(ctx context.Context, o options, stdout, stderr io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the demo creates a network namespace and a TAP device")
	}
	for _, tool := range []string{"qemu-system-x86_64", "iperf3", "ip", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("find %s (make deps installs it): %w", tool, err)
		}
	}
	helperBin, err := filepath.Abs(o.helper)
	if err != nil {
		return fmt.Errorf("find vmnet-helper: %w", err)
	}
	if _, err := os.Stat(helperBin); err != nil {
		return fmt.Errorf("find vmnet-helper (make build makes it): %w", err)
	}
	step := func(format string, args ...any) { fmt.Fprintf(stderr, "==> "+format+"\n", args...) }
	log := hclog.NewNullLogger()
	if o.verbose {
		log = hclog.New(&hclog.LoggerOptions{Name: "vmnet-demo", Output: stderr, Level: hclog.Debug})
	}

	// Cleanups run last-in, first-out when run returns.
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	var h *harness.Helper
	var vm *guest.VM
	// Runs before the cleanups: say what the helper and the guest said.
	defer func() {
		if err == nil || ctx.Err() != nil {
			return
		}
		if h != nil {
			fmt.Fprintf(stderr, "--- vmnet-helper's last messages:\n%s\n", harness.Tail(h.Stderr(), 3000))
		}
		if vm != nil {
			fmt.Fprintf(stderr, "--- the guest's console and QEMU, last lines:\n%s\n", vm.LogTail(3000))
		}
	}()

	if o.steering == "" {
		o.steering = "auto"
	}
	r := results{queues: o.queues, steering: o.steering, iperfTime: o.iperfTime, ns: fmt.Sprintf("vmnet-demo-%d", os.Getpid())}
	if out, err := exec.CommandContext(ctx, "qemu-system-x86_64", "--version").Output(); err == nil {
		r.qemu, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}

	step("preparing the guest image (the first run downloads a Debian kernel package)")
	img, err := guest.BuildImage(ctx, guest.ImageOptions{Logger: log})
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "vmnet-demo-")
	if err != nil {
		return fmt.Errorf("create a scratch directory: %w", err)
	}
	cleanups = append(cleanups, func() { os.RemoveAll(dir) })

	step("creating network namespace %s", r.ns)
	delNS, err := harness.NewNetNS(ctx, r.ns)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		if err := delNS(); err != nil {
			fmt.Fprintf(stderr, "vmnet-demo: %v\n", err)
		}
	})

	sock := filepath.Join(dir, "vhost-user.sock")
	msock := filepath.Join(dir, "metrics.sock")
	step("starting vmnet-helper vhost-user --socket %s --netns %s --queues %d --steering %s --metrics unix:%s",
		sock, r.ns, o.queues, o.steering, msock)
	h, err = harness.StartHelper(ctx, helperBin, "vhost-user", "--socket", sock, "--netns", r.ns,
		"--queues", strconv.Itoa(o.queues), "--tap", "vmnet%d", "--steering", o.steering, "--metrics", "unix:"+msock)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		if err := h.Stop(); err != nil {
			fmt.Fprintf(stderr, "vmnet-demo: stop vmnet-helper: %v\n", err)
		}
	})
	r.tap = h.TAP
	if _, err := harness.Run(ctx, r.ns, "ip", "addr", "add", hostAddr+prefixLen, "dev", h.TAP); err != nil {
		return err
	}

	step("booting the guest under QEMU (TCG, %d vCPUs, vhost-user NIC); this takes 5 to 60 s", o.queues)
	vm, err = guest.Start(ctx, guest.Config{
		Image:        img,
		SharedMemory: true,
		SMP:          o.queues,
		Args:         harness.VhostUserNIC{Socket: sock, Queues: o.queues}.Args(),
		KernelArgs:   []string{"vmnet.ip=" + guestAddr + prefixLen},
		LogPath:      filepath.Join(dir, "guest.log"),
		Logger:       log,
	})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, vm.Stop)
	bootCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := vm.WaitBoot(bootCtx); err != nil {
		return err
	}
	r.boot = vm.BootTime()
	guestRun := func(script string) (string, error) {
		c, cancel := context.WithTimeout(ctx, 2*time.Minute+2*o.iperfTime)
		defer cancel()
		return vm.RunOK(c, script)
	}
	if out, err := guestRun("ethtool -k eth0"); err == nil {
		f := harness.ParseEthtoolFeatures(out)
		for _, name := range []string{"tx-checksumming", "rx-checksumming", "tcp-segmentation-offload", "rx-gro-hw"} {
			if f[name] {
				r.offloads = append(r.offloads, name)
			}
		}
	}

	step("ping %s from the guest and %s from the namespace, %d times each", hostAddr, guestAddr, pings)
	// The first ping of each side waits for ARP; leave it out.
	if _, err := guestRun("ping -c 1 -W 10 " + hostAddr); err != nil {
		return err
	}
	out, err := guestRun(fmt.Sprintf("ping -c %d -i 0.2 -W 5 %s", pings, hostAddr))
	if err != nil {
		return err
	}
	if r.pingOut, err = harness.ParsePing(out); err != nil {
		return err
	}
	if out, err = harness.Run(ctx, r.ns, "ping", "-c", strconv.Itoa(pings), "-i", "0.2", "-W", "5", guestAddr); err != nil {
		return err
	}
	if r.pingIn, err = harness.ParsePing(out); err != nil {
		return err
	}

	r.flows = o.queues
	for _, reverse := range []bool{false, true} {
		dirName := "guest -> host"
		if reverse {
			dirName = "host -> guest"
		}
		step("iperf3 TCP %s for %s, one flow from each vCPU", dirName, o.iperfTime)
		res, err := iperf(ctx, vm, r.ns, o, reverse)
		if err != nil {
			return err
		}
		if reverse {
			r.iperfIn = res
		} else {
			r.iperfOut = res
		}
	}
	if r.stats, err = h.Stats(); err != nil {
		return err
	}
	report(stdout, r)
	return nil
}

// iperf runs one iperf3 client per vCPU, pinned to it, each against its own
// server in the namespace, and adds up their results. XPS maps each vCPU to
// its own TX queue, and each flow's client port is chosen so that the
// TAP's hash steering sends its frames back on that queue pair.
func iperf(ctx context.Context, vm *guest.VM, ns string, o options, reverse bool) (harness.Iperf, error) {
	var script strings.Builder
	// Client ports: each flow its own, whose flow the helper's hash
	// steering puts on pair i too (both directions hash alike); the two
	// runs take ports of their own, the first run's being in TIME_WAIT.
	cport := 40000
	if reverse {
		cport = 50000
	}
	for i := range o.queues {
		port := firstPort + i
		srv, err := harness.StartIperfServer(ctx, ns, hostAddr, port)
		if err != nil {
			return harness.Iperf{}, err
		}
		defer srv.Stop()
		flags := ""
		if reverse {
			flags = " -R"
		}
		cport = spreadPort(i, o.queues, port, cport+1)
		fmt.Fprintf(&script, "taskset -c %d iperf3 -J -c %s -p %d --cport %d -t %d%s > /tmp/iperf.%d 2>&1 &\n",
			i, hostAddr, port, cport, int(o.iperfTime.Seconds()), flags, i)
	}
	script.WriteString("wait\nfor f in /tmp/iperf.*; do cat $f; echo __END__; done\n")
	c, cancel := context.WithTimeout(ctx, 2*time.Minute+o.iperfTime)
	defer cancel()
	out, err := vm.RunOK(c, script.String())
	if err != nil {
		return harness.Iperf{}, err
	}
	parts := strings.Split(out, "__END__")
	if len(parts) <= o.queues {
		return harness.Iperf{}, fmt.Errorf("iperf3 in the guest: got %d results, want %d: %s", len(parts)-1, o.queues, harness.Tail(out, 1000))
	}
	var sum harness.Iperf
	for _, part := range parts[:o.queues] {
		r, err := harness.ParseIperfJSON(part)
		if err != nil {
			return harness.Iperf{}, err
		}
		sum.Seconds = max(sum.Seconds, r.Seconds)
		sum.SentBytes += r.SentBytes
		sum.SentBPS += r.SentBPS
		sum.RecvBytes += r.RecvBytes
		sum.RecvBPS += r.RecvBPS
		sum.Retransmits += r.Retransmits
		sum.Streams += r.Streams
	}
	return sum, nil
}

// report prints the table.
func report(w io.Writer, r results) {
	fmt.Fprintf(w, "\nvmnet demo: a Linux guest under %s (TCG, %d vCPUs, booted in %s)\n", r.qemu, r.queues, r.boot.Round(100*time.Millisecond))
	fmt.Fprintf(w, "with a vhost-user virtio-net NIC (%d queue pairs, steering %s) served by vmnet-helper on TAP %s,\n", r.queues, r.steering, r.tap)
	fmt.Fprintf(w, "in network namespace %s: host %s, guest %s; guest offloads on: %s\n\n",
		r.ns, hostAddr, guestAddr, strings.Join(r.offloads, ", "))
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintf(tw, "\tguest -> host\thost -> guest\n")
	fmt.Fprintf(tw, "ping RTT (avg of %d)\t%.3f ms\t%.3f ms\n", r.pingOut.Received, r.pingOut.Avg, r.pingIn.Avg)
	fmt.Fprintf(tw, "iperf3 TCP (%s, %d flows)\t%.2f Gbit/s\t%.2f Gbit/s\n", r.iperfTime, r.flows, r.iperfOut.Gbps(), r.iperfIn.Gbps())
	fmt.Fprintf(tw, "TCP retransmits\t%d\t%d\n", r.iperfOut.Retransmits, r.iperfIn.Retransmits)
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintf(tw, "queue pair\tpackets guest -> TAP\tpackets TAP -> guest\tdrops\n")
	for i, q := range r.stats.Queues {
		drops, _ := q.Drops()
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\n", i, q[engine.TXPackets], q[engine.RXPackets], drops)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nvhost-user messages from QEMU: %s\n", r.stats.MessageList())
}

// spreadPort is a client port from `from` up whose TCP flow from the guest
// to the host's port vmnet's hash steering puts on queue pair q of queues.
func spreadPort(q, queues, port, from int) int {
	return int(ebpf.PortForQueue(q, queues, 6, netip.MustParseAddr(guestAddr), netip.MustParseAddr(hostAddr), uint16(port), uint16(from)))
}
