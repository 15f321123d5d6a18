package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/fdpass"
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
	install := func(name string, setup ...string) string { return installCopy(t, bin, dir, name, setup...) }
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

// TestPrivilegesDroppedOnEveryThread builds the helper without cgo (as
// `make build` does) and with it (as `go install` does) and runs it in
// every mode that gives up privileges, installed every way it can be:
// as root (exec, exec --user, serve-fds) and setuid root or with file
// capabilities for an unprivileged uid (bridge helper, exec). Each time
// it holds the helper at a point after the drop and reads the status of
// each of its threads: no capability left in any set (serve-fds keeps
// CAP_NET_ADMIN alone), the bounding set emptied whenever CAP_SETPCAP
// allowed it, no_new_privs, and the caller's ids where it ran setuid.
func TestPrivilegesDroppedOnEveryThread(t *testing.T) {
	testutil.RequireTUN(t)
	for _, tool := range []string{"setpriv", "setcap"} {
		if _, err := exec.LookPath(tool); err != nil {
			testutil.Skip(t, "no %s: %v", tool, err)
		}
	}
	uid := freeUID(t, 63000)
	id := strconv.Itoa(uid)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		testutil.Skip(t, "no user nobody for exec --user: %v", err)
	}
	nobodyUID, _ := strconv.Atoi(nobody.Uid)
	nobodyGID, _ := strconv.Atoi(nobody.Gid)
	ns := testutil.NetNS(t)
	testutil.Exec(t, ns, "ip", "link", "add", "br0", "type", "bridge")
	testutil.Exec(t, ns, "ip", "link", "set", "br0", "up")
	// A helper with file capabilities has no CAP_SETPCAP to shrink its
	// bounding set with: it keeps the one it inherits, this test's
	// (no_new_privs is what keeps what it runs from using it).
	inherited := procStatus(t, os.Getpid())["CapBnd"]

	const none, netAdmin = "0000000000000000", "0000000000001000"
	for _, cgo := range []bool{false, true} {
		t.Run(fmt.Sprintf("cgo=%v", cgo), func(t *testing.T) {
			dir := publicDir(t)
			acl := writeACL(t, dir, "allow br0\nallow-tap d%d user "+id+"\n")
			bin := goBuildCgo(t, cgo, dir, "vmnet-helper", ".", "-X", "main.defaultACL="+acl)
			out, err := exec.Command("go", "version", "-m", bin).Output()
			if want := fmt.Sprintf("CGO_ENABLED=%d", map[bool]int{false: 0, true: 1}[cgo]); err != nil || !strings.Contains(string(out), want) {
				t.Fatalf("go version -m %s: %v; want %s in:\n%s", bin, err, want, out)
			}
			setuid := installCopy(t, bin, dir, "setuid", "chmod", "4755")
			filecaps := installCopy(t, bin, dir, "filecaps", "setcap", "cap_net_admin+ep")
			asCaller := func(argv ...string) []string {
				return append([]string{"ip", "netns", "exec", ns}, asUser(uid, argv...)...)
			}
			sock := filepath.Join(dir, "fds.sock")
			root, caller := threadWant{uid: 0, gid: 0}, threadWant{uid: uid, gid: uid}
			nob := threadWant{uid: nobodyUID, gid: nobodyGID}
			for _, tc := range []struct {
				name string
				how  string // exec, bridge or serve
				argv []string
				caps string // effective and permitted
				bnd  string
				ids  threadWant
			}{
				{"root exec", "exec", []string{bin, "exec", "--netns", ns, "--tap", "d%d", "--", "sleep", "60"}, none, none, root},
				{"root exec --user", "exec", []string{bin, "exec", "--netns", ns, "--tap", "d%d", "--user", "nobody", "--", "sleep", "60"}, none, none, nob},
				{"root serve-fds", "serve", []string{"ip", "netns", "exec", ns, bin, "serve-fds", "--socket", sock, "--acl", acl}, netAdmin, netAdmin, root},
				{"setuid bridge helper", "bridge", asCaller(setuid, "--use-vnet", "--fd=3", "--br=br0"), none, none, caller},
				{"setuid exec", "exec", asCaller(setuid, "exec", "--tap", "d%d", "--", "sleep", "60"), none, none, caller},
				{"file capabilities bridge helper", "bridge", asCaller(filecaps, "--use-vnet", "--fd=3", "--br=br0"), none, inherited, caller},
				{"file capabilities exec", "exec", asCaller(filecaps, "exec", "--tap", "d%d", "--", "sleep", "60"), none, inherited, caller},
			} {
				t.Run(tc.name, func(t *testing.T) {
					want := map[string]string{"CapEff": tc.caps, "CapPrm": tc.caps, "CapInh": none, "CapAmb": none,
						"CapBnd": tc.bnd, "NoNewPrivs": "1"}
					check := func(pid int) {
						t.Helper()
						threads := checkThreads(t, pid, want, tc.ids)
						if threads < 2 {
							t.Errorf("helper %d has %d thread; a Go process has several, or this test proves nothing", pid, threads)
						}
						if !t.Failed() {
							t.Logf("all %d threads of helper %d: CapEff=CapPrm=%s CapInh=CapAmb=%s CapBnd=%s NoNewPrivs=1 Uid=Gid=%d",
								threads, pid, tc.caps, none, tc.bnd, tc.ids.uid)
						}
					}
					switch tc.how {
					case "exec":
						// The helper runs the command after it dropped
						// privileges and waits for it.
						heldExec(t, tc.argv, check)
					case "serve":
						// serve-fds prints its socket after the drop and
						// serves until it is stopped.
						heldServer(t, tc.argv, sock, check)
					case "bridge":
						r := heldBridgeHelper(t, tc.argv, check)
						if r.code != 0 || len(r.files) != 1 {
							t.Errorf("bridge helper: exit %d, %d files, stderr %q; want 0 and one TAP", r.code, len(r.files), r.stderr)
						}
					}
				})
			}
		})
	}
}

// threadWant is the ids every thread of a helper must have.
type threadWant struct{ uid, gid int }

// checkThreads checks fields of every thread's status and its ids, and
// returns how many threads it read.
func checkThreads(t *testing.T, pid int, want map[string]string, ids threadWant) int {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("threads of %d: %v, %d found", pid, err, len(tasks))
	}
	n := 0
	for _, path := range tasks {
		st, err := readStatus(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		n++
		for k, v := range want {
			if st[k] != v {
				t.Errorf("%s (%s): %s %q, want %q", path, st["Name"], k, st[k], v)
			}
		}
		for k, id := range map[string]int{"Uid": ids.uid, "Gid": ids.gid} {
			if w := fmt.Sprintf("%d\t%d\t%d\t%d", id, id, id, id); st[k] != w {
				t.Errorf("%s: %s %q, want %q", path, k, st[k], w)
			}
		}
	}
	return n
}

// heldExec runs an exec helper whose command sleeps, and calls check
// with the helper's pid once the command runs; then it kills the helper.
func heldExec(t *testing.T, argv []string, check func(pid int)) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	// ip netns exec and setpriv exec the next program in the same process.
	pid := cmd.Process.Pid
	deadline := time.Now().Add(20 * time.Second)
	for {
		if kids := children(pid); len(kids) == 1 {
			if exe, _ := os.Readlink("/proc/" + strconv.Itoa(kids[0]) + "/exe"); strings.HasSuffix(exe, "/sleep") {
				break
			}
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("helper exited (%v) before its command ran; stderr:\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no command appeared in 20s; helper stderr:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	check(pid)
}

// heldServer runs serve-fds and calls check with its pid once it has
// printed its socket.
func heldServer(t *testing.T, argv []string, sock string, check func(pid int)) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != sock {
		t.Fatalf("serve-fds printed %q (%v), want the socket path; stderr:\n%s", line, err, stderr.String())
	}
	check(cmd.Process.Pid)
}

// heldBridgeHelper runs argv as runBridgeHelperAs does, but first fills
// the send buffer of the helper's end of the socket, so that the helper,
// which drops its privileges just before it sends the TAP, blocks in
// that send until the test reads. It calls check with the helper's pid
// once no_new_privs (the last step of the drop) is on in every thread,
// then reads the filler and the TAP.
func heldBridgeHelper(t *testing.T, argv []string, check func(pid int)) helperResult {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours := os.NewFile(uintptr(fds[0]), "qemu end")
	theirs := os.NewFile(uintptr(fds[1]), "helper end")
	defer ours.Close()
	filled := 0
	if err := unix.SetNonblock(fds[1], true); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		n, err := unix.Write(fds[1], chunk)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		filled += n
	}
	if err := unix.SetNonblock(fds[1], false); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{theirs}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	pid := cmd.Process.Pid
	deadline := time.Now().Add(20 * time.Second)
	for !allThreads(pid, "NoNewPrivs", "1") {
		select {
		case err := <-done:
			t.Fatalf("helper exited (%v) while the test held its socket full; stderr:\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			t.Fatalf("no_new_privs not on in every thread after 20s; helper stderr:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	check(pid)

	c, err := net.FileConn(ours)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, filled)); err != nil {
		t.Fatalf("read back %d bytes of filler: %v", filled, err)
	}
	_, files, rerr := fdpass.Recv(c.(*net.UnixConn), make([]byte, 1), 1)
	for _, f := range files {
		t.Cleanup(func() { f.Close() })
	}
	err = <-done
	if rerr != nil {
		t.Errorf("receive from helper: %v", rerr)
	}
	return helperResult{files: files, code: exitCode(err), stderr: stderr.String()}
}

// allThreads reports whether every thread of pid has value for key.
func allThreads(pid int, key, value string) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, path := range tasks {
		st, err := readStatus(path)
		if err != nil || st[key] != value {
			return false
		}
	}
	return len(tasks) > 0
}
