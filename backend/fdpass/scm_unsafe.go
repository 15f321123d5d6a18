package fdpass

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxPeerGroups bounds SO_PEERGROUPS: NGROUPS_MAX in include/uapi/linux/limits.h.
const maxPeerGroups = 65536

// peerGroups reads SO_PEERGROUPS, which x/sys/unix has no wrapper for.
// The kernel answers ERANGE with the length it needs (net/core/sock.c
// sk_getsockopt), so the buffer grows once.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 32)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == unix.ERANGE && size/4 > uint32(len(buf)) && size/4 <= maxPeerGroups:
			buf = make([]uint32, size/4)
			continue
		case errno != 0:
			return nil, errno
		}
		return buf[:size/4], nil
	}
}
