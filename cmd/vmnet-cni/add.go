package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"

	"github.com/vmnet-dev/vmnet/backend/tap"
)

// attachment is one ADD's names, resolved from the configuration and the
// runtime's arguments.
type attachment struct {
	containerID string
	ifName      string
	netNS       string
	alias       string
	tapName     string // a name or a template
	bridge      string // mode bridge only
	mode        string
	peer        string // the previous plugin's interface; "" standalone
}

// add is CNI ADD: make (or find again) the attachment's TAP, connect it,
// record it, print the result.
func (p *plugin) add(args *skel.CmdArgs) (err error) {
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := c.applyArgs(args.Args); err != nil {
		return err
	}
	log := p.logger(c, "ADD", args)
	a, prev, err := c.resolve(args)
	if err != nil {
		return err
	}
	// Settings that need the kernel are resolved before anything changes.
	offloads, err := resolveOffloads(c)
	if errors.Is(err, tap.ErrNotSupported) {
		return configError("offloads", "%v", err)
	}
	if err != nil {
		return err
	}

	st := newStore(c.dataDir, c.networkName)
	unlock, err := st.lock()
	if err != nil {
		return err
	}
	defer unlock()
	sb, err := openSandbox(args.Netns)
	if errors.Is(err, errNoNetNS) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS "+err.Error(), "")
	}
	if err != nil {
		return err
	}
	defer sb.Close()

	var peer netlink.Link
	if a.peer != "" {
		if peer, err = sb.linkByName(a.peer); err != nil {
			return err
		}
		if peer == nil {
			return configError("prevResult", "interface %s is not in %s", a.peer, args.Netns)
		}
	}

	rec, err := st.read(a.containerID, a.ifName)
	if err != nil {
		return err
	}
	// A record of this attachment in another namespace is stale (the
	// runtime made a new sandbox for the same container): clear it first.
	if rec != nil && rec.NetNS != args.Netns {
		log.Info("clearing the attachment's earlier namespace", "netns", rec.NetNS)
		if err := clearAttachment(rec, a.alias); err != nil {
			return err
		}
		rec = nil
	}

	// ADD again: the TAP of the record is still there and ours.
	var tapLink netlink.Link
	if rec != nil {
		if tapLink, err = ourLink(sb, rec.TAP, a.alias); err != nil {
			return err
		}
	}
	if tapLink == nil {
		if err := checkNameFree(sb, a.tapName, a.alias, "tapName"); err != nil {
			return err
		}
		if a.mode == modeBridge {
			if err := checkNameFree(sb, a.bridge, a.alias, "bridge"); err != nil {
				return err
			}
		}
	}

	// Standalone with IPAM: the addresses are the guest's. Asked once per
	// attachment (until DEL releases them); a repeated ADD uses the
	// recorded result again, also when the TAP has to be made anew.
	var ipamResult *current.Result
	if c.ipam != "" {
		if rec != nil && len(rec.Result) > 0 {
			if ipamResult, err = parseResult(rec.Result); err != nil {
				return err
			}
		} else {
			var r types.Result
			if r, err = invoke.DelegateAdd(p.ctx, c.ipam, args.StdinData, nil); err != nil {
				return err
			}
			defer func() {
				if err != nil {
					if derr := invoke.DelegateDel(p.ctx, c.ipam, args.StdinData, nil); derr != nil {
						log.Warn("release the IPAM plugin's addresses after a failed ADD", "ipam", c.ipam, "error", derr)
					}
				}
			}()
			if ipamResult, err = current.NewResultFromResult(r); err != nil {
				return err
			}
			if len(ipamResult.IPs) == 0 {
				return fmt.Errorf("IPAM plugin %s returned no address", c.ipam)
			}
		}
	}

	if tapLink == nil {
		var m made
		m, err = createTAP(tapSpec{
			name: a.tapName, queues: c.queues, multiQueue: c.multiQueue, vnetHdr: c.vnetHdr,
			owner: c.owner, group: c.group, offloads: offloads, steering: c.steering,
			netNS: args.Netns, log: log,
		})
		if err != nil {
			return err
		}
		log.Info("tap made", "tap", m.name, "queues", c.queues, "vnet_hdr", c.vnetHdr, "offloads", offloads.String(), "steering", m.steering)
		defer func() {
			if err != nil {
				derr := deleteOurs(sb, a.alias, a.peer, false)
				// Before its alias was set, the TAP is known by name only.
				if l, _ := sb.linkByName(m.name); l != nil {
					derr = errors.Join(derr, tap.Delete(m.name, args.Netns))
				}
				if derr != nil {
					log.Warn("remove the half-made attachment", "error", derr)
				}
			}
		}()
		if tapLink, err = sb.linkByName(m.name); err != nil || tapLink == nil {
			return fmt.Errorf("find new tap %s in %s: %w", m.name, args.Netns, err)
		}
		if err := sb.nl.LinkSetAlias(tapLink, a.alias); err != nil {
			return fmt.Errorf("set alias of %s: %w", m.name, err)
		}
	}

	peerQdisc, err := connect(sb, c, a, peer, tapLink, log)
	if err != nil {
		return err
	}
	if tapLink, err = sb.linkByName(tapLink.Attrs().Name); err != nil || tapLink == nil {
		return fmt.Errorf("find tap %s in %s: %w", a.tapName, args.Netns, err)
	}
	result := buildResult(c, a, prev, ipamResult, tapLink, sb)
	data, err := json.Marshal(result)
	if err != nil {
		return err
	}
	newRec := &record{
		ContainerID: a.containerID, IfName: a.ifName, NetNS: args.Netns,
		TAP: tapLink.Attrs().Name, Mode: a.mode, Peer: a.peer, Bridge: a.bridge,
		PeerQdisc: peerQdisc || rec != nil && rec.PeerQdisc,
		Result:    data,
	}
	out, err := resultAs(result, c.cniVersion)
	if err != nil {
		return err
	}
	if err := st.write(newRec); err != nil {
		return err
	}
	return out.PrintTo(p.stdout)
}

// resultAs converts the result to the configuration's CNI version. A
// result of 0.1.0 or 0.2.0 holds addresses only: an attachment without
// any (no ipam) is refused there, as a version error.
func resultAs(r *current.Result, v string) (types.Result, error) {
	out, err := r.GetAsVersion(v)
	if err != nil {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("result as CNI %s: %v", v, err),
			"CNI 0.2.0 and older results carry only IP addresses; use cniVersion 0.3.0 or later")
	}
	return out, nil
}

// resolve works out the attachment's names and mode, and reads the
// previous result; a configuration that cannot work here is refused
// before anything changes.
func (c *config) resolve(args *skel.CmdArgs) (attachment, *current.Result, error) {
	a := attachment{
		containerID: args.ContainerID,
		ifName:      args.IfName,
		netNS:       args.Netns,
		alias:       aliasFor(c.networkName, args.ContainerID, args.IfName),
		tapName:     c.tapName,
		mode:        c.mode,
	}
	if a.tapName == "" {
		a.tapName = tapNameFor(args.IfName)
	}
	if v3, _ := version.GreaterThanOrEqualTo(c.cniVersion, "0.3.0"); !v3 && c.ipam == "" {
		return a, nil, types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("cniVersion %s: its results carry IP addresses only, and without ipam the TAP has none; use 0.3.0 or later", c.cniVersion), "")
	}
	var prev *current.Result
	if c.netConf.PrevResult != nil {
		if c.ipam != "" {
			return a, nil, configError("ipam", "vmnet follows another plugin in this chain and passes on its addresses (prevResult); remove ipam, or run vmnet first in the list")
		}
		var err error
		if prev, err = current.NewResultFromResult(c.netConf.PrevResult); err != nil {
			return a, nil, configError("prevResult", "%v", err)
		}
		if a.mode == "" {
			a.mode = modeTCRedirect
		}
		if a.mode != modeNone {
			for _, i := range prev.Interfaces {
				if i.Name == args.IfName && i.Sandbox != "" {
					a.peer = i.Name
				}
			}
			if a.peer == "" {
				return a, nil, configError("prevResult", "no interface %q in the container's namespace: mode %s connects the TAP to the interface the previous plugin made there", args.IfName, a.mode)
			}
		}
	} else {
		if a.mode == modeTCRedirect || a.mode == modeBridge {
			return a, nil, configError("mode", "%s connects the TAP to the interface of the plugin before vmnet in the chain, and there is none (no prevResult)", a.mode)
		}
		a.mode = modeNone
	}
	if a.mode == modeBridge {
		a.bridge = c.bridge
		if a.bridge == "" {
			a.bridge = bridgeNameFor(args.IfName)
		}
		if a.bridge == a.tapName || a.bridge == a.peer {
			return a, nil, configError("bridge", "%q is also the name of the TAP or of the previous interface", a.bridge)
		}
	}
	if a.tapName == a.peer {
		return a, nil, configError("tapName", "%q is the name of the previous plugin's interface; the TAP needs a name of its own", a.tapName)
	}
	return a, prev, nil
}

// ourLink returns the link name if it carries the attachment's alias;
// nil when it is gone or not ours.
func ourLink(sb *sandbox, name, alias string) (netlink.Link, error) {
	l, err := sb.linkByName(name)
	if err != nil || l == nil || l.Attrs().Alias != alias {
		return nil, err
	}
	return l, nil
}

// checkNameFree refuses a fixed name the namespace already has, unless
// that link is the attachment's own, left by an ADD that failed half way
// (its alias says so): that one is deleted and made anew.
func checkNameFree(sb *sandbox, name, alias, field string) error {
	if name == "" || tap.IsTemplate(name) {
		return nil
	}
	l, err := sb.linkByName(name)
	if err != nil || l == nil {
		return err
	}
	if l.Attrs().Alias == alias {
		if err := sb.nl.LinkDel(l); err != nil {
			return fmt.Errorf("delete leftover %s %s: %w", l.Type(), name, err)
		}
		return nil
	}
	return configError(field, "%q: the namespace already has a %s by that name (alias %q) that is not this attachment's", name, l.Type(), l.Attrs().Alias)
}

// connect sets the TAP's link and joins it to the peer as the mode says.
// The MTU is the configuration's, else the peer's; the MAC is the
// configuration's, else in tc-redirect mode the peer's (the guest must
// take the peer's MAC, and the TAP in the result says which), in bridge
// mode the kernel's with 0xfe first (a bridge takes the lowest port MAC
// as its own, and the TAP's must never be it), standalone the kernel's.
func connect(sb *sandbox, c *config, a attachment, peer, tapLink netlink.Link, log hclog.Logger) (peerQdisc bool, err error) {
	ls := linkSetup{alias: a.alias, mac: c.mac, mtu: c.mtu}
	if peer != nil && ls.mtu == 0 {
		ls.mtu = peer.Attrs().MTU
	}
	if ls.mac == nil {
		switch a.mode {
		case modeTCRedirect:
			ls.mac = peer.Attrs().HardwareAddr
		case modeBridge:
			if m := tapLink.Attrs().HardwareAddr; len(m) == 6 && m[0] != 0xfe {
				ls.mac = append(net.HardwareAddr{0xfe}, m[1:]...)
			}
		}
	}
	switch a.mode {
	case modeBridge:
		br, err := ensureBridge(sb, a.bridge, a.alias, ls.mtu, log)
		if err != nil {
			return false, err
		}
		if err := joinBridge(sb, peer, br); err != nil {
			return false, err
		}
		ls.bridge = a.bridge
		return false, configureTAP(sb, tapLink.Attrs().Name, ls, log)
	case modeTCRedirect:
		if err := configureTAP(sb, tapLink.Attrs().Name, ls, log); err != nil {
			return false, err
		}
		return connectRedirect(sb, peer, tapLink)
	default:
		return false, configureTAP(sb, tapLink.Attrs().Name, ls, log)
	}
}

// buildResult is ADD's result. Chained: the previous result with the
// bridge (mode bridge) and the TAP added to its interfaces; its addresses
// stay where they are, for the guest to take. Standalone: the TAP, and the
// IPAM plugin's addresses on it.
func buildResult(c *config, a attachment, prev, ipamResult *current.Result, tapLink netlink.Link, sb *sandbox) *current.Result {
	tapIf := &current.Interface{
		Name:    tapLink.Attrs().Name,
		Mac:     tapLink.Attrs().HardwareAddr.String(),
		Mtu:     tapLink.Attrs().MTU,
		Sandbox: a.netNS,
	}
	ours := func(i *current.Interface) bool {
		return i.Sandbox == a.netNS && (i.Name == tapIf.Name || a.mode == modeBridge && i.Name == a.bridge) ||
			i.Sandbox == a.containerID && i.Name == tapIf.Name
	}
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	switch {
	case prev != nil:
		r.DNS, r.Routes = prev.DNS, prev.Routes
		// A previous result may already hold this attachment's links (a
		// runtime repeating ADD with the chain's last result): each once.
		index := map[int]int{}
		for i, iface := range prev.Interfaces {
			if ours(iface) {
				continue
			}
			index[i] = len(r.Interfaces)
			r.Interfaces = append(r.Interfaces, iface)
		}
		for _, ip := range prev.IPs {
			ip := *ip
			if ip.Interface != nil {
				if j, ok := index[*ip.Interface]; ok {
					ip.Interface = current.Int(j)
				} else {
					ip.Interface = nil
				}
			}
			r.IPs = append(r.IPs, &ip)
		}
		if a.mode == modeBridge {
			if br, err := sb.linkByName(a.bridge); err == nil && br != nil {
				r.Interfaces = append(r.Interfaces, &current.Interface{
					Name: a.bridge, Mac: br.Attrs().HardwareAddr.String(), Mtu: br.Attrs().MTU, Sandbox: a.netNS,
				})
			}
		}
		r.Interfaces = append(r.Interfaces, tapIf)
	case ipamResult != nil:
		r.Routes, r.DNS = ipamResult.Routes, ipamResult.DNS
		if r.DNS.IsEmpty() {
			r.DNS = c.netConf.DNS
		}
		r.Interfaces = []*current.Interface{tapIf}
		for _, ip := range ipamResult.IPs {
			ip := *ip
			ip.Interface = current.Int(0)
			r.IPs = append(r.IPs, &ip)
		}
	default:
		r.Interfaces = []*current.Interface{tapIf}
		r.DNS = c.netConf.DNS
	}
	if c.vmInterface {
		addVMInterface(r, a, tapIf)
	}
	return r
}

// addVMInterface adds the guest's interface to the result, as
// tc-redirect-tap reports it and firecracker-go-sdk (firecracker-
// containerd) reads it: named as the TAP, in the sandbox CNI_CONTAINERID
// (the VM), with the MAC the guest must take in tc-redirect mode (the
// peer's, which the TAP carries). The addresses of the peer, or the
// standalone TAP's, become the guest's.
func addVMInterface(r *current.Result, a attachment, tapIf *current.Interface) {
	vm := &current.Interface{Name: tapIf.Name, Mtu: tapIf.Mtu, Sandbox: a.containerID}
	if a.mode == modeTCRedirect {
		vm.Mac = tapIf.Mac
	}
	from := -1 // the interface whose addresses the guest takes
	for i, iface := range r.Interfaces {
		if iface.Sandbox == a.netNS && (iface.Name == a.peer && a.peer != "" || a.peer == "" && iface.Name == tapIf.Name) {
			from = i
		}
	}
	r.Interfaces = append(r.Interfaces, vm)
	for _, ip := range r.IPs {
		if ip.Interface == nil || *ip.Interface == from {
			ip.Interface = current.Int(len(r.Interfaces) - 1)
		}
	}
}

// parseResult reads a result the plugin recorded.
func parseResult(data []byte) (*current.Result, error) {
	r, err := current.NewResult(data)
	if err != nil {
		return nil, fmt.Errorf("recorded result: %w", err)
	}
	return current.GetResult(r)
}

// clearAttachment removes what a record says the plugin made, in the
// record's namespace (when it still exists).
func clearAttachment(rec *record, alias string) error {
	sb, err := openSandbox(rec.NetNS)
	if errors.Is(err, errNoNetNS) {
		return nil
	}
	if err != nil {
		return err
	}
	defer sb.Close()
	return deleteOurs(sb, alias, rec.Peer, rec.PeerQdisc)
}
