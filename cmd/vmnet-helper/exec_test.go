package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

func TestExecBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", []string{"exec", "--queues", "2"}, "no command given"},
		{"zero queues", []string{"exec", "--queues", "0", "--", "true"}, "--queues 0"},
		{"too many queues", []string{"exec", "--queues", "254", "--", "true"}, "--queues 254"},
		{"bad tap", []string{"exec", "--tap", "a b", "--", "true"}, "white space"},
		{"bad bridge", []string{"exec", "--bridge", "br%d", "--", "true"}, "'%'"},
		{"steering rss", []string{"exec", "--steering", "rss", "--", "true"}, "want kernel, hash or queue:N"},
		{"steering auto", []string{"exec", "--steering", "auto", "--", "true"}, "want kernel, hash or queue:N"},
		{"steering queue past the TAP", []string{"exec", "--queues", "2", "--steering", "queue:2", "--", "true"}, "the TAP has 2 queues"},
		{"offloads", []string{"exec", "--offloads", "tso4", "--", "true"}, "every offload needs csum"},
		{"offload name", []string{"exec", "--offloads", "csum,warp", "--", "true"}, "warp"},
		{"vnet hdr", []string{"exec", "--vnet-hdr", "11", "--", "true"}, "--vnet-hdr 11"},
		{"mtu", []string{"exec", "--mtu", "20", "--", "true"}, "--mtu 20"},
		{"multicast mac", []string{"exec", "--mac", "01:00:5e:00:00:01", "--", "true"}, "unicast"},
		{"bad netns", []string{"exec", "--netns", "no-such-netns-here", "--", "true"}, "--netns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runHelper(tc.args...)
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want a usage error containing %q", err, tc.want)
			}
		})
	}
}

func TestSubstitute(t *testing.T) {
	p := map[string]string{"{fds}": "3:4", "{fds-comma}": "3,4", "{fd0}": "3", "{fd1}": "4", "{tap}": "vm0", "{mac}": "52:54:00:00:00:01"}
	got := substitute([]string{"tap,id=n0,fds={fds}", "fd=[{fds-comma}]", "tap-fd={fd0}", "{tap}{tap}", "{unknown} {}", "mac={mac}"}, p)
	want := []string{"tap,id=n0,fds=3:4", "fd=[3,4]", "tap-fd=3", "vm0vm0", "{unknown} {}", "mac=52:54:00:00:00:01"}
	if !slices.Equal(got, want) {
		t.Errorf("substitute: got %q, want %q", got, want)
	}
	mac, err := randomMAC()
	if err != nil || mac[0]&1 != 0 || mac[0]&2 == 0 {
		t.Errorf("randomMAC: got %s, %v; want unicast, locally administered", mac, err)
	}
}

// TestExecFdHygieneAndPrivileges runs a child through exec while the
// helper itself holds inherited descriptors that are not close-on-exec,
// and checks what the child got: its standard streams and exactly the
// queue files, no capabilities, no_new_privs; that it dies when the
// helper is killed; and that the TAP goes with it.
func TestExecFdHygieneAndPrivileges(t *testing.T) {
	testutil.RequireTUN(t)
	bin := buildHelper(t, publicDir(t))
	ns := testutil.NetNS(t)
	testutil.Exec(t, ns, "ip", "link", "add", "br0", "type", "bridge")
	testutil.Exec(t, ns, "ip", "link", "set", "br0", "mtu", "1450", "up")

	// Three descriptors the helper inherits without close-on-exec, as a
	// careless parent would leave them: they land at 3, 4 and 5, where
	// the queue files go.
	var leaked []*os.File
	for i := 0; i < 3; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		leaked = append(leaked, r)
	}
	cmd := exec.Command(bin, "exec", "--netns", ns, "--tap", "hyg%d", "--queues", "2", "--bridge", "br0", "--", "sleep", "60")
	cmd.ExtraFiles = leaked
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var child int
	for i := 0; i < 200 && child == 0; i++ {
		if kids := children(cmd.Process.Pid); len(kids) == 1 {
			if exe, _ := os.Readlink("/proc/" + strconv.Itoa(kids[0]) + "/exe"); strings.HasSuffix(exe, "/sleep") {
				child = kids[0]
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if child == 0 {
		cmd.Process.Kill()
		t.Fatalf("no child appeared; helper stderr:\n%s", stderr.String())
	}
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(child) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, e := range ents {
		fds = append(fds, e.Name())
	}
	if want := []string{"0", "1", "2", "3", "4"}; !slices.Equal(fds, want) {
		t.Errorf("child's descriptors: got %v, want %v (the streams and the two queues only)", fds, want)
	}
	for _, fd := range []int{3, 4} {
		if name := tapName(t, child, fd); name != "hyg0" {
			t.Errorf("child fd %d: attached to %q, want hyg0", fd, name)
		}
	}
	st := procStatus(t, child)
	for k, want := range map[string]string{"CapEff": "0000000000000000", "CapPrm": "0000000000000000",
		"CapInh": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1"} {
		if st[k] != want {
			t.Errorf("child %s: got %q, want %q", k, st[k], want)
		}
	}
	hst := procStatus(t, cmd.Process.Pid)
	if hst["CapEff"] != "0000000000000000" || hst["CapPrm"] != "0000000000000000" || hst["NoNewPrivs"] != "1" {
		t.Errorf("waiting helper: CapEff %s CapPrm %s NoNewPrivs %s, want none and 1", hst["CapEff"], hst["CapPrm"], hst["NoNewPrivs"])
	}
	info, err := tap.Lookup("hyg0", ns)
	if err != nil {
		t.Fatal(err)
	}
	if info.Queues != 2 || info.DisabledQueues != 0 || info.MTU != 1450 || !info.Up || info.MAC[0] != 0xfe {
		t.Errorf("TAP: got %+v; want 2 attached queues, no keep-alive file, the bridge's mtu, up, MAC starting fe", info)
	}
	if m, _ := tap.Master("hyg0", ns); m != "br0" {
		t.Errorf("master: got %q, want br0", m)
	}

	// The child dies with the helper, and the TAP with the child.
	cmd.Process.Kill()
	<-done
	for i := 0; i < 200; i++ {
		if err := syscall.Kill(child, 0); errors.Is(err, syscall.ESRCH) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := syscall.Kill(child, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("child %d outlived the killed helper", child)
		syscall.Kill(child, syscall.SIGKILL)
	}
	for i := 0; i < 100; i++ {
		if _, err := tap.Lookup("hyg0", ns); err != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := tap.Lookup("hyg0", ns); err == nil {
		t.Error("TAP hyg0 outlived its child")
	}
}

func TestExecPlaceholdersExitStatusAndSignals(t *testing.T) {
	testutil.RequireTUN(t)
	bin := buildHelper(t, publicDir(t))
	ns := testutil.NetNS(t)

	out, err := exec.Command(bin, "exec", "--netns", ns, "--tap", "ph%d", "--queues", "3", "--mac", "52:54:00:aa:bb:cc", "--",
		"echo", "{fds}", "{fds-comma}", "{fd2}", "{queues}", "{tap}", "{mac}").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), "3:4:5 3,4,5 5 3 ph0 52:54:00:aa:bb:cc"; got != want {
		t.Errorf("substituted arguments: got %q, want %q", got, want)
	}

	err = exec.Command(bin, "exec", "--netns", ns, "--", "sh", "-c", "exit 7").Run()
	if code := exitCode(err); code != 7 {
		t.Errorf("child exit 7: helper exited %d (%v), want 7", code, err)
	}

	// SIGTERM to the helper reaches the child.
	cmd := exec.Command(bin, "exec", "--netns", ns, "--", "sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	if code := exitCode(cmd.Wait()); code != 42 {
		t.Errorf("SIGTERM to helper: exit %d, want the child's 42 from its TERM trap", code)
	}
	if out, _ := testutil.Run(ns, "ip", "-o", "link", "show", "type", "tun"); strings.TrimSpace(out) != "" {
		t.Errorf("TAPs left in the namespace after every child exited:\n%s", out)
	}
}
