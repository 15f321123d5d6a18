package cni_test

import (
	"context"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// Each bad value in an example conflist is refused through libcni with
// the CNI error code of its kind and a message naming the field, and
// leaves nothing: no link in the pod, no record, no lease taken from the
// IPAM plugin.
func TestBadConfig(t *testing.T) {
	r := newRig(t)
	pod, path := r.pod()
	for _, tc := range []struct {
		file  string
		key   string
		value any
		code  uint
		says  string
	}{
		{"standalone.conflist", "queues", 0, types.ErrInvalidNetworkConfig, "queues: 0"},
		{"standalone.conflist", "queues", 300, types.ErrInvalidNetworkConfig, "queues: 300"},
		{"standalone.conflist", "queues", "4", types.ErrInvalidNetworkConfig, "queues: want a JSON number"},
		{"standalone.conflist", "vnetHdr", 11, types.ErrInvalidNetworkConfig, "vnetHdr: 11"},
		{"standalone.conflist", "owner", -1, types.ErrInvalidNetworkConfig, "owner: -1"},
		{"standalone.conflist", "group", "kvm", types.ErrInvalidNetworkConfig, "group: want a JSON number"},
		{"standalone.conflist", "mtu", 65535, types.ErrInvalidNetworkConfig, "mtu: 65535"},
		{"standalone.conflist", "mac", "ff:ff:ff:ff:ff:ff", types.ErrInvalidNetworkConfig, "mac: \"ff:ff:ff:ff:ff:ff\""},
		{"standalone.conflist", "offloads", "tso4", types.ErrInvalidNetworkConfig, "offloads: \"tso4\""},
		{"standalone.conflist", "steering", "hash", types.ErrInvalidNetworkConfig, "steering: hash"},
		{"standalone.conflist", "mode", "macvtap", types.ErrInvalidNetworkConfig, "mode: \"macvtap\""},
		{"standalone.conflist", "mode", "tc-redirect", types.ErrInvalidNetworkConfig, "ipam: "},
		{"standalone.conflist", "tapName", "tap/0", types.ErrInvalidNetworkConfig, "tapName: "},
		{"standalone.conflist", "tapName", "lo", types.ErrInvalidNetworkConfig, "tapName: \"lo\": the namespace already has"},
		{"standalone.conflist", "logLevel", "loud", types.ErrInvalidNetworkConfig, "logLevel: "},
		{"standalone.conflist", "queue", 4, types.ErrUnsupportedField, "unknown field \"queue\" (value 4)"},
		{"ptp.conflist", "ipam", map[string]any{"type": "host-local"}, types.ErrInvalidNetworkConfig, "ipam: "},
		{"ptp.conflist", "tapName", "eth0", types.ErrInvalidNetworkConfig, "tapName: \"eth0\""},
		{"ptp.conflist", "mode", "bridge", types.ErrInvalidNetworkConfig, ""},
		{"bridge.conflist", "bridge", "eth0", types.ErrInvalidNetworkConfig, "bridge: \"eth0\""},
		{"bridge.conflist", "bridge", "bridge-name-too-long", types.ErrInvalidNetworkConfig, "bridge: "},
	} {
		t.Run(tc.file+"/"+tc.key, func(t *testing.T) {
			edit := func(p map[string]any) { p[tc.key] = tc.value }
			// mode bridge on the ptp chain is fine; with a bridge name
			// that is the TAP's it is not.
			if tc.file == "ptp.conflist" && tc.key == "mode" {
				edit = func(p map[string]any) { p["mode"], p["bridge"] = "bridge", "tap0" }
				tc.says = "bridge: \"tap0\" is also the name of the TAP"
			}
			list := r.conflist(tc.file, edit)
			before := links(t, pod)
			c := rt("vm-bad", path, "eth0")
			_, err := r.add(list, c)
			if cniCode(err) != int(tc.code) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("ADD with %s %v: got %v (code %d); want code %d saying %q", tc.key, tc.value, err, cniCode(err), tc.code, tc.says)
			}
			t.Logf("refused: %v", err)
			// The plugins before vmnet in a chain did their part; the
			// runtime's DEL undoes it, and vmnet's part must be nothing.
			if len(list.Plugins) > 1 {
				if l := links(t, pod); strings.Contains(l, " tun") || strings.Contains(l, " bridge") {
					t.Errorf("refused ADD left links of vmnet's:\n%s", l)
				}
				if err := r.del(list, c); err != nil {
					t.Fatalf("DEL after the refused ADD: %v", err)
				}
			}
			if after := links(t, pod); after != before {
				t.Errorf("links changed:\nbefore\n%s\nafter\n%s", before, after)
			}
			if got := r.records(list.Name); len(got) != 0 {
				t.Errorf("records left: %v", got)
			}
			if got := r.leases(list.Name); len(got) != 0 && len(list.Plugins) == 1 {
				t.Errorf("leases taken: %v", got)
			}
		})
	}
}

// The versions libcni negotiates: the plugin says which it speaks, and
// the standalone example works at each (CHECK from 0.4.0; without ipam a
// result before 0.3.0 cannot carry the TAP, and ADD says so).
func TestVersions(t *testing.T) {
	r := newRig(t)
	var info version.PluginInfo
	var err error
	r.inNode(func() { info, err = r.cni.GetVersionInfo(context.Background(), "vmnet") })
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(info.SupportedVersions(), " "); got != strings.Join(version.All.SupportedVersions(), " ") {
		t.Errorf("VERSION: %s, want every version libcni knows: %v", got, version.All.SupportedVersions())
	}
	_, path := r.pod()
	for _, v := range []string{"0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			// Debian's host-local speaks 1.0.0 at most: at 1.1.0 vmnet runs
			// without ipam.
			noIPAM := v == "1.1.0"
			list := r.conflist("standalone.conflist", func(p map[string]any) {
				if noIPAM {
					delete(p, "ipam")
				}
			})
			list = r.withVersion(list, v)
			c := rt("vm-"+strings.ReplaceAll(v, ".", ""), path, "eth0")
			res := r.mustAdd(list, c)
			if !noIPAM && len(res.IPs) != 1 || noIPAM && len(res.Interfaces) != 1 {
				t.Errorf("ADD at %s: %+v", v, res)
			}
			if v != "0.2.0" && v != "0.3.1" {
				if err := r.check(list, c); err != nil {
					t.Errorf("CHECK at %s: %v", v, err)
				}
			}
			if err := r.del(list, c); err != nil {
				t.Errorf("DEL at %s: %v", v, err)
			}
		})
	}
	list := r.withVersion(r.conflist("standalone.conflist", func(p map[string]any) { delete(p, "ipam") }), "0.2.0")
	_, err = r.add(list, rt("vm-noip", path, "eth0"))
	if cniCode(err) != int(types.ErrIncompatibleCNIVersion) || !strings.Contains(err.Error(), "0.3.0 or later") {
		t.Errorf("ADD without ipam at 0.2.0: got %v, want code %d", err, types.ErrIncompatibleCNIVersion)
	}
}
