package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// vmnet-helper often runs on behalf of a less privileged caller: setuid
// root, with file capabilities (cap_net_admin+ep), or as root for a
// hypervisor that is not. It does the privileged part first and then
// gives up what it no longer needs, on every thread, before it talks to
// or runs anything the caller controls:
//
//   - bridge helper and exec: every capability (effective, permitted,
//     inheritable, ambient, and the bounding set when CAP_SETPCAP allows),
//     the ids of the caller when it ran setuid, and no_new_privs, so
//     nothing it runs can gain privileges again through exec;
//   - serve-fds: every capability but CAP_NET_ADMIN, which it needs for
//     each TAP it makes, and no_new_privs.
//
// Capabilities and no_new_privs are per thread in Linux, and a Go process
// has several, so every change goes through syscall.AllThreadsSyscall
// (and the setuid family, which Go applies to all threads itself). That
// is unavailable in a binary built with cgo; such a binary refuses to
// run privileged rather than drop privileges on one thread only. `make
// build` builds with CGO_ENABLED=0.

// errCgo says this binary cannot change privileges on every thread.
var errCgo = errors.New("this vmnet-helper was built with cgo and cannot drop privileges on every thread; build it with CGO_ENABLED=0 (make build does)")

// atSecure is AT_SECURE in include/uapi/linux/auxvec.h.
const atSecure = 23

// secureExec reports whether the kernel ran this program with more
// privilege than its caller has (AT_SECURE: setuid, setgid, or file
// capabilities that raised the permitted set). Then the caller is not
// trusted with paths, namespaces or persistent devices.
func secureExec() bool {
	if auxv, err := unix.Auxv(); err == nil {
		for _, kv := range auxv {
			if kv[0] == atSecure {
				return kv[1] != 0
			}
		}
	}
	return os.Getuid() != os.Geteuid() || os.Getgid() != os.Getegid()
}

// currentCaller is the real user and groups of this process: who ran
// vmnet-helper, whatever it runs as.
func currentCaller() (caller, error) {
	groups, err := unix.Getgroups()
	if err != nil {
		return caller{}, fmt.Errorf("read supplementary groups: %w", err)
	}
	c := caller{uid: uint32(unix.Getuid()), gids: []uint32{uint32(unix.Getgid())}}
	for _, g := range groups {
		c.gids = append(c.gids, uint32(g))
	}
	return c, nil
}

// refuseWhenSetuid keeps a setuid or file-capability vmnet-helper to the
// commands that check their caller against the access list: the bridge
// helper and exec. The others trust whoever runs them (tap delete removes
// any TAP, vhost-user opens an existing one) and are for root.
func refuseWhenSetuid(command string) error {
	if !secureExec() {
		return nil
	}
	switch command {
	case "bridge-helper", "exec", "help", "-h", "--help":
		return nil
	}
	if qemuHelperArgs([]string{command}) == command {
		return nil
	}
	return usagef("%s: refused when vmnet-helper runs setuid or with file capabilities; only bridge-helper and exec check their caller against the access list", command)
}

// capSets reads this thread's effective, permitted and inheritable sets.
func capSets() (eff, prm, inh uint64, err error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, 0, 0, fmt.Errorf("capget: %w", err)
	}
	join := func(lo, hi uint32) uint64 { return uint64(hi)<<32 | uint64(lo) }
	return join(data[0].Effective, data[1].Effective), join(data[0].Permitted, data[1].Permitted),
		join(data[0].Inheritable, data[1].Inheritable), nil
}

func hasCap(c int) bool {
	eff, _, _, err := capSets()
	return err == nil && eff&(1<<uint(c)) != 0
}

// requireNetAdmin fails early and clearly when vmnet-helper cannot make
// TAP devices at all.
func requireNetAdmin(what string) error {
	if hasCap(unix.CAP_NET_ADMIN) {
		return nil
	}
	return fmt.Errorf("%s needs CAP_NET_ADMIN: run vmnet-helper as root, or install it setuid root or with file capabilities (setcap cap_net_admin+ep): %w",
		what, unix.EPERM)
}

// ids is a user to become: uid, gid and supplementary groups.
type ids struct {
	uid, gid int
	groups   []int
}

// callerIDs are the real ids of this process, for returning to them after
// a setuid start; nil when there is nothing to return to.
func callerIDs() (*ids, error) {
	if os.Getuid() == os.Geteuid() && os.Getgid() == os.Getegid() {
		return nil, nil
	}
	groups, err := os.Getgroups()
	if err != nil {
		return nil, fmt.Errorf("read supplementary groups: %w", err)
	}
	return &ids{uid: os.Getuid(), gid: os.Getgid(), groups: groups}, nil
}

// dropPrivileges gives up every capability on every thread, becomes to
// (when not nil) and sets no_new_privs. It then checks every thread.
func dropPrivileges(to *ids) error {
	if err := dropBounding(0); err != nil {
		return err
	}
	if to != nil {
		// Groups first: once the uid is not 0 there is no CAP_SETGID.
		if err := syscall.Setgroups(to.groups); err != nil {
			return fmt.Errorf("drop privileges: setgroups: %w", err)
		}
		if err := syscall.Setresgid(to.gid, to.gid, to.gid); err != nil {
			return fmt.Errorf("drop privileges: setresgid %d: %w", to.gid, err)
		}
		if err := syscall.Setresuid(to.uid, to.uid, to.uid); err != nil {
			return fmt.Errorf("drop privileges: setresuid %d: %w", to.uid, err)
		}
	}
	if err := capsetAllThreads(0, 0, 0); err != nil {
		return fmt.Errorf("drop privileges: %w", err)
	}
	if err := noNewPrivs(); err != nil {
		return err
	}
	return verifyThreads(0, to)
}

// keepOnlyNetAdmin gives up every capability but CAP_NET_ADMIN on every
// thread and sets no_new_privs.
func keepOnlyNetAdmin() error {
	keep := uint64(1) << unix.CAP_NET_ADMIN
	if err := dropBounding(keep); err != nil {
		return err
	}
	if err := capsetAllThreads(keep, keep, 0); err != nil {
		return fmt.Errorf("drop privileges: %w", err)
	}
	if err := noNewPrivs(); err != nil {
		return err
	}
	return verifyThreads(keep, nil)
}

// dropBounding clears the ambient set and, with CAP_SETPCAP, every
// capability not in keep from the bounding set, so not even a later exec
// of a file with capabilities could bring one back.
func dropBounding(keep uint64) error {
	if _, _, errno := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0); errno != 0 {
		if errno == unix.ENOTSUP {
			return errCgo
		}
		if errno != unix.EINVAL { // kernels before 4.3 have no ambient set
			return fmt.Errorf("drop privileges: clear ambient capabilities: %w", errno)
		}
	}
	if !hasCap(unix.CAP_SETPCAP) {
		return nil
	}
	for c := 0; c <= lastCap(); c++ {
		if keep&(1<<uint(c)) != 0 {
			continue
		}
		if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); errno != 0 {
			return fmt.Errorf("drop privileges: PR_CAPBSET_DROP %d: %w", c, errno)
		}
	}
	return nil
}

func noNewPrivs() error {
	if _, _, errno := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0); errno != 0 {
		if errno == unix.ENOTSUP {
			return errCgo
		}
		return fmt.Errorf("drop privileges: PR_SET_NO_NEW_PRIVS: %w", errno)
	}
	return nil
}

// lastCap is the highest capability the running kernel knows.
func lastCap() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 && n < 64 {
			return n
		}
	}
	return unix.CAP_LAST_CAP
}

// verifyThreads reads every thread's status and checks that the drop
// took everywhere: the effective and permitted sets are want, the
// inheritable and ambient sets are empty, no_new_privs is on, and the
// uids are to's.
func verifyThreads(want uint64, to *ids) error {
	tasks, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil || len(tasks) == 0 {
		return fmt.Errorf("verify dropped privileges: list threads: %w", errors.Join(err, os.ErrNotExist))
	}
	for _, path := range tasks {
		st, err := readStatus(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) { // the thread exited meanwhile
				continue
			}
			return fmt.Errorf("verify dropped privileges: %w", err)
		}
		for _, c := range []struct {
			key  string
			want uint64
		}{{"CapEff", want}, {"CapPrm", want}, {"CapInh", 0}, {"CapAmb", 0}, {"NoNewPrivs", 1}} {
			v, ok := st[c.key]
			if !ok && c.key == "CapAmb" {
				continue
			}
			got, err := strconv.ParseUint(v, 16, 64)
			if err != nil || got != c.want {
				return fmt.Errorf("verify dropped privileges: %s: %s %q, want %x", path, c.key, v, c.want)
			}
		}
		if to != nil {
			want := fmt.Sprintf("%d\t%d\t%d\t%d", to.uid, to.uid, to.uid, to.uid)
			if got := st["Uid"]; got != want {
				return fmt.Errorf("verify dropped privileges: %s: Uid %q, want %q", path, got, want)
			}
		}
	}
	return nil
}

func readStatus(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if ok {
			st[k] = strings.TrimSpace(v)
		}
	}
	return st, s.Err()
}
