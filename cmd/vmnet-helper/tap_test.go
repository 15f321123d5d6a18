package main

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

func runHelper(args ...string) (stdout, stderr string, err error) {
	var o, e bytes.Buffer
	err = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), err
}

func TestTapBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "no command"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"tap alone", []string{"tap"}, "want create, delete or show"},
		{"long name", []string{"tap", "create", "--name", "abcdefghijklmnop"}, "longer than 15 bytes"},
		{"slash", []string{"tap", "create", "--name", "a/b"}, "'/'"},
		{"space", []string{"tap", "create", "--name", "a b"}, "white space"},
		{"zero queues", []string{"tap", "create", "--queues", "0"}, "--queues 0"},
		{"too many queues", []string{"tap", "create", "--queues", "256"}, "--queues 256"},
		{"not a number", []string{"tap", "create", "--queues", "many"}, "invalid value"},
		{"bad mtu", []string{"tap", "create", "--mtu", "20"}, "--mtu 20"},
		{"bad header", []string{"tap", "create", "--vnet-hdr", "14"}, "--vnet-hdr 14"},
		{"unknown user", []string{"tap", "create", "--owner", "no-such-user-here"}, "--owner"},
		{"bad log level", []string{"tap", "create", "--log-level", "loud"}, "--log-level"},
		{"bad log format", []string{"tap", "create", "--log-format", "xml"}, "--log-format"},
		{"stray argument", []string{"tap", "create", "extra"}, "unexpected argument"},
		{"bad steering", []string{"tap", "create", "--steering", "rss"}, "want kernel, hash or queue:N"},
		{"steering queue past the TAP", []string{"tap", "create", "--queues", "4", "--steering", "queue:4"}, "the TAP has 4 queues"},
		{"steering one queue", []string{"tap", "create", "--single-queue", "--steering", "hash"}, "needs a multi-queue TAP"},
		{"delete template", []string{"tap", "delete", "vmnet%d"}, "'%'"},
		{"delete two", []string{"tap", "delete", "a", "b"}, "exactly one"},
		{"show none", []string{"tap", "show"}, "exactly one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runHelper(tc.args...)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("got %v, want a usage error", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestTapBadArgumentsCreateNothing(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	before := testutil.Exec(t, ns, "ip", "-o", "link")
	for _, args := range [][]string{
		{"tap", "create", "--netns", ns, "--queues", "0"},
		{"tap", "create", "--netns", ns, "--mtu", "70000"},
		{"tap", "create", "--netns", ns, "--name", "x/y"},
		{"tap", "create", "--netns", ns, "--persist", "--owner", "no-such-user-here"},
	} {
		if _, _, err := runHelper(args...); err == nil {
			t.Errorf("%v: got nil error", args)
		}
	}
	if after := testutil.Exec(t, ns, "ip", "-o", "link"); after != before {
		t.Errorf("links changed by refused commands:\nbefore %s\nafter %s", before, after)
	}
}

func TestTapCreateShowDelete(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	out, _, err := runHelper("tap", "create", "--netns", ns, "--name", "guest%d", "--queues", "4",
		"--persist", "--owner", "65534", "--mtu", "9000")
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimSpace(out)
	if name != "guest0" {
		t.Fatalf("printed name %q, want guest0", name)
	}
	info, err := tap.Lookup(name, ns)
	if err != nil {
		t.Fatalf("device gone after a --persist create: %v", err)
	}
	if !info.Persist || !info.MultiQueue || !info.VnetHdr || info.PI || info.MTU != 9000 || info.Owner != 65534 {
		t.Errorf("device: got %+v", info)
	}
	out, _, err = runHelper("tap", "show", "--netns", ns, name)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name:      guest0", "type:      tap", "multi_queue vnet_hdr no_pi persist",
		"vnet_hdr:  12 bytes", "mtu:       9000", "owner:     65534", "mac:       " + info.MAC.String(), "offloads:  csum"} {
		if !strings.Contains(out, want) {
			t.Errorf("show output lacks %q:\n%s", want, out)
		}
	}
	if _, _, err := runHelper("tap", "delete", "--netns", ns, name); err != nil {
		t.Fatal(err)
	}
	if _, err := tap.Lookup(name, ns); err == nil {
		t.Error("device still there after tap delete")
	}
	if _, _, err := runHelper("tap", "delete", "--netns", ns, name); err == nil {
		t.Error("deleting a missing device: got nil error")
	}
}

func TestTapCreateLivesUntilSignal(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"tap", "create", "--netns", ns, "--name", "live0"}, &out, &bytes.Buffer{})
	}()
	var err error
	for i := 0; i < 100; i++ {
		if _, err = tap.Lookup("live0", ns); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("tap create returned early: %v", err)
		default:
		}
		testutil.Sleep(10)
	}
	if err != nil {
		t.Fatalf("device never appeared: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := tap.Lookup("live0", ns); err == nil {
		t.Error("non-persistent device outlived tap create")
	}
}

func TestTapCreateSingleQueueOnBridge(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	testutil.Exec(t, ns, "ip", "link", "add", "br0", "type", "bridge")
	testutil.Exec(t, ns, "ip", "link", "set", "br0", "mtu", "1400", "up")
	// What the Firecracker recipe makes: a persistent one-queue TAP on a
	// bridge, owned by the user who runs Firecracker.
	out, _, err := runHelper("tap", "create", "--netns", ns, "--name", "fc0", "--single-queue", "--persist",
		"--owner", "65534", "--bridge", "br0")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "fc0" {
		t.Errorf("printed %q, want fc0", out)
	}
	info, err := tap.Lookup("fc0", ns)
	if err != nil {
		t.Fatal(err)
	}
	if info.MultiQueue || !info.VnetHdr || !info.Persist || info.Owner != 65534 || info.MTU != 1400 || !info.Up || info.MAC[0] != 0xfe {
		t.Errorf("device: got %+v; want one queue, vnet_hdr, persistent, owner 65534, the bridge's mtu, up, MAC starting fe", info)
	}
	if m, _ := tap.Master("fc0", ns); m != "br0" {
		t.Errorf("master: got %q, want br0", m)
	}
	if _, _, err := runHelper("tap", "delete", "--netns", ns, "fc0"); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"tap", "create", "--netns", ns, "--single-queue", "--queues", "2"},
		{"tap", "create", "--netns", ns, "--bridge", "nosuch0"},
		{"tap", "create", "--netns", ns, "--bridge", "a/b"},
	} {
		if _, _, err := runHelper(args...); err == nil {
			t.Errorf("%v: got nil error", args)
		}
	}
	if out := testutil.Exec(t, ns, "ip", "-o", "link", "show", "type", "tun"); strings.TrimSpace(out) != "" {
		t.Errorf("TAPs left behind:\n%s", out)
	}
}

// tap create --steering hash leaves the program with the persistent TAP,
// which alone holds it once the helper is gone; tap delete frees it.
// Programs are the host's and other tests load this one at the same time,
// so the helper runs as a uid no other process uses, with only the
// capabilities tap create needs, and the test follows what that uid loaded.
func TestTapCreateHashSteering(t *testing.T) {
	testutil.RequireTUN(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		testutil.Skip(t, "no setpriv (util-linux): %v", err)
	}
	bin := buildHelper(t, publicDir(t))
	uid := freeUID(t, 64000)
	id := strconv.Itoa(uid)
	ns := testutil.NetNS(t)
	cmd := exec.Command("ip", "netns", "exec", ns, "setpriv", "--reuid", id, "--regid", id, "--clear-groups",
		"--inh-caps", "+net_admin,+bpf", "--ambient-caps", "+net_admin,+bpf", "--",
		bin, "tap", "create", "--queues", "4", "--persist", "--steering", "hash")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tap create as uid %d with CAP_NET_ADMIN and CAP_BPF: %v\n%s", uid, err, stderr.String())
	}
	name := strings.TrimSpace(string(out))
	if ours := testutil.SteeringPrograms(t, uint32(uid)); len(ours) != 1 {
		t.Fatalf("steering programs uid %d loaded, after tap create exited: %v; want one, the TAP's", uid, ours)
	}
	if _, _, err := runHelper("tap", "delete", "--netns", ns, name); err != nil {
		t.Fatal(err)
	}
	// The TAP drops its reference when the device is freed, after an RCU
	// grace period (tun.c __tun_set_ebpf): a moment, longer under load.
	const wait = 10 * time.Second
	deleted := time.Now()
	for {
		left := testutil.SteeringPrograms(t, uint32(uid))
		if len(left) == 0 {
			t.Logf("program freed %s after tap delete", time.Since(deleted).Round(time.Millisecond))
			break
		}
		if time.Since(deleted) > wait {
			t.Fatalf("steering program %v still loaded %s after tap delete", left, wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
