package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/hashicorp/go-hclog"
)

const usage = `usage: vmnet-helper COMMAND [ARGS]

commands:
  tap create [--name vmnet%d] [--queues N] [--persist] [--owner UID] [--group GID]
             [--mtu N] [--netns NAME] [--vnet-hdr 10|12|20] [--no-napi]
             [--bridge BR] [--single-queue] [--steering kernel|hash]
        create a multi-queue TAP device and print its name; without --persist
        the device lives until vmnet-helper gets SIGINT or SIGTERM
  tap delete [--netns NAME] NAME
        delete a TAP device (never any other kind of link)
  tap show [--netns NAME] NAME
        print a TAP device's flags, queues, vnet header size, MAC, MTU and the
        offloads the kernel supports

  vhost-user --socket PATH [--client] [--tap NAME|TEMPLATE] [--queues N] [--netns NAME]
             [--persist] [--mac ADDR] [--mtu N] [--offloads auto|none|LIST] [--busy-poll DUR] [--io-uring=false]
             [--steering auto|kernel|hash]
        serve a vhost-user-net device backed by a multi-queue TAP until SIGINT or
        SIGTERM; prints the TAP's name; SIGUSR1 prints per-queue counters to stderr

  [bridge-helper] [--acl FILE] --use-vnet --fd=N --br=BRIDGE
        qemu-bridge-helper's protocol, for -netdev bridge,helper= and
        -netdev tap,helper=: make a tap%d on BRIDGE if the access list allows
        it, send its descriptor on fd N, exit
  exec [--tap NAME|TEMPLATE] [--queues N] [--bridge BR] [--netns NAME] [--mac ADDR]
       [--mtu N] [--vnet-hdr 10|12|20] [--offloads none|LIST] [--steering kernel|hash]
       [--persist] [--user USER] -- COMMAND ARGS...
        make a multi-queue TAP, run COMMAND with its queues at descriptors 3,
        4, ... and no privileges, wait for it; COMMAND's arguments may use
        {fds} (3:4), {fds-comma} (3,4), {fd0}, {queues}, {tap}, {mac}, {tap-mac}
  serve-fds --socket PATH [--acl FILE] [--max-queues N] [--socket-mode 0660]
            [--socket-group GROUP] [--timeout DUR]
        hand TAP queue descriptors to clients the access list allows
        (backend/fdpass is the client); keeps only CAP_NET_ADMIN

The access list (bridge-helper, serve-fds, and exec when setuid) is
/etc/vmnet/bridge.conf unless --acl or VMNET_HELPER_ACL name another; see
docs/hypervisors.md.

Every command takes --log-level (trace, debug, info, warn, error; default info)
and --log-format (text or json; logs go to stderr).
`

// usageError is a command line vmnet-helper cannot act on; main exits 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// run is the whole program, minus the process: it parses args, does the
// work, and returns an error instead of exiting.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		io.WriteString(stderr, usage)
		return usagef("no command given")
	}
	if err := refuseWhenSetuid(args[0]); err != nil {
		return err
	}
	switch args[0] {
	case "tap":
		return runTap(ctx, args[1:], stdout, stderr)
	case "vhost-user":
		return runVhostUser(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		io.WriteString(stdout, usage)
		return nil
	case "bridge-helper", qemuHelperArgs(args):
		return runBridgeHelper(ctx, args, stdout, stderr)
	case "exec":
		return runExec(ctx, args[1:], stdout, stderr)
	case "serve-fds":
		return runServeFds(ctx, args[1:], stdout, stderr)
	default:
		io.WriteString(stderr, usage)
		return usagef("unknown command %q", args[0])
	}
}

// logFlags are the logging options every command takes.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "trace, debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "text", "text or json")
}

func (l *logFlags) logger(stderr io.Writer) (hclog.Logger, error) {
	level := hclog.LevelFromString(l.level)
	if level == hclog.NoLevel {
		return nil, usagef("--log-level %q: want trace, debug, info, warn or error", l.level)
	}
	var json bool
	switch l.format {
	case "text":
	case "json":
		json = true
	default:
		return nil, usagef("--log-format %q: want text or json", l.format)
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "vmnet-helper",
		Level:      level,
		Output:     stderr,
		JSONFormat: json,
	}), nil
}

// parseFlags parses args with fs, turning flag errors into usage errors
// and leaving the flag package silent (run prints usage itself).
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			io.WriteString(stderr, usage)
		}
		return usagef("%s: %v", fs.Name(), err)
	}
	return nil
}

// parseCommand parses the flags of a command that takes no arguments and
// returns the logger its --log-level and --log-format ask for.
func parseCommand(fs *flag.FlagSet, args []string, stderr io.Writer, lf *logFlags) (hclog.Logger, error) {
	if err := parseFlags(fs, args, stderr); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return lf.logger(stderr)
}

func newFlagSet(name string) *flag.FlagSet {
	return flag.NewFlagSet(name, flag.ContinueOnError)
}
