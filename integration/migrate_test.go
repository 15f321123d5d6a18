package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/integration/guest"
	"github.com/vmnet-dev/vmnet/integration/harness"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// Live migration of a guest between two QEMUs on this host, as an operator
// moves a VM between hosts: each QEMU has its own back-end and TAP, both
// TAPs ports of one bridge in a namespace, where the host end is hostAddr
// on the bridge. The back-end is a vmnet-helper vhost-user per QEMU, or
// for comparison QEMU's own tap netdev on a TAP of its own.
//
//	guest ── QEMU A ── vmnet-helper A ── TAP 0 ──┐
//	                                              br0 10.0.2.2/24 (ping, iperf3 -s)
//	(after) ── QEMU B ── vmnet-helper B ── TAP 1 ─┘

// migRAM is the guest's RAM: with exactly 512 MiB, QEMU 7.2 under TCG
// now and then corrupts a busy guest's memory on the destination (its page
// allocator panics after the switch-over, whatever the back-end); a size
// that is not a multiple of the dirty bitmap's chunk avoided it in 10 of
// 10 runs.
const migRAM = "524296K" // 512 MiB + 8 KiB

// pingEvery is the interval of the ping that measures the switch-over.
const pingEvery = 50 * time.Millisecond

// migBackend is the network back-end of the migrated guest.
type migBackend string

const (
	vmnetBackend migBackend = "vmnet vhost-user"
	tapBackend   migBackend = "QEMU tap"
)

type migOptions struct {
	backend migBackend
	queues  int
	// noGuestAnnounce: the device does not offer GUEST_ANNOUNCE
	// (guest_announce=off), so QEMU announces the guest with SEND_RARP
	// through the destination's back-end instead of having it announce
	// itself.
	noGuestAnnounce bool
	// noMergeable: the device does not offer MRG_RXBUF (mrg_rxbuf=off), so
	// a Linux guest receives into chains of whole pages it never writes
	// itself ("big packets"). With mergeable buffers it writes into the
	// pages of the buffers it receives (build_skb's skb_shared_info), which
	// then reach the destination whether the back-end logged its own
	// writes or not; these pages do only if it did.
	noMergeable bool
}

// migRig is the two sides and the guest that moves between them.
type migRig struct {
	o       migOptions
	ns      string
	dir     string
	taps    [2]string
	helpers [2]*helperProc // vmnetBackend
	img     *guest.Image
	vm      *guest.VM
	qmp     *harness.QMP
	on      int // the side the guest runs on
	n       int // VMs started, for socket and log names
}

func newMigRig(t testing.TB, o migOptions) *migRig {
	t.Helper()
	testutil.RequireTUN(t)
	r := &migRig{o: o, ns: testutil.NetNS(t), dir: t.TempDir(), img: guest.Require(t)}
	testutil.Exec(t, r.ns, "sh", "-ec", strings.Join([]string{
		"ip link add br0 type bridge",
		"ip addr add " + hostAddr + "/24 dev br0",
		"ip link set br0 up",
	}, "\n"))
	for side := range 2 {
		switch o.backend {
		case vmnetBackend:
			dir := filepath.Join(r.dir, strconv.Itoa(side))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"vhost-user", "--socket", r.socket(side), "--netns", r.ns, "--tap", "mig%d",
				"--queues", strconv.Itoa(o.queues), "--log-level", "debug"}, metricsArgs(dir)...)
			r.helpers[side] = startHelper(t, args...)
			r.taps[side] = r.helpers[side].tap
		case tapBackend:
			r.taps[side] = "mtap" + strconv.Itoa(side)
			mq := ""
			if o.queues > 1 {
				mq = " multi_queue"
			}
			testutil.Exec(t, r.ns, "sh", "-ec", "ip tuntap add dev "+r.taps[side]+" mode tap"+mq)
		}
		testutil.Exec(t, r.ns, "sh", "-ec", "ip link set "+r.taps[side]+" master br0 && ip link set "+r.taps[side]+" up")
	}
	return r
}

// socket is side's vhost-user socket.
func (r *migRig) socket(side int) string {
	return filepath.Join(r.dir, fmt.Sprintf("vhost-%d.sock", side))
}

// nic is the QEMU options of the guest's NIC on side.
func (r *migRig) nic(side int) []string {
	var props []string
	if r.o.noGuestAnnounce {
		props = append(props, "guest_announce=off")
	}
	if r.o.noMergeable {
		props = append(props, "mrg_rxbuf=off")
	}
	opts := strings.Join(props, ",")
	switch r.o.backend {
	case vmnetBackend:
		return harness.VhostUserNIC{Socket: r.socket(side), Queues: r.o.queues, DeviceOpts: opts}.Args()
	default:
		device := "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:12:34:56"
		if r.o.queues > 1 {
			device += ",mq=on"
		}
		if opts != "" {
			device += "," + opts
		}
		return []string{
			"-netdev", fmt.Sprintf("tap,id=n0,ifname=%s,script=no,downscript=no,vhost=off,queues=%d", r.taps[side], r.o.queues),
			"-device", device,
		}
	}
}

// config is the guest's QEMU on side; incoming makes it a migration's
// destination, compare one that waits paused once the migration is in.
func (r *migRig) config(t testing.TB, side int, incoming, compare bool) guest.Config {
	r.n++
	cfg := guest.Config{
		Image:        r.img,
		Memory:       migRAM,
		SharedMemory: true,
		SMP:          r.o.queues,
		Args:         r.nic(side),
		KernelArgs:   []string{"vmnet.ip=" + guestAddr + "/24"},
		QMP:          filepath.Join(r.dir, fmt.Sprintf("qmp-%d.sock", r.n)),
	}
	if r.o.backend == tapBackend {
		cfg.Netns = r.ns
	}
	if compare {
		// Paused once the migration is in (-S), until the test has
		// compared its memory with the source's.
		cfg.Args = append(cfg.Args, "-S")
	}
	if incoming {
		cfg.Incoming = "defer"
		logDir := os.Getenv("VMNET_GUEST_LOGDIR")
		if logDir == "" {
			logDir = r.dir
		}
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		cfg.LogPath = filepath.Join(logDir, fmt.Sprintf("%s-%d-incoming-%d.log", name, r.n, time.Now().UnixNano()))
	}
	return cfg
}

// boot starts the guest on side 0.
func (r *migRig) boot(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cfg := r.config(t, 0, false, false)
	r.vm = guest.StartT(ctx, t, cfg)
	q, err := harness.DialQMP(ctx, cfg.QMP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	r.qmp, r.on = q, 0
}

// run runs a script in the guest that must succeed.
func (r *migRig) run(t testing.TB, timeout time.Duration, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := r.vm.RunOK(ctx, script)
	if err != nil {
		t.Fatalf("in the guest: %v", err)
	}
	return out
}

// tapStats reads a TAP's counters: rx is what came from the guest (the
// back-end wrote it), tx what went to the guest.
func (r *migRig) tapStats(t testing.TB, side int) harness.LinkStats {
	t.Helper()
	st, err := harness.ReadLinkStats(context.Background(), r.ns, r.taps[side])
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// migration is what one live migration measured.
type migration struct {
	from, to int
	reverse  bool          // the stream went host to guest
	total    time.Duration // query-migrate total-time
	downtime time.Duration // query-migrate downtime
	setup    time.Duration
	syncs    int64 // dirty bitmap syncs
	// Pings every pingEvery from the host to the guest through the
	// migration: sent, lost, the longest time between two replies, and
	// whether that silence began during the migration.
	pingsSent, pingsLost int
	silence              time.Duration
	silenceInMigration   bool
	// The TCP stream: what the guest's iperf3 counted, and what crossed
	// the destination's TAP in its direction from the migration's end to
	// the stream's.
	streamBytes, afterBytes uint64
	// Frames from the guest through the source's TAP after the migration
	// ended (want none).
	srcAfter uint64
	// The guest's RAM on the destination against the source's, both
	// paused after the migration: the pages that differ (want none: a page
	// the back-end wrote without logging it is stale on the destination),
	// and how long the comparison held the guest paused.
	ramDiffers []uint64
	compared   time.Duration
}

func (m migration) String() string {
	dir := "guest to host"
	if m.reverse {
		dir = "host to guest"
	}
	s := fmt.Sprintf("%c to %c, stream %s: migration %s (setup %s, %d syncs), downtime %s, pings lost %d of %d, longest silence %s, %.1f MB after the switch-over (%.1f MB in all), %d frames from the guest on the source TAP after",
		'A'+m.from, 'A'+m.to, dir, m.total, m.setup, m.syncs, m.downtime, m.pingsLost, m.pingsSent,
		m.silence.Round(time.Millisecond), float64(m.afterBytes)/1e6, float64(m.streamBytes)/1e6, m.srcAfter)
	if m.compared > 0 {
		s += fmt.Sprintf("; guest RAM compared in %s, %d pages differ", m.compared.Round(time.Millisecond), len(m.ramDiffers))
	}
	return s
}

// migrate moves the guest to the other side while the host pings it and
// an iperf3 TCP stream runs, guest to host or, with reverse, host to
// guest: 2 s of traffic, the migration, 3 s more. With compare, the
// destination waits paused after the migration while its guest RAM is
// compared with the source's, which adds to the pings' silence.
func (r *migRig) migrate(t testing.TB, reverse, compare bool) migration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m := migration{from: r.on, to: 1 - r.on, reverse: reverse}

	// The destination: the same machine on the other back-end, waiting.
	cfg := r.config(t, m.to, true, compare)
	dst, err := guest.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dst.Stop)
	dq, err := harness.DialQMP(ctx, cfg.QMP)
	if err != nil {
		t.Fatalf("destination: %v\n%s", err, dst.LogTail(2000))
	}
	t.Cleanup(func() { dq.Close() })
	uri := "unix:" + filepath.Join(r.dir, fmt.Sprintf("migrate-%d.sock", r.n))
	if err := dq.Execute(ctx, "migrate-incoming", map[string]string{"uri": uri}, nil); err != nil {
		t.Fatalf("destination: %v\n%s", err, dst.LogTail(2000))
	}

	// Traffic: a TCP stream from the guest's iperf3, pings from the host.
	srv, err := harness.StartIperfServer(ctx, r.ns, hostAddr, 5201)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	flags := ""
	if reverse {
		flags = " -R"
	}
	r.run(t, time.Minute, fmt.Sprintf("rm -f /tmp/iperf.json; iperf3 -J -i 0.5 -c %s -t 120%s > /tmp/iperf.json 2>&1 &", hostAddr, flags))
	var pingOut strings.Builder
	ping := harness.Command(context.Background(), r.ns, "ping", "-D", "-i", strconv.FormatFloat(pingEvery.Seconds(), 'f', 3, 64),
		"-W", "1", "-w", "300", guestAddr)
	ping.Stdout, ping.Stderr = &pingOut, &pingOut
	ping.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	pingDone := false
	defer func() {
		if !pingDone {
			ping.Process.Kill()
			ping.Wait()
		}
	}()
	time.Sleep(2 * time.Second)

	// The migration, with QEMU's defaults (128 MiB/s, 300 ms of downtime
	// at most).
	start := time.Now()
	if err := r.qmp.Execute(ctx, "migrate", map[string]string{"uri": uri}, nil); err != nil {
		t.Fatal(err)
	}
	info, err := r.qmp.WaitMigration(ctx)
	if err != nil {
		t.Fatalf("%v\nsource:\n%s\ndestination:\n%s", err, r.vm.LogTail(2000), dst.LogTail(2000))
	}
	end := time.Now()
	srcAt := r.tapStats(t, m.from)
	dstAt := r.tapStats(t, m.to)
	m.total = time.Duration(info.TotalTime) * time.Millisecond
	m.downtime = time.Duration(info.Downtime) * time.Millisecond
	m.setup = time.Duration(info.SetupTime) * time.Millisecond
	if info.RAM != nil {
		m.syncs = info.RAM.DirtySyncCount
	}
	waitStatus := func(want string) {
		t.Helper()
		for {
			st, err := dq.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st == want {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("destination %s after the migration completed, want %s", st, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if compare {
		waitStatus("paused")
		t0 := time.Now()
		m.ramDiffers = compareRAM(t, r.vm.Pid(), dst.Pid())
		m.compared = time.Since(t0)
		if err := dq.Execute(ctx, "cont", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	waitStatus("running")
	if err := dst.Adopt(r.vm); err != nil {
		t.Fatal(err)
	}
	r.qmp.Close()
	r.vm.Stop()
	r.vm, r.qmp, r.on = dst, dq, m.to

	// 3 s more on the destination, then the stream stops.
	time.Sleep(3 * time.Second)
	out := r.run(t, time.Minute, "kill -INT $(pidof iperf3); while pidof iperf3 >/dev/null; do usleep 100000; done; cat /tmp/iperf.json")
	srcEnd, dstEnd := r.tapStats(t, m.from), r.tapStats(t, m.to)
	ping.Process.Signal(os.Interrupt)
	ping.Wait()
	pingDone = true

	stream, err := harness.ParseIperfStream(out)
	if err != nil {
		t.Fatalf("the TCP stream across the migration: %v", err)
	}
	m.streamBytes = stream.Bytes
	if reverse {
		m.afterBytes = dstEnd.TXBytes - dstAt.TXBytes
	} else {
		m.afterBytes = dstEnd.RXBytes - dstAt.RXBytes
	}
	m.srcAfter = srcEnd.RXPackets - srcAt.RXPackets
	replies := harness.ParsePingReplies(pingOut.String())
	p, err := harness.ParsePing(pingOut.String())
	if err != nil {
		t.Fatal(err)
	}
	m.pingsSent, m.pingsLost = p.Sent, p.Sent-p.Received
	var from time.Time
	m.silence, from = harness.LongestSilence(replies)
	m.silenceInMigration = !from.Before(start) && !from.After(end)
	if len(replies) > 0 && replies[len(replies)-1].At.Before(end) {
		t.Errorf("no ping reply after the migration ended")
	}
	return m
}

// compareRAM compares the guest RAM of two QEMUs, each a
// memory-backend-memfd of migRAM, read through /proc/PID/fd, and returns
// the guest pages (offsets / 4 KiB) that differ.
func compareRAM(t testing.TB, a, b int) []uint64 {
	t.Helper()
	var files [2]*os.File
	for i, pid := range []int{a, b} {
		f, err := ramOf(pid)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files[i] = f
	}
	var differ []uint64
	bufs := [2][]byte{make([]byte, 1<<20), make([]byte, 1<<20)}
	for off := int64(0); ; off += 1 << 20 {
		var n [2]int
		for i, f := range files {
			var err error
			if n[i], err = f.ReadAt(bufs[i], off); err != nil && n[i] == 0 {
				break
			}
		}
		if n[0] == 0 || n[0] != n[1] {
			if n[0] != n[1] {
				t.Errorf("guest RAM: %d bytes at %#x in one QEMU, %d in the other", n[0], off, n[1])
			}
			return differ
		}
		for p := 0; p < n[0]; p += 4096 {
			if !bytes.Equal(bufs[0][p:min(p+4096, n[0])], bufs[1][p:min(p+4096, n[1])]) {
				differ = append(differ, uint64(off+int64(p))/4096)
			}
		}
	}
}

// ramOf opens the memfd that backs QEMU pid's guest RAM.
func ramOf(pid int) (*os.File, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		if !strings.Contains(target, "memfd:") {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if st, err := f.Stat(); err == nil && st.Size() == 524296<<10 {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("no memfd of %s among QEMU %d's descriptors", migRAM, pid)
}

// check holds a migration to what an operator expects of one.
func (m migration) check(t testing.TB) {
	t.Helper()
	if m.afterBytes < 1<<20 {
		t.Errorf("the stream moved %d bytes on the destination's TAP in the 3 s after the switch-over, want at least 1 MiB", m.afterBytes)
	}
	if len(m.ramDiffers) > 0 {
		pages := m.ramDiffers[:min(len(m.ramDiffers), 20)]
		t.Errorf("guest RAM: %d pages differ between the source and the paused destination (guest %#x...), want none: written and not logged", len(m.ramDiffers), pages)
	}
	if m.srcAfter != 0 {
		t.Errorf("%d frames from the guest on the source's TAP after the migration ended, want none", m.srcAfter)
	}
	// Replies stop for the switch-over (the downtime, the guest's or
	// QEMU's announcement reaching the bridge) and only then.
	// Less the time the test held the guest paused to compare memories.
	if silence := m.silence - m.compared; silence > 3*time.Second || !m.silenceInMigration && silence > time.Second {
		t.Errorf("longest silence of the pings %s, %s of it while the test compared memories (during the migration: %t), want under 3 s, during the migration", m.silence, m.compared, m.silenceInMigration)
	}
	if lost := time.Duration(m.pingsLost) * pingEvery; lost > m.silence+time.Second {
		t.Errorf("%d pings lost, %s worth, more than the longest silence (%s) explains", m.pingsLost, lost, m.silence)
	}
}

// TestVhostUserLiveMigration live-migrates a guest on a vmnet-helper
// vhost-user NIC from one QEMU and helper to another on the same bridge
// and back, while the host pings it every 50 ms and an iperf3 TCP stream
// runs, guest to host one way and host to guest the other: QEMU offers
// the migration (LOG_SHMFD, VHOST_F_LOG_ALL), it completes, the stream
// keeps moving on the destination's TAP, the pings stop only for the
// switch-over, and the source's TAP carries nothing from the guest after
// it; the destination waits paused after each migration while its guest
// RAM is compared with the source's, page by page: a page the helper
// wrote and did not log would differ. One queue pair with a guest that
// neither announces itself (QEMU sends SEND_RARP through the destination's
// helper) nor takes mergeable buffers (it never writes the pages it
// receives into, so those that reach the destination do through the
// helper's log alone: without it, some 40 pages differed), two with one
// that does both.
func TestVhostUserLiveMigration(t *testing.T) {
	for _, o := range []migOptions{
		{backend: vmnetBackend, queues: 1, noGuestAnnounce: true, noMergeable: true},
		{backend: vmnetBackend, queues: 2},
	} {
		t.Run(fmt.Sprintf("%d queue pairs", o.queues), func(t *testing.T) {
			r := newMigRig(t, o)
			r.boot(t)
			r.run(t, time.Minute, "ping -c 1 -W 5 "+hostAddr)
			for i, reverse := range []bool{false, true} {
				src := r.on
				before := r.helpers[1-src].counters(t)
				m := r.migrate(t, reverse, true)
				t.Logf("migration %d: %s", i+1, m)
				m.check(t)
				// The source logged its writes while QEMU copied memory;
				// the destination announced the guest as the options say.
				srcSt, dstSt := r.helpers[src].counters(t), r.helpers[1-src].counters(t)
				if srcSt.Messages["SET_LOG_BASE"] == 0 || srcSt.Messages["GET_VRING_BASE"] == 0 {
					t.Errorf("source helper got %s: want SET_LOG_BASE and GET_VRING_BASE", srcSt.MessageList())
				}
				// QEMU announces in rounds (announce-rounds, 5 by default).
				rarp := dstSt.Messages["SEND_RARP"] - before.Messages["SEND_RARP"]
				if (rarp > 0) != o.noGuestAnnounce {
					t.Errorf("destination helper got %d SEND_RARP, want them only without GUEST_ANNOUNCE (guest_announce off: %t)", rarp, o.noGuestAnnounce)
				}
				if t.Failed() {
					t.Logf("source helper stderr (tail):\n%s", harness.Tail(r.helpers[src].Stderr(), 3000))
					t.Logf("destination helper stderr (tail):\n%s", harness.Tail(r.helpers[1-src].Stderr(), 3000))
					return
				}
			}
			// Back on A, after A to B to A: both ways still work.
			r.run(t, time.Minute, "ping -c 3 -W 5 "+hostAddr)
			out, err := harness.Run(context.Background(), r.ns, "ping", "-c", "3", "-W", "5", guestAddr)
			if err != nil {
				t.Fatalf("ping the guest after two migrations: %v", err)
			}
			if p, _ := harness.ParsePing(out); p.Received != 3 {
				t.Errorf("ping the guest after two migrations: %s", out)
			}
		})
	}
}
