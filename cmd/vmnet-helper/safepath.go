package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// Files vmnet-helper trusts (its access list and what that includes) are
// opened so that nobody but root (or, when vmnet-helper runs with no
// more privilege than its caller, that user) can have put them there or
// redirected the path: no symbolic link anywhere in the path
// (RESOLVE_NO_SYMLINKS), a regular file owned by root or the caller and
// writable by nobody else, in folders that nobody else can write to
// unless they are sticky (as /tmp is).

// errUntrusted is matched by every refusal of a file or folder for who
// owns it or could change it.
var errUntrusted = errors.New("not trusted")

// trustedOwner reports whether uid may own a trusted file or folder.
func trustedOwner(uid uint32, secure bool) bool {
	return uid == 0 || (!secure && uid == uint32(os.Geteuid()))
}

// readTrusted reads a file vmnet-helper will act on. secure is true when
// it runs with more privilege than its caller: then only root may own the
// file and its folders.
func readTrusted(path string, secure bool) ([]byte, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, abs, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("read %s: a symbolic link in the path: %w", abs, errUntrusted)
		}
		return nil, fmt.Errorf("read %s: %w", abs, err)
	}
	f := os.NewFile(uintptr(fd), abs)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", abs, err)
	}
	if err := checkTrusted(abs, fi, secure, false); err != nil {
		return nil, err
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		di, err := os.Lstat(dir)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", abs, err)
		}
		if err := checkTrusted(dir, di, secure, true); err != nil {
			return nil, fmt.Errorf("read %s: %w", abs, err)
		}
		if dir == "/" {
			break
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, aclMaxFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", abs, err)
	}
	return data, nil
}

func checkTrusted(path string, fi os.FileInfo, secure, dir bool) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information: %w", path, errUntrusted)
	}
	mode := fi.Mode()
	switch {
	case dir && !mode.IsDir():
		return fmt.Errorf("%s: not a folder: %w", path, errUntrusted)
	case !dir && !mode.IsRegular():
		return fmt.Errorf("%s: not a regular file: %w", path, errUntrusted)
	case !trustedOwner(st.Uid, secure):
		return fmt.Errorf("%s: owned by uid %d, want root: %w", path, st.Uid, errUntrusted)
	case mode.Perm()&0o022 != 0 && !(dir && mode&os.ModeSticky != 0):
		return fmt.Errorf("%s: writable by group or others (mode %04o): %w", path, mode.Perm(), errUntrusted)
	}
	return nil
}

// loadACL reads the access list at path and every file it includes.
func loadACL(path string, secure bool) (*acl, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("access list %s: %w", path, err)
	}
	a := &acl{path: abs}
	var load func(file string, depth int, stack []string) error
	load = func(file string, depth int, stack []string) error {
		for _, s := range stack {
			if s == file {
				return &aclError{where: stack[len(stack)-1], msg: "include loop through " + file}
			}
		}
		if depth > aclMaxDepth {
			return &aclError{where: stack[len(stack)-1], msg: fmt.Sprintf("includes nested deeper than %d", aclMaxDepth)}
		}
		data, err := readTrusted(file, secure)
		if err != nil {
			where := file
			if len(stack) > 0 {
				where = stack[len(stack)-1] + " (include)"
			}
			return &aclError{where: where, msg: "cannot read", err: err}
		}
		rules, includes, err := parseACL(data, file, systemIDs)
		if err != nil {
			return err
		}
		a.rules = append(a.rules, rules...)
		if len(a.rules) > aclMaxRules {
			return &aclError{where: file, msg: fmt.Sprintf("more than %d rules in all", aclMaxRules)}
		}
		for _, inc := range includes {
			if err := load(inc, depth+1, append(stack, file)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := load(abs, 0, nil); err != nil {
		return nil, err
	}
	return a, nil
}

// aclPath says which access list to read: --acl, else VMNET_HELPER_ACL,
// else defaultACL. When vmnet-helper runs with more privilege than its
// caller, the caller may not choose: an override is an error rather than
// silently ignored, so the caller learns why their file is not read.
func aclPath(flagValue string, getenv func(string) string, secure bool) (string, error) {
	env := getenv(aclEnv)
	if secure {
		switch {
		case flagValue != "":
			return "", usagef("--acl is refused when vmnet-helper runs setuid or with file capabilities: the access list is %s", defaultACL)
		case env != "":
			return "", usagef("%s is refused when vmnet-helper runs setuid or with file capabilities: the access list is %s; unset it", aclEnv, defaultACL)
		}
		return defaultACL, nil
	}
	if flagValue != "" {
		return flagValue, nil
	}
	if env != "" {
		return env, nil
	}
	return defaultACL, nil
}
