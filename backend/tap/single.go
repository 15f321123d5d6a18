package tap

import (
	"fmt"
	"os"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// SingleQueueOptions say how to create a TAP without IFF_MULTI_QUEUE: the
// kind qemu-bridge-helper makes, and the only kind a hypervisor that
// attaches by name with its own one-queue TUNSETIFF (Firecracker's
// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) can open, since tun.c tun_set_iff
// refuses a TUNSETIFF whose IFF_MULTI_QUEUE differs from the device's.
// The zero value makes a non-persistent "tap%d" with a vnet header, in
// the caller's network namespace.
type SingleQueueOptions struct {
	// Name is the interface name or a template with one "%d"; "" means
	// "tap%d", as qemu-bridge-helper names its devices.
	Name string
	// NoVnetHdr leaves IFF_VNET_HDR off, for a caller that cannot handle
	// a virtio-net header. With it on, the header size is the kernel's
	// default (10) until the hypervisor sets its own.
	NoVnetHdr bool
	// Persist keeps the device after its file is closed, for a
	// hypervisor that opens it by name later.
	Persist bool
	// Owner and Group may attach without CAP_NET_ADMIN (TUNSETOWNER,
	// TUNSETGROUP); 0 leaves them unset.
	Owner, Group int
	// NetNS is the network namespace, as in Options.NetNS.
	NetNS string
	// Logger receives a line when the device is made; nil means none.
	Logger hclog.Logger
}

// CreateSingleQueue makes a one-queue TAP and returns its only file and
// the name the kernel picked. The caller owns the file: the device
// disappears when it is closed, unless Persist. A failure leaves no
// device behind. The file is close-on-exec and non-blocking; hand it on
// with SCM_RIGHTS or exec.Cmd.ExtraFiles.
func CreateSingleQueue(opts SingleQueueOptions) (_ *os.File, name string, err error) {
	if opts.Name == "" {
		opts.Name = "tap%d"
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if err := ValidateName(opts.Name, true); err != nil {
		return nil, "", err
	}
	if opts.Owner < 0 || opts.Group < 0 {
		return nil, "", &OptionError{Option: "owner or group", Value: fmt.Sprintf("%d/%d", opts.Owner, opts.Group), Reason: "want an id >= 0"}
	}
	ns, err := openNetNS(opts.NetNS)
	if err != nil {
		return nil, "", err
	}
	defer ns.Close()
	flags := uint16(iffTAP | iffNoPI | iffTUNExcl)
	if !opts.NoVnetHdr {
		flags |= iffVnetHdr
	}
	name = opts.Name
	var fd int
	err = inNetNS(ns, func() error {
		var err error
		if fd, err = openTunFd(); err != nil {
			return &OpError{Device: name, Queue: -1, Op: "open " + tunDevice, Err: err}
		}
		if name, err = tunSetIff(fd, opts.Name, flags); err != nil {
			unix.Close(fd)
			return &OpError{Device: opts.Name, Queue: -1, Op: "TUNSETIFF", Err: err}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	f := os.NewFile(uintptr(fd), "tap "+name)
	defer func() {
		if err != nil {
			if opts.Persist {
				_ = rawControl(f, func(fd int) error { return tunSetPersist(fd, false) })
			}
			f.Close()
		}
	}()
	step := func(op string, fn func(fd int) error) error {
		if err := rawControl(f, fn); err != nil {
			return &OpError{Device: name, Queue: -1, Op: op, Err: err}
		}
		return nil
	}
	if opts.Owner > 0 {
		if err := step("TUNSETOWNER", func(fd int) error { return tunSetOwner(fd, opts.Owner) }); err != nil {
			return nil, "", err
		}
	}
	if opts.Group > 0 {
		if err := step("TUNSETGROUP", func(fd int) error { return tunSetGroup(fd, opts.Group) }); err != nil {
			return nil, "", err
		}
	}
	if opts.Persist {
		if err := step("TUNSETPERSIST", func(fd int) error { return tunSetPersist(fd, true) }); err != nil {
			return nil, "", err
		}
	}
	opts.Logger.Debug("single-queue tap ready", "tap", name, "vnet_hdr", !opts.NoVnetHdr, "persist", opts.Persist)
	return f, name, nil
}
