package guest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/integration/guest"
)

const (
	hostAddr  = "10.0.2.2"
	guestAddr = "10.0.2.15"
)

// TestGuestOnTAP boots one guest whose virtio-net NIC sits on QEMU's own
// TAP back-end, in a network namespace of its own, and runs every check
// against it: boots cost seconds under TCG.
func TestGuestOnTAP(t *testing.T) {
	img := guest.Require(t)
	requireRoot(t)
	ns := newNetns(t)
	ipNetns(t, ns, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap")
	ipNetns(t, ns, "ip", "addr", "add", hostAddr+"/24", "dev", "tap0")
	ipNetns(t, ns, "ip", "link", "set", "tap0", "up")

	fdsBefore := openFDs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	vm := guest.StartT(ctx, t, guest.Config{
		Image: img,
		Netns: ns,
		// What vhost-user back-ends need; a TAP guest proves it boots.
		SharedMemory: true,
		Args: []string{
			"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off",
			"-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
		},
		KernelArgs: []string{"vmnet.ip=" + guestAddr + "/24", "vmnet.gw=" + hostAddr},
	})

	// run fails the test on an error or a non-zero exit status.
	run := func(t *testing.T, script string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		out, err := vm.RunOK(ctx, script)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	t.Run("address from kernel command line", func(t *testing.T) {
		if out := run(t, "ip -4 addr show dev eth0"); !strings.Contains(out, "inet "+guestAddr+"/24") {
			t.Errorf("ip addr show eth0: got %q, want inet %s/24", out, guestAddr)
		}
		if out := run(t, "ip route"); !strings.Contains(out, "default via "+hostAddr) {
			t.Errorf("ip route: got %q, want default via %s", out, hostAddr)
		}
	})

	t.Run("guest pings host", func(t *testing.T) {
		out := run(t, "ping -c 3 -W 5 "+hostAddr)
		if !strings.Contains(out, "3 packets received") {
			t.Errorf("ping %s from guest: got %q, want 3 packets received", hostAddr, out)
		}
	})

	t.Run("host pings guest", func(t *testing.T) {
		out := ipNetns(t, ns, "ping", "-c", "3", "-W", "5", guestAddr)
		if !strings.Contains(out, "3 received") {
			t.Errorf("ping %s from host: got %q, want 3 received", guestAddr, out)
		}
	})

	t.Run("ethtool offloads", func(t *testing.T) {
		out := run(t, "ethtool -k eth0")
		for _, feature := range []string{"rx-checksumming", "tx-checksumming", "scatter-gather",
			"tcp-segmentation-offload", "generic-receive-offload"} {
			if !strings.Contains(out, feature+": on") && !strings.Contains(out, feature+": off") {
				t.Errorf("ethtool -k eth0: no %q line with on or off in:\n%s", feature, out)
			}
		}
		if out := run(t, "ethtool -i eth0"); !strings.Contains(out, "driver: virtio_net") {
			t.Errorf("ethtool -i eth0: got %q, want driver: virtio_net", out)
		}
	})

	t.Run("iperf3 guest to host", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		srv := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "iperf3", "-s", "-1", "-B", hostAddr)
		var srvOut strings.Builder
		srv.Stdout, srv.Stderr = &srvOut, &srvOut
		if err := srv.Start(); err != nil {
			t.Fatalf("start iperf3 server: %v", err)
		}
		defer func() {
			_ = srv.Process.Kill()
			_ = srv.Wait()
		}()
		// The server listens within milliseconds; the guest retries anyway.
		out := run(t, "for i in 1 2 3 4 5; do iperf3 -c "+hostAddr+" -t 2 && exit 0; sleep 1; done; exit 1")
		if !strings.Contains(out, "receiver") {
			t.Errorf("iperf3 -c %s: got %q, want a receiver summary", hostAddr, out)
		}
		t.Logf("iperf3 through TCG guest and TAP:\n%s", lastLines(out, 4))
	})

	t.Run("exit status and both output streams", func(t *testing.T) {
		out, rc, err := vm.Run(ctx, "echo to-stdout; echo to-stderr >&2; exit 7")
		if err != nil {
			t.Fatal(err)
		}
		if rc != 7 || out != "to-stdout\nto-stderr\n" {
			t.Errorf("run: got rc %d output %q, want rc 7 output %q", rc, out, "to-stdout\nto-stderr\n")
		}
	})

	t.Run("output arrives byte for byte", func(t *testing.T) {
		var want strings.Builder
		for i := 1; i <= 20000; i++ {
			fmt.Fprintf(&want, "%d\n", i)
		}
		want.WriteString("no newline at the end: 'quotes' \"double\" $HOME \\ \t tab")
		out := run(t, `seq 1 20000; printf '%s' "no newline at the end: 'quotes' \"double\" \$HOME \\ `+"\t"+` tab"`)
		if out != want.String() {
			t.Errorf("output: got %d bytes ending %q, want %d bytes ending %q",
				len(out), lastLines(out, 2), want.Len(), lastLines(want.String(), 2))
		}
	})

	t.Run("deadline kills the command and the console recovers", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, _, err := vm.Run(short, "sleep 600")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("run sleep 600 with a 2s deadline: got %v, want %v", err, context.DeadlineExceeded)
		}
		start := time.Now()
		if out := run(t, "echo after"); out != "after\n" {
			t.Errorf("next run: got %q, want %q", out, "after\n")
		}
		// The guest kills the sleep at the deadline it was given; waiting
		// for the whole sleep would mean it did not.
		if d := time.Since(start); d > time.Minute {
			t.Errorf("next run took %s: the guest did not kill the timed-out command", d)
		}
	})

	t.Run("stop leaves nothing behind", func(t *testing.T) {
		pid := vm.Pid()
		vm.Stop()
		vm.Stop() // idempotent
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("kill(%d, 0) after Stop: got %v, want ESRCH", pid, err)
		}
		if after := openFDs(t); after != fdsBefore {
			t.Errorf("open fds: got %d after Stop, want %d as before Start", after, fdsBefore)
		}
		if _, _, err := vm.Run(ctx, "true"); err == nil {
			t.Errorf("run after Stop: got no error")
		}
	})
}

// TestImage checks what the builder made of the kernel package: the
// virtio-net stack in dependency order and a kernel that boots through PVH.
func TestImage(t *testing.T) {
	img := guest.Require(t)
	t.Logf("kernel %s %s (uname -r %s), modules %v, built in %v, PVH %v",
		img.KernelPackage, img.KernelVersion, img.KernelRelease, img.Modules, img.Builtin, img.PVH)
	pos := map[string]int{}
	for i, m := range img.Modules {
		pos[m] = i
	}
	loaded := func(m string) bool { _, ok := pos[m]; return ok }
	for _, m := range []string{"virtio_pci", "virtio_net"} {
		if !loaded(m) && !slices.Contains(img.Builtin, m) {
			t.Errorf("module %s: neither loaded nor built in", m)
		}
	}
	// dependency -> dependent, as modinfo says for Debian's 6.1 kernels.
	for _, e := range [][2]string{{"virtio_ring", "virtio"}, {"virtio", "virtio_pci"},
		{"virtio_pci_modern_dev", "virtio_pci"}, {"failover", "net_failover"}, {"net_failover", "virtio_net"}} {
		if loaded(e[0]) && loaded(e[1]) && pos[e[0]] > pos[e[1]] {
			t.Errorf("module order %v: %s loads after %s, which needs it", img.Modules, e[0], e[1])
		}
	}
	if !img.PVH {
		t.Errorf("image kernel boots through the compressed bzImage, seconds slower under TCG")
	}
}

// TestStartReportsQEMUErrors needs an image but no boot: QEMU refuses the
// command line at once, and the error must say why.
func TestStartReportsQEMUErrors(t *testing.T) {
	img := guest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vm, err := guest.Start(ctx, guest.Config{Image: img, Args: []string{"-device", "no-such-device"}})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	err = vm.WaitBoot(ctx)
	if err == nil || !strings.Contains(err.Error(), "no-such-device") {
		t.Fatalf("WaitBoot: got %v, want an error quoting QEMU about no-such-device", err)
	}
	select {
	case <-vm.Exited():
	default:
		t.Errorf("QEMU still running after WaitBoot reported its exit")
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		guest.Skip(t, "needs root for network namespaces and TAP devices")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		guest.Skip(t, "no /dev/net/tun: %v", err)
	}
}

// newNetns creates a network namespace that is deleted when the test ends,
// after the guests started later (cleanups run last-in, first-out).
func newNetns(t *testing.T) string {
	t.Helper()
	name := "vmnet-guest-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ipNetns(t, name, "ip", "link", "set", "lo", "up")
	return name
}

// ipNetns runs a command in namespace ns and returns its output.
func ipNetns(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in netns %s: %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count open fds: %v", err)
	}
	return len(ents)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
