package engine

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// EventFD is a Linux eventfd: the kick (driver → device) and call (device →
// driver) doorbells of vhost-user, KVM's ioeventfd and irqfd. The engine
// waits on kick eventfds with epoll and signals call eventfds.
type EventFD struct {
	f  *os.File
	fd int
}

// NewEventFD makes a non-blocking, close-on-exec eventfd. The caller owns
// it and closes it.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	return &EventFD{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// EventFDFromFile wraps an eventfd received from elsewhere (vhost-user
// SET_VRING_KICK/CALL, a VMM's ioeventfd). The EventFD takes ownership of f.
func EventFDFromFile(f *os.File) (*EventFD, error) {
	var fd int
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("eventfd %s: %w", f.Name(), err)
	}
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return nil, fmt.Errorf("eventfd %s: %w", f.Name(), err)
	}
	return &EventFD{f: f, fd: fd}, nil
}

// Notify adds one to the counter, waking whoever polls the eventfd. It is
// the engine's interrupt to the guest.
func (e *EventFD) Notify() error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	for {
		_, err := unix.Write(e.fd, b[:])
		switch err {
		case nil, unix.EAGAIN: // EAGAIN: the counter is saturated, the wakeup is pending anyway
			return nil
		case unix.EINTR:
			continue
		default:
			return fmt.Errorf("signal eventfd %d: %w", e.fd, err)
		}
	}
}

// Drain resets the counter and reports whether it was non-zero.
func (e *EventFD) Drain() bool {
	var b [8]byte
	for {
		_, err := unix.Read(e.fd, b[:])
		if err == unix.EINTR {
			continue
		}
		return err == nil
	}
}

// Fd is the descriptor, valid until Close.
func (e *EventFD) Fd() int { return e.fd }

// File is the eventfd as a file, to hand to another process.
func (e *EventFD) File() *os.File { return e.f }

// Close closes the eventfd.
func (e *EventFD) Close() error { return e.f.Close() }
