package cni_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/integration/guest"
	"github.com/vmnet-dev/vmnet/integration/harness"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// qemuUID is the unprivileged user QEMU runs as: KubeVirt's qemu user,
// the owner and group the example conflists give the TAP.
const qemuUID = 107

// guestFiles is the guest image copied where uid 107 can read it (the
// image cache lives under root's home).
var guestFiles struct {
	once sync.Once
	img  *guest.Image
	err  error
}

// unprivilegedImage returns the default guest image, readable by qemuUID.
func unprivilegedImage(t testing.TB) *guest.Image {
	t.Helper()
	img := guest.Require(t)
	guestFiles.once.Do(func() {
		dir := filepath.Join(binDir, "guest")
		if guestFiles.err = os.MkdirAll(dir, 0o755); guestFiles.err != nil {
			return
		}
		cp := *img
		cp.Dir, cp.Kernel, cp.Initrd = dir, filepath.Join(dir, "kernel"), filepath.Join(dir, "initrd.gz")
		for src, dst := range map[string]string{img.Kernel: cp.Kernel, img.Initrd: cp.Initrd} {
			if guestFiles.err = copyFile(src, dst); guestFiles.err != nil {
				return
			}
		}
		guestFiles.img = &cp
	})
	if guestFiles.err != nil {
		t.Fatalf("copy the guest image for uid %d: %v", qemuUID, guestFiles.err)
	}
	return guestFiles.img
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// qemuAsUser is a QEMU binary for guest.Config.QEMU that drops to
// qemuUID (no capabilities, no groups) before QEMU starts, as
// virt-launcher runs it; --pdeathsig because the uid change clears the
// parent-death signal guest.Start set.
func qemuAsUser(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("setpriv"); err != nil {
		testutil.Skip(t, "no setpriv (util-linux): %v", err)
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "qemu-as-107")
	script := fmt.Sprintf("#!/bin/sh\nexec setpriv --reuid %d --regid %d --clear-groups --inh-caps=-all --pdeathsig KILL -- qemu-system-x86_64 \"$@\"\n", qemuUID, qemuUID)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// nic is a guest NIC on a TAP the plugin made, opened by name in the
// pod's namespace.
type nic struct {
	tap    string
	queues int
	mac    string
	addr   string // the guest's, ADDR/LEN, from the chain's result
	gw     string // the chain's gateway: the far end in the node namespace
}

// args are QEMU's options for the NICs: -netdev tap,ifname=... opens the
// TAP by name, one file per queue; mq=on with 2N+2 vectors.
func nicArgs(nics []nic) []string {
	var args []string
	for i, n := range nics {
		netdev := fmt.Sprintf("tap,id=n%d,ifname=%s,vhost=off,script=no,downscript=no", i, n.tap)
		device := fmt.Sprintf("virtio-net-pci,netdev=n%d,mac=%s", i, n.mac)
		if n.queues > 1 {
			netdev += fmt.Sprintf(",queues=%d", n.queues)
			device += fmt.Sprintf(",mq=on,vectors=%d", 2*n.queues+2)
		}
		args = append(args, "-netdev", netdev, "-device", device)
	}
	return args
}

// bootGuest starts a two-vCPU guest in pod with the NICs, QEMU as
// qemuUID; eth0 gets the first NIC's address and the default route.
func bootGuest(ctx context.Context, t testing.TB, pod string, nics []nic) *guest.VM {
	t.Helper()
	var kargs []string
	for i, n := range nics {
		kargs = append(kargs, fmt.Sprintf("vmnet.ip=%s,eth%d", n.addr, i))
	}
	kargs = append(kargs, "vmnet.gw="+nics[0].gw)
	return guest.StartT(ctx, t, guest.Config{
		Image:      unprivilegedImage(t),
		QEMU:       qemuAsUser(t),
		Netns:      pod,
		SMP:        2,
		Args:       nicArgs(nics),
		KernelArgs: kargs,
	})
}

// guestNIC is the NIC for the TAP a chain's result names. In tc-redirect
// mode the guest takes the previous interface's MAC (frames from the
// cluster are addressed to it, and the plugin gave it to the TAP, so the
// result's TAP says which); in bridge mode a MAC of its own.
func guestNIC(t testing.TB, res *current.Result, netNS string, queues int, ownMAC string) nic {
	t.Helper()
	tapIf := tapOf(t, res, netNS)
	if len(res.IPs) == 0 {
		t.Fatalf("result has no address for the guest: %+v", res)
	}
	ip := res.IPs[0]
	n := nic{tap: tapIf.Name, queues: queues, mac: tapIf.Mac, addr: ip.Address.String(), gw: ip.Gateway.String()}
	if ownMAC != "" {
		n.mac = ownMAC
	}
	return n
}

// queuesOf reads "queues" of the vmnet entry of list: what the test
// holds the guest to.
func queuesOf(t testing.TB, list *libcni.NetworkConfigList) int {
	t.Helper()
	for _, p := range list.Plugins {
		if p.Network.Type == "vmnet" {
			m := regexp.MustCompile(`"queues":\s*(\d+)`).FindSubmatch(p.Bytes)
			if m == nil {
				return 1
			}
			n, _ := strconv.Atoi(string(m[1]))
			return n
		}
	}
	t.Fatalf("%s has no vmnet entry", list.Name)
	return 0
}

func guestRun(ctx context.Context, t testing.TB, vm *guest.VM, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := vm.RunOK(ctx, script)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// iperf runs iperf3 in the guest against a server in the node namespace
// on addr, guest to host or (reverse) host to guest.
func iperf(ctx context.Context, t testing.TB, vm *guest.VM, node, addr string, port, seconds int, reverse bool) harness.Iperf {
	t.Helper()
	srv, err := harness.StartIperfServer(ctx, node, addr, port)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	args := fmt.Sprintf("iperf3 -J -c %s -p %d -t %d", addr, port, seconds)
	if reverse {
		args += " -R"
	}
	r, err := harness.ParseIperfJSON(guestRun(ctx, t, vm, args))
	if err != nil {
		t.Fatalf("%s: %v", args, err)
	}
	return r
}

// One guest for both example chains: the pod namespace holds eth0 from
// the ptp chain with its TAP tap0 wired by tc redirect (4 queues, hash
// steering), and net1 from the bridge chain with tapnet1 on an
// in-namespace bridge (2 queues), as Multus would attach two networks.
// QEMU runs as uid 107, opens both TAPs by name, and the guest carries
// ping and iperf3 both ways through each.
func TestQEMUGuest(t *testing.T) {
	r := newRig(t)
	unprivilegedImage(t) // skips before anything is made, when there is no guest
	pod, path := r.pod()
	ptp, br := r.conflist("ptp.conflist", nil), r.conflist("bridge.conflist", nil)
	c0, c1 := rt("vm-guest", path, "eth0"), rt("vm-guest", path, "net1")
	steerBefore := testutil.SteeringPrograms(t, 0)
	res0, res1 := r.mustAdd(ptp, c0), r.mustAdd(br, c1)
	steerOurs := newPrograms(steerBefore, testutil.SteeringPrograms(t, 0))
	nics := []nic{
		guestNIC(t, res0, path, queuesOf(t, ptp), ""),
		guestNIC(t, res1, path, queuesOf(t, br), "52:54:00:12:34:57"),
	}
	if nics[0].tap != "tap0" || nics[1].tap != "tapnet1" {
		t.Fatalf("TAPs %s and %s, want tap0 and tapnet1 (the names derived from eth0 and net1)", nics[0].tap, nics[1].tap)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	vm := bootGuest(ctx, t, pod, nics)
	t.Logf("guest booted in %s; QEMU as uid %d on %s (%d queues) and %s (%d queues)",
		vm.BootTime().Round(time.Millisecond), qemuUID, nics[0].tap, nics[0].queues, nics[1].tap, nics[1].queues)

	t.Run("QEMU is unprivileged", func(t *testing.T) {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", vm.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		uid := regexp.MustCompile(`(?m)^Uid:\s+(\d+)\s+(\d+)`).FindStringSubmatch(string(status))
		eff := regexp.MustCompile(`(?m)^CapEff:\s+(\S+)`).FindStringSubmatch(string(status))
		if uid == nil || uid[1] != strconv.Itoa(qemuUID) || uid[2] != strconv.Itoa(qemuUID) || eff == nil || eff[1] != "0000000000000000" {
			t.Errorf("QEMU: uid %v, effective capabilities %v; want %d and none", uid, eff, qemuUID)
		}
	})

	t.Run("queues", func(t *testing.T) {
		for i, n := range nics {
			dev := fmt.Sprintf("eth%d", i)
			out := guestRun(ctx, t, vm, "ethtool -l "+dev)
			if !regexp.MustCompile(fmt.Sprintf(`(?s)Pre-set maximums:.*?Combined:\s+%d\b`, n.queues)).MatchString(out) {
				t.Errorf("guest %s: want %d combined channels at most (ethtool -l):\n%s", dev, n.queues, out)
			}
			// The driver starts with as many pairs as vCPUs; ask for all.
			out = guestRun(ctx, t, vm, fmt.Sprintf("ethtool -L %s combined %d; ethtool -l %s; ls /sys/class/net/%s/queues", dev, n.queues, dev, dev))
			if !regexp.MustCompile(fmt.Sprintf(`(?s)Current hardware settings:.*?Combined:\s+%d\b`, n.queues)).MatchString(out) {
				t.Errorf("guest %s: want %d combined channels in use after ethtool -L:\n%s", dev, n.queues, out)
			}
			for q := range n.queues {
				if !strings.Contains(out, fmt.Sprintf("rx-%d", q)) || !strings.Contains(out, fmt.Sprintf("tx-%d", q)) {
					t.Errorf("guest %s: no rx-%d/tx-%d in /sys/class/net/%s/queues:\n%s", dev, q, q, dev, out)
				}
			}
			info, err := tap.Lookup(n.tap, path)
			if err != nil {
				t.Fatal(err)
			}
			if info.Queues+info.DisabledQueues != n.queues {
				t.Errorf("tap %s: QEMU holds %d files (%d enabled), want %d", n.tap, info.Queues+info.DisabledQueues, info.Queues, n.queues)
			}
		}
	})

	t.Run("CHECK while QEMU holds the TAPs", func(t *testing.T) {
		if err := r.check(ptp, c0); err != nil {
			t.Errorf("CHECK %s: %v", ptp.Name, err)
		}
		if err := r.check(br, c1); err != nil {
			t.Errorf("CHECK %s: %v", br.Name, err)
		}
	})

	for i, n := range nics {
		dev := fmt.Sprintf("eth%d", i)
		guestIP, _, _ := net.ParseCIDR(n.addr)
		t.Run("ping "+dev, func(t *testing.T) {
			if out := guestRun(ctx, t, vm, fmt.Sprintf("ping -c 3 -W 5 -I %s %s", dev, n.gw)); !strings.Contains(out, "3 packets received") {
				t.Errorf("guest pings %s over %s: %q", n.gw, dev, out)
			}
			if out := testutil.Exec(t, r.node, "ping", "-c", "3", "-W", "5", guestIP.String()); !strings.Contains(out, " 0% packet loss") {
				t.Errorf("node pings the guest at %s: %q", guestIP, out)
			}
		})
		t.Run("iperf3 "+dev, func(t *testing.T) {
			before := guestQueueCounters(ctx, t, vm, dev)
			up := iperf(ctx, t, vm, r.node, n.gw, 5201+i, 3, false)
			down := iperf(ctx, t, vm, r.node, n.gw, 5201+i, 3, true)
			if up.RecvBytes == 0 || down.RecvBytes == 0 {
				t.Errorf("iperf3 over %s: guest to node %s, node to guest %s", dev, up, down)
			}
			t.Logf("iperf3 over %s (%s, %d queues): guest to node %s; node to guest %s", dev, n.tap, n.queues, up, down)
			after := guestQueueCounters(ctx, t, vm, dev)
			t.Logf("guest %s per-queue packets during iperf3: %s", dev, counterDelta(before, after))
		})
	}

	t.Run("steering program after ADD and after boot", func(t *testing.T) {
		// Observed, not held: the TAP kept the program the plugin
		// attached after the plugin exited; QEMU without rss=on detaches
		// any program when the guest resets the device
		// (virtio_net_disable_rss), so after boot the kernel steers.
		left := 0
		now := testutil.SteeringPrograms(t, 0)
		for id := range steerOurs {
			if now[id] {
				left++
			}
		}
		t.Logf("steering programs held by the TAPs after ADD: %d; still loaded after the guest booted: %d", len(steerOurs), left)
		if len(steerOurs) == 0 {
			t.Errorf("no steering program held by a TAP after ADD of %s (steering hash, 4 queues)", ptp.Name)
		}
	})

	vm.Stop()
	t.Run("after QEMU", func(t *testing.T) {
		if err := r.check(ptp, c0); err != nil {
			t.Errorf("CHECK %s with the TAP idle: %v", ptp.Name, err)
		}
		for _, del := range []struct {
			list *libcni.NetworkConfigList
			c    *libcni.RuntimeConf
		}{{br, c1}, {ptp, c0}} {
			if err := r.del(del.list, del.c); err != nil {
				t.Errorf("DEL %s: %v", del.list.Name, err)
			}
		}
		if l := links(t, pod); strings.Count(l, "\n") != 1 {
			t.Errorf("pod after DEL has more than lo:\n%s", l)
		}
	})
}

// newPrograms are the ids in after that were not in before.
func newPrograms(before, after map[uint32]bool) map[uint32]bool {
	out := map[uint32]bool{}
	for id := range after {
		if !before[id] {
			out[id] = true
		}
	}
	return out
}

// guestQueueCounters reads the guest driver's per-queue packet counters.
func guestQueueCounters(ctx context.Context, t testing.TB, vm *guest.VM, dev string) map[string]uint64 {
	t.Helper()
	stats := harness.ParseEthtoolStats(guestRun(ctx, t, vm, "ethtool -S "+dev))
	out := map[string]uint64{}
	for k, v := range stats {
		if regexp.MustCompile(`^[rt]x_queue_\d+_packets$`).MatchString(k) {
			out[k] = v
		}
	}
	return out
}

func counterDelta(before, after map[string]uint64) string {
	var parts []string
	for _, dir := range []string{"rx", "tx"} {
		for q := 0; ; q++ {
			k := fmt.Sprintf("%s_queue_%d_packets", dir, q)
			v, ok := after[k]
			if !ok {
				break
			}
			parts = append(parts, fmt.Sprintf("%s%d=%d", dir, q, v-before[k]))
		}
	}
	return strings.Join(parts, " ")
}
