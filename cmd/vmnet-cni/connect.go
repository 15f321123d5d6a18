package main

import (
	"errors"
	"fmt"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// How the TAP meets the interface the previous plugin made in the
// container's namespace (the peer, eth0 after ptp or bridge).
//
// tc-redirect, as tc-redirect-tap wires it: an ingress qdisc on each of
// the two (or the clsact a CNI may have put there) and one u32 filter on
// each that matches every frame and redirects it to the other's egress
// (act_mirred). What arrives from the cluster on the peer goes out of the
// TAP to the guest; what the guest sends arrives on the TAP's ingress and
// leaves through the peer. The namespace's own stack never sees either,
// so the guest takes the peer's MAC and addresses.
//
// bridge, as KubeVirt's managed TAP: a bridge in the namespace with the
// peer and the TAP as ports. The guest has a MAC of its own; the bridge
// carries no address and answers no ARP (arp_ignore=1), so the addresses
// left on the peer (ptp's and bridge's CHECK look for them) do not
// answer for the guest.

// filterPriority is the tc priority of the plugin's redirect filters
// ("VM"); the plugin adds, finds and deletes filters at this priority on
// ingress only, so it never touches another tool's.
const filterPriority = 0x564d

// connectRedirect wires peer and TAP with a redirect filter each way. It
// returns whether it added the peer's ingress qdisc (DEL removes it again).
// Filters that are already there are kept: ADD may run again.
func connectRedirect(sb *sandbox, peer, tapLink netlink.Link) (peerQdisc bool, err error) {
	if peerQdisc, err = ensureIngress(sb, peer); err != nil {
		return false, err
	}
	if _, err := ensureIngress(sb, tapLink); err != nil {
		return peerQdisc, err
	}
	if err := addRedirect(sb, peer, tapLink); err != nil {
		return peerQdisc, err
	}
	return peerQdisc, addRedirect(sb, tapLink, peer)
}

// ensureIngress gives l an ingress qdisc unless it has one, or a clsact
// (whose ingress hook tc filters reach the same way, ffff:fff1). It
// reports whether it added one.
func ensureIngress(sb *sandbox, l netlink.Link) (bool, error) {
	if has, err := hasIngress(sb, l); err != nil || has {
		return false, err
	}
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: l.Attrs().Index,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_INGRESS,
	}}
	if err := sb.nl.QdiscAdd(q); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return false, nil
		}
		return false, fmt.Errorf("add ingress qdisc to %s: %w", l.Attrs().Name, err)
	}
	return true, nil
}

// hasIngress reports whether l has an ingress or clsact qdisc.
func hasIngress(sb *sandbox, l netlink.Link) (bool, error) {
	qs, err := sb.nl.QdiscList(l)
	if err != nil {
		return false, fmt.Errorf("list qdiscs of %s: %w", l.Attrs().Name, err)
	}
	for _, q := range qs {
		if t := q.Type(); t == "ingress" || t == "clsact" {
			return true, nil
		}
	}
	return false, nil
}

// ourFilters are the plugin's redirect filters on l's ingress.
func ourFilters(sb *sandbox, l netlink.Link) ([]*netlink.U32, error) {
	if has, err := hasIngress(sb, l); err != nil || !has {
		return nil, err
	}
	var fs []netlink.Filter
	var err error
	for range 5 {
		if fs, err = sb.nl.FilterList(l, netlink.HANDLE_MIN_INGRESS); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list ingress filters of %s: %w", l.Attrs().Name, err)
	}
	var out []*netlink.U32
	for _, f := range fs {
		if u, ok := f.(*netlink.U32); ok && u.Priority == filterPriority {
			out = append(out, u)
		}
	}
	return out, nil
}

// redirectsTo reports whether f redirects to the link with index to.
func redirectsTo(f *netlink.U32, to int) bool {
	for _, a := range f.Actions {
		if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && m.Ifindex == to {
			return true
		}
	}
	return false
}

// addRedirect makes every frame arriving on from leave through to. A
// filter of the plugin's already doing so is kept; one redirecting
// elsewhere (a TAP made anew) is replaced.
func addRedirect(sb *sandbox, from, to netlink.Link) error {
	fs, err := ourFilters(sb, from)
	if err != nil {
		return err
	}
	for _, f := range fs {
		if redirectsTo(f, to.Attrs().Index) {
			return nil
		}
	}
	if len(fs) > 0 {
		if err := deleteRedirects(sb, from); err != nil {
			return err
		}
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from.Attrs().Index,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Priority:  filterPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		// No selector: netlink's u32 default matches every frame.
		Actions: []netlink.Action{netlink.NewMirredAction(to.Attrs().Index)},
	}
	if err := sb.nl.FilterAdd(f); err != nil {
		return fmt.Errorf("add tc filter redirecting %s to %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// deleteRedirects removes the plugin's whole filter priority from l's
// ingress (handle 0 deletes the u32 classifier with its hash table).
func deleteRedirects(sb *sandbox, l netlink.Link) error {
	f := &netlink.U32{FilterAttrs: netlink.FilterAttrs{
		LinkIndex: l.Attrs().Index,
		Parent:    netlink.HANDLE_MIN_INGRESS,
		Priority:  filterPriority,
		Protocol:  unix.ETH_P_ALL,
	}}
	if err := sb.nl.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete tc filters of %s: %w", l.Attrs().Name, err)
	}
	return nil
}

// removeRedirects deletes the plugin's filters on l that redirect to one
// of ours, or to a link that no longer exists.
func removeRedirects(sb *sandbox, l netlink.Link, ours map[int]netlink.Link) error {
	fs, err := ourFilters(sb, l)
	if err != nil || len(fs) == 0 {
		return err
	}
	for _, f := range fs {
		dangling := true
		for _, a := range f.Actions {
			if m, ok := a.(*netlink.MirredAction); ok {
				if _, mine := ours[m.Ifindex]; mine {
					return deleteRedirects(sb, l)
				}
				if _, err := sb.nl.LinkByIndex(m.Ifindex); err == nil {
					dangling = false
				}
			}
		}
		if dangling {
			return deleteRedirects(sb, l)
		}
	}
	return nil
}

// removeIdleIngress deletes l's ingress qdisc (never a clsact) once no
// filter is left on it.
func removeIdleIngress(sb *sandbox, l netlink.Link) error {
	qs, err := sb.nl.QdiscList(l)
	if err != nil {
		return fmt.Errorf("list qdiscs of %s: %w", l.Attrs().Name, err)
	}
	for _, q := range qs {
		if q.Type() != "ingress" {
			continue
		}
		fs, err := sb.nl.FilterList(l, netlink.HANDLE_MIN_INGRESS)
		if err != nil || len(fs) > 0 {
			return nil
		}
		if err := sb.nl.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("delete ingress qdisc of %s: %w", l.Attrs().Name, err)
		}
	}
	return nil
}

// ensureBridge returns the attachment's bridge, making it when it is not
// there: the peer's MTU, the attachment's alias, no IPv6 address, no ARP
// answers, up. A link of that name that is not this attachment's bridge
// is refused.
func ensureBridge(sb *sandbox, name, alias string, mtu int, log hclog.Logger) (netlink.Link, error) {
	l, err := sb.linkByName(name)
	if err != nil {
		return nil, err
	}
	if l != nil {
		if l.Type() != "bridge" || l.Attrs().Alias != alias {
			return nil, configError("bridge", "%q: the namespace has a %s by that name that is not this attachment's (alias %q)", name, l.Type(), l.Attrs().Alias)
		}
	} else {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = name, mtu
		if err := sb.nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return nil, fmt.Errorf("add bridge %s in %s: %w", name, sb.path, err)
		}
		if l, err = sb.linkByName(name); err != nil || l == nil {
			return nil, fmt.Errorf("find new bridge %s in %s: %w", name, sb.path, err)
		}
		if err := sb.nl.LinkSetAlias(l, alias); err != nil {
			sb.nl.LinkDel(l)
			return nil, fmt.Errorf("set alias of bridge %s: %w", name, err)
		}
	}
	noLinkLocal(sb, l, log)
	if err := sb.sysctl("ipv4/conf/"+name+"/arp_ignore", "1"); err != nil {
		return nil, err
	}
	if err := sb.nl.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return l, nil
}

// joinBridge makes l a port of br, unless it is one already.
func joinBridge(sb *sandbox, l, br netlink.Link) error {
	if l.Attrs().MasterIndex == br.Attrs().Index {
		return nil
	}
	if err := sb.nl.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("make %s a port of bridge %s: %w", l.Attrs().Name, br.Attrs().Name, err)
	}
	return nil
}

// verifyRedirect checks that a filter of the plugin's redirects every
// frame arriving on from to to.
func verifyRedirect(sb *sandbox, from, to netlink.Link) error {
	fs, err := ourFilters(sb, from)
	if err != nil {
		return err
	}
	for _, f := range fs {
		if redirectsTo(f, to.Attrs().Index) {
			return nil
		}
	}
	return fmt.Errorf("no tc filter redirects %s's ingress to %s (u32, priority %#x)", from.Attrs().Name, to.Attrs().Name, filterPriority)
}
