package engine

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgBatch is a sendmmsg(2) batch over fixed buffers, for the benchmarks'
// frame source.
type mmsgBatch struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
}

// newMmsgBatch sends msg n times per call.
func newMmsgBatch(msg []byte, n int) *mmsgBatch {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = msg
	}
	return newMmsgBufs(bufs)
}

// newMmsgBufs sends or receives one message per buffer per call.
func newMmsgBufs(bufs [][]byte) *mmsgBatch {
	n := len(bufs)
	m := &mmsgBatch{hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n)}
	for i, b := range bufs {
		m.iovs[i] = unix.Iovec{Base: &b[0], Len: uint64(len(b))}
		m.hdrs[i].Hdr.Iov = &m.iovs[i]
		m.hdrs[i].Hdr.Iovlen = 1
	}
	return m
}

// recv receives up to one message per buffer from fd without waiting and
// returns how many came; hdrs[i].Len is the length of message i.
func (m *mmsgBatch) recv(fd int) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&m.hdrs[0])), uintptr(len(m.hdrs)), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// send sends the batch on fd and returns how many went.
func (m *mmsgBatch) send(fd int) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&m.hdrs[0])), uintptr(len(m.hdrs)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// readFd reads from fd into b with read(2), without telling the Go
// scheduler, as the engine does: the raw loop gets the same, cheapest,
// system call.
func readFd(fd int, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
