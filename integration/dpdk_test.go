package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// TestDPDKVirtioUser makes DPDK's virtio-user the front-end, a second one
// independent of QEMU: dpdk-testpmd (no huge pages, no PCI) connects to the
// helper's socket and sends UDP frames in txonly mode for a few seconds.
// Every frame testpmd counts as sent must reach the TAP: the helper's tx
// counters and the TAP's kernel rx counters agree with each other, and
// with testpmd's count up to the frames still in the ring when it stopped.
func TestDPDKVirtioUser(t *testing.T) {
	testutil.RequireTUN(t)
	testpmd, err := exec.LookPath("dpdk-testpmd")
	if err != nil {
		guest.Skip(t, "no dpdk-testpmd (Debian package dpdk-dev): %v", err)
	}
	ns := testutil.NetNS(t)
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	h := startHelper(t, "vhost-user", "--socket", sock, "--netns", ns, "--tap", "vd%d", "--queues", "1", "--log-level", "debug")

	// EAL keeps its runtime files under /var/run/dpdk/PREFIX.
	prefix := fmt.Sprintf("vmnet-test-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(filepath.Join("/var/run/dpdk", prefix)) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testpmd, "--no-huge", "-m", "512", "--no-pci", "-l", "0-1",
		"--file-prefix", prefix, "--vdev", "net_virtio_user0,path="+sock+",queues=1",
		"--", "--forward-mode=txonly", "--total-num-mbufs=32768")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	// Without -i, testpmd forwards until a line arrives on its standard
	// input: keep it open until the SIGINT.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", testpmd, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	// Forwarding starts once the device is up; count only from then.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(h.Stderr(), "queue pair started") {
		select {
		case err := <-done:
			t.Fatalf("dpdk-testpmd exited (%v) before its device started:\n%s\nhelper:\n%s", err, out.String(), h.Stderr())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no queue pair started within a minute; helper:\n%s", h.Stderr())
		}
	}
	time.Sleep(3 * time.Second)
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		// testpmd prints its statistics, then may end by its own SIGINT.
		if err != nil && !strings.Contains(err.Error(), "interrupt") {
			t.Errorf("dpdk-testpmd: %v", err)
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("dpdk-testpmd did not exit within a minute of SIGINT:\n%s", out.String())
	}
	stdin.Close()

	pmd, err := harness.ParseTestpmd(out.String())
	if err != nil {
		t.Fatal(err)
	}
	st := h.counters(t)
	link, err := harness.ReadLinkStats(context.Background(), ns, h.tap)
	if err != nil {
		t.Fatal(err)
	}
	sent, tapRX := st.Queues[0][engine.TXPackets], link.RXPackets
	t.Logf("testpmd TX-packets=%d (TX-dropped=%d: ring full); helper %s; TAP %s rx_packets=%d rx_bytes=%d",
		pmd.TXPackets, pmd.TXDropped, st.Queues[0].Brief(), h.tap, tapRX, link.RXBytes)
	t.Logf("vhost-user messages from DPDK virtio-user: %s", st.MessageList())
	for _, l := range strings.Split(h.Stderr(), "\n") {
		if strings.Contains(l, "features acked") {
			t.Logf("helper: %s", l)
		}
	}
	if pmd.TXPackets < 1000 {
		t.Fatalf("testpmd sent %d frames in 3 s, want at least 1000:\n%s", pmd.TXPackets, out.String())
	}
	if sent != tapRX {
		t.Errorf("helper wrote %d frames to the TAP, the kernel received %d", sent, tapRX)
	}
	if sent > pmd.TXPackets || pmd.TXPackets-sent > testpmdQueueSize {
		t.Errorf("helper sent %d frames, testpmd %d: want at most %d fewer (the ring's size)", sent, pmd.TXPackets, testpmdQueueSize)
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
