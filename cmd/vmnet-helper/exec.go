package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// exec makes a TAP, hands its queue files to a hypervisor it starts at
// descriptors 3, 4, ..., and waits for it. The files are the only
// descriptors the child gets besides 0, 1 and 2: every other one this
// process holds, its own or inherited, is close-on-exec before the child
// starts. The child never outlives vmnet-helper (PR_SET_PDEATHSIG), runs
// without any capability and with no_new_privs, and a non-persistent TAP
// disappears when the child's last file closes.

// firstQueueFd is where the child finds queue 0.
const firstQueueFd = 3

// childExit is a child that exited non-zero or by a signal; main exits
// with code and prints nothing (the child has said why).
type childExit struct {
	name string
	code int
}

func (e *childExit) Error() string { return fmt.Sprintf("%s exited with status %d", e.name, e.code) }

type execOptions struct {
	tap, bridge, netns, offloads, mac, user, acl string
	steering                                     ebpf.Steering
	queues, vnetHdr, mtu                         int
	persist                                      bool
}

func runExec(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("exec")
	var lf logFlags
	var o execOptions
	lf.register(fs)
	fs.StringVar(&o.tap, "tap", tap.DefaultName, "TAP name or template with one %d")
	fs.IntVar(&o.queues, "queues", 1, "queue pairs, one descriptor each (1 to 253)")
	fs.StringVar(&o.bridge, "bridge", "", "bridge to attach the TAP to")
	fs.StringVar(&o.netns, "netns", "", "network namespace for the TAP (refused when setuid)")
	fs.StringVar((*string)(&o.steering), "steering", string(ebpf.SteeringKernel), "queue steering: kernel (tun's flow table), hash (eBPF: a flow keeps its queue; needs CAP_BPF) or queue:N (every frame to queue N, for debugging)")
	fs.StringVar(&o.offloads, "offloads", "none", "TUNSETOFFLOAD set before the hypervisor sets its own: none or csum,tso4,...")
	fs.IntVar(&o.vnetHdr, "vnet-hdr", virtio.HdrLenV1, "virtio-net header size: "+hdrLens)
	fs.StringVar(&o.mac, "mac", "", "guest MAC for {mac}; default a random locally administered one")
	fs.IntVar(&o.mtu, "mtu", 0, "TAP MTU ("+mtuRange+"); default the bridge's, or the kernel's 1500")
	fs.BoolVar(&o.persist, "persist", false, "keep the TAP after the hypervisor exits (refused when setuid)")
	fs.StringVar(&o.user, "user", "", "run the hypervisor as this user (name or uid; root only)")
	fs.StringVar(&o.acl, "acl", "", "access list checked when setuid (default "+defaultACL+")")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	command := fs.Args()
	if len(command) == 0 {
		return usagef("exec: no command given: vmnet-helper exec [FLAGS] -- COMMAND ARGS...")
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	offloads, guestMAC, err := o.validate()
	if err != nil {
		return err
	}
	secure := secureExec()
	who, err := currentCaller()
	if err != nil {
		return err
	}
	to, err := callerIDs()
	if err != nil {
		return err
	}
	if secure {
		// The caller is not trusted with what root may do.
		switch {
		case o.netns != "":
			return usagef("exec: --netns is refused when vmnet-helper runs setuid or with file capabilities")
		case o.persist:
			return usagef("exec: --persist is refused when vmnet-helper runs setuid or with file capabilities")
		case o.user != "":
			return usagef("exec: --user is refused when vmnet-helper runs setuid or with file capabilities: the command runs as you")
		}
		path, err := aclPath(o.acl, os.Getenv, secure)
		if err != nil {
			return err
		}
		a, err := loadACL(path, secure)
		if err != nil {
			return err
		}
		if err := a.check(kindTap, o.tap, who); err != nil {
			return err
		}
		if o.bridge != "" {
			if err := a.check(kindBridge, o.bridge, who); err != nil {
				return err
			}
		}
	} else if o.user != "" {
		if os.Geteuid() != 0 {
			return usagef("exec: --user needs root")
		}
		if to, err = lookupUser(o.user); err != nil {
			return err
		}
	}
	if err := requireNetAdmin("exec"); err != nil {
		return err
	}
	// Before anything is opened: whatever this process inherited must not
	// reach the child.
	if err := closeOnExecFrom(firstQueueFd); err != nil {
		return err
	}

	mtu := o.mtu
	if o.bridge != "" {
		br, err := tap.LookupBridge(o.bridge, o.netns)
		if err != nil {
			return fmt.Errorf("exec: %w", err)
		}
		if mtu == 0 {
			mtu = br.MTU
		}
	}
	dev, err := tap.Create(tap.Options{
		Name:        o.tap,
		Queues:      o.queues,
		VnetHdrSize: o.vnetHdr,
		Offloads:    offloads,
		NetNS:       o.netns,
		Logger:      log,
	})
	if err != nil {
		return fmt.Errorf("exec: create tap: %w", err)
	}
	if _, err := backend.SetSteering(dev, o.steering, log); err != nil {
		dev.Close()
		return fmt.Errorf("exec: %w", err)
	}
	files, tapMAC, err := prepareTap(dev, o, mtu)
	// The device's own files go now; the duplicates hold the TAP.
	dev.Close()
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err != nil {
		return err
	}
	log = log.With("tap", dev.Name())

	if err := dropPrivileges(to); err != nil {
		return err
	}
	args = substitute(command[1:], placeholders(dev.Name(), files, guestMAC, tapMAC))
	path, err := exec.LookPath(command[0])
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	cmd := &exec.Cmd{
		Path:       path,
		Args:       append([]string{command[0]}, args...),
		Stdin:      os.Stdin,
		Stdout:     stdout,
		Stderr:     stderr,
		ExtraFiles: files,
		// Bounds Wait if the child left something holding its output.
		WaitDelay:   2 * time.Second,
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	}
	// Pdeathsig follows the thread that forks: keep it for the child's
	// life, so the child dies with vmnet-helper and not before.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	for _, f := range files {
		f.Close()
	}
	files = nil
	log.Info("started", "command", command[0], "pid", cmd.Process.Pid, "queues", o.queues, "fds", fdList(o.queues, ":"))
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Signal(syscall.SIGTERM) })
	defer stop()
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return &childExit{name: command[0], code: code}
	}
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	return nil
}

// validate checks every option before anything is made, and returns the
// parsed offloads and guest MAC.
func (o *execOptions) validate() (offload.TunFlags, net.HardwareAddr, error) {
	if err := tap.ValidateName(o.tap, true); err != nil {
		return 0, nil, usagef("exec: --tap: %v", err)
	}
	if o.queues < 1 || o.queues > 253 {
		return 0, nil, usagef("exec: --queues %d: want 1 to 253", o.queues)
	}
	if o.bridge != "" {
		if err := tap.ValidateName(o.bridge, false); err != nil {
			return 0, nil, usagef("exec: --bridge: %v", err)
		}
	}
	if o.netns != "" {
		if err := tap.CheckNetNS(o.netns); err != nil {
			return 0, nil, usagef("exec: --netns: %v", err)
		}
	}
	steering, err := parseSteering("exec", string(o.steering), false, o.queues)
	if err != nil {
		return 0, nil, err
	}
	o.steering = steering
	offloads, err := offload.ParseTunFlags(o.offloads)
	if err != nil {
		return 0, nil, usagef("exec: --offloads: %v", err)
	}
	if !offloads.Valid() {
		return 0, nil, usagef("exec: --offloads %s: every offload needs csum, uso4 and uso6 go together, tso_ecn needs tso4 or tso6", offloads)
	}
	if err := checkVnetHdrFlag("exec", o.vnetHdr); err != nil {
		return 0, nil, err
	}
	if err := checkMTUFlag("exec", o.mtu); err != nil {
		return 0, nil, err
	}
	var mac net.HardwareAddr
	if o.mac != "" {
		if mac, err = parseMACFlag("exec", o.mac); err != nil {
			return 0, nil, err
		}
	} else if mac, err = randomMAC(); err != nil {
		return 0, nil, err
	}
	return offloads, mac, nil
}

// prepareTap sets the TAP's link up and returns a duplicate of each queue
// file and the TAP's MAC. On error every duplicate is closed.
func prepareTap(dev *tap.Device, o execOptions, mtu int) (files []*os.File, tapMAC net.HardwareAddr, err error) {
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			files = nil
		}
	}()
	info, err := dev.Info()
	if err != nil {
		return nil, nil, fmt.Errorf("exec: %w", err)
	}
	tapMAC = info.MAC
	if o.bridge != "" {
		tapMAC = portMAC(info.MAC)
	}
	if err := tap.ConfigureLink(dev.Name(), o.netns, tap.LinkConfig{MAC: tapMAC, MTU: mtu, Bridge: o.bridge, Up: true}); err != nil {
		return nil, nil, fmt.Errorf("exec: %w", err)
	}
	for i := 0; i < dev.NumQueues(); i++ {
		f, err := dev.Queue(i).Dup()
		if err != nil {
			return files, nil, fmt.Errorf("exec: %w", err)
		}
		files = append(files, f)
	}
	// Last, so that a failure above leaves no device behind.
	if o.persist {
		if err := dev.SetPersist(true); err != nil {
			return nil, nil, fmt.Errorf("exec: %w", err)
		}
	}
	return files, tapMAC, nil
}

func placeholders(tap string, files []*os.File, mac, tapMAC net.HardwareAddr) map[string]string {
	p := map[string]string{
		"{fds}":       fdList(len(files), ":"),
		"{fds-comma}": fdList(len(files), ","),
		"{queues}":    strconv.Itoa(len(files)),
		"{tap}":       tap,
		"{mac}":       mac.String(),
		"{tap-mac}":   tapMAC.String(),
	}
	for i := range files {
		p[fmt.Sprintf("{fd%d}", i)] = strconv.Itoa(firstQueueFd + i)
	}
	return p
}

// substitute replaces every placeholder in every argument; anything else
// in braces is left as it is.
func substitute(args []string, p map[string]string) []string {
	pairs := make([]string, 0, 2*len(p))
	for k, v := range p {
		pairs = append(pairs, k, v)
	}
	r := strings.NewReplacer(pairs...)
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = r.Replace(a)
	}
	return out
}

func fdList(n int, sep string) string {
	s := make([]string, n)
	for i := range s {
		s[i] = strconv.Itoa(firstQueueFd + i)
	}
	return strings.Join(s, sep)
}

// randomMAC is a random unicast, locally administered address.
func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("random MAC: %w", err)
	}
	mac[0] = mac[0]&^1 | 2
	return mac, nil
}

// lookupUser resolves --user to the ids to become.
func lookupUser(s string) (*ids, error) {
	var u *user.User
	var err error
	if _, nerr := strconv.Atoi(s); nerr == nil {
		u, err = user.LookupId(s)
	} else {
		u, err = user.Lookup(s)
	}
	if err != nil {
		return nil, usagef("exec: --user %q: %v", s, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, usagef("exec: --user %q: ids %q/%q are not numbers", s, u.Uid, u.Gid)
	}
	gs, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("exec: groups of %s: %w", s, err)
	}
	groups := []int{}
	for _, g := range gs {
		if n, err := strconv.Atoi(g); err == nil {
			groups = append(groups, n)
		}
	}
	return &ids{uid: uid, gid: gid, groups: groups}, nil
}

// closeOnExecFrom marks every descriptor from fd up close-on-exec
// (close_range with CLOSE_RANGE_CLOEXEC, Linux 5.11), falling back to
// each open descriptor in /proc/self/fd.
func closeOnExecFrom(fd int) error {
	if err := unix.CloseRange(uint(fd), ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return nil
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("mark inherited descriptors close-on-exec: %w", err)
	}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil || n < fd {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(n), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return fmt.Errorf("mark descriptor %d close-on-exec: %w", n, err)
		}
	}
	return nil
}
