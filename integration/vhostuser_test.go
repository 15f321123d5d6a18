package integration

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/integration/guest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// vhostUserGuest boots a guest whose eth0 is a vhost-user NIC served by a
// vmnet-helper on a TAP in a fresh namespace, where the TAP is 10.0.2.2/24
// and the guest 10.0.2.15/24.
type vhostUserGuest struct {
	vm     *guest.VM
	helper *helperProc
	ns     string
	sock   string
}

func startVhostUserGuest(t *testing.T, queues int, helperArgs ...string) *vhostUserGuest {
	t.Helper()
	testutil.RequireTUN(t)
	img := guest.Require(t)
	ns := testutil.NetNS(t)
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	args := append([]string{"vhost-user", "--socket", sock, "--tap", "vu%d", "--netns", ns,
		"--queues", itoa(queues), "--log-level", "debug"}, helperArgs...)
	h := startHelper(t, args...)
	testutil.Exec(t, ns, "ip", "addr", "add", "10.0.2.2/24", "dev", h.tap)
	mq := ""
	if queues > 1 {
		mq = ",mq=on"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vm := guest.StartT(ctx, t, guest.Config{
		Image:        img,
		SharedMemory: true,
		SMP:          queues,
		Args: []string{
			"-chardev", "socket,id=c0,path=" + sock,
			"-netdev", "vhost-user,id=n0,chardev=c0,queues=" + itoa(queues),
			"-device", "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:12:34:56" + mq,
		},
		KernelArgs: []string{"vmnet.ip=10.0.2.15/24"},
		LogPath:    filepath.Join(t.TempDir(), "guest.log"),
	})
	return &vhostUserGuest{vm: vm, helper: h, ns: ns, sock: sock}
}

func TestVhostUserPing(t *testing.T) {
	g := startVhostUserGuest(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, rc, err := g.vm.Run(ctx, "ping -c 3 -W 5 10.0.2.2")
	if err != nil || rc != 0 {
		t.Fatalf("guest ping: rc %d, %v\n%s\nhelper:\n%s\nguest log:\n%s", rc, err, out, g.helper.Stderr(), g.vm.LogTail(3000))
	}
	if out, err := testutil.Run(g.ns, "ping", "-c", "3", "-W", "5", "10.0.2.15"); err != nil {
		t.Fatalf("host ping: %v\n%s", err, out)
	}
	st := g.helper.stats()
	if !strings.Contains(st, "queue 0: tx_packets=") || strings.Contains(st, "tx_packets=0 ") {
		t.Errorf("counters after ping:\n%s", st)
	}
	t.Logf("helper counters:\n%s", st)
}

func itoa(n int) string { return strconv.Itoa(n) }
