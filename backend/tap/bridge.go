package tap

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Bridges and the link settings a TAP needs before a hypervisor gets its
// files: what qemu-bridge-helper does with SIOCSIFHWADDR, SIOCSIFMTU,
// SIOCBRADDIF and SIOCSIFFLAGS, here over netlink in the device's network
// namespace.

// ErrNotBridge says a link exists under that name but is not a bridge.
var ErrNotBridge = errors.New("not a bridge")

// Bridge describes a Linux bridge as the kernel reports it.
type Bridge struct {
	Name  string
	Index int
	MTU   int
	MAC   net.HardwareAddr
	Up    bool // administratively up
}

// LookupBridge reports on the bridge name in network namespace netNS
// (see Options.NetNS; "" for the caller's). A missing link and a link of
// another kind are errors; the second matches ErrNotBridge.
func LookupBridge(name, netNS string) (br Bridge, err error) {
	err = withNetNS(name, netNS, func(ns netns.NsHandle) error {
		h, l, op, err := openLink(ns, name)
		if err != nil {
			return fmt.Errorf("bridge %s: %s: %w", name, op, err)
		}
		defer h.Close()
		if _, ok := l.(*netlink.Bridge); !ok {
			return fmt.Errorf("bridge %s: link type %s: %w", name, l.Type(), ErrNotBridge)
		}
		a := l.Attrs()
		br = Bridge{Name: a.Name, Index: a.Index, MTU: a.MTU, MAC: a.HardwareAddr, Up: a.Flags&net.FlagUp != 0}
		return nil
	})
	return br, err
}

// LinkConfig is what ConfigureLink sets on a TAP. The zero value changes
// nothing.
type LinkConfig struct {
	// MAC is the TAP's own (host side) address; nil keeps the kernel's.
	MAC net.HardwareAddr
	// MTU is set before the TAP joins a bridge; 0 keeps it.
	MTU int
	// Bridge makes the TAP a port of that bridge (IFLA_MASTER); "" leaves
	// it alone.
	Bridge string
	// Up brings the link administratively up, last.
	Up bool
}

// ConfigureLink applies c to the TUN/TAP device name in network namespace
// netNS, in qemu-bridge-helper's order: MAC, MTU, bridge, up. It refuses
// a link that is not a TUN/TAP device, and a Bridge that is not a bridge.
func ConfigureLink(name, netNS string, c LinkConfig) error {
	if c.MTU != 0 {
		if err := CheckMTU(c.MTU); err != nil {
			return &OpError{Device: name, Queue: -1, Op: "RTM_SETLINK mtu", Err: err}
		}
	}
	return withNetNS(name, netNS, func(ns netns.NsHandle) error { return configureLink(ns, name, c) })
}

func configureLink(ns netns.NsHandle, name string, c LinkConfig) error {
	h, l, op, err := openLink(ns, name)
	if err != nil {
		return &OpError{Device: name, Queue: -1, Op: op, Err: err}
	}
	defer h.Close()
	if _, err := tuntap(name, l); err != nil {
		return err
	}
	if c.MAC != nil {
		if err := h.LinkSetHardwareAddr(l, c.MAC); err != nil {
			return &OpError{Device: name, Queue: -1, Op: "RTM_SETLINK address " + c.MAC.String(), Err: err}
		}
	}
	if c.MTU != 0 {
		if err := h.LinkSetMTU(l, c.MTU); err != nil {
			return &OpError{Device: name, Queue: -1, Op: fmt.Sprintf("RTM_SETLINK mtu %d", c.MTU), Err: err}
		}
	}
	if c.Bridge != "" {
		br, err := h.LinkByName(c.Bridge)
		if err != nil {
			return &OpError{Device: name, Queue: -1, Op: "RTM_GETLINK bridge " + c.Bridge, Err: err}
		}
		if _, ok := br.(*netlink.Bridge); !ok {
			return &OpError{Device: name, Queue: -1, Op: "RTM_SETLINK master " + c.Bridge, Err: fmt.Errorf("link type %s: %w", br.Type(), ErrNotBridge)}
		}
		if err := h.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
			return &OpError{Device: name, Queue: -1, Op: "RTM_SETLINK master " + c.Bridge, Err: err}
		}
	}
	if c.Up {
		if err := h.LinkSetUp(l); err != nil {
			return &OpError{Device: name, Queue: -1, Op: "RTM_SETLINK up", Err: err}
		}
	}
	return nil
}

// Master names the bridge (or other master) the link name is a port of in
// netNS; "" when it has none.
func Master(name, netNS string) (master string, err error) {
	err = withNetNS(name, netNS, func(ns netns.NsHandle) error {
		master, err = masterOf(ns, name)
		return err
	})
	return master, err
}

func masterOf(ns netns.NsHandle, name string) (string, error) {
	h, l, op, err := openLink(ns, name)
	if err != nil {
		return "", &OpError{Device: name, Queue: -1, Op: op, Err: err}
	}
	defer h.Close()
	idx := l.Attrs().MasterIndex
	if idx == 0 {
		return "", nil
	}
	m, err := h.LinkByIndex(idx)
	if err != nil {
		return "", &OpError{Device: name, Queue: -1, Op: fmt.Sprintf("RTM_GETLINK master index %d", idx), Err: err}
	}
	return m.Attrs().Name, nil
}
