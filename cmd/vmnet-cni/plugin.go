package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/hashicorp/go-hclog"
)

// plugin runs one CNI command: its context, where the result goes, where
// the logs go.
type plugin struct {
	ctx    context.Context
	stdout io.Writer // the result, as JSON
	stderr io.Writer // log lines
}

func (p *plugin) funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.add, Del: p.del, Check: p.check, GC: p.gc, Status: p.status}
}

// logger writes to stderr at the configuration's logLevel (warn unless
// set), with the command and the attachment as context.
func (p *plugin) logger(c *config, cmd string, args *skel.CmdArgs) hclog.Logger {
	l := hclog.New(&hclog.LoggerOptions{Name: "vmnet-cni", Level: c.logLevel, Output: p.stderr})
	l = l.With("cmd", cmd, "network", c.networkName)
	if args.ContainerID != "" {
		l = l.With("container", args.ContainerID, "ifname", args.IfName)
	}
	return l
}

// aliasFor is the alias (IFLA_IFALIAS) of every link the plugin makes for
// an attachment: "vmnet-cni/NETWORK/CONTAINERID/IFNAME", or, when that
// passes the kernel's 255 bytes (IFALIASZ), "vmnet-cni/" and a hash of
// the three.
func aliasFor(network, containerID, ifName string) string {
	a := "vmnet-cni/" + network + "/" + containerID + "/" + ifName
	if len(a) <= 255 {
		return a
	}
	h := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifName))
	return "vmnet-cni/" + hex.EncodeToString(h[:16])
}
