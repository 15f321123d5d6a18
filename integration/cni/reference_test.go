package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/integration/harness"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// referencePlugins is the module whose tap plugin vmnet is measured
// against; built with go install into a temporary folder, never vendored.
const referencePlugins = "github.com/containernetworking/plugins/plugins/main/tap@v1.9.1"

// side is one plugin's setup in the side-by-side: what it made, and what
// the guest measured through it.
type side struct {
	name       string
	configured string // the TAP as the plugin left it, before QEMU opened it
	withQEMU   string // the same while QEMU holds it
	up, down   harness.Iperf
	rtt        float64
}

// BenchmarkReferenceTap puts one guest (2 vCPUs, one virtio-net NIC with
// 4 queues, QEMU as uid 107 opening the TAP by name) behind the ptp chain
// of docs/cni/ptp.conflist three ways: vmnet wired by tc redirect, vmnet
// on an in-namespace bridge, and the reference tap plugin of
// containernetworking/plugins with its "bridge" option on the same kind
// of bridge (which the test makes: that plugin makes none). It logs what
// each plugin configured and iperf3 both ways, as the table in
// docs/kubernetes.md; it asserts no throughput. Run it with
//
//	go test -run '^$' -bench ReferenceTap -benchtime 1x ./integration/cni/
//
// (`make bench` runs it with every other benchmark).
func BenchmarkReferenceTap(b *testing.B) {
	r := newRig(b)
	unprivilegedImage(b)
	refDir := buildReferenceTap(b)
	r.cni = libcni.NewCNIConfigWithCacheDir([]string{binDir, refDir, debianCNI}, filepath.Join(r.dir, "cache"), nil)
	const queues, seconds = 4, 5

	var sides []side
	for _, s := range []struct {
		name string
		make func(path, pod string) (nic, func())
	}{
		{"vmnet, tc-redirect", func(path, pod string) (nic, func()) {
			list := r.conflist("ptp.conflist", nil)
			c := rt("vm-tc", path, "eth0")
			res := r.mustAdd(list, c)
			return guestNIC(b, res, path, queues, ""), func() { r.del(list, c) }
		}},
		{"vmnet, bridge", func(path, pod string) (nic, func()) {
			list := r.conflist("ptp.conflist", func(p map[string]any) { p["mode"] = "bridge" })
			c := rt("vm-br", path, "eth0")
			res := r.mustAdd(list, c)
			return guestNIC(b, res, path, queues, "52:54:00:12:34:56"), func() { r.del(list, c) }
		}},
		{"reference tap, bridge", func(path, pod string) (nic, func()) {
			// ptp alone, then the bridge the reference plugin's "bridge"
			// option expects, made as vmnet makes it, then the plugin.
			ptp := r.conflist("ptp.conflist", nil)
			ptp = r.withoutVmnet(ptp)
			c := rt("vm-ref", path, "eth0")
			res := r.mustAdd(ptp, c)
			for _, cmd := range [][]string{
				{"ip", "link", "add", "br-eth0", "type", "bridge"},
				{"ip", "link", "set", "br-eth0", "addrgenmode", "none"},
				{"sysctl", "-qw", "net.ipv4.conf.br-eth0.arp_ignore=1"},
				{"ip", "link", "set", "eth0", "master", "br-eth0"},
				{"ip", "link", "set", "br-eth0", "up"},
			} {
				testutil.Exec(b, pod, cmd[0], cmd[1:]...)
			}
			ref := referenceList(b, queues)
			cr := rt("vm-ref", path, "tap0")
			r.mustAdd(ref, cr)
			n := guestNIC(b, res, path, queues, "52:54:00:12:34:56")
			n.tap = "tap0"
			return n, func() { r.del(ref, cr); r.del(ptp, c) }
		}},
	} {
		pod, path := r.pod()
		n, cleanup := s.make(path, pod)
		sd := side{name: s.name, configured: describeTAP(b, pod, path, n.tap)}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		vm := bootGuest(ctx, b, pod, []nic{n})
		guestRun(ctx, b, vm, fmt.Sprintf("ethtool -L eth0 combined %d", queues))
		sd.withQEMU = describeTAP(b, pod, path, n.tap)
		ping, err := harness.ParsePing(guestRun(ctx, b, vm, "ping -c 10 -i 0.2 -W 5 "+n.gw))
		if err != nil || ping.Received != 10 {
			b.Fatalf("%s: ping %s from the guest: %+v, %v", s.name, n.gw, ping, err)
		}
		sd.rtt = ping.Avg
		sd.up = iperf(ctx, b, vm, r.node, n.gw, 5201, seconds, false)
		sd.down = iperf(ctx, b, vm, r.node, n.gw, 5201, seconds, true)
		vm.Stop()
		cancel()
		cleanup()
		sides = append(sides, sd)
		b.ReportMetric(sd.up.Gbps(), strings.NewReplacer(", ", "-", " ", "-").Replace(s.name)+"-up-Gbit/s")
		b.ReportMetric(sd.down.Gbps(), strings.NewReplacer(", ", "-", " ", "-").Replace(s.name)+"-down-Gbit/s")
	}

	var t strings.Builder
	fmt.Fprintf(&t, "\n| plugin, wiring | TAP as the plugin left it | the same with QEMU attached | guest → node | node → guest | ping RTT |\n|---|---|---|---|---|---|\n")
	for _, s := range sides {
		fmt.Fprintf(&t, "| %s | %s | %s | %.2f Gbit/s (%d retr.) | %.2f Gbit/s (%d retr.) | %.2f ms |\n",
			s.name, s.configured, s.withQEMU, s.up.Gbps(), s.up.Retransmits, s.down.Gbps(), s.down.Retransmits, s.rtt)
	}
	b.Logf("iperf3 -t %d, one TCP stream each way, guest with 2 vCPUs (TCG) and %d queue pairs:%s", seconds, queues, t.String())
}

// buildReferenceTap builds the reference tap plugin into a folder of its
// own and returns the folder.
func buildReferenceTap(b testing.TB) string {
	b.Helper()
	dir := b.TempDir()
	os.Chmod(dir, 0o755)
	cmd := exec.Command("go", "install", referencePlugins)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		testutil.Skip(b, "cannot build the reference tap plugin (%s): %v\n%s", referencePlugins, err, out)
	}
	return dir
}

// referenceList is the reference plugin as its README configures it for a
// VM: a multi-queue TAP for uid 107 on the pod's bridge.
func referenceList(b testing.TB, queues int) *libcni.NetworkConfigList {
	b.Helper()
	l, err := libcni.ConfListFromBytes([]byte(`{"cniVersion": "1.0.0", "name": "reference-tap", "plugins": [
		{"type": "tap", "multiQueue": true, "owner": 107, "group": 107, "bridge": "br-eth0"}]}`))
	if err != nil {
		b.Fatal(err)
	}
	_ = queues // the reference plugin has no queue count: a multi-queue TAP takes up to 256
	return l
}

// withoutVmnet is list without its vmnet entry.
func (r *rig) withoutVmnet(list *libcni.NetworkConfigList) *libcni.NetworkConfigList {
	r.t.Helper()
	var m map[string]any
	if err := json.Unmarshal(list.Bytes, &m); err != nil {
		r.t.Fatal(err)
	}
	var keep []any
	for _, p := range m["plugins"].([]any) {
		if p.(map[string]any)["type"] != "vmnet" {
			keep = append(keep, p)
		}
	}
	m["plugins"] = keep
	out, err := json.Marshal(m)
	if err != nil {
		r.t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(out)
	if err != nil {
		r.t.Fatal(err)
	}
	return l
}

// describeTAP says what a TAP is, in the table's words: flags, vnet
// header size (only readable while no queue is attached), owner, the
// offloads its TUNSETOFFLOAD left on (ethtool -k), files attached.
func describeTAP(b testing.TB, pod, path, name string) string {
	b.Helper()
	info, err := tap.Lookup(name, path)
	if err != nil {
		b.Fatal(err)
	}
	var parts []string
	if info.MultiQueue {
		parts = append(parts, "multi_queue")
	} else {
		parts = append(parts, "single queue")
	}
	if info.Queues+info.DisabledQueues > 0 {
		parts = append(parts, fmt.Sprintf("%d queue files", info.Queues+info.DisabledQueues))
	} else if n, err := tap.VnetHdrSizeOf(name, path); err == nil {
		parts = append(parts, fmt.Sprintf("vnet_hdr %d B", n))
	}
	parts = append(parts, fmt.Sprintf("owner %d", info.Owner))
	feats := harness.ParseEthtoolFeatures(testutil.Exec(b, pod, "ethtool", "-k", name))
	var on []string
	for _, f := range []struct{ key, short string }{
		{"tx-checksumming", "csum"}, {"tx-tcp-segmentation", "tso4"}, {"tx-tcp6-segmentation", "tso6"},
		{"tx-tcp-ecn-segmentation", "ecn"}, {"tx-udp-segmentation", "uso"},
	} {
		if feats[f.key] {
			on = append(on, f.short)
		}
	}
	if len(on) == 0 {
		on = append(on, "none")
	}
	parts = append(parts, "offloads "+strings.Join(on, ","))
	return strings.Join(parts, ", ")
}
