package uring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ring is one io_uring: operations are prepared with Read, Readv, Write
// and Writev, then run together by Submit.
type Ring struct {
	fd      int
	maps    [][]byte // the kernel's rings, unmapped by Close
	sqTail  *uint32  // shared with the kernel
	sqMask  uint32
	sqes    []ioUringSqe
	cqHead  *uint32 // shared with the kernel
	cqTail  *uint32 // shared with the kernel
	cqMask  uint32
	cqes    []ioUringCqe
	tail    uint32 // the next SQE's index, published by Submit
	n       int    // operations prepared since the last Submit
	broken  error  // an operation may still be running: no more batches
	entries int
}

// New makes a ring for batches of up to entries operations (a power of
// two, at most 4096). The error wraps the kernel's: ENOSYS without
// io_uring, EPERM where io_uring_disabled or a seccomp filter forbids it.
func New(entries int) (*Ring, error) {
	if entries < 1 || entries > 4096 || entries&(entries-1) != 0 {
		return nil, fmt.Errorf("new io_uring: %d entries, want a power of two up to 4096", entries)
	}
	var p ioUringParams
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("new io_uring: io_uring_setup: %w", errno)
	}
	// The kernel made the file O_CLOEXEC (io_uring_install_fd).
	r := &Ring{fd: int(fd), entries: int(p.sqEntries)}
	if err := r.mapRings(&p); err != nil {
		r.Close()
		return nil, fmt.Errorf("new io_uring: %w", err)
	}
	return r, nil
}

func (r *Ring) mapRings(p *ioUringParams) error {
	if p.features&ioringFeatNoDrop == 0 {
		// Before Linux 5.5 a full completion ring dropped completions;
		// Submit counts on getting every one.
		return errors.New("kernel lacks IORING_FEAT_NODROP (Linux 5.5)")
	}
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(ioUringCqe{}))
	mmap := func(off int64, size int) ([]byte, error) {
		m, err := unix.Mmap(r.fd, off, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return nil, fmt.Errorf("map io_uring at %#x: %w", off, err)
		}
		r.maps = append(r.maps, m)
		return m, nil
	}
	var sq, cq []byte
	var err error
	if p.features&ioringFeatSingleMmap != 0 {
		if sq, err = mmap(ioringOffSqRing, max(sqSize, cqSize)); err != nil {
			return err
		}
		cq = sq
	} else {
		if sq, err = mmap(ioringOffSqRing, sqSize); err != nil {
			return err
		}
		if cq, err = mmap(ioringOffCqRing, cqSize); err != nil {
			return err
		}
	}
	se, err := mmap(ioringOffSqes, int(p.sqEntries)*int(unsafe.Sizeof(ioUringSqe{})))
	if err != nil {
		return err
	}
	u32 := func(m []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&m[off])) }
	r.sqTail = u32(sq, p.sqOff.tail)
	r.sqMask = *u32(sq, p.sqOff.ringMask)
	r.tail = atomic.LoadUint32(r.sqTail)
	// SQE i always sits in slot i of the array: the array only matters to
	// submitters that reorder.
	array := unsafe.Slice(u32(sq, p.sqOff.array), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.sqes = unsafe.Slice((*ioUringSqe)(unsafe.Pointer(&se[0])), p.sqEntries)
	r.cqHead = u32(cq, p.cqOff.head)
	r.cqTail = u32(cq, p.cqOff.tail)
	r.cqMask = *u32(cq, p.cqOff.ringMask)
	r.cqes = unsafe.Slice((*ioUringCqe)(unsafe.Pointer(&cq[p.cqOff.cqes])), p.cqEntries)
	return nil
}

// Close unmaps the rings and closes the ring's file. Operations are never
// left running between Submits, so nothing is cut short.
func (r *Ring) Close() error {
	for _, m := range r.maps {
		unix.Munmap(m)
	}
	r.maps = nil
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	if err != nil {
		return fmt.Errorf("close io_uring: %w", err)
	}
	return nil
}

// Cap is the most operations one Submit takes.
func (r *Ring) Cap() int { return r.entries }

// Len is the number of operations prepared for the next Submit.
func (r *Ring) Len() int { return r.n }

// Write prepares write(fd, b), Read read(fd, b), Writev writev(fd, iov),
// Readv readv(fd, iov). Each reports false, preparing nothing, when the
// batch is full (Len == Cap). The memory of b or iov and of the buffers
// iov points to must stay reachable until Submit returns: the ring holds
// their addresses, which the garbage collector does not see.
func (r *Ring) Write(fd int, b []byte) bool {
	return r.prep(ioringOpWrite, fd, unsafe.Pointer(unsafe.SliceData(b)), len(b))
}

func (r *Ring) Read(fd int, b []byte) bool {
	return r.prep(ioringOpRead, fd, unsafe.Pointer(unsafe.SliceData(b)), len(b))
}

func (r *Ring) Writev(fd int, iov []unix.Iovec) bool {
	return r.prep(ioringOpWritev, fd, unsafe.Pointer(unsafe.SliceData(iov)), len(iov))
}

func (r *Ring) Readv(fd int, iov []unix.Iovec) bool {
	return r.prep(ioringOpReadv, fd, unsafe.Pointer(unsafe.SliceData(iov)), len(iov))
}

func (r *Ring) prep(op uint8, fd int, addr unsafe.Pointer, n int) bool {
	if r.n == r.entries {
		return false
	}
	r.sqes[r.tail&r.sqMask] = ioUringSqe{
		opcode:   op,
		fd:       int32(fd),
		off:      ^uint64(0), // the file position, as read(2) and write(2)
		addr:     uint64(uintptr(addr)),
		len:      uint32(n),
		rwFlags:  rwfNowait,
		userData: uint64(r.n),
	}
	r.tail++
	r.n++
	return true
}

// Submit runs the prepared operations and waits for all of them. res[i]
// gets the i-th operation's result: bytes moved, or a negative errno
// (-EAGAIN: nothing to read, or no room to write, at that moment;
// -EOPNOTSUPP: the file or kernel cannot do it without waiting, nothing
// was done). res must have room for Len results. An error means the ring
// itself failed: operations not submitted read -ECANCELED, and so do those
// it could not wait for (then the ring refuses further batches; with
// RWF_NOWAIT on every operation that wait is never needed, so this is a
// kernel's failure, and such an operation may yet be carried out).
func (r *Ring) Submit(res []int32) error {
	n := r.n
	if n == 0 {
		return nil
	}
	if r.broken != nil {
		return r.broken
	}
	if len(res) < n {
		return fmt.Errorf("submit %d io_uring operations: room for %d results", n, len(res))
	}
	// An operation without a completion reads as cancelled, never as a
	// result left from an earlier batch.
	for i := range n {
		res[i] = -int32(unix.ECANCELED)
	}
	atomic.StoreUint32(r.sqTail, r.tail)
	submitted := 0
	var err error
	for submitted < n {
		// RawSyscall: with RWF_NOWAIT the kernel never sleeps here.
		k, _, errno := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n-submitted), 0, 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno == 0 && k == 0 {
			errno = unix.EAGAIN
		}
		if errno != 0 {
			err = fmt.Errorf("submit %d io_uring operations: io_uring_enter: %w", n-submitted, errno)
			// Take back what the kernel did not take: it reads the
			// queue only inside io_uring_enter.
			r.tail -= uint32(n - submitted)
			atomic.StoreUint32(r.sqTail, r.tail)
			break
		}
		submitted += int(k)
	}
	r.n = 0
	for got := r.reap(res, n); got < submitted; got += r.reap(res, n) {
		// Not done in the submitting call after all: wait, telling the
		// scheduler.
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 0, uintptr(submitted-got), ioringEnterGetevents, 0, 0)
		if errno != 0 && errno != unix.EINTR {
			r.broken = fmt.Errorf("wait for %d io_uring operations: io_uring_enter: %w", submitted-got, errno)
			return r.broken
		}
	}
	return err
}

// reap takes the completions there are and returns how many.
func (r *Ring) reap(res []int32, n int) int {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	got := 0
	for ; head != tail; head++ {
		c := &r.cqes[head&r.cqMask]
		if c.userData < uint64(n) {
			res[c.userData] = c.res
		}
		got++
	}
	atomic.StoreUint32(r.cqHead, head)
	return got
}
