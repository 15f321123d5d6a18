package main

import (
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/offload"
)

// conf builds a configuration: the fields every runtime sends, plus the
// test's (a value of nil leaves the key out).
func conf(t *testing.T, fields map[string]any) []byte {
	t.Helper()
	m := map[string]any{"cniVersion": "1.1.0", "name": "net", "type": "vmnet"}
	for k, v := range fields {
		if v == nil {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConfigDefaults(t *testing.T) {
	c, err := parseConfig(conf(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	type settings struct {
		queues, vnetHdr, owner, group, mtu   int
		multiQueue                           bool
		offloads, mode, tapName, bridge, dir string
		steering                             ebpf.Steering
		level                                hclog.Level
	}
	want := settings{queues: 1, vnetHdr: 12, offloads: "none", steering: ebpf.SteeringAuto, dir: defaultDataDir, level: hclog.Warn}
	got := settings{c.queues, c.vnetHdr, c.owner, c.group, c.mtu, c.multiQueue, c.offloads, c.mode, c.tapName, c.bridge, c.dataDir, c.steering, c.logLevel}
	if got != want || c.mac != nil || c.ipam != "" {
		t.Errorf("defaults:\n got %+v mac %v ipam %q\nwant %+v", got, c.mac, c.ipam, want)
	}
}

// Every field with a value it takes, and what the plugin makes of it.
func TestConfigFields(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fields map[string]any
		check  func(*config) bool
	}{
		{"queues", map[string]any{"queues": 4}, func(c *config) bool { return c.queues == 4 && c.multiQueue }},
		{"queues 255", map[string]any{"queues": 255}, func(c *config) bool { return c.queues == 255 }},
		{"queues 1 is single-queue", map[string]any{"queues": 1}, func(c *config) bool { return !c.multiQueue }},
		{"multiQueue with one queue", map[string]any{"multiQueue": true}, func(c *config) bool { return c.multiQueue && c.queues == 1 }},
		{"multiQueue with queues", map[string]any{"multiQueue": true, "queues": 2}, func(c *config) bool { return c.multiQueue }},
		{"vnetHdr 10", map[string]any{"vnetHdr": 10}, func(c *config) bool { return c.vnetHdr == 10 }},
		{"vnetHdr 20", map[string]any{"vnetHdr": 20}, func(c *config) bool { return c.vnetHdr == 20 }},
		{"owner and group", map[string]any{"owner": 107, "group": 108}, func(c *config) bool { return c.owner == 107 && c.group == 108 }},
		{"owner 0 is unset", map[string]any{"owner": 0}, func(c *config) bool { return c.owner == 0 }},
		{"owner at the top", map[string]any{"owner": 4294967294}, func(c *config) bool { return c.owner == 4294967294 }},
		{"mtu", map[string]any{"mtu": 9000}, func(c *config) bool { return c.mtu == 9000 }},
		{"mtu 68", map[string]any{"mtu": 68}, func(c *config) bool { return c.mtu == 68 }},
		{"mac", map[string]any{"mac": "02:00:00:12:34:56"}, func(c *config) bool { return c.mac.String() == "02:00:00:12:34:56" }},
		{"offloads auto", map[string]any{"offloads": "auto"}, func(c *config) bool { return c.offloads == "auto" }},
		{"offloads none", map[string]any{"offloads": "none"}, func(c *config) bool { return c.offloads == "none" }},
		{"offloads list", map[string]any{"offloads": "csum,tso4,tso6"}, func(c *config) bool {
			return c.offloadSet == offload.TunCsum|offload.TunTSO4|offload.TunTSO6
		}},
		{"steering hash", map[string]any{"steering": "hash", "queues": 2}, func(c *config) bool { return c.steering == ebpf.SteeringHash }},
		{"steering kernel", map[string]any{"steering": "kernel"}, func(c *config) bool { return c.steering == ebpf.SteeringKernel }},
		{"steering auto", map[string]any{"steering": "auto"}, func(c *config) bool { return c.steering == ebpf.SteeringAuto }},
		{"mode tc-redirect", map[string]any{"mode": "tc-redirect"}, func(c *config) bool { return c.mode == modeTCRedirect }},
		{"mode bridge", map[string]any{"mode": "bridge"}, func(c *config) bool { return c.mode == modeBridge }},
		{"mode bridge with a name", map[string]any{"mode": "bridge", "bridge": "k6t-eth0"}, func(c *config) bool { return c.bridge == "k6t-eth0" }},
		{"mode none", map[string]any{"mode": "none"}, func(c *config) bool { return c.mode == modeNone }},
		{"tapName", map[string]any{"tapName": "tap0"}, func(c *config) bool { return c.tapName == "tap0" }},
		{"tapName template", map[string]any{"tapName": "vm%d"}, func(c *config) bool { return c.tapName == "vm%d" }},
		{"dataDir", map[string]any{"dataDir": "/run/vmnet//cni/"}, func(c *config) bool { return c.dataDir == "/run/vmnet/cni" }},
		{"logLevel", map[string]any{"logLevel": "debug"}, func(c *config) bool { return c.logLevel == hclog.Debug }},
		{"ipam", map[string]any{"ipam": map[string]any{"type": "host-local"}}, func(c *config) bool { return c.ipam == "host-local" }},
		{"GC's lists, both spellings", map[string]any{
			"cni.dev/valid-attachments": []any{map[string]any{"containerID": "a", "ifname": "eth0"}},
			"cni.dev/attachments":       []any{map[string]any{"containerID": "b", "ifname": "eth1"}},
		}, func(c *config) bool {
			return len(c.valid) == 2 && c.valid[0] == types.GCAttachment{ContainerID: "a", IfName: "eth0"} && c.valid[1].ContainerID == "b"
		}},
		{"runtime's keys", map[string]any{"runtimeConfig": map[string]any{"mac": "x"}, "args": map[string]any{}, "capabilities": map[string]any{"mac": true},
			"dns": map[string]any{"nameservers": []string{"10.0.0.1"}}, "example.com/extension": 1}, func(c *config) bool { return true }},
		{"prevResult", map[string]any{"cniVersion": "1.0.0", "prevResult": map[string]any{
			"cniVersion": "1.0.0", "interfaces": []any{map[string]any{"name": "eth0", "sandbox": "/run/netns/x"}},
		}}, func(c *config) bool { return c.netConf.PrevResult != nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig(conf(t, tc.fields))
			if err != nil {
				t.Fatalf("refused %v: %v", tc.fields, err)
			}
			if !tc.check(c) {
				t.Errorf("%v: got %+v", tc.fields, *c)
			}
		})
	}
}

// Every bad value is refused with the code the spec gives its kind of
// mistake, and a message that names the field.
func TestConfigRefused(t *testing.T) {
	for _, tc := range []struct {
		fields map[string]any
		code   uint
		field  string
	}{
		{map[string]any{"queues": 0}, types.ErrInvalidNetworkConfig, "queues"},
		{map[string]any{"queues": -1}, types.ErrInvalidNetworkConfig, "queues"},
		{map[string]any{"queues": 256}, types.ErrInvalidNetworkConfig, "queues"},
		{map[string]any{"queues": "2"}, types.ErrInvalidNetworkConfig, "queues"},
		{map[string]any{"queues": 1.5}, types.ErrInvalidNetworkConfig, "queues"},
		{map[string]any{"multiQueue": false, "queues": 2}, types.ErrInvalidNetworkConfig, "multiQueue"},
		{map[string]any{"multiQueue": "yes"}, types.ErrInvalidNetworkConfig, "multiQueue"},
		{map[string]any{"vnetHdr": 0}, types.ErrInvalidNetworkConfig, "vnetHdr"},
		{map[string]any{"vnetHdr": 11}, types.ErrInvalidNetworkConfig, "vnetHdr"},
		{map[string]any{"vnetHdr": 24}, types.ErrInvalidNetworkConfig, "vnetHdr"},
		{map[string]any{"owner": -1}, types.ErrInvalidNetworkConfig, "owner"},
		{map[string]any{"owner": 4294967295}, types.ErrInvalidNetworkConfig, "owner"},
		{map[string]any{"owner": "qemu"}, types.ErrInvalidNetworkConfig, "owner"},
		{map[string]any{"group": -5}, types.ErrInvalidNetworkConfig, "group"},
		{map[string]any{"group": 1 << 40}, types.ErrInvalidNetworkConfig, "group"},
		{map[string]any{"mtu": 0}, types.ErrInvalidNetworkConfig, "mtu"},
		{map[string]any{"mtu": 67}, types.ErrInvalidNetworkConfig, "mtu"},
		{map[string]any{"mtu": 65522}, types.ErrInvalidNetworkConfig, "mtu"},
		{map[string]any{"mac": "01:00:5e:00:00:01"}, types.ErrInvalidNetworkConfig, "mac"},
		{map[string]any{"mac": "00:00:00:00:00:00"}, types.ErrInvalidNetworkConfig, "mac"},
		{map[string]any{"mac": "02:00:00:12:34"}, types.ErrInvalidNetworkConfig, "mac"},
		{map[string]any{"mac": "00:11:22:33:44:55:66:77"}, types.ErrInvalidNetworkConfig, "mac"},
		{map[string]any{"mac": "tap"}, types.ErrInvalidNetworkConfig, "mac"},
		{map[string]any{"offloads": "tso4"}, types.ErrInvalidNetworkConfig, "offloads"},
		{map[string]any{"offloads": "csum,uso4"}, types.ErrInvalidNetworkConfig, "offloads"},
		{map[string]any{"offloads": "csum,tso_ecn"}, types.ErrInvalidNetworkConfig, "offloads"},
		{map[string]any{"offloads": "csum,gso"}, types.ErrInvalidNetworkConfig, "offloads"},
		{map[string]any{"offloads": "all"}, types.ErrInvalidNetworkConfig, "offloads"},
		{map[string]any{"steering": "rss"}, types.ErrInvalidNetworkConfig, "steering"},
		{map[string]any{"steering": "hash"}, types.ErrInvalidNetworkConfig, "steering"},
		{map[string]any{"mode": "macvtap"}, types.ErrInvalidNetworkConfig, "mode"},
		{map[string]any{"mode": "Bridge"}, types.ErrInvalidNetworkConfig, "mode"},
		{map[string]any{"bridge": "br0"}, types.ErrInvalidNetworkConfig, "bridge"},
		{map[string]any{"mode": "bridge", "bridge": "a-bridge-name-too-long"}, types.ErrInvalidNetworkConfig, "bridge"},
		{map[string]any{"mode": "bridge", "bridge": "br%d"}, types.ErrInvalidNetworkConfig, "bridge"},
		{map[string]any{"tapName": "bad/name"}, types.ErrInvalidNetworkConfig, "tapName"},
		{map[string]any{"tapName": "a-tap-name-too-long"}, types.ErrInvalidNetworkConfig, "tapName"},
		{map[string]any{"tapName": "tap%d%d"}, types.ErrInvalidNetworkConfig, "tapName"},
		{map[string]any{"tapName": "tap 0"}, types.ErrInvalidNetworkConfig, "tapName"},
		{map[string]any{"dataDir": "var/lib/cni"}, types.ErrInvalidNetworkConfig, "dataDir"},
		{map[string]any{"logLevel": "verbose"}, types.ErrInvalidNetworkConfig, "logLevel"},
		{map[string]any{"ipam": map[string]any{"type": "host-local"}, "mode": "bridge"}, types.ErrInvalidNetworkConfig, "ipam"},
		{map[string]any{"prevResult": map[string]any{"interfaces": "eth0"}}, types.ErrInvalidNetworkConfig, "prevResult"},
		{map[string]any{"queue": 4}, types.ErrUnsupportedField, `"queue"`},
		{map[string]any{"Queues": 4}, types.ErrUnsupportedField, `"Queues"`},
		{map[string]any{"vnet_hdr": 12}, types.ErrUnsupportedField, `"vnet_hdr"`},
	} {
		data := conf(t, tc.fields)
		t.Run(string(data), func(t *testing.T) {
			_, err := parseConfig(data)
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v, want a CNI error %d", err, tc.code)
			}
			if e.Code != tc.code || !strings.HasPrefix(e.Msg, tc.field) && !strings.Contains(e.Msg, tc.field) {
				t.Errorf("got code %d %q; want code %d naming %s", e.Code, e.Msg, tc.code, tc.field)
			}
		})
	}
	for _, bad := range []string{`{`, `[]`, `{"queues": 2,}`} {
		_, err := parseConfig([]byte(bad))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrDecodingFailure {
			t.Errorf("%s: got %v, want CNI error %d", bad, err, types.ErrDecodingFailure)
		}
	}
}

// The names the plugin picks when the configuration does not, KubeVirt's
// among them (virt-launcher opens tap0 for the pod network's eth0 and
// tap<hash> for a secondary network's pod<hash>).
func TestDerivedNames(t *testing.T) {
	for _, tc := range []struct{ ifName, tap, bridge string }{
		{"eth0", "tap0", "br-eth0"},
		{"eth12", "tap12", "br-eth12"},
		{"pod16477688c0e", "tap16477688c0e", "br-16477688c0e"},
		{"net1", "tapnet1", "br-net1"},
		{"a-long-ifname15", "tapa-long-ifnam", "br-a-long-ifnam"},
	} {
		if got := tapNameFor(tc.ifName); got != tc.tap {
			t.Errorf("tapNameFor(%q) = %q, want %q", tc.ifName, got, tc.tap)
		}
		if got := bridgeNameFor(tc.ifName); got != tc.bridge {
			t.Errorf("bridgeNameFor(%q) = %q, want %q", tc.ifName, got, tc.bridge)
		}
	}
	if a := aliasFor("net", "abc", "eth0"); a != "vmnet-cni/net/abc/eth0" {
		t.Errorf("alias %q", a)
	}
	long := aliasFor(strings.Repeat("n", 200), strings.Repeat("c", 64), "eth0")
	if len(long) > 255 || !strings.HasPrefix(long, "vmnet-cni/") || long == aliasFor(strings.Repeat("n", 200), strings.Repeat("c", 64), "eth1") {
		t.Errorf("long alias %q: want at most 255 bytes, distinct per attachment", long)
	}
}

// The result converts to every version the plugin claims, as a runtime
// speaking any of them asks.
func TestResultVersions(t *testing.T) {
	c, err := parseConfig(conf(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	ipam := &current.Result{IPs: []*current.IPConfig{{Address: net.IPNet{IP: net.IPv4(10, 0, 0, 2), Mask: net.CIDRMask(24, 32)}}}}
	a := attachment{netNS: "/run/netns/x", mode: modeNone}
	for _, withIPAM := range []*current.Result{nil, ipam} {
		r := buildResult(c, a, nil, withIPAM, fakeTAP(), nil)
		for _, v := range supportedVersions.SupportedVersions() {
			out, err := resultAs(r, v)
			// 0.1.0 and 0.2.0 results are addresses and nothing else.
			if old := v == "0.1.0" || v == "0.2.0"; old && withIPAM == nil {
				var e *types.Error
				if !errors.As(err, &e) || e.Code != types.ErrIncompatibleCNIVersion {
					t.Errorf("result without addresses as %s: got %v, want CNI error %d", v, err, types.ErrIncompatibleCNIVersion)
				}
				continue
			}
			if err != nil {
				t.Errorf("result as %s: %v", v, err)
				continue
			}
			if out.Version() != v {
				t.Errorf("result as %s says %s", v, out.Version())
			}
		}
	}
}

// DEL takes a configuration ADD refused (a runtime undoing a failed
// chain) and goes on with what it needs; JSON that does not parse is
// still an error.
func TestParseForDel(t *testing.T) {
	c, err := parseForDel(conf(t, map[string]any{"queues": 0, "dataDir": "/tmp/vmnet-state", "ipam": map[string]any{"type": "host-local"}}))
	if err != nil {
		t.Fatal(err)
	}
	if c.networkName != "net" || c.dataDir != "/tmp/vmnet-state" || c.ipam != "" {
		t.Errorf("got network %q, dataDir %q, ipam %q; want net, /tmp/vmnet-state and no IPAM call", c.networkName, c.dataDir, c.ipam)
	}
	if c, err := parseForDel(conf(t, map[string]any{"dataDir": "relative"})); err != nil || c.dataDir != defaultDataDir {
		t.Errorf("bad dataDir: got %v, %v; want the default folder", c, err)
	}
	if _, err := parseForDel([]byte("{")); err == nil {
		t.Error("broken JSON: no error")
	}
}

// CNI_ARGS as tc-redirect-tap reads them: name, owner and group over the
// configuration's; other keys left alone; bad values are error 4.
func TestApplyArgs(t *testing.T) {
	c, err := parseConfig(conf(t, map[string]any{"owner": 107, "tapName": "tap0"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.applyArgs("IgnoreUnknown=1;K8S_POD_NAME=x;TC_REDIRECT_TAP_NAME=tap1;TC_REDIRECT_TAP_UID=1000;TC_REDIRECT_TAP_GID=1001"); err != nil {
		t.Fatal(err)
	}
	if c.tapName != "tap1" || c.owner != 1000 || c.group != 1001 {
		t.Errorf("got tap %q owner %d group %d; want tap1, 1000, 1001", c.tapName, c.owner, c.group)
	}
	for _, bad := range []string{"TC_REDIRECT_TAP_UID=-1", "TC_REDIRECT_TAP_GID=jailer", "TC_REDIRECT_TAP_NAME=a/b", "novalue"} {
		var e *types.Error
		if err := c.applyArgs(bad); !errors.As(err, &e) || e.Code != types.ErrInvalidEnvironmentVariables || !strings.HasPrefix(e.Msg, "CNI_ARGS ") {
			t.Errorf("%s: got %v, want CNI error %d naming CNI_ARGS", bad, err, types.ErrInvalidEnvironmentVariables)
		}
	}
}
