package engine

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// iovecs is a reusable iovec array: readv and writev straight over guest
// memory slices without the allocation unix.Readv/Writev make per call.
type iovecs struct {
	v []unix.Iovec
}

func (io *iovecs) reset() { io.v = io.v[:0] }

// add appends the non-empty buffers of bufs.
func (io *iovecs) add(bufs [][]byte) {
	for _, b := range bufs {
		io.addOne(b)
	}
}

// addOne appends one non-empty buffer. A buffer that starts where the last
// one ends extends it: guests often carve consecutive buffers out of one
// larger allocation (Linux's mergeable receive buffers come from 32 KiB
// page fragments), and fewer segments copy faster, down to one that
// read(2) can fill.
func (io *iovecs) addOne(b []byte) {
	if len(b) == 0 {
		return
	}
	p := unsafe.Pointer(unsafe.SliceData(b))
	if n := len(io.v); n > 0 {
		last := &io.v[n-1]
		if uintptr(unsafe.Pointer(last.Base))+uintptr(last.Len) == uintptr(p) {
			last.Len += uint64(len(b))
			return
		}
	}
	io.v = append(io.v, unix.Iovec{Base: (*byte)(p), Len: uint64(len(b))})
}

// readv fills the iovecs from fd. EINTR is retried.
func (io *iovecs) readv(fd int) (int, error) {
	return io.rw(unix.SYS_READV, fd)
}

// read fills the first iovec from fd with read(2). EINTR is retried.
func (io *iovecs) read(fd int) (int, error) {
	v := io.v[0]
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(v.Base)), uintptr(v.Len))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// writev sends the iovecs to fd as one frame. EINTR is retried.
func (io *iovecs) writev(fd int) (int, error) {
	return io.rw(unix.SYS_WRITEV, fd)
}

// rw, read and writeFd call the kernel without telling the Go scheduler
// (RawSyscall): the TAP file is non-blocking (New makes sure), so the call
// never sleeps, and the scheduler's bookkeeping around a syscall
// (entersyscall, exitsyscall) cost about 5% of a small frame's time.
func (io *iovecs) rw(trap uintptr, fd int) (int, error) {
	if len(io.v) == 0 {
		return 0, nil
	}
	for {
		n, _, errno := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&io.v[0])), uintptr(len(io.v)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// writeFd writes b to fd in one write(2). EINTR is retried.
func writeFd(fd int, b []byte) (int, error) {
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}
