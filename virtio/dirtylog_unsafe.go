package virtio

import "unsafe"

// words64 views b, 8-byte aligned and a multiple of 8 bytes long, as the
// words of a dirty log, in place.
func words64(b []byte) ([]uint64, bool) {
	p := unsafe.Pointer(unsafe.SliceData(b))
	if uintptr(p)%8 != 0 {
		return nil, false
	}
	return unsafe.Slice((*uint64)(p), len(b)/8), true
}

// hostAddr is where b starts in this process's address space, to find
// which region a buffer popped from a ring lies in (Memory.GuestAddr). The
// result is only compared, never turned back into a pointer.
func hostAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
