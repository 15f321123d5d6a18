package main

import (
	"encoding/json"
	"errors"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/hashicorp/go-hclog"
)

// del is CNI DEL: remove the attachment's TAP, bridge and tc filters,
// release a standalone attachment's addresses, forget the record. Like
// every DEL it succeeds when there is nothing left to remove: the
// namespace gone (the kernel deleted the TAP with it), the TAP gone, DEL
// run twice.
func (p *plugin) del(args *skel.CmdArgs) error {
	c, err := parseForDel(args.StdinData)
	if err != nil {
		return err
	}
	log := p.logger(c, "DEL", args)
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
	if c.ipam != "" {
		if err := invoke.DelegateDel(p.ctx, c.ipam, args.StdinData, nil); err != nil {
			return err
		}
	}
	alias := aliasFor(c.networkName, args.ContainerID, args.IfName)
	var peer string
	var peerQdisc bool
	if rec != nil {
		peer, peerQdisc = rec.Peer, rec.PeerQdisc
	}
	var errs []error
	for _, path := range namespacesOf(args.Netns, rec) {
		sb, err := openSandbox(path)
		if errors.Is(err, errNoNetNS) {
			log.Debug("namespace gone, nothing to remove there", "netns", path)
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, deleteOurs(sb, alias, peer, peerQdisc))
		sb.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return st.remove(args.ContainerID, args.IfName)
}

// namespacesOf are the namespaces an attachment may have links in: the
// one the runtime names, and the recorded one if that differs.
func namespacesOf(netNS string, rec *record) []string {
	var out []string
	if netNS != "" {
		out = append(out, netNS)
	}
	if rec != nil && rec.NetNS != "" && rec.NetNS != netNS {
		out = append(out, rec.NetNS)
	}
	return out
}

// parseForDel reads the configuration for DEL. A configuration ADD
// refused may still come back to DEL (a runtime undoing a failed chain),
// and its DEL must not fail on the same mistake: DEL goes on with the
// network's name and the state folder (the default one if dataDir is
// what is wrong). It skips the IPAM plugin: ADD refuses such a
// configuration before it asks IPAM for anything.
func parseForDel(data []byte) (*config, error) {
	c, err := parseConfig(data)
	var e *types.Error
	if err == nil || !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig && e.Code != types.ErrUnsupportedField {
		return c, err
	}
	var n struct {
		types.PluginConf
		DataDir string `json:"dataDir"`
	}
	if json.Unmarshal(data, &n) != nil {
		return nil, err
	}
	c = &config{netConf: &netConf{PluginConf: n.PluginConf}, networkName: n.Name, cniVersion: n.CNIVersion,
		dataDir: defaultDataDir, logLevel: hclog.Warn}
	if filepath.IsAbs(n.DataDir) {
		c.dataDir = filepath.Clean(n.DataDir)
	}
	return c, nil
}
