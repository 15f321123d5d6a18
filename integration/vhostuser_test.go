package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/integration/guest"
	"github.com/vmnet-dev/vmnet/integration/harness"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// Addresses on the link between a guest and its helper's TAP.
const (
	hostAddr  = "10.0.2.2"
	guestAddr = "10.0.2.15"
)

// A frame of the 1500-byte MTU, without the vnet header: what the average
// size of frames through the engine cannot exceed unless segmentation
// offloads carried larger ones.
const maxFrame = 1514

// vhostUserGuest is a guest whose eth0 is a vhost-user NIC served by a
// vmnet-helper on a TAP in a fresh namespace, where the TAP is
// hostAddr/24 and the guest guestAddr/24.
type vhostUserGuest struct {
	vm         *guest.VM
	helper     *helperProc
	helperArgs []string
	ns         string
}

// guestOptions vary the guest and the helper of startVhostUserGuest.
type guestOptions struct {
	queues int // queue pairs, and the guest's vCPUs; 0 means 1
	// server: QEMU listens on the socket (server=on) and the helper connects
	// with --client.
	server bool
	// reconnect: QEMU connects again a second after the helper goes away.
	reconnect bool
	// persist: the TAP is vu0, made with --persist, so that a helper that
	// is killed leaves it, and its address, to the next one.
	persist bool
}

func startVhostUserGuest(t *testing.T, o guestOptions) *vhostUserGuest {
	t.Helper()
	testutil.RequireTUN(t)
	img := guest.Require(t)
	queues := max(o.queues, 1)
	g := &vhostUserGuest{ns: testutil.NetNS(t)}
	nic := harness.VhostUserNIC{
		Socket: filepath.Join(t.TempDir(), "vhost.sock"),
		Queues: queues,
		Server: o.server,
	}
	if o.reconnect {
		nic.Reconnect = 1
	}
	tap := "vu%d"
	if o.persist {
		tap = "vu0"
	}
	g.helperArgs = append([]string{"vhost-user", "--socket", nic.Socket, "--netns", g.ns, "--tap", tap,
		"--queues", strconv.Itoa(queues), "--log-level", "debug"}, metricsArgs(filepath.Dir(nic.Socket))...)
	if o.persist {
		g.helperArgs = append(g.helperArgs, "--persist")
	}
	if o.server {
		g.helperArgs = append(g.helperArgs, "--client")
	}
	// Started before QEMU either way: a helper with --client retries until
	// QEMU listens, and QEMU as client needs the helper's socket.
	g.helper = startHelper(t, g.helperArgs...)
	testutil.Exec(t, g.ns, "ip", "addr", "add", hostAddr+"/24", "dev", g.helper.tap)

	// Boots take 5 to 60 s on a loaded machine under TCG.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	g.vm = guest.StartT(ctx, t, guest.Config{
		Image:        img,
		SharedMemory: true,
		SMP:          queues,
		Args:         nic.Args(),
		KernelArgs:   []string{"vmnet.ip=" + guestAddr + "/24"},
	})
	return g
}

// run runs a script in the guest that must succeed.
func (g *vhostUserGuest) run(t *testing.T, timeout time.Duration, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := g.vm.RunOK(ctx, script)
	if err != nil {
		t.Fatalf("in the guest: %v\nhelper stderr (tail):\n%s", err, harness.Tail(g.helper.Stderr(), 3000))
	}
	return out
}

// pingBothWays pings the TAP side from the guest and the guest from the
// namespace, n times each, and returns the two summaries.
func (g *vhostUserGuest) pingBothWays(t *testing.T, n int) (fromGuest, fromHost harness.Ping) {
	t.Helper()
	c := strconv.Itoa(n)
	out := g.run(t, time.Minute, "ping -c "+c+" -W 5 "+hostAddr)
	var err error
	if fromGuest, err = harness.ParsePing(out); err != nil || fromGuest.Received != n {
		t.Fatalf("ping %s from the guest: got %+v (%v), want %d replies:\n%s", hostAddr, fromGuest, err, n, out)
	}
	out, err = harness.Run(context.Background(), g.ns, "ping", "-c", c, "-W", "5", guestAddr)
	if err != nil {
		t.Fatalf("ping %s from the namespace: %v", guestAddr, err)
	}
	if fromHost, err = harness.ParsePing(out); err != nil || fromHost.Received != n {
		t.Fatalf("ping %s from the namespace: got %+v (%v), want %d replies:\n%s", guestAddr, fromHost, err, n, out)
	}
	return fromGuest, fromHost
}

// iperf runs iperf3 in the guest against a server in the namespace on
// port; args are the client's options after -c and -p (-t, -R, -P).
func (g *vhostUserGuest) iperf(t *testing.T, port int, args string) harness.Iperf {
	t.Helper()
	srv, err := harness.StartIperfServer(context.Background(), g.ns, hostAddr, port)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	out := g.run(t, 2*time.Minute, fmt.Sprintf("iperf3 -J -c %s -p %d %s", hostAddr, port, args))
	r, err := harness.ParseIperfJSON(out)
	if err != nil {
		t.Fatalf("iperf3 %s: %v", args, err)
	}
	return r
}

// checkNoDrops fails the test if the helper counted a dropped frame, or the
// guest a receive error.
func (g *vhostUserGuest) checkNoDrops(t *testing.T, st harness.Stats) {
	t.Helper()
	for i, q := range st.Queues {
		if n, which := q.Drops(); n != 0 {
			t.Errorf("queue pair %d dropped frames: %s", i, which)
		}
	}
	out := g.run(t, time.Minute, "cd /sys/class/net/eth0/statistics && for f in rx_errors rx_length_errors rx_dropped tx_errors tx_dropped; do echo $f: $(cat $f); done")
	for f, v := range harness.ParseEthtoolStats(out) {
		if v != 0 {
			t.Errorf("guest eth0 %s: got %d, want 0", f, v)
		}
	}
}

// TestVhostUserMultiQueue runs one 2-queue guest (queues=2, mq=on, two
// vCPUs) through everything a single front-end connection should carry:
// pings, iperf3 both ways with offloads, changing the number of queue
// pairs, and turning the guest's offloads off.
func TestVhostUserMultiQueue(t *testing.T) {
	g := startVhostUserGuest(t, guestOptions{queues: 2})

	t.Run("ping both ways", func(t *testing.T) {
		fromGuest, fromHost := g.pingBothWays(t, 3)
		t.Logf("RTT guest to host %.3f ms, host to guest %.3f ms", fromGuest.Avg, fromHost.Avg)
	})

	// QEMU says on its standard error when it dislikes the back-end: a
	// protocol feature it does not want, a failed request, a fall back to
	// its own virtio-net ("falling back on userspace virtio").
	t.Run("QEMU has no complaint", func(t *testing.T) {
		log, err := os.ReadFile(g.vm.LogPath())
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(log), "\n") {
			if strings.HasPrefix(l, "[qemu] ") {
				t.Errorf("QEMU: %s", strings.TrimPrefix(l, "[qemu] "))
			}
		}
	})

	t.Run("offloads negotiated", func(t *testing.T) {
		out := g.run(t, time.Minute, "ethtool -k eth0")
		f := harness.ParseEthtoolFeatures(out)
		for _, name := range []string{"rx-checksumming", "tx-checksumming", "scatter-gather",
			"tcp-segmentation-offload", "tx-tcp-segmentation", "tx-tcp6-segmentation"} {
			if !f[name] {
				t.Errorf("guest ethtool -k eth0: %s is off, want on (offered and negotiated)", name)
			}
		}
		if t.Failed() {
			t.Logf("ethtool -k eth0:\n%s", out)
		}
	})

	// Large frames through the engine are the proof that TSO, checksum
	// offload and the guest's receive offloads were applied end to end.
	var before harness.Stats
	t.Run("iperf3 guest to host", func(t *testing.T) {
		before = g.helper.counters(t)
		r := g.iperf(t, 5201, "-t 5")
		d := diffTotals(before, g.helper.counters(t))
		t.Logf("iperf3 guest to host: %s; %d frames to the TAP, %d bytes average", r, d.tx, d.txAvg())
		if d.txAvg() <= maxFrame {
			t.Errorf("guest to host: frames to the TAP average %d bytes, want more than %d (TSO)", d.txAvg(), maxFrame)
		}
	})
	t.Run("iperf3 host to guest", func(t *testing.T) {
		before = g.helper.counters(t)
		r := g.iperf(t, 5201, "-t 5 -R")
		d := diffTotals(before, g.helper.counters(t))
		t.Logf("iperf3 host to guest: %s; %d frames to the guest, %d bytes average", r, d.rx, d.rxAvg())
		if d.rxAvg() <= maxFrame {
			t.Errorf("host to guest: frames to the guest average %d bytes, want more than %d (guest TSO)", d.rxAvg(), maxFrame)
		}
		g.checkNoDrops(t, g.helper.counters(t))
	})

	t.Run("metrics move with the traffic and agree with the TAP", func(t *testing.T) {
		g.checkMetrics(t, 2)
	})

	// Linux's virtio_net starts with as many queue pairs as it has vCPUs
	// (2 here): first go down to one and check that pair 1 goes quiet,
	// then back up to two. QEMU serves the control queue and tells the
	// helper with SET_VRING_ENABLE.
	twoFlowsRuns := 0
	twoFlows := func(t *testing.T) (harness.Stats, harness.Stats, string) {
		t.Helper()
		a, err := harness.StartIperfServer(context.Background(), g.ns, hostAddr, 5202)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Stop()
		b, err := harness.StartIperfServer(context.Background(), g.ns, hostAddr, 5203)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Stop()
		st0 := g.helper.counters(t)
		// One flow from each vCPU: XPS maps vCPU N to TX queue N, and the
		// client ports are chosen so that the TAP's hash steering sends
		// each flow's replies back on that queue too (tun.c's own
		// steering would follow the flow's TX queue anyway). Each call
		// takes new ports: the last call's are in TIME_WAIT.
		from := 40000 + 1000*twoFlowsRuns
		twoFlowsRuns++
		var ports [2]int
		ports[0] = spreadPort(0, 2, 5202, from)
		ports[1] = spreadPort(1, 2, 5203, ports[0]+1)
		out := g.run(t, 2*time.Minute, "ethtool -S eth0 > /tmp/before; "+
			fmt.Sprintf("taskset -c 0 iperf3 -c %s -p 5202 --cport %d -t 3 > /tmp/a 2>&1 & ", hostAddr, ports[0])+
			fmt.Sprintf("taskset -c 1 iperf3 -c %s -p 5203 --cport %d -t 3 > /tmp/b 2>&1 & ", hostAddr, ports[1])+
			"wait %1 || { cat /tmp/a; exit 1; }; wait %2 || { cat /tmp/b; exit 1; }; "+
			"ethtool -S eth0")
		return st0, g.helper.counters(t), out
	}
	t.Run("one queue pair", func(t *testing.T) {
		g.run(t, time.Minute, "ethtool -L eth0 combined 1")
		if out := g.run(t, time.Minute, "ethtool -l eth0"); !strings.Contains(strings.SplitN(out, "Current", 2)[1], "Combined:\t1") {
			t.Fatalf("ethtool -l eth0 after -L combined 1:\n%s", out)
		}
		st0, st1, _ := twoFlows(t)
		for _, k := range []engine.Counter{engine.TXPackets, engine.RXPackets} {
			if d := st1.Queues[0][k] - st0.Queues[0][k]; d == 0 {
				t.Errorf("queue pair 0 %s: did not grow", k)
			}
			if d := st1.Queues[1][k] - st0.Queues[1][k]; d != 0 {
				t.Errorf("queue pair 1 %s: grew by %d while the guest used one pair", k, d)
			}
		}
	})
	t.Run("two queue pairs", func(t *testing.T) {
		g.run(t, time.Minute, "ethtool -L eth0 combined 2")
		st0, st1, out := twoFlows(t)
		for q := range 2 {
			for _, k := range []engine.Counter{engine.TXPackets, engine.RXPackets} {
				if d := st1.Queues[q][k] - st0.Queues[q][k]; d == 0 {
					t.Errorf("queue pair %d %s: did not grow with a flow on each vCPU", q, k)
				}
			}
			t.Logf("queue pair %d: %s", q, st1.Queues[q].Sub(st0.Queues[q]).Brief())
		}
		guestStats := harness.ParseEthtoolStats(out)
		for q := range 2 {
			for _, dir := range []string{"rx", "tx"} {
				k := fmt.Sprintf("%s_queue_%d_packets", dir, q)
				if guestStats[k] == 0 {
					t.Errorf("guest ethtool -S eth0: %s is 0", k)
				}
			}
		}
		g.checkNoDrops(t, st1)
	})

	// vmnet-helper's default steering for several queues is the eBPF
	// hash: a flow's frames to the guest stay on one queue pair whatever
	// queue the guest's ACKs leave on. Under tun.c's own steering this
	// flow, read on vCPU 1 while vectors=0 puts its receive interrupts on
	// vCPU 0, flips between the pairs and retransmits thousands of times
	// in 3 s (11,446 in 5 s in a demo run with --steering kernel).
	t.Run("host to guest keeps order on two pairs", func(t *testing.T) {
		srv, err := harness.StartIperfServer(context.Background(), g.ns, hostAddr, 5204)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Stop()
		cport := spreadPort(1, 2, 5204, 45000)
		out := g.run(t, 2*time.Minute, fmt.Sprintf("taskset -c 1 iperf3 -J -R -c %s -p 5204 --cport %d -t 3", hostAddr, cport))
		r, err := harness.ParseIperfJSON(out)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("iperf3 -R on vCPU 1: %s", r)
		if r.Retransmits > 200 {
			t.Errorf("host to guest, one flow read on vCPU 1: %d retransmits in 3 s, want few (frames reordered across queue pairs?)", r.Retransmits)
		}
	})

	t.Run("offloads off", func(t *testing.T) {
		g.run(t, time.Minute, "ethtool -K eth0 tx off tso off gro off")
		f := harness.ParseEthtoolFeatures(g.run(t, time.Minute, "ethtool -k eth0"))
		for _, name := range []string{"tx-checksumming", "tcp-segmentation-offload", "generic-receive-offload"} {
			if f[name] {
				t.Errorf("guest ethtool -k eth0 after -K ... off: %s is on", name)
			}
		}
		g.pingBothWays(t, 3)
		st0 := g.helper.counters(t)
		r := g.iperf(t, 5201, "-t 3")
		d := diffTotals(st0, g.helper.counters(t))
		t.Logf("iperf3 guest to host, offloads off: %s; %d bytes average", r, d.txAvg())
		if d.txAvg() > maxFrame {
			t.Errorf("guest to host with tso off: frames to the TAP average %d bytes, want at most %d", d.txAvg(), maxFrame)
		}
		r = g.iperf(t, 5201, "-t 3 -R")
		t.Logf("iperf3 host to guest, offloads off: %s", r)
		g.checkNoDrops(t, g.helper.counters(t))
	})
}

// totals are frames and bytes through all queue pairs between two
// printouts of the counters.
type totals struct{ tx, txBytes, rx, rxBytes uint64 }

func diffTotals(a, b harness.Stats) totals {
	return totals{
		tx: b.Total(engine.TXPackets) - a.Total(engine.TXPackets), txBytes: b.Total(engine.TXBytes) - a.Total(engine.TXBytes),
		rx: b.Total(engine.RXPackets) - a.Total(engine.RXPackets), rxBytes: b.Total(engine.RXBytes) - a.Total(engine.RXBytes),
	}
}

func (d totals) txAvg() uint64 { return d.txBytes / max(d.tx, 1) }
func (d totals) rxAvg() uint64 { return d.rxBytes / max(d.rx, 1) }

// TestVhostUserReconnect runs a one-queue guest (queues=1) whose QEMU
// connects again a second after its helper goes away (reconnect=1): the
// guest and the namespace ping each other, then the helper is killed and
// a new one started on the same socket and TAP, and the guest's traffic
// must resume; then the same with a clean stop.
func TestVhostUserReconnect(t *testing.T) {
	g := startVhostUserGuest(t, guestOptions{reconnect: true, persist: true})

	t.Run("ping both ways", func(t *testing.T) {
		fromGuest, fromHost := g.pingBothWays(t, 3)
		t.Logf("RTT guest to host %.3f ms, host to guest %.3f ms", fromGuest.Avg, fromHost.Avg)
		st := g.helper.counters(t)
		if st.Queues[0][engine.TXPackets] == 0 || st.Queues[0][engine.RXPackets] == 0 {
			t.Errorf("counters after pings: %s", st.Queues[0].Brief())
		}
	})
	// SIGUSR1 still prints the counters, from the same tables as /stats:
	// read after the printout, /stats has counted as much or more.
	t.Run("SIGUSR1 prints what /stats serves", func(t *testing.T) {
		sig := g.helper.signalCounters(t)
		js := g.helper.counters(t)
		if sig.TAP != js.TAP || len(sig.Queues) != len(js.Queues) || sig.Sessions != js.Sessions || sig.Unknown != js.Unknown {
			t.Errorf("SIGUSR1:\n%s\n/stats:\n%s\nwant the same TAP, queue pairs and sessions", sig.Text, js.Text)
		}
		for q := range sig.Queues {
			for k, v := range sig.Queues[q] {
				if js.Queues[q][k] < v {
					t.Errorf("queue pair %d %s: SIGUSR1 printed %d, /stats read later %d", q, engine.Counter(k), v, js.Queues[q][k])
				}
			}
		}
	})
	// restart starts a new helper on the same socket and TAP, and waits
	// until the guest reaches the namespace again: QEMU connects within a
	// second and the guest's rings resume where the last helper left them.
	restart := func(t *testing.T) {
		t.Helper()
		g.helper = startHelper(t, g.helperArgs...)
		g.run(t, 2*time.Minute, "ping -c 60 -W 1 -w 60 "+hostAddr+" | grep -q 'bytes from'")
		g.pingBothWays(t, 3)
		st := g.helper.counters(t)
		if st.Sessions != 1 || st.Queues[0][engine.TXPackets] == 0 || st.Queues[0][engine.RXPackets] == 0 {
			t.Errorf("new helper: got %d sessions, %s; want 1 session that moved frames both ways", st.Sessions, st.Queues[0].Brief())
		}
		t.Logf("vhost-user messages from QEMU after reconnecting: %s", st.MessageList())
	}

	t.Run("helper killed during iperf3 and restarted", func(t *testing.T) {
		srv, err := harness.StartIperfServer(context.Background(), g.ns, hostAddr, 5201)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Stop()
		// 12 s of TCP from the guest, in the background; the helper dies
		// after 3 s and a new one starts a second later.
		g.run(t, time.Minute, "iperf3 -J -i 1 -c "+hostAddr+" -t 12 > /tmp/iperf.json 2>&1 &")
		time.Sleep(3 * time.Second)
		before := g.helper.counters(t)
		g.helper.kill()
		time.Sleep(time.Second)
		restart(t)
		out := g.run(t, 2*time.Minute, "while pidof iperf3 >/dev/null; do sleep 1; done; cat /tmp/iperf.json")
		r, err := harness.ParseIperfJSON(out)
		if err != nil {
			t.Fatalf("iperf3 across the restart: %v", err)
		}
		// The data before the kill went through the first helper; the
		// second must have carried the rest.
		after := g.helper.counters(t)
		t.Logf("iperf3 across the restart: %s; first helper %d bytes to the TAP, second %d",
			r, before.Total(engine.TXBytes), after.Total(engine.TXBytes))
		if after.Total(engine.TXBytes) < r.RecvBytes/10 {
			t.Errorf("second helper carried %d bytes of iperf3's %d: the flow did not resume", after.Total(engine.TXBytes), r.RecvBytes)
		}
		g.checkNoDrops(t, after)
	})
	t.Run("helper stopped and restarted", func(t *testing.T) {
		if err := g.helper.stop(); err != nil {
			t.Fatalf("stop vmnet-helper: %v\n%s", err, g.helper.Stderr())
		}
		// Frames the guest sends meanwhile wait in its ring.
		g.run(t, time.Minute, "ping -c 2 -W 1 "+hostAddr+" || true")
		restart(t)
		g.checkNoDrops(t, g.helper.counters(t))
	})
}

// TestVhostUserServerMode runs a guest whose QEMU listens on the socket
// (server=on) and a helper that connects to it (--client): they ping each
// other, and a restarted helper connects again.
func TestVhostUserServerMode(t *testing.T) {
	g := startVhostUserGuest(t, guestOptions{server: true})
	t.Run("ping both ways", func(t *testing.T) {
		g.pingBothWays(t, 3)
	})
	t.Run("helper restarted", func(t *testing.T) {
		if err := g.helper.stop(); err != nil {
			t.Fatalf("stop vmnet-helper: %v\n%s", err, g.helper.Stderr())
		}
		g.helper = startHelper(t, g.helperArgs...)
		// The new helper has a new TAP, which needs its address again.
		testutil.Exec(t, g.ns, "ip", "addr", "add", hostAddr+"/24", "dev", g.helper.tap)
		g.run(t, 2*time.Minute, "ping -c 30 -W 1 -w 60 "+hostAddr+" | grep -q 'bytes from'")
		g.pingBothWays(t, 3)
	})
}

// spreadPort is a client port from `from` up whose TCP flow from the guest
// to the host's port vmnet's hash steering puts on queue pair q of queues.
func spreadPort(q, queues, port, from int) int {
	return int(ebpf.PortForQueue(q, queues, 6, netip.MustParseAddr(guestAddr), netip.MustParseAddr(hostAddr), uint16(port), uint16(from)))
}
