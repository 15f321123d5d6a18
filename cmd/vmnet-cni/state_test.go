package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
)

func fakeTAP() netlink.Link {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = "tap0", 1500
	attrs.HardwareAddr = net.HardwareAddr{0xfe, 0, 0, 0x12, 0x34, 0x56}
	return &netlink.Tuntap{LinkAttrs: attrs}
}

// Records round-trip, list by network, and a container ID and interface
// name that would run together stay apart.
func TestStore(t *testing.T) {
	s := newStore(t.TempDir(), "net")
	unlock, err := s.lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if r, err := s.read("a", "eth0"); r != nil || err != nil {
		t.Fatalf("read of nothing: %v, %v", r, err)
	}
	recs := []*record{
		{ContainerID: "a_b", IfName: "c", NetNS: "/run/netns/1", TAP: "tap0", Mode: modeTCRedirect, Peer: "c", PeerQdisc: true},
		{ContainerID: "a", IfName: "b_c", NetNS: "/run/netns/2", TAP: "tapb_c", Mode: modeBridge, Bridge: "br-b_c",
			Result: json.RawMessage(`{"cniVersion":"1.1.0"}`)},
	}
	for _, r := range recs {
		if err := s.write(r); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range recs {
		got, err := s.read(want.ContainerID, want.IfName)
		if err == nil && got.Result != nil {
			var b bytes.Buffer
			json.Compact(&b, got.Result)
			got.Result = b.Bytes()
		}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("read %s/%s: got %+v, %v; want %+v", want.ContainerID, want.IfName, got, err, want)
		}
	}
	all, err := s.list()
	if err != nil || len(all) != 2 {
		t.Fatalf("list: %v, %v", all, err)
	}
	if err := s.remove("a_b", "c"); err != nil {
		t.Fatal(err)
	}
	if err := s.remove("a_b", "c"); err != nil {
		t.Errorf("remove twice: %v", err)
	}
	if all, _ := s.list(); len(all) != 1 || all[0].ContainerID != "a" {
		t.Errorf("after remove: %+v", all)
	}
	// A record that does not parse stops GC instead of being forgotten.
	if err := os.WriteFile(filepath.Join(s.dir, "x+eth0.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.list(); err == nil {
		t.Error("list with a broken record: no error")
	}
}

// A chained result keeps the previous plugins' interfaces and addresses,
// adds the TAP once (a runtime may hand the chain's own last result back),
// and keeps each address pointing at its interface.
func TestChainedResult(t *testing.T) {
	c, err := parseConfig(conf(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	ns := "/run/netns/pod"
	prev := &current.Result{
		CNIVersion: "1.0.0",
		Interfaces: []*current.Interface{{Name: "veth1"}, {Name: "eth0", Sandbox: ns}},
		IPs:        []*current.IPConfig{{Interface: current.Int(1), Address: net.IPNet{IP: net.IPv4(10, 0, 0, 2), Mask: net.CIDRMask(24, 32)}}},
	}
	a := attachment{netNS: ns, mode: modeTCRedirect, peer: "eth0"}
	r := buildResult(c, a, prev, nil, fakeTAP(), nil)
	if len(r.Interfaces) != 3 || r.Interfaces[2].Name != "tap0" || r.Interfaces[2].Sandbox != ns || r.Interfaces[2].Mac != "fe:00:00:12:34:56" {
		t.Fatalf("interfaces %v", r.Interfaces)
	}
	if *r.IPs[0].Interface != 1 {
		t.Errorf("address points at interface %d, want 1 (eth0)", *r.IPs[0].Interface)
	}
	again := buildResult(c, a, r, nil, fakeTAP(), nil)
	if !reflect.DeepEqual(again.Interfaces, r.Interfaces) || !reflect.DeepEqual(again.IPs, r.IPs) {
		t.Errorf("from its own result:\n got %v %v\nwant %v %v", again.Interfaces, again.IPs, r.Interfaces, r.IPs)
	}
}

// vmInterface: the guest's interface is in the result as tc-redirect-tap
// puts it (firecracker-go-sdk's VMTapPair looks for it): the TAP's name,
// the sandbox CNI_CONTAINERID, the peer's MAC, and the peer's addresses.
func TestVMInterface(t *testing.T) {
	c, err := parseConfig(conf(t, map[string]any{"vmInterface": true}))
	if err != nil {
		t.Fatal(err)
	}
	ns := "/run/netns/pod"
	prev := &current.Result{
		CNIVersion: "1.0.0",
		Interfaces: []*current.Interface{{Name: "veth1"}, {Name: "eth0", Sandbox: ns, Mac: "fe:00:00:12:34:56"}},
		IPs:        []*current.IPConfig{{Interface: current.Int(1), Address: net.IPNet{IP: net.IPv4(10, 0, 0, 2), Mask: net.CIDRMask(24, 32)}}},
	}
	a := attachment{netNS: ns, containerID: "vm1", mode: modeTCRedirect, peer: "eth0"}
	r := buildResult(c, a, prev, nil, fakeTAP(), nil)
	if len(r.Interfaces) != 4 {
		t.Fatalf("interfaces %v", r.Interfaces)
	}
	vm := r.Interfaces[3]
	if vm.Name != "tap0" || vm.Sandbox != "vm1" || vm.Mac != "fe:00:00:12:34:56" || *r.IPs[0].Interface != 3 {
		t.Errorf("vm interface %+v, address on %d; want tap0 in sandbox vm1 with the peer's MAC, holding the address", vm, *r.IPs[0].Interface)
	}
	again := buildResult(c, a, r, nil, fakeTAP(), nil)
	if !reflect.DeepEqual(again.Interfaces, r.Interfaces) || !reflect.DeepEqual(again.IPs, r.IPs) {
		t.Errorf("from its own result:\n got %v %v\nwant %v %v", again.Interfaces, again.IPs, r.Interfaces, r.IPs)
	}
}
