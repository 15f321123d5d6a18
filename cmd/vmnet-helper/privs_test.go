package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// TestUnprivilegedUser proves that a uid made for the test gets a
// working TAP only for an allowed bridge, and only through the helper:
// installed setuid root and with file capabilities, the helper grants
// what the access list allows and nothing else, refuses to let the
// caller pick the list, and hands the caller's programs no privilege;
// without it the same uid can make no TAP at all.
func TestUnprivilegedUser(t *testing.T) {
	testutil.RequireTUN(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		testutil.Skip(t, "no setpriv (util-linux): %v", err)
	}
	if _, err := exec.LookPath("setcap"); err != nil {
		testutil.Skip(t, "no setcap (libcap2-bin): %v", err)
	}
	uid := freeUID(t, 62000)
	id := strconv.Itoa(uid)
	dir := publicDir(t)
	acl := writeACL(t, dir, "allow br0\nallow br1\ndeny br1\nallow-tap u%d user "+id+"\n")
	// The access list path is fixed at build time, as a packager fixes it:
	// a setuid helper takes no path from its caller.
	bin := buildHelper(t, dir, "-X", "main.defaultACL="+acl)
	install := func(name string, setup ...string) string {
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o755)
		p := filepath.Join(d, "vmnet-helper")
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
		if len(setup) > 0 {
			if out, err := exec.Command(setup[0], append(setup[1:], p)...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", setup, err, out)
			}
		}
		return p
	}
	plain := install("plain")
	variants := map[string]string{
		"setuid root":       install("setuid", "chmod", "4755"),
		"file capabilities": install("filecaps", "setcap", "cap_net_admin+ep"),
	}
	ns := testutil.NetNS(t)
	testutil.Exec(t, ns, "ip", "link", "add", "br0", "type", "bridge")
	testutil.Exec(t, ns, "ip", "link", "set", "br0", "up")
	testutil.Exec(t, ns, "ip", "addr", "add", "10.40.0.1/24", "dev", "br0")
	testutil.Exec(t, ns, "ip", "link", "add", "br1", "type", "bridge")
	inNS := func(argv ...string) []string {
		return append([]string{"ip", "netns", "exec", ns}, asUser(uid, argv...)...)
	}
	noTaps := func(t *testing.T) {
		t.Helper()
		if out := testutil.Exec(t, ns, "ip", "-o", "link", "show", "type", "tun"); strings.TrimSpace(out) != "" {
			t.Errorf("TAPs exist that should not:\n%s", out)
		}
	}

	t.Run("without the helper nothing", func(t *testing.T) {
		if out, err := exec.Command(inNS("ip", "tuntap", "add", "dev", "mine0", "mode", "tap")[0],
			inNS("ip", "tuntap", "add", "dev", "mine0", "mode", "tap")[1:]...).CombinedOutput(); err == nil {
			t.Errorf("uid %d made a TAP by itself: %s", uid, out)
		}
		r := runBridgeHelperAs(t, nil, inNS(plain, "--use-vnet", "--fd=3", "--br=br0")...)
		if r.code == 0 || len(r.files) != 0 || !strings.Contains(r.stderr, "needs CAP_NET_ADMIN") {
			t.Errorf("unprivileged helper: exit %d, %d files, %q; want a CAP_NET_ADMIN refusal", r.code, len(r.files), r.stderr)
		}
		noTaps(t)
	})

	for name, helper := range variants {
		t.Run(name, func(t *testing.T) {
			r := runBridgeHelperAs(t, nil, inNS(helper, "--use-vnet", "--fd=3", "--br=br0")...)
			if r.code != 0 || len(r.files) != 1 {
				t.Fatalf("allowed bridge: exit %d, %d files, stderr %q", r.code, len(r.files), r.stderr)
			}
			name := tapName(t, os.Getpid(), fileFd(t, r.files[0]))
			if m, err := tap.Master(name, ns); err != nil || m != "br0" {
				t.Errorf("TAP %s: master %q, %v; want br0", name, m, err)
			}
			mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}
			if err := testutil.ARPExchange(r.files, 10, mac, net.IPv4(10, 40, 0, 99), net.IPv4(10, 40, 0, 1), 10*time.Second); err != nil {
				t.Errorf("TAP from the helper carries no traffic: %v", err)
			}
			r.files[0].Close()

			for _, tc := range []struct {
				name string
				env  []string
				argv []string
				want string
			}{
				{"denied bridge", nil, []string{helper, "--use-vnet", "--fd=3", "--br=br1"}, `uid ` + id + ` may not use bridge "br1"`},
				{"own access list", nil, []string{helper, "--acl", "/tmp/mine.conf", "--use-vnet", "--fd=3", "--br=br1"}, "--acl is refused"},
				{"access list from the environment", []string{aclEnv + "=/tmp/mine.conf"}, []string{helper, "--use-vnet", "--fd=3", "--br=br1"}, aclEnv + " is refused"},
				{"tap commands", nil, []string{helper, "tap", "create", "--name", "x0", "--persist"}, "tap: refused"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					r := runBridgeHelperAs(t, append(os.Environ(), tc.env...), inNS(tc.argv...)...)
					if r.code == 0 || len(r.files) != 0 || !strings.Contains(r.stderr, tc.want) {
						t.Errorf("exit %d, %d files, stderr %q; want a refusal containing %q", r.code, len(r.files), r.stderr, tc.want)
					}
				})
			}
			noTaps(t)

			t.Run("exec runs the command as the caller, unprivileged", func(t *testing.T) {
				argv := inNS(helper, "exec", "--tap", "u%d", "--queues", "2", "--bridge", "br0", "--",
					"sh", "-c", `grep -E '^(Uid|CapEff|CapPrm|NoNewPrivs):' /proc/self/status; echo tap={tap}; ls /proc/$$/fd | tr '\n' ' '`)
				out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
				if err != nil {
					t.Fatalf("exec: %v\n%s", err, out)
				}
				for _, want := range []string{"Uid:\t" + id + "\t" + id + "\t" + id + "\t" + id, "CapEff:\t0000000000000000",
					"CapPrm:\t0000000000000000", "NoNewPrivs:\t1", "tap=u0", "0 1 2 3 4 "} {
					if !strings.Contains(string(out), want) {
						t.Errorf("child output lacks %q:\n%s", want, out)
					}
				}
				for _, tc := range []struct {
					args []string
					want string
				}{
					{[]string{"--tap", "root%d"}, `may not use TAP name "root%d"`},
					{[]string{"--tap", "u%d", "--bridge", "br1"}, `may not use bridge "br1"`},
					{[]string{"--netns", ns}, "--netns is refused"},
					{[]string{"--persist"}, "--persist is refused"},
				} {
					argv := inNS(append(append([]string{helper, "exec"}, tc.args...), "--", "true")...)
					out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
					if err == nil || !strings.Contains(string(out), tc.want) {
						t.Errorf("exec %v: %v, %q; want a refusal containing %q", tc.args, err, out, tc.want)
					}
				}
				noTaps(t)
			})
		})
	}
}
