package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// gc is CNI GC: every attachment the network's records hold that is not
// in cni.dev/valid-attachments loses its TAP, bridge and tc filters (in
// its namespace, if that still exists) and its record. A standalone
// network's IPAM plugin gets the GC too.
func (p *plugin) gc(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	log := p.logger(c, "GC", args)
	valid := map[types.GCAttachment]bool{}
	for _, a := range c.valid {
		valid[a] = true
	}
	st := newStore(c.dataDir, c.networkName)
	unlock, err := st.lock()
	if err != nil {
		return err
	}
	recs, err := st.list()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, rec := range recs {
		if valid[types.GCAttachment{ContainerID: rec.ContainerID, IfName: rec.IfName}] {
			continue
		}
		alias := aliasFor(c.networkName, rec.ContainerID, rec.IfName)
		if err := clearAttachment(rec, alias); err != nil {
			errs = append(errs, fmt.Errorf("container %s, interface %s: %w", rec.ContainerID, rec.IfName, err))
			continue
		}
		if err := st.remove(rec.ContainerID, rec.IfName); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("stale attachment removed", "container", rec.ContainerID, "ifname", rec.IfName, "tap", rec.TAP, "netns", rec.NetNS)
	}
	unlock()
	if c.ipam != "" {
		errs = append(errs, tolerateOldIPAM(invoke.DelegateGC(p.ctx, c.ipam, args.StdinData, nil), c.ipam, "GC", p.logger(c, "GC", args)))
	}
	return errors.Join(errs...)
}

// tolerateOldIPAM passes err on, unless it says the IPAM plugin predates
// the verb (CNI 1.1's GC and STATUS). Plugins built with an older skel
// answer an incompatible version, an unknown CNI_COMMAND, or, as Debian
// 12's host-local 1.1.1 does, "missing containerID" (code 3): it checks
// the variables ADD needs before it looks at the verb, and GC and STATUS
// never have a container. That is logged, and the plugin's own part of
// the verb stands.
func tolerateOldIPAM(err error, ipam, verb string, log interface{ Warn(string, ...any) }) error {
	var e *types.Error
	if errors.As(err, &e) && (e.Code == types.ErrIncompatibleCNIVersion ||
		e.Code == types.ErrInvalidEnvironmentVariables && strings.Contains(e.Msg, "unknown CNI_COMMAND") ||
		e.Code == types.ErrUnknownContainer && e.Msg == "missing containerID") {
		log.Warn("the IPAM plugin does not take this verb; skipped", "ipam", ipam, "verb", verb, "error", e.Msg)
		return nil
	}
	return err
}
