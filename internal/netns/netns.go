package netns

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// Add creates the network namespace name with its loopback up and returns
// the function that deletes it, and everything left in it.
//
// Every namespace vmnet's tests and demo make comes from here, through
// ip netns add, whose first call on a machine turns /run/netns into a
// mount point by bind-mounting it on itself. Two first calls at once (test
// packages run in parallel on a fresh machine) stack two such mounts, and
// a namespace mounted under the lower one can never be deleted again
// (EBUSY). A lock file held across processes makes the calls take turns.
func Add(ctx context.Context, name string) (del func() error, err error) {
	if err := withLock(func() error {
		return run(ctx, "ip", "netns", "add", name)
	}); err != nil {
		return nil, err
	}
	del = func() error {
		return run(context.Background(), "ip", "netns", "del", name)
	}
	if err := run(ctx, "ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"); err != nil {
		del()
		return nil, err
	}
	return del, nil
}

// lockFile is the lock file Add holds around ip netns add.
const lockFile = "/run/vmnet-netns.lock"

// withLock runs fn holding lockFile (flock), which every process of
// vmnet's tests takes before it makes a namespace.
func withLock(fn func() error) error {
	f, err := os.OpenFile(lockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open lock for ip netns add: %w", err)
	}
	defer f.Close()
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", lockFile, err)
	}
	// Closing the file releases the lock.
	return fn()
}

// run runs a command; the error carries the end of its output.
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 2000 {
			msg = "..." + msg[len(msg)-2000:]
		}
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, msg)
	}
	return nil
}
