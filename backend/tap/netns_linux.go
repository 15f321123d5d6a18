package tap

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// A TUN file belongs to the network namespace of the thread that opened
// /dev/net/tun, and TUNSETIFF finds or creates the device there. So every
// open of a device that lives in another namespace happens on a locked
// thread that visits that namespace for the length of the open, and link
// attributes go through a netlink socket opened in it.

// openNetNS returns a handle for spec ("" for none, a name under /run/netns
// or an absolute path). The handle is an fd the caller closes.
func openNetNS(spec string) (netns.NsHandle, error) {
	if spec == "" {
		return netns.None(), nil
	}
	var h netns.NsHandle
	var err error
	if strings.HasPrefix(spec, "/") {
		h, err = netns.GetFromPath(spec)
	} else {
		h, err = netns.GetFromName(spec)
	}
	if err != nil {
		return netns.None(), fmt.Errorf("open network namespace %s: %w", spec, err)
	}
	return h, nil
}

// inNetNS runs fn on a thread in namespace ns (or right here for none).
func inNetNS(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("read current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the other namespace: leave it locked so
		// the runtime retires it with this goroutine instead of reusing it.
		return fmt.Errorf("return to original network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// netlinkHandle opens a netlink socket in ns (or the caller's).
func netlinkHandle(ns netns.NsHandle) (*netlink.Handle, error) {
	if !ns.IsOpen() {
		return netlink.NewHandle()
	}
	return netlink.NewHandleAt(ns)
}

// CheckNetNS reports whether spec names a network namespace vmnet can use
// (see Options.NetNS).
func CheckNetNS(spec string) error {
	h, err := openNetNS(spec)
	if err != nil {
		return err
	}
	if h.IsOpen() {
		h.Close()
	}
	return nil
}
