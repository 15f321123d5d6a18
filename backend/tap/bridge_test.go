package tap

import (
	"errors"
	"net"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/testutil"
)

func TestLookupBridgeAndConfigureLink(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	testutil.Exec(t, ns, "ip", "link", "add", "br0", "type", "bridge")
	testutil.Exec(t, ns, "ip", "link", "set", "br0", "mtu", "1400", "up")
	testutil.Exec(t, ns, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")

	br, err := LookupBridge("br0", ns)
	if err != nil {
		t.Fatal(err)
	}
	if br.Name != "br0" || br.MTU != 1400 || !br.Up || br.Index == 0 {
		t.Errorf("bridge: got %+v, want br0, mtu 1400, up", br)
	}
	if _, err := LookupBridge("veth0", ns); !errors.Is(err, ErrNotBridge) {
		t.Errorf("LookupBridge(veth0): got %v, want ErrNotBridge", err)
	}
	if _, err := LookupBridge("nosuch0", ns); err == nil {
		t.Error("LookupBridge(nosuch0): got nil error")
	}

	d, _ := newTestDevice(t, Options{Name: "cfg%d", NetNS: ns})
	mac := net.HardwareAddr{0xfe, 0x54, 0, 1, 2, 3}
	if err := ConfigureLink(d.Name(), ns, LinkConfig{MAC: mac, MTU: br.MTU, Bridge: "br0", Up: true}); err != nil {
		t.Fatal(err)
	}
	info, err := d.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.MAC.String() != mac.String() || info.MTU != 1400 || !info.Up {
		t.Errorf("tap after ConfigureLink: mac %s mtu %d up %v, want %s 1400 true", info.MAC, info.MTU, info.Up, mac)
	}
	if m, err := Master(d.Name(), ns); err != nil || m != "br0" {
		t.Errorf("Master: got %q, %v; want br0", m, err)
	}

	for _, tc := range []struct {
		name, link string
		cfg        LinkConfig
		want       string
	}{
		{"not a tap", "veth0", LinkConfig{Up: true}, "not a TUN/TAP device"},
		{"master not a bridge", d.Name(), LinkConfig{Bridge: "veth0"}, "not a bridge"},
		{"missing bridge", d.Name(), LinkConfig{Bridge: "nosuch0"}, "RTM_GETLINK bridge nosuch0"},
		{"bad mtu", d.Name(), LinkConfig{MTU: 20}, "mtu"},
	} {
		err := ConfigureLink(tc.link, ns, tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestCreateSingleQueue(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	before := testutil.OpenFds(t)

	f, name, err := CreateSingleQueue(SingleQueueOptions{NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	if name != "tap0" {
		t.Errorf("name: got %q, want tap0 from the default template", name)
	}
	info, err := Lookup(name, ns)
	if err != nil {
		t.Fatal(err)
	}
	if info.MultiQueue || !info.VnetHdr || info.PI || info.Persist {
		t.Errorf("device: got %+v, want vnet_hdr, no multi_queue, not persistent", info)
	}
	f.Close()
	if _, err := Lookup(name, ns); err == nil {
		t.Error("non-persistent single-queue tap outlived its file")
	}

	// Persistent, no vnet header, owned: the device Firecracker opens by name.
	f, name, err = CreateSingleQueue(SingleQueueOptions{Name: "fc0", NoVnetHdr: true, Persist: true, Owner: 65534, NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	info, err = Lookup(name, ns)
	if err != nil {
		t.Fatalf("persistent device gone: %v", err)
	}
	if info.VnetHdr || !info.Persist || info.Owner != 65534 || info.MultiQueue {
		t.Errorf("device: got %+v, want persistent, owner 65534, no vnet_hdr, no multi_queue", info)
	}
	// A multi-queue open of it fails the way Firecracker's would succeed.
	if _, err := Open(name, Options{NetNS: ns}); err == nil {
		t.Error("Open of a single-queue device: got nil error, want a mismatch")
	}
	// The name is taken: IFF_TUN_EXCL refuses to attach.
	if _, _, err := CreateSingleQueue(SingleQueueOptions{Name: "fc0", NetNS: ns}); !errors.Is(err, unix.EBUSY) {
		t.Errorf("second create of fc0: got %v, want EBUSY", err)
	}
	if err := Delete(name, ns); err != nil {
		t.Fatal(err)
	}
	if after := testutil.OpenFds(t); after != before {
		t.Errorf("open fds: got %d, want %d", after, before)
	}
	if _, _, err := CreateSingleQueue(SingleQueueOptions{Name: "a/b"}); err == nil {
		t.Error("bad name: got nil error")
	}
}
