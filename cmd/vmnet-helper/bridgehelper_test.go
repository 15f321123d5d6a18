package main

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

func TestQEMUHelperArgsDispatch(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--use-vnet", "--fd=5", "--br=br0"}, "--use-vnet"},
		{[]string{"--acl", "/x", "--use-vnet"}, "--acl"},
		{[]string{"tap", "create"}, "\x00"},
		{nil, "\x00"},
	} {
		if got := qemuHelperArgs(tc.args); got != tc.want {
			t.Errorf("qemuHelperArgs(%q): got %q, want %q", tc.args, got, tc.want)
		}
	}
	// Help still wins over the QEMU form.
	out, _, err := runHelper("--help")
	if err != nil || !strings.Contains(out, "bridge-helper") {
		t.Errorf("--help: got %v, want the usage text naming bridge-helper", err)
	}
}

func TestBridgeHelperBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no fd", []string{"--use-vnet", "--br=br0"}, "--fd=N missing"},
		{"no bridge", []string{"--use-vnet", "--fd=3"}, "--br=BRIDGE missing"},
		{"bad bridge", []string{"--use-vnet", "--fd=3", "--br=a/b"}, "'/'"},
		{"long bridge", []string{"--use-vnet", "--fd=3", "--br=abcdefghijklmnop"}, "15 bytes"},
		{"not a socket", []string{"--use-vnet", "--fd=0", "--br=br0"}, "--fd=0"},
		{"closed fd", []string{"--use-vnet", "--fd=999", "--br=br0"}, "not an open descriptor"},
		{"stray", []string{"bridge-helper", "--fd=3", "--br=br0", "extra"}, "unexpected argument"},
		{"unknown flag", []string{"--use-vnet", "--fd=3", "--br=br0", "--color"}, "color"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runHelper(tc.args...)
			if _, ok := err.(*usageError); !ok || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want a usage error containing %q", err, tc.want)
			}
		})
	}
}

// TestBridgeHelperProtocol runs the helper exactly as QEMU does, through
// sh -c with the user's arguments first, in a namespace with a bridge.
func TestBridgeHelperProtocol(t *testing.T) {
	testutil.RequireTUN(t)
	dir := publicDir(t)
	bin := buildHelper(t, dir)
	ns := testutil.NetNS(t)
	testutil.Exec(t, ns, "ip", "link", "add", "br0", "type", "bridge")
	testutil.Exec(t, ns, "ip", "link", "set", "br0", "mtu", "1400", "up")
	testutil.Exec(t, ns, "ip", "addr", "add", "10.20.0.1/24", "dev", "br0")
	testutil.Exec(t, ns, "ip", "link", "add", "br1", "type", "bridge")
	acl := writeACL(t, dir, "# QEMU's format\nallow br0\nallow br1\ndeny br1\nallow br9\n")

	qemu := func(env []string, helper string) helperResult {
		// QEMU: sh -c "HELPER --use-vnet --fd=N --br=BR" when the helper has spaces.
		return runBridgeHelperAs(t, env, "ip", "netns", "exec", ns, "sh", "-c", helper)
	}

	t.Run("allowed bridge", func(t *testing.T) {
		r := qemu(nil, bin+" --acl "+acl+" --use-vnet --fd=3 --br=br0")
		if r.code != 0 || len(r.files) != 1 {
			t.Fatalf("helper: exit %d, %d files, stderr %q; want exit 0 and one file", r.code, len(r.files), r.stderr)
		}
		name := tapName(t, os.Getpid(), fileFd(t, r.files[0]))
		if !strings.HasPrefix(name, "tap") {
			t.Errorf("TAP name %q, want tap%%d", name)
		}
		info, err := tap.Lookup(name, ns)
		if err != nil {
			t.Fatal(err)
		}
		if info.MultiQueue || !info.VnetHdr || info.PI || info.Persist || info.MTU != 1400 || !info.Up || info.MAC[0] != 0xfe {
			t.Errorf("TAP: got %+v; want single queue, vnet_hdr, mtu 1400 (the bridge's), up, MAC starting fe", info)
		}
		if m, err := tap.Master(name, ns); err != nil || m != "br0" {
			t.Errorf("master: got %q, %v; want br0", m, err)
		}
		// 10: the kernel's vnet header size until QEMU sets its own.
		mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
		if err := testutil.ARPExchange(r.files, 10, mac, net.IPv4(10, 20, 0, 99), net.IPv4(10, 20, 0, 1), 10*time.Second); err != nil {
			t.Error(err)
		}
		r.files[0].Close()
		if _, err := tap.Lookup(name, ns); err == nil {
			t.Errorf("TAP %s outlived QEMU's descriptor", name)
		}
	})

	t.Run("access list from the environment, no vnet header", func(t *testing.T) {
		r := qemu(append(os.Environ(), aclEnv+"="+acl), bin+" --fd=3 --br=br0")
		if r.code != 0 || len(r.files) != 1 {
			t.Fatalf("helper: exit %d, %d files, stderr %q", r.code, len(r.files), r.stderr)
		}
		info, err := tap.Lookup(tapName(t, os.Getpid(), fileFd(t, r.files[0])), ns)
		if err != nil {
			t.Fatal(err)
		}
		if info.VnetHdr {
			t.Error("without --use-vnet the TAP has a vnet header")
		}
	})

	bad := writeACL(t, publicDir(t), "allow br0 # trailing words\n")
	loop := publicDir(t) + "/loop.conf"
	os.WriteFile(loop, []byte("include "+loop+"\n"), 0o644)
	for _, tc := range []struct {
		name, helper string
		want         string
	}{
		{"denied bridge", bin + " --acl " + acl + " --use-vnet --fd=3 --br=br1", `access denied: uid 0 may not use bridge "br1" (denied at ` + acl + `:4`},
		{"bridge not in the list", bin + " --acl " + acl + " --use-vnet --fd=3 --br=br2", `may not use bridge "br2" (no rule allows it`},
		{"missing bridge", bin + " --acl " + acl + " --use-vnet --fd=3 --br=br9", "bridge br9: RTM_GETLINK"},
		{"malformed list", bin + " --acl " + bad + " --use-vnet --fd=3 --br=br0", bad + `:1: allow br0: want nothing or "user U"`},
		{"include loop", bin + " --acl " + loop + " --use-vnet --fd=3 --br=br0", "include loop"},
		{"missing list", bin + " --acl /nonexistent/bridge.conf --use-vnet --fd=3 --br=br0", "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.Exec(t, ns, "ip", "-o", "link")
			r := qemu(nil, tc.helper)
			if r.code == 0 || len(r.files) != 0 {
				t.Errorf("helper: exit %d with %d files, want a failure and none", r.code, len(r.files))
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr: got %q, want it to contain %q", r.stderr, tc.want)
			}
			if after := testutil.Exec(t, ns, "ip", "-o", "link"); after != before {
				t.Errorf("links changed by a refused helper:\nbefore %s\nafter %s", before, after)
			}
		})
	}
}
