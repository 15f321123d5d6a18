package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// Each example conflist of docs/cni, run through libcni as a runtime runs
// it: STATUS, ADD, CHECK, ADD again, CHECK after a change behind the
// plugin's back, GC of a stale attachment (by vmnet's GC verb and by
// libcni's DEL of cached attachments), DEL twice, DEL after the
// namespace is gone.
func TestConflists(t *testing.T) {
	for _, tc := range []struct {
		file    string
		ifName  string
		mode    string
		queues  int
		tapName string
	}{
		{"ptp.conflist", "eth0", "tc-redirect", 4, "tap0"},
		{"bridge.conflist", "eth0", "bridge", 2, "tap0"},
		{"standalone.conflist", "net1", "none", 1, "vmtap0"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			r := newRig(t)
			list := r.conflist(tc.file, nil)
			pod1, path1 := r.pod()
			c1 := rt("vm-one", path1, tc.ifName)

			if err := r.status(r.vmnetOnly(list, "1.1.0")); err != nil {
				t.Fatalf("STATUS: %v", err)
			}

			res := r.mustAdd(list, c1)
			tapIf := tapOf(t, res, path1)
			if tapIf.Name != tc.tapName {
				t.Fatalf("result's TAP is %q, want %q: %+v", tapIf.Name, tc.tapName, res.Interfaces)
			}
			if len(res.IPs) == 0 {
				t.Errorf("result has no addresses for the guest: %+v", res)
			}
			checkTAP(t, pod1, path1, tc.tapName, tc.queues)
			checkConnection(t, pod1, tc.mode, tc.ifName, tc.tapName)
			t.Logf("ADD result: interfaces %v, ips %v", res.Interfaces, res.IPs)

			if err := r.check(list, c1); err != nil {
				t.Fatalf("CHECK after ADD: %v", err)
			}

			t.Run("ADD twice", func(t *testing.T) {
				before := links(t, pod1)
				again := r.addAgain(list, c1, res)
				if !reflect.DeepEqual(again.Interfaces, res.Interfaces) || !reflect.DeepEqual(again.IPs, res.IPs) {
					t.Errorf("second ADD:\n got %v %v\nwant %v %v", again.Interfaces, again.IPs, res.Interfaces, res.IPs)
				}
				if after := links(t, pod1); after != before {
					t.Errorf("second ADD changed the links:\nbefore\n%s\nafter\n%s", before, after)
				}
				if n := len(r.leases(list.Name)); tc.mode == "none" && n != 1 {
					t.Errorf("standalone: %d leases after ADD twice, want 1 (%v)", n, r.leases(list.Name))
				}
				if err := r.check(list, c1); err != nil {
					t.Errorf("CHECK after the second ADD: %v", err)
				}
			})

			t.Run("CHECK sees a change", func(t *testing.T) {
				testutil.Exec(t, pod1, "ip", "link", "set", tc.tapName, "down")
				err := r.check(list, c1)
				if err == nil || !strings.Contains(err.Error(), "down, want up") {
					t.Errorf("CHECK of a TAP set down: got %v, want it to say so", err)
				}
				testutil.Exec(t, pod1, "ip", "link", "set", tc.tapName, "up")
				if tc.mode == "tc-redirect" {
					testutil.Exec(t, pod1, "tc", "filter", "del", "dev", tc.ifName, "ingress")
					err := r.check(list, c1)
					if err == nil || !strings.Contains(err.Error(), "no tc filter redirects "+tc.ifName) {
						t.Errorf("CHECK without the peer's filter: got %v", err)
					}
					// ADD again puts it back.
					r.addAgain(list, c1, res)
				}
				if tc.mode == "bridge" {
					testutil.Exec(t, pod1, "ip", "link", "set", tc.tapName, "nomaster")
					err := r.check(list, c1)
					if err == nil || !strings.Contains(err.Error(), "is not a port of bridge") {
						t.Errorf("CHECK of a TAP out of its bridge: got %v", err)
					}
					r.addAgain(list, c1, res)
				}
				if err := r.check(list, c1); err != nil {
					t.Errorf("CHECK after repair: %v", err)
				}
			})

			t.Run("ADD again after the TAP was deleted", func(t *testing.T) {
				testutil.Exec(t, pod1, "ip", "link", "del", tc.tapName)
				if err := r.check(list, c1); err == nil || !strings.Contains(err.Error(), "not in") {
					t.Errorf("CHECK without the TAP: got %v", err)
				}
				again := r.addAgain(list, c1, res)
				if !reflect.DeepEqual(again.IPs, res.IPs) || tapOf(t, again, path1).Name != tc.tapName {
					t.Errorf("ADD again: %v %v, want the same TAP name and addresses %v", again.Interfaces, again.IPs, res.IPs)
				}
				checkTAP(t, pod1, path1, tc.tapName, tc.queues)
				checkConnection(t, pod1, tc.mode, tc.ifName, tc.tapName)
				if err := r.check(list, c1); err != nil {
					t.Errorf("CHECK after ADD made the TAP anew: %v", err)
				}
			})

			t.Run("GC", func(t *testing.T) {
				pod2, path2 := r.pod()
				c2 := rt("vm-two", path2, tc.ifName)
				r.mustAdd(list, c2)
				if got := r.records(list.Name); len(got) != 2 {
					t.Fatalf("records after two ADDs: %v", got)
				}
				// vmnet's own GC (CNI 1.1.0), with a cache that knows no
				// attachment, so libcni sends GC and no DEL.
				fresh := libcni.NewCNIConfigWithCacheDir([]string{binDir, debianCNI}, t.TempDir(), nil)
				if err := r.gc(fresh, r.vmnetOnly(list, "1.1.0"), c1); err != nil {
					t.Fatalf("GC: %v", err)
				}
				if l := links(t, pod2); strings.Contains(l, " tun") || strings.Contains(l, " bridge") {
					t.Errorf("GC left the stale attachment's links in its pod:\n%s", l)
				}
				if tc.mode == "tc-redirect" {
					if out := testutil.Exec(t, pod2, "tc", "filter", "show", "dev", tc.ifName, "ingress"); strings.TrimSpace(out) != "" {
						t.Errorf("GC left filters on %s:\n%s", tc.ifName, out)
					}
				}
				if got := r.records(list.Name); len(got) != 1 || !strings.HasPrefix(got[0], "vm-one+") {
					t.Errorf("records after GC: %v, want vm-one's alone", got)
				}
				checkTAP(t, pod1, path1, tc.tapName, tc.queues)
				if err := r.check(list, c1); err != nil {
					t.Errorf("CHECK of the valid attachment after GC: %v", err)
				}
				// libcni's GC of the example list (CNI 1.0.0): a DEL through
				// the whole chain for each cached attachment not valid.
				if err := r.gc(r.cni, list, c1); err != nil {
					t.Fatalf("libcni GC of %s: %v", list.Name, err)
				}
				if l := links(t, pod2); strings.Count(l, "\n") != 1 {
					t.Errorf("pod 2 after libcni's GC has more than lo:\n%s", l)
				}
			})

			t.Run("DEL twice", func(t *testing.T) {
				for i := range 2 {
					if err := r.del(list, c1); err != nil {
						t.Fatalf("DEL %d: %v", i+1, err)
					}
				}
				if l := links(t, pod1); strings.Count(l, "\n") != 1 {
					t.Errorf("pod after DEL has more than lo:\n%s", l)
				}
				if got := r.records(list.Name); len(got) != 0 {
					t.Errorf("records after DEL: %v", got)
				}
				if got := r.leases(list.Name); len(got) != 0 {
					t.Errorf("host-local leases after DEL: %v", got)
				}
			})

			t.Run("DEL after the namespace is gone", func(t *testing.T) {
				_, path3, delNS := r.doomedPod()
				c3 := rt("vm-three", path3, tc.ifName)
				r.mustAdd(list, c3)
				delNS()
				if err := r.del(list, c3); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				if got := r.records(list.Name); len(got) != 0 {
					t.Errorf("records after DEL: %v", got)
				}
				if got := r.leases(list.Name); len(got) != 0 {
					t.Errorf("host-local leases after DEL: %v", got)
				}
			})
		})
	}
}

// addAgain repeats ADD for an attachment. A standalone list goes through
// libcni again. In a chain the plugins before vmnet (Debian's ptp and
// bridge) refuse a second ADD of the same interface, so vmnet's entry is
// run by itself, given the chain's result as prevResult, as a runtime
// that repeats the chain would give it.
func (r *rig) addAgain(list *libcni.NetworkConfigList, c *libcni.RuntimeConf, prev *current.Result) *current.Result {
	r.t.Helper()
	if len(list.Plugins) == 1 {
		return r.mustAdd(list, c)
	}
	var conf map[string]any
	for _, p := range list.Plugins {
		if p.Network.Type == "vmnet" {
			if err := json.Unmarshal(p.Bytes, &conf); err != nil {
				r.t.Fatal(err)
			}
		}
	}
	conf["name"], conf["cniVersion"] = list.Name, list.CNIVersion
	prevJSON, err := prev.GetAsVersion(list.CNIVersion)
	if err != nil {
		r.t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := prevJSON.PrintTo(&buf); err != nil {
		r.t.Fatal(err)
	}
	conf["prevResult"] = json.RawMessage(buf.Bytes())
	stdin, err := json.Marshal(conf)
	if err != nil {
		r.t.Fatal(err)
	}
	args := &invoke.Args{Command: "ADD", ContainerID: c.ContainerID, NetNS: c.NetNS, IfName: c.IfName,
		Path: binDir + ":" + debianCNI}
	var res *current.Result
	r.inNode(func() {
		out, err := invoke.ExecPluginWithResult(context.Background(), filepath.Join(binDir, "vmnet"), stdin, args, nil)
		if err != nil {
			r.t.Fatalf("ADD again: %v", err)
		}
		if res, err = current.NewResultFromResult(out); err != nil {
			r.t.Fatal(err)
		}
	})
	return res
}

// checkTAP checks what the kernel reports of a TAP the example conflists
// make: persistent, a vnet header of 12 bytes, owner and group 107,
// multi-queue exactly when queues > 1, up, no queue file open.
func checkTAP(t testing.TB, ns, path, name string, queues int) {
	t.Helper()
	info, err := tap.Lookup(name, path)
	if err != nil {
		t.Fatalf("tap %s in %s: %v", name, ns, err)
	}
	if info.Type != "tap" || !info.VnetHdr || info.PI || !info.Persist || info.MultiQueue != (queues > 1) ||
		info.Owner != 107 || info.Group != 107 || !info.Up || info.Queues != 0 {
		t.Errorf("tap %s: got %+v; want a persistent tap, vnet_hdr, no pi, multi_queue %v, owner and group 107, up, no queue attached",
			name, info, queues > 1)
	}
	if n, err := tap.VnetHdrSizeOf(name, path); err != nil || n != 12 {
		t.Errorf("tap %s: vnet header %d bytes (%v), want 12", name, n, err)
	}
	if alias := strings.TrimSpace(testutil.Exec(t, ns, "cat", "/sys/class/net/"+name+"/ifalias")); !strings.HasPrefix(alias, "vmnet-cni/") {
		t.Errorf("tap %s: alias %q, want vmnet-cni/NETWORK/CONTAINER/IFNAME", name, alias)
	}
}

// checkConnection checks the wiring of a mode as tc and ip show it.
func checkConnection(t testing.TB, ns, mode, peer, tapName string) {
	t.Helper()
	switch mode {
	case "tc-redirect":
		for _, pair := range [][2]string{{peer, tapName}, {tapName, peer}} {
			out := testutil.Exec(t, ns, "tc", "filter", "show", "dev", pair[0], "ingress")
			if !strings.Contains(out, "u32") || !strings.Contains(out, fmt.Sprintf("Egress Redirect to device %s", pair[1])) {
				t.Errorf("%s's ingress: want a u32 filter redirecting to %s:\n%s", pair[0], pair[1], out)
			}
		}
	case "bridge":
		for _, l := range []string{peer, tapName} {
			out := testutil.Exec(t, ns, "ip", "-o", "link", "show", l)
			if !strings.Contains(out, "master br-"+peer) {
				t.Errorf("%s: want a port of br-%s:\n%s", l, peer, out)
			}
		}
		if v := strings.TrimSpace(testutil.Exec(t, ns, "sysctl", "-n", "net.ipv4.conf.br-"+peer+".arp_ignore")); v != "1" {
			t.Errorf("bridge br-%s: arp_ignore %s, want 1", peer, v)
		}
	case "none":
		if out := testutil.Exec(t, ns, "ip", "-o", "link", "show", tapName); strings.Contains(out, "master") {
			t.Errorf("standalone TAP has a master: %s", out)
		}
	}
}

// The firecracker-containerd chain of docs/kubernetes.md: ptp, then vmnet
// with one queue (Firecracker opens its TAP without IFF_MULTI_QUEUE) and
// vmInterface, so the result carries the guest's interface the way
// tc-redirect-tap reports it and firecracker-go-sdk reads it; the TAP's
// name and owner come in CNI_ARGS under tc-redirect-tap's keys. ptp's
// CHECK still finds its addresses on eth0.
func TestFirecrackerChain(t *testing.T) {
	r := newRig(t)
	list := r.conflist("ptp.conflist", func(p map[string]any) {
		p["queues"], p["vmInterface"], p["steering"] = 1, true, "kernel"
		delete(p, "owner")
		delete(p, "group")
	})
	_, path := r.pod()
	c := rt("fc-vm-1", path, "eth0")
	c.Args = [][2]string{{"IgnoreUnknown", "1"}, {"TC_REDIRECT_TAP_NAME", "tap1"}, {"TC_REDIRECT_TAP_UID", "123"}, {"TC_REDIRECT_TAP_GID", "456"}}
	res := r.mustAdd(list, c)
	var vm, tapIf *current.Interface
	var vmIndex int
	for i, iface := range res.Interfaces {
		switch iface.Sandbox {
		case c.ContainerID:
			vm, vmIndex = iface, i
		case path:
			if iface.Name == "tap1" {
				tapIf = iface
			}
		}
	}
	if vm == nil || tapIf == nil || vm.Name != tapIf.Name || vm.Mac == "" || vm.Mac != tapIf.Mac {
		t.Fatalf("want a TAP in %s and a VM interface of the same name and MAC in sandbox %s: %v", path, c.ContainerID, res.Interfaces)
	}
	if len(res.IPs) != 1 || res.IPs[0].Interface == nil || *res.IPs[0].Interface != vmIndex {
		t.Errorf("the address should be the VM interface's (%d): %v", vmIndex, res.IPs)
	}
	info, err := tap.Lookup("tap1", path)
	if err != nil || info.MultiQueue || info.Owner != 123 || info.Group != 456 {
		t.Errorf("tap1: %+v, %v; want a single-queue TAP of uid 123, gid 456", info, err)
	}
	if err := r.check(list, c); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := r.del(list, c); err != nil {
		t.Errorf("DEL: %v", err)
	}
}
