package main

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/backend/fdpass"
	"github.com/vmnet-dev/vmnet/internal/metrics"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// clientResult is what testdata/fdclient prints.
type clientResult struct {
	Name    string `json:"name"`
	Files   int    `json:"files"`
	VnetHdr int    `json:"vnet_hdr"`
	Refused bool   `json:"refused"`
	Error   string `json:"error"`
	ARP     string `json:"arp"`
	UID     int    `json:"uid"`
}

// asUser prefixes argv so that it runs as uid (and gid) with no
// supplementary groups.
func asUser(uid int, argv ...string) []string {
	id := strconv.Itoa(uid)
	return append([]string{"setpriv", "--reuid", id, "--regid", id, "--clear-groups", "--"}, argv...)
}

func runClient(t *testing.T, argv ...string) clientResult {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	var r clientResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	return r
}

// TestServeFds runs serve-fds in a namespace with a bridge and asks it
// for TAPs from other processes under other uids.
func TestServeFds(t *testing.T) {
	testutil.RequireTUN(t)
	dir := publicDir(t)
	bin := buildHelper(t, dir)
	client := goBuild(t, dir, "fdclient", "./testdata/fdclient")
	ns := testutil.NetNS(t)
	testutil.Exec(t, ns, "ip", "link", "add", "br0", "type", "bridge")
	testutil.Exec(t, ns, "ip", "link", "set", "br0", "up")
	testutil.Exec(t, ns, "ip", "addr", "add", "10.30.0.1/24", "dev", "br0")
	testutil.Exec(t, ns, "ip", "link", "add", "br1", "type", "bridge")
	allowed := freeUID(t, 61000)
	other := freeUID(t, allowed+1)
	acl := writeACL(t, dir, "allow-tap vm%d user "+strconv.Itoa(allowed)+"\nallow br0 user "+strconv.Itoa(allowed)+"\nallow br1\ndeny br1\n")
	sock := filepath.Join(dir, "fds.sock")
	msock := filepath.Join(dir, "metrics.sock")

	srv := exec.Command("ip", "netns", "exec", ns, bin, "serve-fds", "--socket", sock, "--acl", acl,
		"--socket-mode", "0666", "--max-queues", "8", "--log-level", "debug", "--metrics", "unix:"+msock)
	var logs syncBuffer
	srv.Stderr = &logs
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	defer func() {
		if srv.ProcessState == nil {
			srv.Process.Kill()
			<-done
		}
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != sock {
		t.Fatalf("serve-fds printed %q (%v), want the socket path; log:\n%s", line, err, logs.String())
	}
	st := procStatus(t, srv.Process.Pid)
	if st["CapEff"] != "0000000000001000" || st["CapPrm"] != "0000000000001000" || st["NoNewPrivs"] != "1" {
		t.Errorf("server: CapEff %s CapPrm %s NoNewPrivs %s; want CAP_NET_ADMIN only (1000) and no_new_privs",
			st["CapEff"], st["CapPrm"], st["NoNewPrivs"])
	}

	t.Run("allowed uid gets working files", func(t *testing.T) {
		r := runClient(t, asUser(allowed, client, "-socket", sock, "-name", "vm%d", "-queues", "3", "-bridge", "br0", "-arp", "10.30.0.1")...)
		if r.Error != "" || r.UID != allowed || r.Name != "vm0" || r.Files != 3 || r.VnetHdr != 12 || r.ARP != "ok" {
			t.Errorf("client: got %+v; want uid %d, vm0, 3 files, vnet-hdr 12, ARP ok", r, allowed)
		}
	})
	t.Run("disallowed uid gets a refusal and no file", func(t *testing.T) {
		r := runClient(t, asUser(other, client, "-socket", sock, "-name", "vm%d", "-queues", "2")...)
		want := "access denied: uid " + strconv.Itoa(other) + ` may not use TAP name "vm%d"`
		if !r.Refused || r.Files != 0 || !strings.Contains(r.Error, want) {
			t.Errorf("client: got %+v; want a refusal containing %q and no files", r, want)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"denied bridge", []string{"-name", "vm%d", "-bridge", "br1"}, `may not use bridge "br1"`},
		{"name not allowed", []string{"-name", "eth0"}, `may not use TAP name "eth0"`},
		{"too many queues", []string{"-name", "vm%d", "-queues", "9"}, "at most 8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runClient(t, asUser(allowed, append([]string{client, "-socket", sock}, tc.args...)...)...)
			if !r.Refused || r.Files != 0 || !strings.Contains(r.Error, tc.want) {
				t.Errorf("client: got %+v; want a refusal containing %q", r, tc.want)
			}
		})
	}
	t.Run("metrics follow a TAP while its client holds it", func(t *testing.T) {
		argv := asUser(allowed, client, "-socket", sock, "-name", "vm%d", "-queues", "2", "-hold")
		cmd := exec.Command(argv[0], argv[1:]...)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer stdin.Close()
		var r clientResult
		if err := json.NewDecoder(out).Decode(&r); err != nil || r.Error != "" {
			t.Fatalf("client: %+v, %v", r, err)
		}
		s, err := metrics.FetchStats(t.Context(), "unix:"+msock)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.TAPs) != 1 || s.TAPs[0].Name != r.Name || !s.TAPs[0].Link.Up {
			t.Errorf("/stats while the client holds %s: got %+v, want that TAP, up", r.Name, s.TAPs)
		}
		scrape, err := metrics.Get(t.Context(), "unix:"+msock, "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		if want := `vmnet_tap_up{tap="` + r.Name + `"} 1`; !strings.Contains(string(scrape), want) {
			t.Errorf("/metrics lacks %s:\n%s", want, scrape)
		}
		testutil.PromtoolCheckMetrics(t, scrape)
		stdin.Close()
		cmd.Wait()
		if s, err := metrics.FetchStats(t.Context(), "unix:"+msock); err != nil || len(s.TAPs) != 0 {
			t.Errorf("/stats once the client closed its files: got %+v, %v; want no TAP", s.TAPs, err)
		}
	})
	if out := testutil.Exec(t, ns, "ip", "-o", "link", "show", "type", "tun"); strings.TrimSpace(out) != "" {
		t.Errorf("TAPs left after every client closed its files:\n%s", out)
	}

	srv.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve-fds after SIGTERM: %v; log:\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve-fds did not exit within 10s of SIGTERM")
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Error("socket left behind after exit")
	}
	if _, err := os.Lstat(msock); err == nil {
		t.Error("metrics socket left behind after exit")
	}
	if !strings.Contains(logs.String(), "granted") || !strings.Contains(logs.String(), "refused") {
		t.Errorf("server log lacks granted and refused lines:\n%s", logs.String())
	}
}

func TestListenSeqpacketReplacesOnlyStaleSockets(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := listenSeqpacket(path, 0o600, -1); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a regular file: got %v, want a refusal", err)
	}
	os.Remove(path)
	os.Symlink("/etc/passwd", path)
	if _, _, err := listenSeqpacket(path, 0o600, -1); err == nil {
		t.Error("over a symbolic link: got nil error")
	}
	os.Remove(path)

	l, _, err := listenSeqpacket(path, 0o640, -1)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("socket mode: got %v, %v; want 0640", fi.Mode().Perm(), err)
	}
	if _, _, err := listenSeqpacket(path, 0o600, -1); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Errorf("over a live socket: got %v, want a refusal", err)
	}
	l.Close()
	l2, ino2, err := listenSeqpacket(path, 0o600, -1)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	defer l2.Close()
	removeOwnSocket(path, ino2+1, hclog.NewNullLogger()) // another inode: not ours, stays
	if _, err := os.Lstat(path); err != nil {
		t.Error("removed a socket another server bound")
	}
	removeOwnSocket(path, ino2, hclog.NewNullLogger())
	if _, err := os.Lstat(path); err == nil {
		t.Error("own socket not removed")
	}

	c, err := net.Dial("unixpacket", path)
	if err == nil {
		c.Close()
	}
	if writable := filepath.Join(t.TempDir(), "open"); os.Mkdir(writable, 0o777) == nil {
		os.Chmod(writable, 0o777)
		if _, _, err := listenSeqpacket(filepath.Join(writable, "s.sock"), 0o600, -1); err == nil {
			t.Error("socket in a world-writable, non-sticky folder: got nil error")
		}
	}
}

// TestServeFdsRefusesBeforeTheACL runs the handler in-process: a request
// over the queue limit is refused before the access list is even read.
func TestServeFdsRefusesBeforeTheACL(t *testing.T) {
	a, b := socketpairConn(t)
	go fdpass.ServeConn(t.Context(), b, serveFdsConfig{maxQueues: 4, acl: "/nonexistent"}.handler(hclog.NewNullLogger()), fdpass.ServerOptions{})
	if err := fdpass.Send(a, []byte("vmnet-fds/1 name=x queues=5"), nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, fdpass.MaxMessage)
	n, files, err := fdpass.Recv(a, buf, 8)
	if err != nil || len(files) != 0 || !strings.Contains(string(buf[:n]), "at most 4") {
		t.Errorf("reply: %q, %d files, %v; want a refusal naming the limit", buf[:n], len(files), err)
	}
}
