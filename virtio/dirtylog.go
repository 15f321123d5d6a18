package virtio

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
)

// Dirty page logging for live migration (vhost-user.rst "Migration";
// Linux drivers/vhost/vhost.c log_write; QEMU hw/virtio/vhost.c
// vhost_dev_sync_region reads the log back).

// LogPageSize is the guest memory one bit of a DirtyLog stands for
// (VHOST_LOG_PAGE).
const LogPageSize = 4096

// DirtyLog is a bitmap of the guest physical pages a device wrote, in the
// layout of vhost's log: the page at guest physical address a is bit
// (a/LogPageSize)%8 of byte (a/LogPageSize)/8. A device marks pages with
// atomic ORs, from any number of goroutines, while whoever migrates the
// guest (QEMU's vhost_dev_sync_region, an embedding VMM's Take) reads and
// clears whole words with atomic swaps; a mark is made after the write it
// stands for, so a page whose bit a reader cleared is marked again by any
// write the reader's copy of the page may have missed.
//
// The log covers guest physical addresses from 0 to Pages()*LogPageSize;
// marks past that are ignored (Covers says whether a memory map fits).
type DirtyLog struct {
	words []uint64 // the bitmap, 64 pages a word, in the log's byte order
}

// ErrLogTooSmall is matched by the error of a DirtyLog that does not cover
// a memory map (Covers) or a ring's used area.
var ErrLogTooSmall = errors.New("dirty log smaller than guest memory")

// NewDirtyLog makes a log of its own, all clear, that covers guest physical
// addresses from 0 to size: what an embedding VMM hands the device to learn
// which pages it wrote.
func NewDirtyLog(size uint64) *DirtyLog {
	pages := size/LogPageSize + min(size%LogPageSize, 1)
	return &DirtyLog{words: make([]uint64, pages/64+min(pages%64, 1))}
}

// DirtyLogOver uses b, a log another process shares (vhost-user's
// SET_LOG_BASE memfd, mapped), in place: b must be 8-byte aligned in host
// memory and a multiple of 8 bytes long, as QEMU's log of unsigned longs
// is. b must stay mapped for as long as anything marks the log.
func DirtyLogOver(b []byte) (*DirtyLog, error) {
	if len(b) == 0 || len(b)%8 != 0 {
		return nil, fmt.Errorf("use dirty log of %d bytes: want a non-zero multiple of 8", len(b))
	}
	w, ok := words64(b)
	if !ok {
		return nil, errors.New("use dirty log: not 8-byte aligned in host memory")
	}
	return &DirtyLog{words: w}, nil
}

// Pages is the number of pages the log covers.
func (l *DirtyLog) Pages() uint64 { return 64 * uint64(len(l.words)) }

// Covers checks that the log has a bit for every page of m's regions. The
// error matches ErrLogTooSmall.
func (l *DirtyLog) Covers(m *Memory) error {
	if m == nil {
		return nil
	}
	for _, s := range m.spans {
		if s.last/LogPageSize >= l.Pages() {
			return fmt.Errorf("guest memory [%#x, %#x]: log of %d pages covers [0, %#x): %w",
				s.first, s.last, l.Pages(), l.Pages()*LogPageSize, ErrLogTooSmall)
		}
	}
	return nil
}

// CoversRange checks that the log has a bit for every page of the n bytes
// at guest physical address gpa (a ring's used area at its log address).
// The error matches ErrLogTooSmall.
func (l *DirtyLog) CoversRange(gpa, n uint64) error {
	if n == 0 {
		return nil
	}
	last := gpa + (n - 1)
	if last < gpa || last/LogPageSize >= l.Pages() {
		return fmt.Errorf("guest range %#x+%#x: log of %d pages covers [0, %#x): %w",
			gpa, n, l.Pages(), l.Pages()*LogPageSize, ErrLogTooSmall)
	}
	return nil
}

// logMask turns a mask of the log's bits, bit k for byte k/8's bit k%8,
// into the host's view of the word that holds them.
func logMask(m uint64) uint64 {
	if hostLittleEndian {
		return m
	}
	return bits.ReverseBytes64(m)
}

// Mark marks the pages that hold the n bytes at guest physical address
// gpa. Call it after the write it stands for.
func (l *DirtyLog) Mark(gpa, n uint64) {
	if n == 0 {
		return
	}
	first := gpa / LogPageSize
	last := (gpa + (n - 1)) / LogPageSize
	if gpa+(n-1) < gpa {
		last = ^uint64(0) / LogPageSize
	}
	pages := l.Pages()
	if first >= pages {
		return
	}
	last = min(last, pages-1)
	for w := first / 64; w <= last/64; w++ {
		lo, hi := uint64(0), uint64(63)
		if w == first/64 {
			lo = first % 64
		}
		if w == last/64 {
			hi = last % 64
		}
		m := (^uint64(0) >> (63 - hi)) &^ (1<<lo - 1)
		atomic.OrUint64(&l.words[w], logMask(m))
	}
}

// Dirty reports whether page (a guest physical address divided by
// LogPageSize) is marked.
func (l *DirtyLog) Dirty(page uint64) bool {
	if page >= l.Pages() {
		return false
	}
	return atomic.LoadUint64(&l.words[page/64])&logMask(1<<(page%64)) != 0
}

// Take clears the log and ORs what it held into dst, page p as bit p%64 of
// dst[p/64], one atomic swap per word, while the device goes on marking:
// what an embedding VMM calls on each pass of a migration, then copies the
// pages it got. dst must have a word for every 64 pages of the log
// (Pages()/64). It returns the number of pages taken.
func (l *DirtyLog) Take(dst []uint64) (uint64, error) {
	if len(dst) < len(l.words) {
		return 0, fmt.Errorf("take dirty log of %d pages into %d words: want %d", l.Pages(), len(dst), len(l.words))
	}
	var n uint64
	for i := range l.words {
		if atomic.LoadUint64(&l.words[i]) == 0 {
			continue
		}
		v := logMask(atomic.SwapUint64(&l.words[i], 0))
		dst[i] |= v
		n += uint64(bits.OnesCount64(v))
	}
	return n, nil
}

// RingLog is where a virtqueue logs what the device writes to guest memory
// (Queue.SetDirtyLog): into Log, buffer bytes (Queue.MarkWritten) and ring
// entries at their guest physical addresses, but for the used area's (a
// split ring's used ring, a packed ring's device event suppression), which
// are logged at UsedAddr onwards: a vhost-user ring's log_guest_addr
// (vhost-user.rst "Migration"), which an embedding VMM sets to the area's
// own address. The zero value logs nothing.
type RingLog struct {
	Log      *DirtyLog
	UsedAddr uint64
}
