package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"
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
// has several, so every change goes through libcap's cap package, whose
// psx package makes each change on every thread: with
// syscall.AllThreadsSyscall in a CGO_ENABLED=0 build, with libpsx (which
// signals each thread listed in /proc/self/task, no linker flags since
// libcap 2.72) in a cgo build. The setuid family is applied to all threads
// by Go itself in both (AllThreadsSyscall, or glibc's setxid broadcast).
// Whatever the mechanism, dropPrivileges and keepOnlyNetAdmin then read
// every thread's status back and fail unless the drop took everywhere.

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

// hasCap reports whether c is in this thread's flag set (cap.GetPID
// where cap.GetProc would panic on a failed capget).
func hasCap(flag cap.Flag, c cap.Value) (bool, error) {
	set, err := cap.GetPID(0)
	if err != nil {
		return false, fmt.Errorf("read capabilities: %w", err)
	}
	return set.GetFlag(flag, c)
}

// requireNetAdmin fails early and clearly when vmnet-helper cannot make
// TAP devices at all.
func requireNetAdmin(what string) error {
	if on, err := hasCap(cap.Effective, cap.NET_ADMIN); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	} else if on {
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
	bounded, err := limitInheritance(nil)
	if err != nil {
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
	if err := setCaps(nil); err != nil {
		return err
	}
	if err := noNewPrivs(); err != nil {
		return err
	}
	return verifyThreads(0, bounded, to)
}

// keepOnlyNetAdmin gives up every capability but CAP_NET_ADMIN on every
// thread and sets no_new_privs.
func keepOnlyNetAdmin() error {
	keep := []cap.Value{cap.NET_ADMIN}
	bounded, err := limitInheritance(keep)
	if err != nil {
		return err
	}
	if err := setCaps(keep); err != nil {
		return err
	}
	if err := noNewPrivs(); err != nil {
		return err
	}
	return verifyThreads(mask(keep), bounded, nil)
}

// limitInheritance empties the inheritable and ambient sets and, when
// CAP_SETPCAP is permitted, drops every capability not in keep from the
// bounding set, so not even a later exec of a file with capabilities
// could bring one back. It reports whether it limited the bounding set.
func limitInheritance(keep []cap.Value) (bounded bool, err error) {
	iab := cap.NewIAB()
	on, err := hasCap(cap.Permitted, cap.SETPCAP)
	if err != nil {
		return false, fmt.Errorf("drop privileges: %w", err)
	}
	if on {
		for c := cap.Value(0); c < cap.MaxBits(); c++ {
			if !slices.Contains(keep, c) {
				if err := iab.SetVector(cap.Bound, true, c); err != nil {
					return false, fmt.Errorf("drop privileges: bounding set %s: %w", c, err)
				}
			}
		}
	}
	// SetProc clears the ambient set only when it finds a bit raised in
	// it, so kernels before 4.3, which have none, are no error.
	if err := iab.SetProc(); err != nil {
		return false, fmt.Errorf("drop privileges: set inheritable, ambient and bounding to %q: %w", iab, err)
	}
	return on, nil
}

// setCaps makes keep the effective and permitted sets of every thread,
// and empties the inheritable set.
func setCaps(keep []cap.Value) error {
	c := cap.NewSet()
	if err := c.SetFlag(cap.Permitted, true, keep...); err != nil {
		return fmt.Errorf("drop privileges: %w", err)
	}
	if err := c.SetFlag(cap.Effective, true, keep...); err != nil {
		return fmt.Errorf("drop privileges: %w", err)
	}
	if err := c.SetProc(); err != nil {
		return fmt.Errorf("drop privileges: set capabilities to %q: %w", c, err)
	}
	return nil
}

func noNewPrivs() error {
	if _, err := cap.Prctlw(unix.PR_SET_NO_NEW_PRIVS, 1); err != nil {
		return fmt.Errorf("drop privileges: PR_SET_NO_NEW_PRIVS: %w", err)
	}
	return nil
}

// mask is vals as the bits of /proc/PID/status's Cap* lines.
func mask(vals []cap.Value) uint64 {
	var m uint64
	for _, v := range vals {
		m |= 1 << uint(v)
	}
	return m
}

// verifyThreads reads every thread's status and checks that the drop
// took everywhere: the effective and permitted sets are want, the
// inheritable and ambient sets are empty, the bounding set holds
// nothing beyond want when it was limited, no_new_privs is on, and the
// ids are to's.
func verifyThreads(want uint64, bounded bool, to *ids) error {
	tasks, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil || len(tasks) == 0 {
		return fmt.Errorf("verify dropped privileges: list threads: %w", errors.Join(err, os.ErrNotExist))
	}
	checks := []struct {
		key       string
		want      uint64
		notBeyond bool // a subset of want will do
	}{{"CapEff", want, false}, {"CapPrm", want, false}, {"CapInh", 0, false}, {"CapAmb", 0, false},
		{"NoNewPrivs", 1, false}, {"CapBnd", want, true}}
	if !bounded {
		checks = checks[:len(checks)-1]
	}
	for _, path := range tasks {
		st, err := readStatus(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) { // the thread exited meanwhile
				continue
			}
			return fmt.Errorf("verify dropped privileges: %w", err)
		}
		for _, c := range checks {
			v, ok := st[c.key]
			if !ok && c.key == "CapAmb" {
				continue
			}
			got, err := strconv.ParseUint(v, 16, 64)
			if err != nil || got != c.want && !(c.notBeyond && got&^c.want == 0) {
				return fmt.Errorf("verify dropped privileges: %s: %s %q, want %x", path, c.key, v, c.want)
			}
		}
		if to != nil {
			if err := checkIDs(path, st, to); err != nil {
				return fmt.Errorf("verify dropped privileges: %w", err)
			}
		}
	}
	return nil
}

// checkIDs checks a thread's real, effective, saved and filesystem
// uids and gids and its supplementary groups against to.
func checkIDs(path string, st map[string]string, to *ids) error {
	for _, c := range []struct {
		key string
		id  int
	}{{"Uid", to.uid}, {"Gid", to.gid}} {
		if want := fmt.Sprintf("%d\t%d\t%d\t%d", c.id, c.id, c.id, c.id); st[c.key] != want {
			return fmt.Errorf("%s: %s %q, want %q", path, c.key, st[c.key], want)
		}
	}
	var got []int
	for _, f := range strings.Fields(st["Groups"]) {
		g, err := strconv.Atoi(f)
		if err != nil {
			return fmt.Errorf("%s: Groups %q: %w", path, st["Groups"], err)
		}
		got = append(got, g)
	}
	want := slices.Clone(to.groups)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(slices.Compact(got), slices.Compact(want)) {
		return fmt.Errorf("%s: Groups %v, want %v", path, got, want)
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
