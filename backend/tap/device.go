package tap

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/offload"
)

// Device is a multi-queue TAP device: a keep-alive file that holds the
// device but is detached from traffic, and one file per queue pair. The
// lifecycle follows DPDK's rtap driver.
//
// The Device owns the keep-alive file, every queue file, and its network
// namespace handle; Close closes them all. Files handed out by Queue.Dup
// belong to the caller. A Device is safe for concurrent use.
type Device struct {
	log      hclog.Logger
	opts     Options
	features DriverFeatures
	flags    uint16 // TUNSETIFF flags every file of this device uses

	mu     sync.Mutex
	name   string
	ns     netns.NsHandle
	keep   *os.File
	queues []*Queue
	closed bool
}

// Queue is one queue pair's file. The Device owns it: do not close File().
type Queue struct {
	dev     *Device
	index   int
	file    *os.File
	enabled bool
}

// Create makes a new TAP device from opts. The name (or template) must not
// name an existing device: to use one, call Open.
func Create(opts Options) (*Device, error) {
	return newDevice(opts, true)
}

// Open attaches to an existing TAP device named name (no template), for
// example a persistent one made by `vmnet-helper tap create --persist` or
// by an administrator. opts.Name is ignored. The device must be a
// multi-queue TAP with a vnet header and without packet information; when
// it is not, the error is a *MismatchError saying which flag differs,
// instead of the kernel's bare EINVAL.
func Open(name string, opts Options) (*Device, error) {
	if err := ValidateName(name, false); err != nil {
		return nil, err
	}
	opts.Name = name
	return newDevice(opts, false)
}

func newDevice(opts Options, create bool) (_ *Device, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	features, err := Probe()
	if err != nil {
		return nil, err
	}
	if err := checkFeatures(features.Flags); err != nil {
		return nil, err
	}
	ns, err := openNetNS(opts.NetNS)
	if err != nil {
		return nil, err
	}
	d := &Device{
		log:      opts.Logger,
		opts:     opts,
		features: features,
		flags:    iffFlags(features.Flags, opts.NoNAPI),
		name:     opts.Name,
		ns:       ns,
		queues:   make([]*Queue, opts.Queues),
	}
	defer func() {
		if err != nil {
			d.abort(create)
		}
	}()
	if !create {
		if err := d.checkExisting(); err != nil {
			return nil, err
		}
	}
	flags := d.flags
	if create {
		// IFF_TUN_EXCL: fail with EBUSY instead of attaching to a device
		// that already has this name (tun.c tun_set_iff).
		flags |= iffTUNExcl
	}
	var fd int
	err = inNetNS(ns, func() error {
		var err error
		fd, err = openTunFd()
		if err != nil {
			return d.opErr(-1, "open "+tunDevice, err)
		}
		name, err := tunSetIff(fd, opts.Name, flags)
		if err != nil {
			unix.Close(fd)
			return d.opErr(-1, "TUNSETIFF", err)
		}
		d.name = name
		return nil
	})
	if err != nil {
		return nil, err
	}
	d.keep = os.NewFile(uintptr(fd), "tap "+d.name+" keep-alive")
	d.log = d.log.With("tap", d.name)
	if err := d.configure(d.keep, -1); err != nil {
		return nil, err
	}
	if err := d.keepControl("TUNSETOFFLOAD", func(fd int) error { return tunSetOffload(fd, opts.Offloads) }); err != nil {
		return nil, err
	}
	if opts.SndBuf > 0 {
		if err := d.keepControl("TUNSETSNDBUF", func(fd int) error { return tunSetSndBuf(fd, opts.SndBuf) }); err != nil {
			return nil, err
		}
	}
	if opts.Owner > 0 {
		if err := d.keepControl("TUNSETOWNER", func(fd int) error { return tunSetOwner(fd, opts.Owner) }); err != nil {
			return nil, err
		}
	}
	if opts.Group > 0 {
		if err := d.keepControl("TUNSETGROUP", func(fd int) error { return tunSetGroup(fd, opts.Group) }); err != nil {
			return nil, err
		}
	}
	if opts.Persist {
		if err := d.keepControl("TUNSETPERSIST", func(fd int) error { return tunSetPersist(fd, true) }); err != nil {
			return nil, err
		}
	}
	// The keep-alive file holds the device; it must never be picked for
	// traffic, or frames would queue on a file nobody reads.
	if err := d.keepControl("TUNSETQUEUE detach", func(fd int) error { return tunSetQueue(fd, false) }); err != nil {
		return nil, err
	}
	if !opts.DeferQueues {
		for i := range d.queues {
			if _, err := d.OpenQueue(i); err != nil {
				return nil, err
			}
		}
	}
	d.log.Debug("tap ready", "queues", opts.Queues, "vnet_hdr", opts.VnetHdrSize, "created", create,
		"persist", opts.Persist, "napi", d.flags&iffNAPI != 0, "offloads", opts.Offloads.String())
	return d, nil
}

// configure sets what every file of the device must agree on. The vnet
// header size lives in the device, but a persistent device may have been
// left with another size by its last user, so every file sets it.
func (d *Device) configure(f *os.File, queue int) error {
	size := d.opts.VnetHdrSize
	if err := rawControl(f, func(fd int) error { return tunSetVnetHdrSize(fd, size) }); err != nil {
		return d.opErr(queue, "TUNSETVNETHDRSZ", err)
	}
	if err := rawControl(f, tunSetVnetLE); err != nil {
		return d.opErr(queue, "TUNSETVNETLE", err)
	}
	return nil
}

// checkExisting reads the existing device's flags over netlink (the
// IFLA_TUN_* attributes that /sys/class/net/NAME/tun_flags also shows, but
// readable in any network namespace) and refuses a device whose flags
// TUNSETIFF would reject or silently change.
func (d *Device) checkExisting() error {
	info, err := lookup(d.ns, d.name)
	if err != nil {
		return err
	}
	check := func(field string, have, want bool, haveS, wantS string) error {
		if have != want {
			return &MismatchError{Device: d.name, Field: field, Have: haveS, Want: wantS}
		}
		return nil
	}
	if err := check("type", info.Type == "tap", true, info.Type, "tap"); err != nil {
		return err
	}
	if err := check("multi_queue", info.MultiQueue, true, "off", "on"); err != nil {
		return err
	}
	if err := check("vnet_hdr", info.VnetHdr, true, "off", "on"); err != nil {
		return err
	}
	if err := check("pi", info.PI, false, "on", "off"); err != nil {
		return err
	}
	if n := info.Queues + info.DisabledQueues + 1 + d.opts.Queues; n > maxTapQueues {
		return d.opErr(-1, "attach", fmt.Errorf("%d queues attached and %d detached already, %d more would pass the kernel's %d: %w",
			info.Queues, info.DisabledQueues, d.opts.Queues+1, maxTapQueues, unix.E2BIG))
	}
	return nil
}

// abort undoes a half-made device: a device this call created must not
// outlive the failure, even if persist was already set.
func (d *Device) abort(created bool) {
	if created && d.keep != nil && d.opts.Persist {
		_ = rawControl(d.keep, func(fd int) error { return tunSetPersist(fd, false) })
	}
	d.closeFiles()
}

// OpenQueue opens the file of queue pair i, attached to traffic. Opening
// an open queue returns it unchanged.
func (d *Device) OpenQueue(i int) (*Queue, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, d.opErr(i, "open queue", os.ErrClosed)
	}
	if i < 0 || i >= len(d.queues) {
		return nil, d.opErr(i, "open queue", fmt.Errorf("index out of range [0, %d)", len(d.queues)))
	}
	if q := d.queues[i]; q != nil {
		return q, nil
	}
	var fd int
	err := inNetNS(d.ns, func() error {
		var err error
		if fd, err = openTunFd(); err != nil {
			return d.opErr(i, "open "+tunDevice, err)
		}
		if _, err := tunSetIff(fd, d.name, d.flags); err != nil {
			unix.Close(fd)
			return d.opErr(i, "TUNSETIFF", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("tap %s queue %d", d.name, i))
	if err := d.configure(f, i); err != nil {
		f.Close()
		return nil, err
	}
	q := &Queue{dev: d, index: i, file: f, enabled: true}
	d.queues[i] = q
	d.log.Trace("queue open", "queue", i)
	return q, nil
}

// CloseQueue closes the file of queue pair i; closing a closed queue does
// nothing.
func (d *Device) CloseQueue(i int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if i < 0 || i >= len(d.queues) {
		return d.opErr(i, "close queue", fmt.Errorf("index out of range [0, %d)", len(d.queues)))
	}
	q := d.queues[i]
	if q == nil {
		return nil
	}
	d.queues[i] = nil
	if err := q.file.Close(); err != nil {
		return d.opErr(i, "close", err)
	}
	return nil
}

// Queue returns the open queue i, or nil.
func (d *Device) Queue(i int) *Queue {
	d.mu.Lock()
	defer d.mu.Unlock()
	if i < 0 || i >= len(d.queues) {
		return nil
	}
	return d.queues[i]
}

// EnableQueue attaches queue i's file to traffic again (TUNSETQUEUE with
// IFF_ATTACH_QUEUE).
func (d *Device) EnableQueue(i int) error { return d.setQueueEnabled(i, true) }

// DisableQueue detaches queue i's file from traffic (IFF_DETACH_QUEUE): the
// kernel stops steering frames to it, as when the guest turns the queue
// pair off. The file stays open.
func (d *Device) DisableQueue(i int) error { return d.setQueueEnabled(i, false) }

func (d *Device) setQueueEnabled(i int, on bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if i < 0 || i >= len(d.queues) || d.queues[i] == nil {
		return d.opErr(i, "TUNSETQUEUE", errors.New("queue not open"))
	}
	q := d.queues[i]
	if q.enabled == on {
		return nil
	}
	if err := rawControl(q.file, func(fd int) error { return tunSetQueue(fd, on) }); err != nil {
		op := "TUNSETQUEUE detach"
		if on {
			op = "TUNSETQUEUE attach"
		}
		return d.opErr(i, op, err)
	}
	q.enabled = on
	return nil
}

// SetOffload applies TUNSETOFFLOAD: which offloads the kernel may leave
// to vmnet in frames it hands over (the guest's acked GUEST_* features).
func (d *Device) SetOffload(o offload.TunFlags) error {
	if !o.Valid() {
		return d.opErr(-1, "TUNSETOFFLOAD", &OptionError{Option: "offloads", Value: o, Reason: "every offload needs csum, uso4 and uso6 go together, tso_ecn needs tso4 or tso6"})
	}
	if err := d.keepControl("TUNSETOFFLOAD", func(fd int) error { return tunSetOffload(fd, o) }); err != nil {
		return err
	}
	d.log.Debug("offloads set", "offloads", o.String())
	return nil
}

// SetSteeringEBPF attaches a socket-filter program that chooses the queue
// of each frame the kernel sends (TUNSETSTEERINGEBPF); progFd -1 detaches
// it. The device does not take ownership of progFd.
func (d *Device) SetSteeringEBPF(progFd int) error {
	return d.keepControl("TUNSETSTEERINGEBPF", func(fd int) error { return tunSetSteeringEBPF(fd, progFd) })
}

// keepControl runs an ioctl on the keep-alive file.
func (d *Device) keepControl(op string, fn func(fd int) error) error {
	d.mu.Lock()
	keep := d.keep
	d.mu.Unlock()
	if keep == nil {
		return d.opErr(-1, op, os.ErrClosed)
	}
	if err := rawControl(keep, fn); err != nil {
		return d.opErr(-1, op, err)
	}
	return nil
}

// Name is the interface name the kernel gave the device.
func (d *Device) Name() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.name
}

// NumQueues is the number of queue pairs the device was made with.
func (d *Device) NumQueues() int { return len(d.queues) }

// VnetHdrSize is the virtio-net header size of every file.
func (d *Device) VnetHdrSize() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.opts.VnetHdrSize
}

// DriverFeatures is what the kernel's TUN driver offers (see Probe).
func (d *Device) DriverFeatures() DriverFeatures { return d.features }

// NAPI reports whether the device's files use IFF_NAPI.
func (d *Device) NAPI() bool { return d.flags&iffNAPI != 0 }

// MAC reads the device's current MAC address.
func (d *Device) MAC() (net.HardwareAddr, error) {
	var mac net.HardwareAddr
	err := d.keepControl("SIOCGIFHWADDR", func(fd int) error {
		var err error
		mac, err = tunGetHWAddr(fd)
		return err
	})
	return mac, err
}

// Close closes every file the device owns. A device that is not persistent
// disappears with its last file (tun.c tun_detach); a persistent one stays
// for a later Open. Closing twice is safe.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	err := d.closeFilesLocked()
	d.log.Debug("tap closed")
	return err
}

func (d *Device) closeFiles() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	_ = d.closeFilesLocked()
}

func (d *Device) closeFilesLocked() error {
	var errs []error
	for i, q := range d.queues {
		if q == nil {
			continue
		}
		if err := q.file.Close(); err != nil {
			errs = append(errs, d.opErr(i, "close", err))
		}
		d.queues[i] = nil
	}
	if d.keep != nil {
		if err := d.keep.Close(); err != nil {
			errs = append(errs, d.opErr(-1, "close keep-alive", err))
		}
		d.keep = nil
	}
	if d.ns.IsOpen() {
		d.ns.Close()
		d.ns = netns.None()
	}
	return errors.Join(errs...)
}

func (d *Device) opErr(queue int, op string, err error) error {
	return &OpError{Device: d.name, Queue: queue, Op: op, Err: err}
}

// Index is the queue pair index.
func (q *Queue) Index() int { return q.index }

// File is the queue's file, owned by the Device: use it, do not close it.
// It is non-blocking and registered with the Go runtime's poller, so
// SyscallConn().Read/Write wait for readiness without a thread each. Do
// not call File().Fd(): that switches the file to blocking mode.
func (q *Queue) File() *os.File { return q.file }

// Enabled reports whether the queue is attached to traffic.
func (q *Queue) Enabled() bool {
	q.dev.mu.Lock()
	defer q.dev.mu.Unlock()
	return q.enabled
}

// Dup returns a new file for the same queue, for another process: pass it
// in exec.Cmd.ExtraFiles or over a unix socket with SCM_RIGHTS. The caller
// owns the returned file and closes it (after the child has it); the
// queue stays open in the Device until CloseQueue or Close. The duplicate
// shares the open file description, and with it O_NONBLOCK.
func (q *Queue) Dup() (*os.File, error) {
	var nfd int
	err := rawControl(q.file, func(fd int) error {
		var err error
		nfd, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, q.dev.opErr(q.index, "F_DUPFD_CLOEXEC", err)
	}
	return os.NewFile(uintptr(nfd), q.file.Name()), nil
}

// SetPersist turns TUNSETPERSIST on or off: a persistent device outlives
// its files; one that is not disappears with its last file.
func (d *Device) SetPersist(on bool) error {
	if err := d.keepControl("TUNSETPERSIST", func(fd int) error { return tunSetPersist(fd, on) }); err != nil {
		return err
	}
	d.mu.Lock()
	d.opts.Persist = on
	d.mu.Unlock()
	return nil
}

// VnetHdrSizeOf reads the vnet header size of the idle device name (one
// with no queue attached: attaching a file to a busy device would let the
// kernel steer a frame to it). It returns ErrBusy for a busy device.
func VnetHdrSizeOf(name, netNS string) (int, error) {
	ns, err := openNetNS(netNS)
	if err != nil {
		return 0, err
	}
	defer ns.Close()
	info, err := lookup(ns, name)
	if err != nil {
		return 0, err
	}
	if info.Queues > 0 {
		return 0, &OpError{Device: name, Queue: -1, Op: "TUNGETVNETHDRSZ", Err: ErrBusy}
	}
	flags := uint16(iffTAP)
	if info.Type == "tun" {
		flags = iffTUN
	}
	if info.MultiQueue {
		flags |= iffMultiQueue
	}
	if info.VnetHdr {
		flags |= iffVnetHdr
	}
	if !info.PI {
		flags |= iffNoPI
	}
	size := 0
	err = inNetNS(ns, func() error {
		fd, err := openTunFd()
		if err != nil {
			return &OpError{Device: name, Queue: -1, Op: "open " + tunDevice, Err: err}
		}
		defer unix.Close(fd)
		if _, err := tunSetIff(fd, name, flags); err != nil {
			return &OpError{Device: name, Queue: -1, Op: "TUNSETIFF", Err: err}
		}
		if size, err = tunGetVnetHdrSize(fd); err != nil {
			return &OpError{Device: name, Queue: -1, Op: "TUNGETVNETHDRSZ", Err: err}
		}
		return nil
	})
	return size, err
}

// SetVnetHdrSize changes the vnet header size of the device, as a guest's
// feature negotiation may (virtio.HdrLenFor). Set it while no frames flow:
// the kernel applies it to the next frame on every file.
func (d *Device) SetVnetHdrSize(size int) error {
	if err := checkVnetHdrSize(size); err != nil {
		return d.opErr(-1, "TUNSETVNETHDRSZ", err)
	}
	if err := d.keepControl("TUNSETVNETHDRSZ", func(fd int) error { return tunSetVnetHdrSize(fd, size) }); err != nil {
		return err
	}
	d.mu.Lock()
	d.opts.VnetHdrSize = size
	d.mu.Unlock()
	return nil
}
