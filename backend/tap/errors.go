package tap

import (
	"errors"
	"fmt"
	"strings"
)

// ErrNotSupported is matched (errors.Is) by every error that says the
// running kernel lacks something vmnet needs or was asked for.
var ErrNotSupported = errors.New("not supported")

// OpError is the error of one operation on a TAP device: it names the
// device, the queue (or -1 for the device as a whole), and the ioctl or
// operation, and wraps the cause so errors.Is(err, unix.EBUSY) works.
type OpError struct {
	Device string // interface name, or the template before the kernel named it
	Queue  int    // queue pair index, -1 when the operation is not on a queue
	Op     string // the ioctl or operation, e.g. "TUNSETQUEUE"
	Err    error
}

func (e *OpError) Error() string {
	var b strings.Builder
	b.WriteString("tap ")
	b.WriteString(e.Device)
	if e.Queue >= 0 {
		fmt.Fprintf(&b, " queue %d", e.Queue)
	}
	b.WriteString(": ")
	b.WriteString(e.Op)
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *OpError) Unwrap() error { return e.Err }

// MissingFeaturesError says which TUNGETFEATURES flags vmnet requires and
// the kernel did not report. It matches ErrNotSupported.
type MissingFeaturesError struct {
	Have    uint32 // what TUNGETFEATURES returned
	Missing []string
}

func (e *MissingFeaturesError) Error() string {
	return fmt.Sprintf("kernel TUN driver lacks %s (TUNGETFEATURES %#x)", strings.Join(e.Missing, ", "), e.Have)
}

func (e *MissingFeaturesError) Is(target error) bool { return target == ErrNotSupported }

// MismatchError says an existing device cannot be opened with the flags
// vmnet needs. The kernel would answer TUNSETIFF with a bare EINVAL; this
// says which flag differs.
type MismatchError struct {
	Device string
	Field  string // "type", "multi_queue", "vnet_hdr", "pi"
	Have   string
	Want   string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("tap %s: existing device has %s %s, vmnet needs %s %s", e.Device, e.Field, e.Have, e.Field, e.Want)
}

// OptionError says which option is invalid and why, before anything is
// created.
type OptionError struct {
	Option string
	Value  any
	Reason string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("invalid %s %v: %s", e.Option, e.Value, e.Reason)
}

// ErrBusy says the device has queues attached and the operation would
// disturb their traffic.
var ErrBusy = errors.New("device in use")
