package tap

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Link attributes (MAC, MTU, up/down, namespace) go through netlink, in
// the device's network namespace.

// Info describes a TUN/TAP device as the kernel reports it over netlink
// (the IFLA_TUN_* attributes and the link's own).
type Info struct {
	Name           string
	Index          int
	Type           string // "tap" or "tun"
	MultiQueue     bool
	VnetHdr        bool
	PI             bool
	Persist        bool
	Queues         int // files attached to traffic
	DisabledQueues int // files detached (the keep-alive file is one)
	Owner, Group   int // -1 when unset (or root)
	MAC            net.HardwareAddr
	MTU            int
	Up             bool // administratively up
	Carrier        bool // operationally up (a queue is attached and the link is up)
	Stats          LinkStats
}

// ErrNotTap says a link exists under that name but is not a TUN/TAP
// device, so vmnet will neither open nor delete it.
var ErrNotTap = errors.New("not a TUN/TAP device")

// Lookup reports on the TUN/TAP device name in network namespace netNS
// (see Options.NetNS; "" for the caller's).
func Lookup(name, netNS string) (info Info, err error) {
	err = withNetNS(name, netNS, func(ns netns.NsHandle) error {
		info, err = lookup(ns, name)
		return err
	})
	return info, err
}

// withNetNS checks the interface name, opens network namespace netNS (see
// Options.NetNS) and runs fn with it.
func withNetNS(name, netNS string, fn func(netns.NsHandle) error) error {
	if err := ValidateName(name, false); err != nil {
		return err
	}
	ns, err := openNetNS(netNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	return fn(ns)
}

// openLink opens a netlink socket in ns and finds the link name there. On
// failure it says which step failed (op) and why; on success the caller
// closes the handle.
func openLink(ns netns.NsHandle, name string) (h *netlink.Handle, l netlink.Link, op string, err error) {
	if h, err = netlinkHandle(ns); err != nil {
		return nil, nil, "open netlink", err
	}
	if l, err = h.LinkByName(name); err != nil {
		h.Close()
		return nil, nil, "RTM_GETLINK", err
	}
	return h, l, "", nil
}

// tuntap is l as a TUN/TAP device, or an error matching ErrNotTap.
func tuntap(name string, l netlink.Link) (*netlink.Tuntap, error) {
	t, ok := l.(*netlink.Tuntap)
	if !ok {
		return nil, &OpError{Device: name, Queue: -1, Op: "RTM_GETLINK", Err: fmt.Errorf("link type %s: %w", l.Type(), ErrNotTap)}
	}
	return t, nil
}

func lookup(ns netns.NsHandle, name string) (Info, error) {
	h, link, op, err := openLink(ns, name)
	if err != nil {
		return Info{}, &OpError{Device: name, Queue: -1, Op: op, Err: err}
	}
	defer h.Close()
	t, err := tuntap(name, link)
	if err != nil {
		return Info{}, err
	}
	a := t.Attrs()
	info := Info{
		Name:           a.Name,
		Index:          a.Index,
		Type:           "tun",
		MultiQueue:     t.Flags&netlink.TUNTAP_MULTI_QUEUE != 0,
		VnetHdr:        t.Flags&netlink.TUNTAP_VNET_HDR != 0,
		PI:             t.Flags&netlink.TUNTAP_NO_PI == 0,
		Persist:        !t.NonPersist,
		Queues:         t.Queues,
		DisabledQueues: t.DisabledQueues,
		Owner:          idOrUnset(t.Owner),
		Group:          idOrUnset(t.Group),
		MAC:            a.HardwareAddr,
		MTU:            a.MTU,
	}
	st := linkStateOf(a)
	info.Up, info.Carrier = st.Up, st.Carrier
	info.Stats = linkStatsOf(a)
	if t.Mode == netlink.TUNTAP_MODE_TAP {
		info.Type = "tap"
	}
	return info, nil
}

// idOrUnset maps an unset owner or group to -1. tun.c tun_fill_info omits
// the attribute for INVALID_UID/GID, which leaves 0 here; root needs no
// grant, so 0 reads as unset too.
func idOrUnset(v uint32) int {
	if v == ^uint32(0) || v == 0 {
		return -1
	}
	return int(v)
}

// Delete removes the TUN/TAP device name from network namespace netNS,
// persistent or not. It refuses to touch a link of any other kind.
func Delete(name, netNS string) error {
	return withNetNS(name, netNS, func(ns netns.NsHandle) error {
		h, l, op, err := openLink(ns, name)
		if err != nil {
			return &OpError{Device: name, Queue: -1, Op: op, Err: err}
		}
		defer h.Close()
		if _, err := tuntap(name, l); err != nil {
			return err
		}
		if err := h.LinkDel(l); err != nil {
			return &OpError{Device: name, Queue: -1, Op: "RTM_DELLINK", Err: err}
		}
		return nil
	})
}

func withLink(ns netns.NsHandle, name, op string, fn func(*netlink.Handle, netlink.Link) error) error {
	h, l, lop, err := openLink(ns, name)
	if err != nil {
		return &OpError{Device: name, Queue: -1, Op: lop, Err: err}
	}
	defer h.Close()
	if err := fn(h, l); err != nil {
		return &OpError{Device: name, Queue: -1, Op: op, Err: err}
	}
	return nil
}

func (d *Device) link(op string, fn func(*netlink.Handle, netlink.Link) error) error {
	d.mu.Lock()
	ns, name, closed := d.ns, d.name, d.closed
	d.mu.Unlock()
	if closed {
		return d.opErr(-1, op, net.ErrClosed)
	}
	return withLink(ns, name, op, fn)
}

// Info reports the device as the kernel sees it now.
func (d *Device) Info() (Info, error) {
	d.mu.Lock()
	ns, name := d.ns, d.name
	d.mu.Unlock()
	return lookup(ns, name)
}

// SetMAC sets the device's MAC address.
func (d *Device) SetMAC(mac net.HardwareAddr) error {
	return d.link("RTM_SETLINK address", func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetHardwareAddr(l, mac) })
}

// MinMTU and MaxMTU bound the MTU of a TAP device: tun.c
// tun_net_initialize sets its min_mtu to MIN_MTU (68) and its max_mtu to
// MAX_MTU (65535) less the Ethernet header (ETH_HLEN), and dev_validate_mtu
// refuses an MTU outside them with EINVAL. The MTU a guest is offered has
// the wider bounds of its config field (virtio.MinMTU, virtio.MaxMTU).
const (
	MinMTU = 68
	MaxMTU = 65535 - 14
)

// CheckMTU refuses, as an *OptionError, an MTU the kernel would refuse for
// a TAP: one outside MinMTU to MaxMTU.
func CheckMTU(mtu int) error {
	if mtu < MinMTU || mtu > MaxMTU {
		return &OptionError{Option: "mtu", Value: mtu, Reason: fmt.Sprintf("want %d to %d (tun.c MIN_MTU, MAX_MTU less ETH_HLEN)", MinMTU, MaxMTU)}
	}
	return nil
}

// SetMTU sets the device's MTU, which CheckMTU must take.
func (d *Device) SetMTU(mtu int) error {
	if err := CheckMTU(mtu); err != nil {
		return d.opErr(-1, "RTM_SETLINK mtu", err)
	}
	return d.link("RTM_SETLINK mtu", func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetMTU(l, mtu) })
}

// SetUp brings the link administratively up or down.
func (d *Device) SetUp(up bool) error {
	if up {
		return d.link("RTM_SETLINK up", func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetUp(l) })
	}
	return d.link("RTM_SETLINK down", func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetDown(l) })
}

// MoveToNetNS moves the device into network namespace netNS (a name under
// /run/netns or a path). Its files keep working; queues opened later are
// opened there. The kernel keeps the name unless it clashes, in which
// case the move fails with EEXIST.
func (d *Device) MoveToNetNS(netNS string) error {
	target, err := openNetNS(netNS)
	if err != nil {
		return err
	}
	if !target.IsOpen() {
		return d.opErr(-1, "RTM_SETLINK netns", &OptionError{Option: "network namespace", Value: quote(netNS), Reason: "empty"})
	}
	err = d.link("RTM_SETLINK netns", func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetNsFd(l, int(target)) })
	if err != nil {
		target.Close()
		return err
	}
	d.mu.Lock()
	old := d.ns
	d.ns = target
	d.mu.Unlock()
	if old.IsOpen() {
		old.Close()
	}
	d.log.Debug("moved to network namespace", "netns", netNS)
	return nil
}
