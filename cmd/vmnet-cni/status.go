package main

import (
	"errors"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/ebpf"
)

// status is CNI STATUS: ready when /dev/net/tun opens and the TUN driver
// offers every flag a TAP needs (tap.CheckDriver; no device is made), and,
// when the configuration asks for hash steering, the program loads. With
// steering auto a program that cannot load only falls back to the
// kernel's steering, so it does not make the plugin unavailable. A
// standalone network's IPAM plugin is asked too.
func (p *plugin) status(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	log := p.logger(c, "STATUS", args)
	if err := tap.CheckDriver(); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "TUN/TAP driver: "+err.Error(), "")
	}
	if c.steering == ebpf.SteeringHash {
		prog, err := ebpf.LoadHashProgram()
		if err != nil {
			return types.NewError(types.ErrPluginNotAvailable, "steering hash: "+err.Error(), "")
		}
		prog.Close()
	}
	if c.ipam != "" {
		err := invoke.DelegateStatus(p.ctx, c.ipam, args.StdinData, nil)
		if err = tolerateOldIPAM(err, c.ipam, "STATUS", log); err != nil {
			var e *types.Error
			if errors.As(err, &e) {
				return e
			}
			return types.NewError(types.ErrPluginNotAvailable, "IPAM plugin "+c.ipam+": "+err.Error(), "")
		}
	}
	return nil
}
