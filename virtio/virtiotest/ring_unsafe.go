package virtiotest

// The guest touches the words it shares with the device through sync/atomic,
// as virtio's device side does (see its ring_unsafe.go): 16-bit fields by
// compare-and-swap on the aligned 32-bit word that holds them. The guest's
// layout leaves padding around every such field so that the word never
// covers bytes the guest writes plainly, which keeps the race detector
// meaningful when a test runs the guest and the device on two goroutines.

import (
	"encoding/binary"
	"math/bits"
	"sync/atomic"
	"unsafe"
)

var hostLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

func wordAt(b []byte, off uint64) *uint32 {
	if off > uint64(len(b)) || uint64(len(b))-off < 4 {
		panic("virtiotest: ring word out of range")
	}
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%4 != 0 {
		panic("virtiotest: unaligned ring word")
	}
	return (*uint32)(p)
}

func load32(p *uint32) uint32 {
	v := atomic.LoadUint32(p)
	if !hostLittleEndian {
		v = bits.ReverseBytes32(v)
	}
	return v
}

func store32(p *uint32, v uint32) {
	if !hostLittleEndian {
		v = bits.ReverseBytes32(v)
	}
	atomic.StoreUint32(p, v)
}

// load16 atomically loads the little-endian 16-bit field at b[off].
func load16(b []byte, off uint64) uint16 {
	return uint16(load32(wordAt(b, off&^3)) >> (8 * (off & 3)))
}

// store16 atomically stores the little-endian 16-bit field at b[off],
// leaving the rest of its word as it is.
func store16(b []byte, off uint64, v uint16) {
	p := wordAt(b, off&^3)
	shift := 8 * (off & 3)
	for {
		raw := atomic.LoadUint32(p)
		old := raw
		if !hostLittleEndian {
			old = bits.ReverseBytes32(old)
		}
		nv := old&^(0xffff<<shift) | uint32(v)<<shift
		if !hostLittleEndian {
			nv = bits.ReverseBytes32(nv)
		}
		if atomic.CompareAndSwapUint32(p, raw, nv) {
			return
		}
	}
}
