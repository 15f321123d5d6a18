package guest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// InCI reports whether this is a CI run (CI=true), where a test that
// cannot run must fail rather than skip.
func InCI() bool { return testutil.InCI() }

// Skip skips the test with a loud reason, or fails it when InCI: in CI a
// skipped guest test would pass without proving anything.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	testutil.Skip(t, "real-guest test did not run: %s (run .ci/install-deps)", fmt.Sprintf(format, args...))
}

// Require returns the default guest image, building it on first use, or
// calls Skip when QEMU or the image cannot be had.
func Require(t testing.TB) *Image {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		Skip(t, "no qemu-system-x86_64: %v", err)
	}
	// A first build downloads and unpacks a kernel package: allow for a
	// slow mirror and a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := BuildImage(ctx, ImageOptions{})
	if err != nil {
		Skip(t, "cannot build the guest image: %v", err)
	}
	return img
}

// StartT is Start for tests: it takes the image from Require when
// cfg.Image is nil, waits for the boot, stops the VM in t.Cleanup and, if
// the test failed, logs where the guest log is and its tail. Without
// cfg.LogPath the log goes to $VMNET_GUEST_LOGDIR, where it is kept, or to
// the test's temporary directory.
func StartT(ctx context.Context, t testing.TB, cfg Config) *VM {
	t.Helper()
	if cfg.Image == nil {
		cfg.Image = Require(t)
	}
	if cfg.LogPath == "" {
		dir := os.Getenv("VMNET_GUEST_LOGDIR")
		if dir == "" {
			dir = t.TempDir()
		} else if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatalf("create guest log directory: %v", err)
		}
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		cfg.LogPath = filepath.Join(dir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	}
	vm, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start guest: %v", err)
	}
	t.Cleanup(func() {
		vm.Stop()
		if t.Failed() {
			t.Logf("guest log %s, last lines:\n%s", vm.LogPath(), vm.LogTail(6000))
		}
	})
	if err := vm.WaitBoot(ctx); err != nil {
		t.Fatalf("boot guest: %v", err)
	}
	t.Logf("guest boot time: %s from QEMU's start to the /init prompt (guest kernel uptime then: %s)",
		vm.BootTime().Round(time.Millisecond), vm.GuestUptime())
	return vm
}
