package main

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"

	"github.com/vmnet-dev/vmnet/backend/tap"
)

// check is CNI CHECK: the attachment is still what ADD made. It reads
// the TAP as the kernel reports it (flags, queue files, vnet header size,
// owner, group, MTU, MAC, up) and the connection (the two tc filters, or
// the bridge and its two ports), and names every difference with what it
// got and what the configuration wants.
func (p *plugin) check(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := c.applyArgs(args.Args); err != nil {
		return err
	}
	log := p.logger(c, "CHECK", args)
	if c.netConf.PrevResult == nil {
		return configError("prevResult", "CHECK needs the result of ADD (the runtime passes it as prevResult)")
	}
	prev, err := current.NewResultFromResult(c.netConf.PrevResult)
	if err != nil {
		return configError("prevResult", "%v", err)
	}
	st := newStore(c.dataDir, c.networkName)
	unlock, err := st.lock()
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := st.read(args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	if rec == nil {
		return fmt.Errorf("no attachment of container %s, interface %s in network %s (none recorded in %s)", args.ContainerID, args.IfName, c.networkName, st.dir)
	}
	listed := false
	for _, i := range prev.Interfaces {
		listed = listed || i.Name == rec.TAP && i.Sandbox == args.Netns
	}
	if !listed {
		return fmt.Errorf("the result has no interface %s in %s", rec.TAP, args.Netns)
	}
	sb, err := openSandbox(args.Netns)
	if err != nil {
		return err
	}
	defer sb.Close()
	alias := aliasFor(c.networkName, args.ContainerID, args.IfName)
	tapLink, err := ourLink(sb, rec.TAP, alias)
	if err != nil {
		return err
	}
	if tapLink == nil {
		return fmt.Errorf("tap %s: not in %s, or not this attachment's (alias is not %q)", rec.TAP, args.Netns, alias)
	}
	var peer netlink.Link
	if rec.Peer != "" {
		if peer, err = sb.linkByName(rec.Peer); err != nil {
			return err
		}
		if peer == nil {
			return fmt.Errorf("interface %s of the previous plugin is not in %s", rec.Peer, args.Netns)
		}
	}
	problems, err := checkTAP(c, rec, peer, log)
	if err != nil {
		return err
	}
	switch rec.Mode {
	case modeTCRedirect:
		for _, pair := range [][2]netlink.Link{{peer, tapLink}, {tapLink, peer}} {
			if err := verifyRedirect(sb, pair[0], pair[1]); err != nil {
				problems = append(problems, err.Error())
			}
		}
	case modeBridge:
		problems = append(problems, checkBridge(sb, rec, alias, tapLink, peer)...)
	}
	if len(problems) > 0 {
		return fmt.Errorf("tap %s in %s: %s", rec.TAP, args.Netns, strings.Join(problems, "; "))
	}
	if c.ipam != "" {
		return invoke.DelegateCheck(p.ctx, c.ipam, args.StdinData, nil)
	}
	return nil
}

// checkTAP compares the TAP with the configuration.
func checkTAP(c *config, rec *record, peer netlink.Link, log hclog.Logger) ([]string, error) {
	info, err := tap.Lookup(rec.TAP, rec.NetNS)
	if err != nil {
		return nil, err
	}
	var p []string
	want := func(ok bool, format string, args ...any) {
		if !ok {
			p = append(p, fmt.Sprintf(format, args...))
		}
	}
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	want(info.Type == "tap", "type %s, want tap", info.Type)
	want(info.MultiQueue == c.multiQueue, "multi_queue %s, want %s", onOff(info.MultiQueue), onOff(c.multiQueue))
	want(info.VnetHdr, "vnet_hdr off, want on")
	want(!info.PI, "packet information on, want IFF_NO_PI")
	want(info.Queues+info.DisabledQueues <= c.queues, "%d queue files attached (%d enabled), the configuration has %d queues",
		info.Queues+info.DisabledQueues, info.Queues, c.queues)
	want(info.Owner == idOrUnset(c.owner), "owner %d, want %d", info.Owner, idOrUnset(c.owner))
	want(info.Group == idOrUnset(c.group), "group %d, want %d", info.Group, idOrUnset(c.group))
	want(info.Up, "down, want up")
	mtu := c.mtu
	if mtu == 0 && peer != nil {
		mtu = peer.Attrs().MTU
	}
	want(mtu == 0 || info.MTU == mtu, "mtu %d, want %d", info.MTU, mtu)
	mac := c.mac
	if mac == nil && rec.Mode == modeTCRedirect && peer != nil {
		mac = peer.Attrs().HardwareAddr
	}
	want(mac == nil || info.MAC.String() == mac.String(), "mac %s, want %s", info.MAC, mac)
	// The header size can be read only from an idle TAP; a VMM that
	// attached has set its own (QEMU sets 12 for a virtio 1.0 guest).
	if info.VnetHdr && info.Queues == 0 {
		n, err := tap.VnetHdrSizeOf(rec.TAP, rec.NetNS)
		switch {
		case errors.Is(err, tap.ErrBusy):
		case err != nil:
			return nil, err
		default:
			want(n == c.vnetHdr, "vnet header %d bytes, want %d", n, c.vnetHdr)
		}
	} else {
		log.Debug("vnet header size not read: a VMM has the TAP open", "queues", info.Queues)
	}
	return p, nil
}

// idOrUnset is an owner or group as tap.Info reports it: -1 for unset.
func idOrUnset(id int) int {
	if id == 0 {
		return -1
	}
	return id
}

// checkBridge checks the bridge of mode bridge and its two ports.
func checkBridge(sb *sandbox, rec *record, alias string, tapLink, peer netlink.Link) []string {
	br, err := ourLink(sb, rec.Bridge, alias)
	if err != nil {
		return []string{err.Error()}
	}
	if br == nil {
		return []string{fmt.Sprintf("bridge %s: not in the namespace, or not this attachment's", rec.Bridge)}
	}
	var p []string
	if br.Attrs().Flags&net.FlagUp == 0 {
		p = append(p, fmt.Sprintf("bridge %s is down", rec.Bridge))
	}
	for _, l := range []netlink.Link{tapLink, peer} {
		if l.Attrs().MasterIndex != br.Attrs().Index {
			p = append(p, fmt.Sprintf("%s is not a port of bridge %s", l.Attrs().Name, rec.Bridge))
		}
	}
	return p
}
