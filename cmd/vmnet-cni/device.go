package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/offload"
)

// tapSpec is the TAP ADD makes, every value resolved.
type tapSpec struct {
	name       string // a name or a template with one %d
	queues     int
	multiQueue bool
	vnetHdr    int
	owner      int
	group      int
	offloads   offload.TunFlags
	steering   ebpf.Steering
	netNS      string // the namespace's path (CNI_NETNS)
	log        hclog.Logger
}

// made is what createTAP did, for the result and the log.
type made struct {
	name     string
	steering ebpf.Steering // in effect: auto resolved
}

// createTAP makes the TAP in the container's namespace and leaves it
// persistent, with no file open: the VMM attaches to it by name. The
// device is made persistent last, so a failure on the way leaves nothing.
//
// More than one queue, or multiQueue, makes a multi-queue TAP with the
// rtap lifecycle of backend/tap (IFF_TAP|IFF_MULTI_QUEUE|IFF_NO_PI|
// IFF_VNET_HDR, IFF_NAPI where the kernel has it) and the steering asked
// for. One queue makes a TAP without IFF_MULTI_QUEUE: a VMM that opens a
// one-queue NIC by name (QEMU with queues=1, Firecracker, libvirt) asks
// TUNSETIFF without that flag, and tun.c tun_set_iff refuses a flag that
// differs from the device's.
func createTAP(s tapSpec) (made, error) {
	if !s.multiQueue {
		return createSingle(s)
	}
	dev, err := tap.Create(tap.Options{
		Name:        s.name,
		Queues:      s.queues,
		VnetHdrSize: s.vnetHdr,
		Owner:       s.owner,
		Group:       s.group,
		Offloads:    s.offloads,
		NetNS:       s.netNS,
		DeferQueues: true, // the VMM opens the queues; the plugin needs none
		Logger:      s.log,
	})
	if err != nil {
		return made{}, fmt.Errorf("create tap %s: %w", s.name, err)
	}
	defer dev.Close()
	m := made{name: dev.Name()}
	// The TAP holds the program after the plugin exits (tun.c keeps
	// steering_prog in the device).
	if m.steering, err = backend.SetSteering(dev, s.steering, s.log); err != nil {
		return made{}, err
	}
	if err := dev.SetPersist(true); err != nil {
		return made{}, err
	}
	return m, nil
}

func createSingle(s tapSpec) (made, error) {
	f, name, err := tap.CreateSingleQueue(tap.SingleQueueOptions{
		Name:    s.name,
		Persist: true,
		Owner:   s.owner,
		Group:   s.group,
		NetNS:   s.netNS,
		Logger:  s.log,
	})
	if err != nil {
		return made{}, fmt.Errorf("create tap %s: %w", s.name, err)
	}
	defer f.Close()
	if err := configureSingle(f, name, s.vnetHdr, s.offloads); err != nil {
		f.Close()
		if derr := tap.Delete(name, s.netNS); derr != nil {
			err = errors.Join(err, derr)
		}
		return made{}, err
	}
	return made{name: name, steering: ebpf.SteeringKernel}, nil
}

// resolveOffloads turns the offloads setting into the TUNSETOFFLOAD set:
// auto is everything the kernel's TUN driver accepted when probed (none
// when it could not be probed), a list must be supported as written.
func resolveOffloads(c *config) (offload.TunFlags, error) {
	if c.offloads == "none" {
		return 0, nil
	}
	f, err := tap.Probe()
	if err != nil {
		return 0, err
	}
	if c.offloads == "auto" {
		if !f.OffloadsProbed || !f.Offloads.Valid() {
			return 0, nil
		}
		return f.Offloads, nil
	}
	if f.OffloadsProbed && !f.Supports(c.offloadSet) {
		return 0, fmt.Errorf("offloads %s: this kernel's TUN driver takes only %s: %w", c.offloadSet, f.Offloads, tap.ErrNotSupported)
	}
	return c.offloadSet, nil
}

// linkSetup is what ADD sets on the TAP's link once it exists.
type linkSetup struct {
	alias  string
	mac    net.HardwareAddr // nil keeps the kernel's
	mtu    int              // 0 keeps it
	bridge string           // "" for none
}

// configureTAP names the TAP's attachment in its alias, keeps the
// namespace's IPv6 stack from giving it a link-local address (it would
// send router and neighbour solicitations into the guest), then sets MAC,
// MTU, bridge and up, in qemu-bridge-helper's order (tap.ConfigureLink).
func configureTAP(sb *sandbox, name string, ls linkSetup, log hclog.Logger) error {
	l, err := sb.linkByName(name)
	if err != nil {
		return err
	}
	if l == nil {
		return fmt.Errorf("tap %s vanished from %s", name, sb.path)
	}
	if err := sb.nl.LinkSetAlias(l, ls.alias); err != nil {
		return fmt.Errorf("set alias of %s: %w", name, err)
	}
	noLinkLocal(sb, l, log)
	return tap.ConfigureLink(name, sb.path, tap.LinkConfig{MAC: ls.mac, MTU: ls.mtu, Bridge: ls.bridge, Up: true})
}

// noLinkLocal sets IPv6 address generation to none on a link the plugin
// made (IN6_ADDR_GEN_MODE_NONE); a namespace without IPv6 has nothing to
// turn off, so a failure is only logged.
func noLinkLocal(sb *sandbox, l netlink.Link, log hclog.Logger) {
	if err := sb.nl.LinkSetIP6AddrGenMode(l, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
		log.Debug("no IPv6 address generation mode set", "link", l.Attrs().Name, "error", err)
	}
}

// deleteOurs removes the links of the namespace whose alias is alias
// (TAP and bridge), and every tc filter of ours that redirects to one of
// them from another link, such as the previous plugin's interface. A
// peer whose ingress qdisc the plugin added (peerQdisc) loses it again
// once no filter is left on it.
func deleteOurs(sb *sandbox, alias, peer string, peerQdisc bool) error {
	links, err := listLinks(sb)
	if err != nil {
		return err
	}
	ours := map[int]netlink.Link{}
	for _, l := range links {
		if l.Attrs().Alias == alias {
			ours[l.Attrs().Index] = l
		}
	}
	var errs []error
	for _, l := range links {
		if _, mine := ours[l.Attrs().Index]; mine {
			continue
		}
		if err := removeRedirects(sb, l, ours); err != nil {
			errs = append(errs, err)
		}
		if peerQdisc && l.Attrs().Name == peer {
			if err := removeIdleIngress(sb, l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// TAPs first: a bridge that loses its ports last sends nothing odd.
	for _, kind := range []string{"tuntap", "bridge"} {
		for _, l := range ours {
			if l.Type() != kind {
				continue
			}
			if err := sb.nl.LinkDel(l); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete %s %s in %s: %w", kind, l.Attrs().Name, sb.path, err))
			}
		}
	}
	return errors.Join(errs...)
}

// listLinks lists the namespace's links, again if the kernel says the
// dump was interrupted by a change.
func listLinks(sb *sandbox) ([]netlink.Link, error) {
	var err error
	for range 5 {
		var links []netlink.Link
		if links, err = sb.nl.LinkList(); err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list links in %s: %w", sb.path, err)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}
