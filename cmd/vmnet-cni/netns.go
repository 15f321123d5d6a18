package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// errNoNetNS says the container's namespace is gone: its path does not
// exist, or is no longer a namespace (an `ip netns del` leaves nothing;
// a runtime may leave an unmounted file behind).
var errNoNetNS = errors.New("network namespace is gone")

// sandbox is the container's network namespace, open, with a netlink
// socket in it. Nothing here changes the namespace of a thread that
// outlives the call (see do).
type sandbox struct {
	path string
	ns   netns.NsHandle
	nl   *netlink.Handle
}

// openSandbox opens the namespace at path (CNI_NETNS); the caller closes it.
func openSandbox(path string) (*sandbox, error) {
	if path == "" {
		return nil, fmt.Errorf("CNI_NETNS is empty: %w", errNoNetNS)
	}
	h, err := netns.GetFromPath(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", path, errNoNetNS)
	}
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(h), &st); err != nil {
		h.Close()
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		h.Close()
		return nil, fmt.Errorf("%s is not a namespace file: %w", path, errNoNetNS)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	return &sandbox{path: path, ns: h, nl: nl}, nil
}

func (s *sandbox) Close() {
	s.nl.Close()
	s.ns.Close()
}

// do runs fn on a thread of its own inside the namespace, for what only
// works from there (/proc/sys/net). The thread is never handed back to
// the Go scheduler: it ends with its goroutine, namespace and all.
func (s *sandbox) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(s.ns); err != nil {
			errc <- fmt.Errorf("enter %s: %w", s.path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// sysctl writes a /proc/sys/net setting of the namespace, such as
// "ipv4/conf/br-eth0/arp_ignore".
func (s *sandbox) sysctl(key, value string) error {
	return s.do(func() error {
		path := filepath.Join("/proc/sys/net", key)
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl net/%s=%s: %w", key, value, err)
		}
		return nil
	})
}

// linkByName finds a link in the namespace; nil, nil when there is none.
func (s *sandbox) linkByName(name string) (netlink.Link, error) {
	l, err := s.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("find link %s in %s: %w", name, s.path, err)
	}
	return l, nil
}
