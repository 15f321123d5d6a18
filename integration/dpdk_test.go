package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/integration/guest"
	"github.com/vmnet-dev/vmnet/integration/harness"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// testpmdQueueSize is the ring size of DPDK's virtio-user (its queue_size
// devarg, 256 by default): how many frames testpmd may have counted as sent
// that were still in the ring when it stopped the device.
const testpmdQueueSize = 256

// testpmdFrame is the length of txonly's frames (testpmd --txpkts, 64 by
// default), without the vnet header.
const testpmdFrame = 64

// testpmd is a running dpdk-testpmd whose virtio-user port sends UDP
// frames in txonly mode to a helper's socket.
type testpmd struct {
	cmd   *exec.Cmd
	out   strings.Builder
	stdin io.WriteCloser
	done  chan error
}

// startTestpmd starts dpdk-testpmd (no huge pages, no PCI) on the
// vhost-user socket sock; EAL's runtime files go under
// /var/run/dpdk/PREFIX, removed when the test ends.
func startTestpmd(t *testing.T, sock, prefix string) *testpmd {
	t.Helper()
	bin, err := exec.LookPath("dpdk-testpmd")
	if err != nil {
		guest.Skip(t, "no dpdk-testpmd (Debian package dpdk-dev): %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Join("/var/run/dpdk", prefix)) })
	p := &testpmd{done: make(chan error, 1)}
	p.cmd = exec.Command(bin, "--no-huge", "-m", "512", "--no-pci", "-l", "0-1",
		"--file-prefix", prefix, "--vdev", "net_virtio_user0,path="+sock+",queues=1",
		"--", "--forward-mode=txonly", "--total-num-mbufs=32768")
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	// Without -i, testpmd forwards until a line arrives on its standard
	// input: keep it open until the SIGINT.
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// stop sends SIGINT, waits for testpmd to print its statistics and exit,
// and returns everything it printed.
func (p *testpmd) stop(t *testing.T) string {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.done:
		// testpmd prints its statistics, then may end by its own SIGINT.
		if err != nil && !strings.Contains(err.Error(), "interrupt") {
			t.Errorf("dpdk-testpmd: %v", err)
		}
	case <-time.After(time.Minute):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("dpdk-testpmd did not exit within a minute of SIGINT:\n%s", p.out.String())
	}
	p.stdin.Close()
	return p.out.String()
}

// TestDPDKVirtioUser makes DPDK's virtio-user the front-end, a second one
// independent of QEMU: dpdk-testpmd (no huge pages, no PCI) connects to the
// helper's socket and sends UDP frames in txonly mode for a few seconds.
// Every frame testpmd counts as sent must reach the TAP: the helper's tx
// counters and the TAP's kernel rx counters agree with each other, and
// with testpmd's count up to the frames still in the ring when it stopped.
func TestDPDKVirtioUser(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "vhost.sock")
	h := startHelper(t, append([]string{"vhost-user", "--socket", sock, "--netns", ns, "--tap", "vd%d", "--queues", "1",
		"--log-level", "debug"}, metricsArgs(dir)...)...)
	pmd := startTestpmd(t, sock, fmt.Sprintf("vmnet-test-%d", os.Getpid()))

	// Forwarding starts once the device is up; count only from then.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(h.Stderr(), "queue pair started") {
		select {
		case err := <-pmd.done:
			t.Fatalf("dpdk-testpmd exited (%v) before its device started:\n%s\nhelper:\n%s", err, pmd.out.String(), h.Stderr())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no queue pair started within a minute; helper:\n%s", h.Stderr())
		}
	}
	time.Sleep(3 * time.Second)
	out := pmd.stop(t)

	sent, err := harness.ParseTestpmd(out)
	if err != nil {
		t.Fatal(err)
	}
	st := h.counters(t)
	link, err := harness.ReadLinkStats(context.Background(), ns, h.tap)
	if err != nil {
		t.Fatal(err)
	}
	helperTX, tapRX := st.Queues[0][engine.TXPackets], link.RXPackets
	t.Logf("testpmd TX-packets=%d (TX-dropped=%d: ring full); helper %s; TAP %s rx_packets=%d rx_bytes=%d",
		sent.TXPackets, sent.TXDropped, st.Queues[0].Brief(), h.tap, tapRX, link.RXBytes)
	t.Logf("vhost-user messages from DPDK virtio-user: %s", st.MessageList())
	for _, l := range strings.Split(h.Stderr(), "\n") {
		if strings.Contains(l, "features acked") {
			t.Logf("helper: %s", l)
		}
	}
	if sent.TXPackets < 1000 {
		t.Fatalf("testpmd sent %d frames in 3 s, want at least 1000:\n%s", sent.TXPackets, out)
	}
	if helperTX != tapRX {
		t.Errorf("helper wrote %d frames to the TAP, the kernel received %d", helperTX, tapRX)
	}
	if helperTX > sent.TXPackets || sent.TXPackets-helperTX > testpmdQueueSize {
		t.Errorf("helper sent %d frames, testpmd %d: want at most %d fewer (the ring's size)", helperTX, sent.TXPackets, testpmdQueueSize)
	}
	if want := tapRX * testpmdFrame; link.RXBytes != want || st.Queues[0][engine.TXBytes] != want {
		t.Errorf("bytes: helper %d, TAP %d; want %d (%d-byte frames)", st.Queues[0][engine.TXBytes], link.RXBytes, want, testpmdFrame)
	}
	if n, which := st.Queues[0].Drops(); n != 0 {
		t.Errorf("helper dropped frames: %s", which)
	}
	if st.Sessions != 1 || st.Rejected != 0 || st.Unknown != 0 {
		t.Errorf("vhost-user: got %d sessions, %d rejected, %d unknown requests; want 1, 0, 0", st.Sessions, st.Rejected, st.Unknown)
	}
}

// TestDPDKSessionChurn connects dpdk-testpmd to one helper 50 times, each
// time until frames flow, then disconnects it, while a scraper reads
// /metrics every 50 ms: every scrape succeeds, the series a session shows
// are the same from the second session to the last (nothing is left of
// an earlier one, nothing grows), as are those once it has gone, and the
// helper ends with the goroutines and descriptors it had after the first.
func TestDPDKSessionChurn(t *testing.T) {
	testutil.RequireTUN(t)
	const sessions = 50
	ns := testutil.NetNS(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "vhost.sock")
	h := startHelper(t, append([]string{"vhost-user", "--socket", sock, "--netns", ns, "--tap", "vc%d", "--queues", "1"},
		metricsArgs(dir)...)...)
	sc := startScraper(h, 50*time.Millisecond)

	// waitFor polls /stats until ok says the session got where it should.
	waitFor := func(what string, ok func(harness.Stats) bool) harness.Stats {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			st := h.counters(t)
			if ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within a minute; /stats:\n%s\nhelper:\n%s", what, st.Text, harness.Tail(h.Stderr(), 3000))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var during, after []string
	var goroutines, fds float64
	for i := 1; i <= sessions; i++ {
		before := h.counters(t).Queues[0][engine.TXPackets]
		pmd := startTestpmd(t, sock, fmt.Sprintf("vmnet-churn-%d-%d", os.Getpid(), i))
		waitFor(fmt.Sprintf("session %d: frames flowing", i), func(st harness.Stats) bool {
			return st.Queues[0][engine.TXPackets] > before
		})
		_, d := h.scrape(t)
		pmd.stop(t)
		waitFor(fmt.Sprintf("session %d: the device reset", i), func(st harness.Stats) bool {
			return st.Sessions == uint64(i) && st.Snapshot.Devices[0].Features == ""
		})
		_, a := h.scrape(t)
		switch i {
		case 1:
			after = a.SeriesNames()
			goroutines, _ = a.Sum("go_goroutines")
			fds, _ = a.Sum("process_open_fds")
			t.Logf("after the first session: %d series, %v goroutines, %v fds", len(after), goroutines, fds)
		case 2:
			during = d.SeriesNames()
		}
		if i >= 2 && !slices.Equal(d.SeriesNames(), during) {
			t.Errorf("session %d: series during it differ from the second session's:\n%s", i, seriesDiff(during, d.SeriesNames()))
		}
		if !slices.Equal(a.SeriesNames(), after) {
			t.Errorf("after session %d: series differ from after the first:\n%s", i, seriesDiff(after, a.SeriesNames()))
		}
		if t.Failed() {
			break
		}
	}
	tx, _, last := sc.finish(t)
	t.Logf("%d scrapes during %d sessions; frames %v -> %v", len(tx), sessions, tx[0], tx[len(tx)-1])
	testutil.PromtoolCheckMetrics(t, last)
	// The goroutines and descriptors of the sessions are gone: at most
	// what the first left, give or take the scrape's own connection.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, s := h.scrape(t)
		g, _ := s.Sum("go_goroutines")
		f, _ := s.Sum("process_open_fds")
		if g <= goroutines+1 && f <= fds+1 {
			t.Logf("after %d sessions: %d series, %v goroutines, %v fds", sessions, len(s.SeriesNames()), g, f)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("after %d sessions: %v goroutines and %v fds; after the first, %v and %v", sessions, g, f, goroutines, fds)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// seriesDiff says which series one list has and the other lacks.
func seriesDiff(want, got []string) string {
	var b strings.Builder
	for _, s := range got {
		if !slices.Contains(want, s) {
			b.WriteString("  new:  " + s + "\n")
		}
	}
	for _, s := range want {
		if !slices.Contains(got, s) {
			b.WriteString("  gone: " + s + "\n")
		}
	}
	return b.String()
}
