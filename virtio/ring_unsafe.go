package virtio

// The ring words that the driver and the device both touch while the other
// runs on another CPU: the split rings' flags/idx words and event fields, the
// packed ring's descriptor flags and event suppression structures.
//
// Ordering. Every such access goes through sync/atomic, whose operations are
// sequentially consistent among themselves: on amd64 a load is MOV (TSO
// keeps it ordered) and a store is XCHG (a full barrier); on arm64 a load is
// LDAR and a store STLR, and an STLR followed by an LDAR is not reordered
// (RCsc); compare-and-swap is LOCK CMPXCHG, or CASAL or an LDAXR/STLXR loop
// whose store is a release too. So a release store followed by an acquire
// load of another word, the pattern of both "publish used idx, then read
// used_event" (Linux vhost_notify's smp_mb) and "write avail_event, then
// re-read avail idx" (vhost_enable_notify's smp_mb), needs no further
// fence. Plain reads of
// descriptors and ring entries after an atomic load of the index or flags
// that published them are ordered by its acquire; plain writes of used
// entries before the release store of the index or flags are ordered by it.
//
// 16-bit fields. Go has no 16-bit atomics, so a 16-bit field is accessed
// through the naturally aligned 32-bit word that holds it: an aligned 32-bit
// load is single-copy atomic on amd64 and arm64 and sees the driver's aligned
// 16-bit store whole, and stores go through compare-and-swap so the other
// half of the word is never clobbered. That word can reach 2 bytes outside
// the structure (the avail ring's flags when the ring is only 2-byte
// aligned; used_event and avail_event at a ring's end). When those 2 bytes
// are still in the same region the word is used anyway: it is guest RAM and
// the CAS leaves it unchanged. When they are not, the field falls back to a
// single 16-bit plain access (one MOVW/LDRH, single-copy atomic when
// aligned) fenced by an atomic on a word private to the queue: a load is
// preceded by an atomic load (LDAR, ordered after any earlier STLR and before
// the plain load), a store is followed by an atomic store (STLR, ordered
// after the plain store and before any later LDAR). That is enough on amd64
// and arm64; the race detector cannot see it, so tests that run a guest
// goroutine concurrently place their rings away from region ends.
//
// Guest memory is little-endian (virtio 1.2 §1.4); words are converted
// when the host is not.

import (
	"encoding/binary"
	"math/bits"
	"sync/atomic"
	"unsafe"
)

var hostLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// word32 returns the 32-bit word at b[off:off+4], or nil when it is out of
// b or not 4-byte aligned in host memory.
func word32(b []byte, off uint64) *uint32 {
	if off > uint64(len(b)) || uint64(len(b))-off < 4 {
		return nil
	}
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%4 != 0 {
		return nil
	}
	return (*uint32)(p)
}

// loadLE32 atomically loads a little-endian word.
func loadLE32(p *uint32) uint32 {
	v := atomic.LoadUint32(p)
	if !hostLittleEndian {
		v = bits.ReverseBytes32(v)
	}
	return v
}

// storeLE32 atomically stores a little-endian word with release semantics.
func storeLE32(p *uint32, v uint32) {
	if !hostLittleEndian {
		v = bits.ReverseBytes32(v)
	}
	atomic.StoreUint32(p, v)
}

// field16 is a little-endian 16-bit ring field shared with the driver.
type field16 struct {
	word  *uint32        // aligned word holding the field; nil: use plain
	shift uint32         // 0 or 16, the field's place in the word read little-endian
	plain unsafe.Pointer // the field itself, 2-byte aligned
	fence *uint32        // a word private to the queue, for the fallback
}

// newField16 locates the field at gpa, which the caller has checked lies in
// guest memory. It fails only when the field is not 2-byte aligned in host
// memory.
func newField16(m *Memory, gpa uint64, fence *uint32) (field16, bool) {
	host, off, ok := m.region(gpa)
	if !ok || uint64(len(host))-off < 2 {
		return field16{}, false
	}
	p := unsafe.Pointer(&host[off])
	if uintptr(p)%2 != 0 {
		return field16{}, false
	}
	f := field16{plain: p, fence: fence}
	if uintptr(p)%4 == 0 {
		f.word = word32(host, off)
	} else if off >= 2 {
		f.word = word32(host, off-2)
		f.shift = 16
	}
	return f, true
}

func (f *field16) load() uint16 {
	if f.word != nil {
		return uint16(loadLE32(f.word) >> f.shift)
	}
	return f.loadFenced()
}

// loadFenced is kept out of line so that the plain load stays one
// instruction after the fence.
//
//go:noinline
func (f *field16) loadFenced() uint16 {
	atomic.LoadUint32(f.fence)
	v := *(*uint16)(f.plain)
	if !hostLittleEndian {
		v = bits.ReverseBytes16(v)
	}
	return v
}

func (f *field16) store(v uint16) {
	if f.word == nil {
		f.storeFenced(v)
		return
	}
	mask := uint32(0xffff) << f.shift
	for {
		raw := atomic.LoadUint32(f.word)
		old := raw
		if !hostLittleEndian {
			old = bits.ReverseBytes32(old)
		}
		nv := old&^mask | uint32(v)<<f.shift
		if !hostLittleEndian {
			nv = bits.ReverseBytes32(nv)
		}
		if atomic.CompareAndSwapUint32(f.word, raw, nv) {
			return
		}
	}
}

//go:noinline
func (f *field16) storeFenced(v uint16) {
	if !hostLittleEndian {
		v = bits.ReverseBytes16(v)
	}
	*(*uint16)(f.plain) = v
	atomic.StoreUint32(f.fence, 0)
}

// wordAt returns the 32-bit word at b[off:]; the caller has checked that it
// is in b and 4-byte aligned in host memory.
func wordAt(b []byte, off int) *uint32 {
	return (*uint32)(unsafe.Pointer(&b[off : off+4][0]))
}

// hostAligned reports whether b[off] is align-byte aligned in host memory.
func hostAligned(b []byte, off uint64, align uintptr) bool {
	return uintptr(unsafe.Pointer(&b[off]))%align == 0
}
