package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/user"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/virtio"
)

func runTap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		io.WriteString(stderr, groupUsage("tap "))
		return usagef("tap: want create, delete or show")
	}
	switch args[0] {
	case "help", "-h", "--help":
		io.WriteString(stdout, groupUsage("tap "))
		return nil
	case "create":
		return tapCreate(ctx, args[1:], stdout, stderr)
	case "delete":
		return tapDelete(args[1:], stdout, stderr)
	case "show":
		return tapShow(args[1:], stdout, stderr)
	default:
		io.WriteString(stderr, groupUsage("tap "))
		return usagef("tap: unknown command %q (want create, delete or show)", args[0])
	}
}

func tapCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tap create")
	var (
		lf      logFlags
		opts    tap.Options
		owner   = fs.String("owner", "", "user (name or uid) allowed to attach queues without CAP_NET_ADMIN")
		group   = fs.String("group", "", "group (name or gid) allowed to attach queues without CAP_NET_ADMIN")
		mtu     = fs.Int("mtu", 0, "MTU ("+mtuRange+"); 0 keeps the kernel's 1500")
		persist = fs.Bool("persist", false, "keep the device after vmnet-helper exits")
		single  = fs.Bool("single-queue", false, "make a TAP without IFF_MULTI_QUEUE, for hypervisors that open it by name (Firecracker)")
		bridge  = fs.String("bridge", "", "attach the TAP to this bridge (its MTU unless --mtu)")
		steer   = fs.String("steering", "kernel", "queue steering: kernel (tun's flow table), hash (eBPF, stays with a persistent TAP; needs CAP_BPF) or queue:N (every frame to queue N, for debugging)")
	)
	lf.register(fs)
	fs.StringVar(&opts.Name, "name", tap.DefaultName, "interface name or template with one %d")
	fs.IntVar(&opts.Queues, "queues", 1, "queue pairs (1 to 255)")
	fs.StringVar(&opts.NetNS, "netns", "", "network namespace (name under /run/netns or path) to create the device in")
	fs.IntVar(&opts.VnetHdrSize, "vnet-hdr", virtio.HdrLenV1, "virtio-net header size: "+hdrLens)
	fs.BoolVar(&opts.NoNAPI, "no-napi", false, "do not use IFF_NAPI even when the kernel offers it")
	log, err := parseCommand(fs, args, stderr, &lf)
	if err != nil {
		return err
	}
	opts.Logger = log
	// Everything is checked before anything is created.
	if opts.Queues < 1 {
		return usagef("tap create: --queues %d: want 1 to %d", opts.Queues, tap.MaxQueues)
	}
	// 0 would be tap.Options' default; as a flag it is refused.
	if err := checkVnetHdrFlag("tap create", opts.VnetHdrSize); err != nil {
		return err
	}
	if err := checkMTUFlag("tap create", *mtu); err != nil {
		return err
	}
	if opts.Owner, err = lookupID(*owner, "owner", user.Lookup, func(u *user.User) string { return u.Uid }); err != nil {
		return err
	}
	if opts.Group, err = lookupID(*group, "group", user.LookupGroup, func(g *user.Group) string { return g.Gid }); err != nil {
		return err
	}
	if err := tap.ValidateName(opts.Name, true); err != nil {
		return usagef("tap create: --name: %v", err)
	}
	if opts.Queues > tap.MaxQueues {
		return usagef("tap create: --queues %d: want 1 to %d", opts.Queues, tap.MaxQueues)
	}

	if *bridge != "" {
		if err := tap.ValidateName(*bridge, false); err != nil {
			return usagef("tap create: --bridge: %v", err)
		}
	}
	steering, err := parseSteering("tap create", *steer, false, opts.Queues)
	if err != nil {
		return err
	}
	if *single {
		if steering != ebpf.SteeringKernel {
			return usagef("tap create: --steering %s needs a multi-queue TAP, not --single-queue", steering)
		}
		if opts.Queues != 1 {
			return usagef("tap create: --single-queue makes one queue, not %d", opts.Queues)
		}
		return tapCreateSingle(ctx, opts, *bridge, *mtu, *persist, log, stdout)
	}
	link, err := tapLinkConfig(opts.NetNS, *bridge, *mtu)
	if err != nil {
		return err
	}

	// Created non-persistent and made persistent last, so a failure half
	// way leaves nothing behind.
	dev, err := tap.Create(opts)
	if err != nil {
		return fmt.Errorf("create tap: %w", err)
	}
	defer dev.Close()
	if _, err := backend.SetSteering(dev, steering, log); err != nil {
		return err
	}
	if *bridge != "" || *mtu != 0 {
		if err := configureTapLink(dev.Name(), opts.NetNS, link); err != nil {
			return err
		}
	}
	if *persist {
		if err := dev.SetPersist(true); err != nil {
			return err
		}
	}
	fmt.Fprintln(stdout, dev.Name())
	if *persist {
		return dev.Close()
	}
	log.Info("device lives until SIGINT or SIGTERM", "tap", dev.Name())
	<-ctx.Done()
	return dev.Close()
}

// lookupID turns a user or group flag (a name or a number) into an id; ""
// is 0, "unset".
func lookupID[T any](s, what string, byName func(string) (T, error), id func(T) string) (int, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return 0, usagef("tap create: --%s %d: want an id >= 0", what, n)
		}
		return n, nil
	}
	v, err := byName(s)
	if err != nil {
		return 0, usagef("tap create: --%s %q: %v", what, s, err)
	}
	n, err := strconv.Atoi(id(v))
	if err != nil {
		return 0, usagef("tap create: --%s %q: id %q is not a number", what, s, id(v))
	}
	return n, nil
}

func tapDelete(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tap delete")
	var lf logFlags
	lf.register(fs)
	netNS := fs.String("netns", "", "network namespace the device is in")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	name, err := oneName(fs.Args(), "tap delete")
	if err != nil {
		return err
	}
	if _, err := lf.logger(stderr); err != nil {
		return err
	}
	return tap.Delete(name, *netNS)
}

func tapShow(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tap show")
	var lf logFlags
	lf.register(fs)
	netNS := fs.String("netns", "", "network namespace the device is in")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	name, err := oneName(fs.Args(), "tap show")
	if err != nil {
		return err
	}
	if _, err := lf.logger(stderr); err != nil {
		return err
	}
	info, err := tap.Lookup(name, *netNS)
	if err != nil {
		return err
	}
	hdr := "unknown (queues attached; read only while the device is idle)"
	if !info.VnetHdr {
		hdr = "none"
	} else if n, err := tap.VnetHdrSizeOf(name, *netNS); err == nil {
		hdr = fmt.Sprintf("%d bytes", n)
	} else if !errors.Is(err, tap.ErrBusy) {
		return err
	}
	features, err := tap.Probe()
	if err != nil {
		return err
	}
	offloads := features.Offloads.String()
	if !features.OffloadsProbed {
		offloads = "unknown (probing needs CAP_NET_ADMIN)"
	}
	var flags []string
	for _, f := range []struct {
		on   bool
		name string
	}{{info.MultiQueue, "multi_queue"}, {info.VnetHdr, "vnet_hdr"}, {!info.PI, "no_pi"}, {info.Persist, "persist"}} {
		if f.on {
			flags = append(flags, f.name)
		}
	}
	id := func(v int) string {
		if v < 0 {
			return "-"
		}
		return strconv.Itoa(v)
	}
	state := "down"
	if info.Up {
		state = "up"
	}
	if info.Carrier {
		state += ", carrier"
	} else {
		state += ", no carrier"
	}
	fmt.Fprintf(stdout, "name:      %s\n", info.Name)
	fmt.Fprintf(stdout, "type:      %s\n", info.Type)
	fmt.Fprintf(stdout, "flags:     %s\n", strings.Join(flags, " "))
	fmt.Fprintf(stdout, "queues:    %d attached, %d detached\n", info.Queues, info.DisabledQueues)
	fmt.Fprintf(stdout, "vnet_hdr:  %s\n", hdr)
	fmt.Fprintf(stdout, "offloads:  %s (supported by the kernel)\n", offloads)
	fmt.Fprintf(stdout, "mac:       %s\n", info.MAC)
	fmt.Fprintf(stdout, "mtu:       %d\n", info.MTU)
	fmt.Fprintf(stdout, "state:     %s\n", state)
	fmt.Fprintf(stdout, "owner:     %s\n", id(info.Owner))
	fmt.Fprintf(stdout, "group:     %s\n", id(info.Group))
	return nil
}

func oneName(args []string, cmd string) (string, error) {
	if len(args) != 1 {
		return "", usagef("%s: want exactly one device name, got %d arguments", cmd, len(args))
	}
	if err := tap.ValidateName(args[0], false); err != nil {
		return "", usagef("%s: %v", cmd, err)
	}
	return args[0], nil
}

// tapLinkConfig is what tap create sets on the link: the MTU asked for,
// else the bridge's; the bridge; and, on a bridge, up.
func tapLinkConfig(netNS, bridge string, mtu int) (tap.LinkConfig, error) {
	c := tap.LinkConfig{MTU: mtu, Bridge: bridge, Up: bridge != ""}
	if bridge != "" {
		br, err := tap.LookupBridge(bridge, netNS)
		if err != nil {
			return c, fmt.Errorf("tap create: %w", err)
		}
		if c.MTU == 0 {
			c.MTU = br.MTU
		}
	}
	return c, nil
}

// configureTapLink applies c, giving a bridge port the 0xfe-first MAC
// that keeps it from becoming the bridge's address.
func configureTapLink(name, netNS string, c tap.LinkConfig) error {
	if c.Bridge != "" {
		info, err := tap.Lookup(name, netNS)
		if err != nil {
			return err
		}
		c.MAC = portMAC(info.MAC)
	}
	return tap.ConfigureLink(name, netNS, c)
}

// tapCreateSingle makes the one-queue TAP a hypervisor opens by name.
func tapCreateSingle(ctx context.Context, opts tap.Options, bridge string, mtu int, persist bool, log hclog.Logger, stdout io.Writer) error {
	link, err := tapLinkConfig(opts.NetNS, bridge, mtu)
	if err != nil {
		return err
	}
	f, name, err := tap.CreateSingleQueue(tap.SingleQueueOptions{
		Name: opts.Name, Persist: persist, Owner: opts.Owner, Group: opts.Group, NetNS: opts.NetNS, Logger: log,
	})
	if err != nil {
		return fmt.Errorf("create tap: %w", err)
	}
	defer f.Close()
	if bridge != "" || mtu != 0 {
		if err := configureTapLink(name, opts.NetNS, link); err != nil {
			if persist {
				_ = tap.Delete(name, opts.NetNS)
			}
			return err
		}
	}
	if persist {
		// The file is the device's only one: closing it leaves the device
		// free for the hypervisor to attach to.
		fmt.Fprintln(stdout, name)
		return f.Close()
	}
	fmt.Fprintln(stdout, name)
	log.Info("device lives until SIGINT or SIGTERM", "tap", name)
	<-ctx.Done()
	return f.Close()
}
