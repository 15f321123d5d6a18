package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// command is how the usage text shows one command: its name, the flags
// and arguments after it (one string per line), and what it does.
type command struct {
	name     string // as typed: "tap create", "vhost-user"
	shown    string // as usage shows it, when not name: "[bridge-helper]"
	synopsis []string
	about    []string
	group    bool // a blank line before it
}

// commands are every command, in the order usage lists them. A command's
// flag set is named after it (newFlagSet("tap create")), which is how
// its --help finds it here.
var commands = []command{
	{name: "tap create", synopsis: []string{
		"[--name vmnet%d] [--queues N] [--persist] [--owner UID] [--group GID]",
		"[--mtu N] [--netns NAME] [--vnet-hdr 10|12|20] [--no-napi]",
		"[--bridge BR] [--single-queue] [--steering kernel|hash|queue:N]"}, about: []string{
		"create a multi-queue TAP device and print its name; without --persist",
		"the device lives until vmnet-helper gets SIGINT or SIGTERM"}},
	{name: "tap delete", synopsis: []string{"[--netns NAME] NAME"}, about: []string{
		"delete a TAP device (never any other kind of link)"}},
	{name: "tap show", synopsis: []string{"[--netns NAME] NAME"}, about: []string{
		"print a TAP device's flags, queues, vnet header size, MAC, MTU and the",
		"offloads the kernel supports"}},

	{name: "vhost-user", group: true, synopsis: []string{
		"--socket PATH [--client] [--tap NAME|TEMPLATE] [--queues N] [--netns NAME]",
		"[--persist] [--mac ADDR] [--mtu N] [--offloads auto|none|LIST] [--busy-poll DUR] [--io-uring=false]",
		"[--steering auto|kernel|hash|queue:N] [--metrics ADDR]"}, about: []string{
		"serve a vhost-user-net device backed by a multi-queue TAP until SIGINT or",
		"SIGTERM; prints the TAP's name; SIGUSR1 prints per-queue counters to stderr;",
		"--metrics serves them to Prometheus on /metrics and as JSON on /stats at",
		"host:port or unix:PATH"}},
	{name: "stats", synopsis: []string{"--socket PATH | --metrics ADDR"}, about: []string{
		"print the counters of a vmnet-helper serving --metrics (unix:PATH or",
		"host:port) as JSON"}},

	{name: "bridge-helper", shown: "[bridge-helper]", group: true, synopsis: []string{
		"[--acl FILE] --use-vnet --fd=N --br=BRIDGE"}, about: []string{
		"qemu-bridge-helper's protocol, for -netdev bridge,helper= and",
		"-netdev tap,helper=: make a tap%d on BRIDGE if the access list allows",
		"it, send its descriptor on fd N, exit"}},
	{name: "exec", synopsis: []string{
		"[--tap NAME|TEMPLATE] [--queues N] [--bridge BR] [--netns NAME] [--mac ADDR]",
		"[--mtu N] [--vnet-hdr 10|12|20] [--offloads none|LIST] [--steering kernel|hash|queue:N]",
		"[--persist] [--user USER] -- COMMAND ARGS..."}, about: []string{
		"make a multi-queue TAP, run COMMAND with its queues at descriptors 3,",
		"4, ... and no privileges, wait for it; COMMAND's arguments may use",
		"{fds} (3:4), {fds-comma} (3,4), {fd0}, {queues}, {tap}, {mac}, {tap-mac}"}},
	{name: "serve-fds", synopsis: []string{
		"--socket PATH [--acl FILE] [--max-queues N] [--socket-mode 0660]",
		"[--socket-group GROUP] [--timeout DUR] [--metrics ADDR]"}, about: []string{
		"hand TAP queue descriptors to clients the access list allows",
		"(backend/fdpass is the client); keeps only CAP_NET_ADMIN"}},
}

const (
	usageHead = "usage: vmnet-helper COMMAND [ARGS]\n\ncommands:\n"
	usageFoot = `
The access list (bridge-helper, serve-fds, and exec when setuid) is
/etc/vmnet/bridge.conf unless --acl or VMNET_HELPER_ACL name another; see
docs/hypervisors.md.

Every command takes --log-level (trace, debug, info, warn, error; default info)
and --log-format (text or json; logs go to stderr); COMMAND --help lists its flags.
`
)

// usage is the whole program's usage text.
var usage = func() string {
	var b strings.Builder
	b.WriteString(usageHead)
	for _, c := range commands {
		if c.group {
			b.WriteByte('\n')
		}
		c.writeSynopsis(&b, "  ")
		for _, l := range c.about {
			b.WriteString("        " + l + "\n")
		}
	}
	b.WriteString(usageFoot)
	return b.String()
}()

// writeSynopsis writes the command's name and synopsis, continuation
// lines lined up under the first.
func (c command) writeSynopsis(b *strings.Builder, indent string) {
	shown := c.name
	if c.shown != "" {
		shown = c.shown
	}
	for i, l := range c.synopsis {
		if i == 0 {
			b.WriteString(indent + shown + " " + l + "\n")
			continue
		}
		b.WriteString(strings.Repeat(" ", len(indent)+len(shown)+1) + l + "\n")
	}
}

// commandUsage is one command's usage: its synopsis, what it does, and
// each flag of fs on a line, with its default.
func commandUsage(fs *flag.FlagSet) string {
	var b strings.Builder
	for _, c := range commands {
		if c.name != fs.Name() {
			continue
		}
		c.writeSynopsis(&b, "usage: vmnet-helper ")
		b.WriteByte('\n')
		for _, l := range c.about {
			b.WriteString(l + "\n")
		}
		b.WriteByte('\n')
	}
	if b.Len() == 0 {
		b.WriteString("usage: vmnet-helper " + fs.Name() + " [FLAGS]\n\n")
	}
	b.WriteString("flags:\n")
	var lines [][2]string
	width := 0
	fs.VisitAll(func(f *flag.Flag) {
		arg, help := flag.UnquoteUsage(f)
		name := "--" + f.Name
		if arg != "" {
			name += " " + arg
		}
		if f.DefValue != "" && !(isBoolFlag(f) && f.DefValue == "false") {
			help += " (default " + f.DefValue + ")"
		}
		lines = append(lines, [2]string{name, help})
		width = max(width, len(name))
	})
	for _, l := range lines {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, l[0], l[1])
	}
	return b.String()
}

// groupUsage is the usage of the commands whose names start with prefix
// ("tap "), for a command word without its subcommand.
func groupUsage(prefix string) string {
	var b strings.Builder
	b.WriteString("usage:\n")
	for _, c := range commands {
		if strings.HasPrefix(c.name, prefix) {
			c.writeSynopsis(&b, "  vmnet-helper ")
		}
	}
	b.WriteString("\n" + strings.TrimSpace(prefix) + " COMMAND --help lists a command's flags.\n")
	return b.String()
}

func isBoolFlag(f *flag.Flag) bool {
	bf, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && bf.IsBoolFlag()
}

// helpError is a command's --help: run prints the command's usage on
// standard output and exits 0.
type helpError struct{ fs *flag.FlagSet }

func (e *helpError) Error() string { return e.fs.Name() + ": help requested" }

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
	err := runCommand(ctx, args, stdout, stderr)
	var help *helpError
	if errors.As(err, &help) {
		io.WriteString(stdout, commandUsage(help.fs))
		return nil
	}
	return err
}

func runCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
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
	case "stats":
		return runStats(ctx, args[1:], stdout, stderr)
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

// parseFlags parses args with fs, leaving the flag package silent: -h
// and --help become a *helpError (run prints the command's usage on
// standard output), and a flag fs does not take or cannot parse prints
// the command's usage on stderr and is a usage error.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &helpError{fs: fs}
		}
		io.WriteString(stderr, commandUsage(fs))
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
