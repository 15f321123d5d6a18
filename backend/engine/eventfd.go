package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

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

// ErrNotEventFD is matched by the error of EventFDFromFile and
// KickFromFile for a file that is not an eventfd, or is one made with
// EFD_SEMAPHORE (*NotEventFDError says which).
var ErrNotEventFD = errors.New("not an eventfd without EFD_SEMAPHORE")

// NotEventFDError is a file offered as an eventfd that the engine does not
// take. Anything but an eventfd could wake the worker for ever (a pipe
// whose writer closed polls readable at end of file; a timerfd fires at
// the sender's rate) or be written by it (a regular file would grow by 8
// bytes per interrupt). A semaphore eventfd gives up 1 of its count per
// read, so a kick written with a large count would stay readable after
// every drain.
type NotEventFDError struct {
	// Name is the file's name (os.File.Name): for vhost-user, the ring
	// and the message it came with.
	Name string
	// Link is what /proc/self/fd says the file is: "pipe:[4026532]",
	// "socket:[4026533]", "anon_inode:[timerfd]", a path;
	// "anon_inode:[eventfd]" for a semaphore eventfd.
	Link string
	// Kind is the file's type: "a pipe", "a socket", "a regular file",
	// "a character device", ...; empty for an anonymous inode, which
	// Link names.
	Kind string
	// Semaphore marks an eventfd made with EFD_SEMAPHORE.
	Semaphore bool
}

func (e *NotEventFDError) Error() string {
	if e.Semaphore {
		return fmt.Sprintf("%s is an eventfd made with EFD_SEMAPHORE: a read takes only 1 from its count", e.Name)
	}
	switch {
	case e.Kind == "":
		return fmt.Sprintf("%s is %s, not an eventfd", e.Name, e.Link)
	case e.Link == e.Name:
		return fmt.Sprintf("%s is %s, not an eventfd", e.Name, e.Kind)
	}
	return fmt.Sprintf("%s is %s (%s), not an eventfd", e.Name, e.Kind, e.Link)
}

// Is makes the error match ErrNotEventFD.
func (e *NotEventFDError) Is(target error) bool { return target == ErrNotEventFD }

// EventFDFromFile wraps an eventfd received from elsewhere that the engine
// signals: a call (vhost-user SET_VRING_CALL, a VMM's irqfd) or a config
// interrupt. It checks, once, that f is an eventfd and, where the kernel
// says (below), not a semaphore one: anything else is an error matching
// ErrNotEventFD. It puts f in non-blocking mode (O_NONBLOCK, shared with
// every duplicate of the file). The EventFD takes ownership of f; on
// error f stays the caller's.
//
// What is told apart: that f is an eventfd, always (/proc/self/fd names
// it anon_inode:[eventfd]; pipes, sockets, regular files, devices,
// timerfds, signalfds are not); EFD_SEMAPHORE, where /proc/self/fdinfo
// shows it (eventfd-semaphore, since Linux 6.5, commit 33d8b5d7824c, and
// the stable kernels that took it; Linux 6.1's fdinfo has eventfd-count
// and eventfd-id only). Where it does not, a semaphore call is accepted:
// the engine only writes it, which a semaphore takes as any eventfd does,
// and telling would take a read that steals the front-end's interrupt.
// KickFromFile tells, for the eventfds the engine reads. Both need /proc.
func EventFDFromFile(f *os.File) (*EventFD, error) { return fromFile(f, false) }

// KickFromFile is EventFDFromFile for an eventfd the engine reads: a kick
// (vhost-user SET_VRING_KICK, a VMM's ioeventfd). Where fdinfo does not
// show EFD_SEMAPHORE, it asks the eventfd itself: a read takes a plain
// eventfd's whole count but only 1 of a semaphore's, so it brings the
// count to at least 2 with a write, reads, and writes back what it took
// beyond its own (a pending kick stays pending). A read of 1 is a
// semaphore. The test cannot tell while another process reads the same
// eventfd between the write and the read (then it accepts); a semaphore
// kick that gets through does no harm either, the worker watching kicks
// edge-triggered (see QueuePair.Start).
func KickFromFile(f *os.File) (*EventFD, error) { return fromFile(f, true) }

func fromFile(f *os.File, reader bool) (*EventFD, error) {
	var fd int
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("eventfd %s: %w", f.Name(), err)
	}
	var cerr error
	if err := rc.Control(func(u uintptr) {
		fd = int(u)
		if cerr = checkEventFD(fd, f.Name(), reader); cerr == nil {
			cerr = unix.SetNonblock(fd, true)
		}
	}); err != nil {
		return nil, fmt.Errorf("eventfd %s: %w", f.Name(), err)
	}
	if cerr != nil {
		return nil, cerr
	}
	return &EventFD{f: f, fd: fd}, nil
}

// hideSemaphoreLine makes checkEventFD read fdinfo as Linux 6.1 prints
// it, without eventfd-semaphore: tests of the read probe set it.
var hideSemaphoreLine = false

// checkEventFD reports, as a *NotEventFDError, an fd that is not an
// eventfd or is a semaphore one; reader says the engine will read it
// (see KickFromFile).
func checkEventFD(fd int, name string, reader bool) error {
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Errorf("check eventfd %s: %w", name, err)
	}
	if link != "anon_inode:[eventfd]" {
		e := &NotEventFDError{Name: name, Link: link}
		var st unix.Stat_t
		if !strings.HasPrefix(link, "anon_inode:") && unix.Fstat(fd, &st) == nil {
			e.Kind = fileKind(st.Mode)
		}
		return e
	}
	info, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Errorf("check eventfd %s: %w", name, err)
	}
	sem, known := fdinfoField(info, "eventfd-semaphore:")
	if known && !hideSemaphoreLine {
		if sem != "0" {
			return &NotEventFDError{Name: name, Link: link, Semaphore: true}
		}
		return nil
	}
	if !reader {
		return nil
	}
	count, _ := fdinfoField(info, "eventfd-count:")
	n, _ := strconv.ParseUint(count, 16, 64)
	semaphore, err := probeSemaphore(fd, n)
	if err != nil {
		return fmt.Errorf("check eventfd %s: %w", name, err)
	}
	if semaphore {
		return &NotEventFDError{Name: name, Link: link, Semaphore: true}
	}
	return nil
}

// fdinfoField returns the value of the /proc/PID/fdinfo line that starts
// with key, and whether there is one.
func fdinfoField(info []byte, key string) (string, bool) {
	for line := range bytes.Lines(info) {
		if v, ok := bytes.CutPrefix(line, []byte(key)); ok {
			return string(bytes.TrimSpace(v)), true
		}
	}
	return "", false
}

// probeSemaphore asks eventfd fd, whose count fdinfo gave as count,
// whether it is a semaphore (KickFromFile says how).
func probeSemaphore(fd int, count uint64) (bool, error) {
	var added uint64
	if count < 2 {
		// EAGAIN (another writer filled the count meanwhile) leaves a
		// count the read below can tell by just as well.
		added = 2 - count
		writeCount(fd, added)
	}
	v, err := readCount(fd)
	switch {
	case err == unix.EAGAIN:
		// Another reader took the count first: nothing to tell by.
		return false, nil
	case err != nil:
		return false, err
	case v == 1:
		return true, nil
	}
	if v > added {
		writeCount(fd, v-added)
	}
	return false, nil
}

func readCount(fd int) (uint64, error) {
	var b [8]byte
	for {
		n, err := unix.Read(fd, b[:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, err
		case n != len(b):
			return 0, fmt.Errorf("read of %d bytes, want 8", n)
		}
		return binary.NativeEndian.Uint64(b[:]), nil
	}
}

func writeCount(fd int, v uint64) error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], v)
	for {
		_, err := unix.Write(fd, b[:])
		if err != unix.EINTR {
			return err
		}
	}
}

// fileKind names a file type of st_mode.
func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFIFO:
		return "a pipe"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return fmt.Sprintf("a file of mode %#o", mode)
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

// Take reads and resets the counter, as the worker does on a kick, and
// returns what it held: 0 when it was zero (EAGAIN, a wakeup with nothing
// to take). An error says the file cannot be read as an eventfd, and will
// not kick again: the end of a pipe whose writer closed (io.EOF), a read
// of other than 8 bytes, an errno.
func (e *EventFD) Take() (uint64, error) {
	var b [8]byte
	for {
		n, err := unix.Read(e.fd, b[:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil
		case err != nil:
			return 0, fmt.Errorf("read eventfd %d: %w", e.fd, err)
		case n == 0:
			return 0, fmt.Errorf("read eventfd %d: %w", e.fd, io.EOF)
		case n != len(b):
			return 0, fmt.Errorf("read eventfd %d: %d bytes, want 8", e.fd, n)
		}
		return binary.NativeEndian.Uint64(b[:]), nil
	}
}

// Drain resets the counter and reports whether it was non-zero.
func (e *EventFD) Drain() bool {
	n, err := e.Take()
	return err == nil && n > 0
}

// Fd is the descriptor, valid until Close.
func (e *EventFD) Fd() int { return e.fd }

// File is the eventfd as a file, to hand to another process.
func (e *EventFD) File() *os.File { return e.f }

// Close closes the eventfd.
func (e *EventFD) Close() error { return e.f.Close() }
