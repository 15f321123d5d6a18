package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Config describes one guest. The zero value boots the default image with
// 512 MiB, one vCPU and no network device.
type Config struct {
	// Image to boot; nil builds (or takes from the cache) the default image.
	Image *Image
	// QEMU is the emulator binary; "" means qemu-system-x86_64.
	QEMU string
	// Memory is the guest RAM in QEMU's -m syntax; "" means "512M".
	Memory string
	// SMP is the number of vCPUs; 0 means 1.
	SMP int
	// SharedMemory backs guest RAM with a shared memfd, which vhost-user
	// back-ends need to map it.
	SharedMemory bool
	// Args are appended to QEMU's command line as they are: the -netdev and
	// -device options of the NICs under test, -chardev for vhost-user
	// sockets. Nothing about the NICs is added by this package.
	//
	// Under TCG, QEMU 7.2 crashes (SIGSEGV in msix_set_vector_notifiers)
	// when the guest enables MSI-X on a vhost-user virtio-net device; give
	// such devices vectors=0.
	Args []string
	// KernelArgs are appended to the kernel command line. /init reads
	// vmnet.ip=ADDR/LEN[,DEV], vmnet.mtu=N[,DEV] and vmnet.gw=ADDR (DEV is
	// eth0 unless named), for example "vmnet.ip=10.0.2.15/24".
	KernelArgs []string
	// ExtraFiles are inherited by QEMU as file descriptors 3, 4, ... (TAP
	// queue fds for -netdev tap,fds=3:4, say). The caller keeps ownership
	// and may close them once Start returns.
	ExtraFiles []*os.File
	// Netns names a network namespace (ip netns add) to run QEMU in, so
	// that ifname= and bridge names resolve there.
	Netns string
	// QMP is a unix socket path for QEMU's machine protocol
	// (-qmp unix:QMP,server=on,wait=off; harness.DialQMP); "" for none.
	QMP string
	// Incoming starts QEMU as the destination of a live migration
	// (-incoming Incoming, "defer" to give the address later with QMP's
	// migrate-incoming): the guest runs once the migration completes, and
	// Adopt takes over the source's console. The command line must
	// otherwise be the source's.
	Incoming string
	// LogPath receives the serial console, QEMU's standard error and a
	// decoded transcript of every Run; it is created or truncated. ""
	// keeps only the last 256 KiB in memory (see LogTail).
	LogPath string
	// Logger receives lifecycle events; nil means no logging.
	Logger hclog.Logger
}

// VM is a running QEMU guest. Its methods are safe for concurrent use; Run
// calls are serialised because the guest has one console.
type VM struct {
	cfg     Config
	log     hclog.Logger
	cmd     *exec.Cmd
	con     *console
	out     *logWriter
	stderr  *logWriter // QEMU's own messages, for error text
	logFile *os.File
	stdin   *os.File // write end: command lines to the console
	stdout  *os.File // read end: the console's output
	started time.Time

	runMu  sync.Mutex
	nextID uint64

	bootOnce sync.Once // logs the boot once

	readerDone chan struct{}
	exited     chan struct{} // closed when QEMU has been waited for
	exitErr    error         // valid after exited is closed
	stopOnce   sync.Once
}

// Start builds the image if needed and starts QEMU. ctx bounds the start
// only; the VM runs until Stop. Start does not wait for the guest to boot:
// WaitBoot does, and Run waits for it too.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.Memory == "" {
		cfg.Memory = "512M"
	}
	if cfg.SMP == 0 {
		cfg.SMP = 1
	}
	if cfg.Image == nil {
		img, err := BuildImage(ctx, ImageOptions{Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("start guest: %w", err)
		}
		cfg.Image = img
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start guest: %w", err)
	}

	vm := &VM{
		cfg:        cfg,
		log:        cfg.Logger.Named("guest"),
		con:        newConsole(),
		out:        &logWriter{max: 256 << 10},
		stderr:     &logWriter{max: 4 << 10},
		readerDone: make(chan struct{}),
		exited:     make(chan struct{}),
	}
	if cfg.LogPath != "" {
		f, err := os.Create(cfg.LogPath)
		if err != nil {
			return nil, fmt.Errorf("start guest: create log: %w", err)
		}
		vm.logFile = f
		vm.out.w = f
	}
	if err := vm.start(); err != nil {
		if vm.logFile != nil {
			vm.logFile.Close()
		}
		return nil, err
	}
	return vm, nil
}

func (vm *VM) start() error {
	args := vm.qemuArgs()
	name := vm.cfg.QEMU
	if vm.cfg.Netns != "" {
		args = append([]string{"netns", "exec", vm.cfg.Netns, name}, args...)
		name = "ip"
	}
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start guest: create console pipe: %w", err)
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		return fmt.Errorf("start guest: create console pipe: %w", err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdin = stdinR
	cmd.Stdout = stdoutW
	cmd.Stderr = &prefixWriter{prefix: "[qemu] ", w: io.MultiWriter(vm.out, vm.stderr)}
	// Bounds Wait if something QEMU started keeps its standard error open.
	cmd.WaitDelay = 2 * time.Second
	cmd.ExtraFiles = vm.cfg.ExtraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A test binary that dies (a timeout panic) takes its guests along.
		// The signal is tied to the thread that forks; Go threads live as
		// long as the process unless a goroutine exits while locked to one.
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
	}
	fmt.Fprintf(vm.out, "[vmnet] %s\n", shellQuote(append([]string{name}, args...)))
	vm.log.Debug("starting qemu", "args", args)
	vm.started = time.Now()
	err = cmd.Start()
	// QEMU has its own copies now.
	stdinR.Close()
	stdoutW.Close()
	if err != nil {
		stdinW.Close()
		stdoutR.Close()
		return fmt.Errorf("start guest: run %s: %w", name, err)
	}
	vm.cmd, vm.stdin, vm.stdout = cmd, stdinW, stdoutR
	vm.log = vm.log.With("pid", cmd.Process.Pid)

	go func() {
		defer close(vm.readerDone)
		vm.con.feed(io.TeeReader(stdoutR, vm.out))
	}()
	go func() {
		vm.exitErr = cmd.Wait()
		vm.log.Debug("qemu exited", "error", vm.exitErr)
		close(vm.exited)
	}()
	return nil
}

func (vm *VM) qemuArgs() []string {
	cfg := vm.cfg
	machine := "q35"
	args := []string{
		"-nodefaults", "-no-reboot", "-display", "none",
		"-accel", "tcg",
		"-cpu", "max",
		"-m", cfg.Memory,
		"-smp", strconv.Itoa(cfg.SMP),
		"-kernel", cfg.Image.Kernel,
		"-initrd", cfg.Image.Initrd,
		"-append", strings.Join(append([]string{
			// panic=-1 with -no-reboot: a dead guest ends QEMU at once.
			"console=ttyS0", "panic=-1", "oops=panic",
			// Work a test guest can skip, each a measurable share of a
			// TCG boot: crypto self-tests, probing for a PS/2 controller
			// and serial ports nobody uses, speculation mitigations.
			"cryptomgr.notests", "i8042.noprobe", "8250.nr_uarts=1", "mitigations=off",
		}, cfg.KernelArgs...), " "),
		"-serial", "stdio",
	}
	if cfg.SharedMemory {
		args = append(args, "-object", "memory-backend-memfd,id=mem,size="+cfg.Memory+",share=on")
		machine += ",memory-backend=mem"
	}
	args = append(args, "-machine", machine)
	if cfg.QMP != "" {
		args = append(args, "-qmp", "unix:"+cfg.QMP+",server=on,wait=off")
	}
	if cfg.Incoming != "" {
		args = append(args, "-incoming", cfg.Incoming)
	}
	return append(args, cfg.Args...)
}

// Adopt makes vm, the destination of a live migration from src (Config.Incoming),
// serve Run: the guest's console is vm's now, and its /init is where src's left it,
// ready for a command. Call it once the migration has completed; src must not Run
// meanwhile.
func (vm *VM) Adopt(src *VM) error {
	select {
	case <-src.con.ready:
	default:
		return errors.New("adopt a migrated guest: the source had not booted")
	}
	readyAt, uptime, _ := src.con.bootInfo()
	vm.con.adopt(readyAt, uptime)
	src.runMu.Lock()
	next := src.nextID
	src.runMu.Unlock()
	vm.runMu.Lock()
	vm.nextID = max(vm.nextID, next)
	vm.runMu.Unlock()
	return nil
}

// WaitBoot waits until /init serves commands. It fails if QEMU exits first
// or /init reported a problem (a module that did not load, an address that
// could not be set).
func (vm *VM) WaitBoot(ctx context.Context) error {
	select {
	case <-vm.con.ready:
	case <-vm.exited:
		// The console may still hold the READY that raced the exit.
		select {
		case <-vm.con.ready:
		default:
			return vm.exitError("wait for guest boot")
		}
	case <-ctx.Done():
		return fmt.Errorf("wait for guest boot after %s: %w", time.Since(vm.started).Round(time.Millisecond), ctx.Err())
	}
	vm.bootOnce.Do(func() {
		_, uptime, _ := vm.con.bootInfo()
		vm.log.Info("guest booted", "duration", vm.BootTime().Round(time.Millisecond), "guest_uptime", uptime)
	})
	if _, _, errs := vm.con.bootInfo(); len(errs) > 0 {
		return fmt.Errorf("guest init failed: %s", strings.Join(errs, "; "))
	}
	return nil
}

// BootTime is how long the guest took from QEMU's start to serving
// commands; 0 until it does.
func (vm *VM) BootTime() time.Duration {
	readyAt, _, _ := vm.con.bootInfo()
	if readyAt.IsZero() {
		return 0
	}
	return readyAt.Sub(vm.started)
}

// GuestUptime is the guest kernel's uptime when /init began serving
// commands: boot time less QEMU's and the firmware's share. 0 until then.
func (vm *VM) GuestUptime() time.Duration {
	_, uptime, _ := vm.con.bootInfo()
	d, err := time.ParseDuration(uptime + "s")
	if err != nil {
		return 0
	}
	return d
}

// Run runs a shell script in the guest (busybox sh, cwd /, stdin
// /dev/null) and returns its standard output and error, interleaved, and
// its exit status. A non-zero status is no error. ctx's deadline is also
// given to the guest, which kills the script with SIGKILL shortly before
// it passes; a script killed so, or one whose result never comes, is an
// error that matches context.DeadlineExceeded.
func (vm *VM) Run(ctx context.Context, script string) (output string, rc int, err error) {
	if err := vm.WaitBoot(ctx); err != nil {
		return "", -1, err
	}
	vm.runMu.Lock()
	defer vm.runMu.Unlock()
	vm.nextID++
	id := vm.nextID

	// The guest kills the script a little before the host stops waiting,
	// so that a script that hangs still reports (exit status 137) and its
	// output so far.
	timeout := 0
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		timeout = max(1, int((left - min(left/10, 10*time.Second)).Seconds()))
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = vm.stdin.SetWriteDeadline(dl)
	} else {
		_ = vm.stdin.SetWriteDeadline(time.Time{})
	}
	start := time.Now()
	if _, err := vm.stdin.WriteString(commandLine(id, timeout, script)); err != nil {
		return "", -1, fmt.Errorf("send command %d to guest: %w", id, err)
	}
	for {
		if r, ok := vm.con.take(id); ok {
			fmt.Fprintf(vm.out, "\n[vmnet] run %d (rc %d, %s): %s\n%s[vmnet] end of run %d\n",
				id, r.rc, time.Since(start).Round(time.Millisecond), script, r.output, id)
			if r.err != nil {
				return string(r.output), r.rc, r.err
			}
			// timeout -s KILL: the shell reports 128+9.
			if timeout > 0 && r.rc == 128+9 && time.Since(start) >= time.Duration(timeout)*time.Second {
				return string(r.output), r.rc, fmt.Errorf("run command %d in guest: killed at its %d s deadline: %w", id, timeout, context.DeadlineExceeded)
			}
			return string(r.output), r.rc, nil
		}
		select {
		case <-vm.con.notify:
		case <-vm.exited:
			if r, ok := vm.con.take(id); ok {
				return string(r.output), r.rc, r.err
			}
			return "", -1, vm.exitError(fmt.Sprintf("run command %d in guest", id))
		case <-ctx.Done():
			if at, ok := vm.con.startedAt(id); ok {
				return "", -1, fmt.Errorf("run command %d in guest: started %s ago, no result (the guest's kill after %d s did not end it): %w",
					id, time.Since(at).Round(time.Millisecond), timeout, ctx.Err())
			}
			return "", -1, fmt.Errorf("run command %d in guest: the guest never said it started it (sent %s ago): %w",
				id, time.Since(start).Round(time.Millisecond), ctx.Err())
		}
	}
}

// RunOK is Run for scripts that must succeed: a non-zero exit status is an
// error that carries the output.
func (vm *VM) RunOK(ctx context.Context, script string) (string, error) {
	out, rc, err := vm.Run(ctx, script)
	if err != nil {
		return out, err
	}
	if rc != 0 {
		return out, fmt.Errorf("guest command %q: exit status %d: %s", script, rc, tail(out, 2048))
	}
	return out, nil
}

// Stop kills QEMU and waits for it and the console reader, then closes the
// log. It is idempotent; after it nothing of the VM is left running or open.
func (vm *VM) Stop() {
	vm.stopOnce.Do(func() {
		select {
		case <-vm.exited:
		default:
			// SIGKILL: the guest holds nothing worth a clean shutdown.
			if err := vm.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
				vm.log.Warn("cannot kill qemu", "error", err)
			}
			<-vm.exited
		}
		vm.stdin.Close()
		// Unblocks the reader even if a grandchild still holds the write end.
		vm.stdout.Close()
		<-vm.readerDone
		if vm.logFile != nil {
			if err := vm.logFile.Close(); err != nil {
				vm.log.Warn("cannot close guest log", "error", err)
			}
		}
	})
}

// Exited is closed when QEMU has exited, for whatever reason.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// Pid is QEMU's process id (or that of ip netns exec, which becomes QEMU).
func (vm *VM) Pid() int { return vm.cmd.Process.Pid }

// LogPath is Config.LogPath: the full log, or "" when only LogTail has it.
func (vm *VM) LogPath() string { return vm.cfg.LogPath }

// LogTail returns the last n bytes of the log: serial console, QEMU's
// messages and the transcript of Run calls.
func (vm *VM) LogTail(n int) string { return vm.out.last(n) }

func (vm *VM) exitError(what string) error {
	<-vm.exited
	return fmt.Errorf("%s: qemu exited: %w: %s", what, vm.exitErr, strings.TrimSpace(vm.stderr.last(1024)))
}

// shellQuote renders a command line that can be pasted into a shell, for
// the log.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		safe := a != ""
		for _, r := range a {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_=,.:/@%+", r)) {
				safe = false
				break
			}
		}
		if safe {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
