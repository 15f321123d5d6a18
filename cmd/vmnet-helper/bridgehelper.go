package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/fdpass"
	"github.com/vmnet-dev/vmnet/backend/tap"
)

// The bridge helper speaks QEMU's side of qemu-bridge-helper (net/tap.c
// net_bridge_run_helper): QEMU forks, closes every descriptor but 0, 1, 2
// and one end of a SOCK_STREAM socketpair, and runs
//
//	HELPER --use-vnet --fd=N --br=BRIDGE
//
// directly, or as `sh -c "HELPER ARGS --use-vnet --fd=N --br=BRIDGE"`
// when the helper string has spaces (then --br is left out if ARGS has
// one). The helper answers with one byte and one descriptor (SCM_RIGHTS)
// on fd N and exits 0; anything else is "bridge helper failed", and what
// the helper wrote to standard error is what the user sees.

// qemuHelperArgs lets run's command switch recognise QEMU's form, which
// has no command word: it returns args[0] when that is a flag (QEMU's
// --use-vnet, or a --acl or --log-level from the helper string), and a
// word no command uses otherwise.
func qemuHelperArgs(args []string) string {
	if len(args) > 0 && strings.HasPrefix(args[0], "-") {
		return args[0]
	}
	return "\x00"
}

func runBridgeHelper(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "bridge-helper" {
		args = args[1:]
	}
	fs := newFlagSet("bridge-helper")
	var lf logFlags
	lf.register(fs)
	useVnet := fs.Bool("use-vnet", false, "give the TAP a virtio-net header (QEMU always asks)")
	sockFd := fs.Int("fd", -1, "the unix socket to send the TAP's descriptor on")
	bridge := fs.String("br", "", "the bridge to attach the TAP to")
	aclFlag := fs.String("acl", "", "access list (default "+defaultACL+"; refused when setuid)")
	log, err := parseCommand(fs, args, stderr, &lf)
	if err != nil {
		return err
	}
	if *sockFd < 0 {
		return usagef("bridge-helper: --fd=N missing: the unix socket to send the TAP on")
	}
	if *bridge == "" {
		return usagef("bridge-helper: --br=BRIDGE missing")
	}
	if err := tap.ValidateName(*bridge, false); err != nil {
		return usagef("bridge-helper: --br: %v", err)
	}
	conn, err := socketFromFd(*sockFd)
	if err != nil {
		return usagef("bridge-helper: --fd=%d: %v", *sockFd, err)
	}
	defer conn.Close()

	secure := secureExec()
	path, err := aclPath(*aclFlag, os.Getenv, secure)
	if err != nil {
		return err
	}
	a, err := loadACL(path, secure)
	if err != nil {
		return err
	}
	who, err := currentCaller()
	if err != nil {
		return err
	}
	if err := a.check(kindBridge, *bridge, who); err != nil {
		return err
	}
	if err := requireNetAdmin("bridge-helper"); err != nil {
		return err
	}
	br, err := tap.LookupBridge(*bridge, "")
	if err != nil {
		return fmt.Errorf("bridge-helper: %w", err)
	}
	to, err := callerIDs()
	if err != nil {
		return err
	}

	// What qemu-bridge-helper makes: a one-queue "tap%d".
	f, name, err := tap.CreateSingleQueue(tap.SingleQueueOptions{NoVnetHdr: !*useVnet, Logger: log})
	if err != nil {
		return fmt.Errorf("bridge-helper: create tap: %w", err)
	}
	defer f.Close()
	log = log.With("tap", name, "bridge", br.Name)
	info, err := tap.Lookup(name, "")
	if err != nil {
		return fmt.Errorf("bridge-helper: %w", err)
	}
	if err := tap.ConfigureLink(name, "", tap.LinkConfig{
		MAC:    portMAC(info.MAC),
		MTU:    br.MTU,
		Bridge: br.Name,
		Up:     true,
	}); err != nil {
		return fmt.Errorf("bridge-helper: %w", err)
	}
	// The TAP is ready: nothing below needs a privilege, and the socket
	// leads to a process the caller controls.
	if err := dropPrivileges(to); err != nil {
		return err
	}
	if err := fdpass.Send(conn, []byte{0}, []*os.File{f}); err != nil {
		return fmt.Errorf("bridge-helper: send %s to QEMU: %w", name, err)
	}
	log.Debug("tap handed over", "mtu", br.MTU, "vnet_hdr", *useVnet)
	return nil
}

// portMAC is the address a bridge port gets: the kernel's random one
// with the first byte 0xfe, as qemu-bridge-helper does. A Linux bridge
// without an address of its own takes the lowest of its ports', and no
// guest-facing port should ever be that.
func portMAC(mac net.HardwareAddr) net.HardwareAddr {
	if len(mac) != 6 {
		return nil
	}
	m := append(net.HardwareAddr(nil), mac...)
	m[0] = 0xfe
	return m
}

// socketFromFd checks that fd is a connected unix socket and wraps it;
// the original descriptor is closed (the conn holds a duplicate).
func socketFromFd(fd int) (*net.UnixConn, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("not an open descriptor: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, errors.New("not a socket")
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return nil, fmt.Errorf("read socket domain: %w", err)
	}
	if domain != unix.AF_UNIX {
		return nil, fmt.Errorf("socket domain %d, want AF_UNIX", domain)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("fd %d", fd))
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("not a unix socket")
	}
	return uc, nil
}
