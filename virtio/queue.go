// Virtqueues, device side.
//
// A Queue is the device's end of one virtqueue in guest memory, split
// (virtio 1.2 §2.7) or packed (§2.8). The driver runs on another CPU and is
// not trusted: every index, descriptor and length is read once, checked,
// and turned into a *ChainError naming the rule it breaks. Pop hands out
// host slices of guest memory (no copy); Push and Flush return chains to the
// driver; NeedsInterrupt, EnableNotify and DisableNotify implement the
// notification suppression of both layouts (flags or EVENT_IDX). A Queue is
// used by one goroutine at a time; a Memory is shared freely.
//
// The hot path, Pop, Push and Flush of a reused Chain, allocates nothing.
// Unsafe code is limited to ring_unsafe.go, which also explains the memory
// ordering against the driver, and dirtylog_unsafe.go.
//
// For live migration a queue logs what the device writes (SetDirtyLog):
// its own writes to the ring, and the buffer bytes the device tells it of
// (MarkWritten), each marked after the write. Without a log each costs one
// nil check.

package virtio

import (
	"errors"
	"fmt"
	"math"
)

// Descriptor flags, virtio 1.2 §2.7.5 and §2.8 (virtio_ring.h VRING_DESC_F_*,
// VRING_PACKED_DESC_F_*).
const (
	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4
	descFAvail    = 1 << 7
	descFUsed     = 1 << 15
)

// descSize is the size of a descriptor in either layout, and of an entry of
// an indirect table.
const descSize = 16

// MaxQueueSize is the largest queue size of either layout (virtio 1.2 §2.7,
// §2.8: 2^15 entries).
const MaxQueueSize = 32768

// CheckQueueSize refuses a queue size the layout cannot have: 0 or more
// than MaxQueueSize, or for a split ring one that is not a power of two
// (virtio 1.2 §2.7 "Queue Size"; a packed ring's need not be, §2.8).
func CheckQueueSize(size uint32, packed bool) error {
	switch {
	case packed && (size == 0 || size > MaxQueueSize):
		return fmt.Errorf("size %d not in [1, %d]", size, MaxQueueSize)
	case !packed && (size == 0 || size > MaxQueueSize || size&(size-1) != 0):
		return fmt.Errorf("size %d is not a power of two in [1, %d]", size, MaxQueueSize)
	}
	return nil
}

// RingArea is one of the three parts of a virtqueue in guest memory: its
// size and the alignment of its guest physical address.
type RingArea struct {
	Name  string
	Len   uint64 // bytes
	Align uint64
}

// RingAreas returns the parts of a ring of size descriptors, in the order
// of SplitConfig (descriptor table, available ring, used ring: virtio 1.2
// §2.7 "Virtqueue Part Alignment Size", the used_event and avail_event
// words only with VIRTIO_F_EVENT_IDX) or PackedConfig (descriptor ring,
// driver and device event suppression: §2.8.10, §2.8.10.1).
func RingAreas(size uint16, packed, eventIdx bool) [3]RingArea {
	n := uint64(size)
	if packed {
		return [3]RingArea{
			{"descriptor ring", descSize * n, 16},
			{"driver event suppression", 4, 4},
			{"device event suppression", 4, 4},
		}
	}
	var event uint64
	if eventIdx {
		event = 2
	}
	return [3]RingArea{
		{"descriptor table", descSize * n, 16},
		{"avail ring", 4 + 2*n + event, 2},
		{"used ring", 4 + 8*n + event, 4},
	}
}

// CheckAlign refuses the area at guest physical address gpa if gpa is not
// a multiple of a.Align.
func (a RingArea) CheckAlign(gpa uint64) error {
	if gpa%a.Align != 0 {
		return fmt.Errorf("place %s at guest %#x: not %d-byte aligned", a.Name, gpa, a.Align)
	}
	return nil
}

// Queue is the device side of a virtqueue, split or packed.
type Queue interface {
	// Size is the number of descriptors in the ring.
	Size() uint16
	// Pop reads the next available chain into c, reusing c's slices. It
	// returns false, nil when the ring is empty. A *ChainError reports a
	// chain or ring the driver got wrong: with HeadKnown the chain was
	// consumed and c is ready to Push with 0 bytes written; without it the
	// ring is broken, nothing was consumed, and the device should stop the
	// queue until it is reset.
	Pop(c *Chain) (bool, error)
	// Push stages c as used, with written bytes written to its writable
	// part. The driver sees it only after Flush.
	Push(c *Chain, written uint32) error
	// Flush publishes every staged chain with one release store.
	Flush()
	// NeedsInterrupt reports whether the driver asked to be notified of
	// the chains published since the previous call (VIRTIO_F_EVENT_IDX's
	// used_event, or the NO_INTERRUPT flag; for packed rings the driver
	// event suppression structure). Call it after Flush.
	NeedsInterrupt() bool
	// EnableNotify asks the driver to kick on new buffers and then looks
	// again: true means buffers arrived meanwhile and the caller must Pop
	// before it sleeps, or it could miss a kick.
	EnableNotify() bool
	// DisableNotify tells the driver that kicks are not needed (the
	// device is polling). Drivers may kick anyway.
	DisableNotify()
	// Unpop gives back c, the most recently popped chain that was not
	// pushed, as if it had never been popped: the next Pop returns it
	// again. Chains go back in the reverse of their pop order. A device
	// that pops receive buffers ahead of the data uses it when it stops,
	// so the driver never sees them come back empty (Linux vhost
	// vhost_discard_vq_desc).
	Unpop(c *Chain) error
	// NextAvail is the index of the next chain to pop, as
	// VHOST_USER_GET_VRING_BASE reports it (packed: bit 15 is the wrap
	// counter).
	NextAvail() uint16
	// SetDirtyLog makes the queue mark in l.Log every byte it writes to
	// guest memory from now on (used elements and index, event
	// suppression, packed descriptor write-backs) and every byte
	// MarkWritten is told of; the zero RingLog stops it. Like the rest of
	// the queue, it is called by the goroutine that uses the queue.
	SetDirtyLog(l RingLog)
	// MarkWritten marks in the queue's dirty log, if it has one, the first
	// n bytes of bufs: writable buffers of a chain popped from this queue
	// that the device (or the kernel, reading into them) wrote. Call it
	// after the write.
	MarkWritten(bufs [][]byte, n uint64)
}

// markBufs marks in log the first n bytes of bufs, slices of mem.
func markBufs(mem *Memory, log *DirtyLog, bufs [][]byte, n uint64) {
	for _, b := range bufs {
		if n == 0 {
			return
		}
		k := min(uint64(len(b)), n)
		if gpa, ok := mem.GuestAddr(b); ok {
			log.Mark(gpa, k)
		}
		n -= k
	}
}

// Chain is one descriptor chain popped from a Queue. Its slices alias guest
// memory and stay valid until the chain is pushed; Pop reuses their backing
// arrays, so a Chain reused across pops stops allocating once they are big
// enough.
type Chain struct {
	Head     uint16   // the id returned in the used element (packed: the Buffer ID)
	Readable [][]byte // device-readable buffers, in order (reused between pops)
	Writable [][]byte // device-writable buffers, in order
	ReadLen  uint32   // total bytes in Readable
	WriteLen uint32   // total bytes in Writable

	descs   uint16 // ring descriptors the chain occupies, to skip on push (packed)
	pending bool   // popped and not yet pushed
	wrote   bool   // a device-writable descriptor was seen, even of length 0
}

// reset empties c for a new pop.
func (c *Chain) reset() {
	c.Head = 0
	c.Readable = c.Readable[:0]
	c.Writable = c.Writable[:0]
	c.ReadLen, c.WriteLen = 0, 0
	c.descs, c.pending, c.wrote = 0, false, false
}

// add appends one descriptor's buffer, enforcing the framing rules of
// virtio 1.2 §2.7.4.2 and §2.8.17 (readable before writable) and §2.7.5.2
// (at most 2^32 bytes in total, kept below it so the sums fit in uint32).
// Zero-length descriptors add nothing.
func (c *Chain) add(m *Memory, addr uint64, n uint32, write bool) *ChainError {
	if write {
		c.wrote = true
	} else if c.wrote {
		return &ChainError{Rule: RuleOrder}
	}
	if total := uint64(c.ReadLen) + uint64(c.WriteLen) + uint64(n); total > math.MaxUint32 {
		return &ChainError{Rule: RuleChainBytes, Got: total, Limit: math.MaxUint32}
	}
	var err error
	if write {
		c.Writable, err = m.AppendSlices(c.Writable, addr, n)
		c.WriteLen += n
	} else {
		c.Readable, err = m.AppendSlices(c.Readable, addr, n)
		c.ReadLen += n
	}
	if err != nil {
		return &ChainError{Rule: RuleAddress, Got: addr, Limit: uint64(n), Err: err}
	}
	return nil
}

// fail turns c into the stub of a malformed chain: no buffers, ready to be
// pushed back with 0 bytes written.
func (c *Chain) fail() {
	c.Readable = c.Readable[:0]
	c.Writable = c.Writable[:0]
	c.ReadLen, c.WriteLen = 0, 0
}

// ErrBadChain is matched by a *ChainError for one malformed chain, which was
// consumed and must be returned to the driver with used length 0.
var ErrBadChain = errors.New("malformed descriptor chain")

// ErrBrokenRing is matched by a *ChainError for a ring the device cannot
// continue with (virtio 1.2 §2.1.2: the device should set NEEDS_RESET).
var ErrBrokenRing = errors.New("broken virtqueue")

// ErrNotPopped is returned by Push for a chain that was not popped or was
// already pushed.
var ErrNotPopped = errors.New("chain not popped or already pushed")

// Rule names the rule a *ChainError reports. The comments say what the
// error's Desc, Got and Limit hold.
type Rule uint8

const (
	_ Rule = iota
	// RuleAvailIdx: the avail ring's idx (Desc) is Got entries past the
	// next one to pop, more than the queue size (Limit). Split only;
	// Linux vhost_get_vq_desc "Guest moved avail index".
	RuleAvailIdx
	// RuleHeadRange: avail ring entry Desc names head Got, not below the
	// queue size Limit. Split only.
	RuleHeadRange
	// RuleNextRange: descriptor Desc's next is Got, not below the size of
	// its table, Limit.
	RuleNextRange
	// RuleChainLen: the chain holds more than Limit descriptors (the
	// queue size, or the size of its indirect table): a loop, or a chain
	// longer than virtio 1.2 §2.7.5.3.1 and §2.8.17 allow.
	RuleChainLen
	// RuleChainBytes: the buffers add up to Got bytes, more than Limit
	// (virtio 1.2 §2.7.5.2).
	RuleChainBytes
	// RuleOrder: descriptor Desc is device-readable but follows a
	// device-writable one (virtio 1.2 §2.7.4.2, §2.8.17).
	RuleOrder
	// RuleIndirectNext: descriptor Desc has both INDIRECT and NEXT
	// (virtio 1.2 §2.7.5.3.1, §2.8.19).
	RuleIndirectNext
	// RuleIndirectNested: indirect descriptor Desc has INDIRECT itself
	// (virtio 1.2 §2.7.5.3.1). Split only; packed tables ignore the flag.
	RuleIndirectNested
	// RuleIndirectLen: descriptor Desc points to an indirect table of Got
	// bytes, which is zero or not a multiple of 16.
	RuleIndirectLen
	// RuleIndirectInList: descriptor Desc has INDIRECT but follows other
	// descriptors of its list (virtio 1.2 §2.8.19). Packed only; split
	// rings allow it (§2.7.5.3.2).
	RuleIndirectInList
	// RuleAddress: descriptor Desc's buffer or indirect table, Limit bytes
	// at guest address Got, is not in guest memory (Err says more).
	RuleAddress
	// RuleNotAvail: ring descriptor Desc continues a list but its flags
	// (Got) do not mark it available for wrap counter Limit (virtio 1.2
	// §2.8.6). Packed only.
	RuleNotAvail
	// RuleOverrun: popping the chain at Desc would hold Got descriptors
	// (packed) or chains (split) in flight, more than the ring's Limit: the
	// driver reused what the device had not returned (virtio 1.2 §2.8.16,
	// §2.7.13.1).
	RuleOverrun
)

var ruleNames = [...]string{
	RuleAvailIdx:       "avail-idx",
	RuleHeadRange:      "head-range",
	RuleNextRange:      "next-range",
	RuleChainLen:       "chain-len",
	RuleChainBytes:     "chain-bytes",
	RuleOrder:          "order",
	RuleIndirectNext:   "indirect-next",
	RuleIndirectNested: "indirect-nested",
	RuleIndirectLen:    "indirect-len",
	RuleIndirectInList: "indirect-in-list",
	RuleAddress:        "address",
	RuleNotAvail:       "not-avail",
	RuleOverrun:        "overrun",
}

func (r Rule) String() string {
	if int(r) < len(ruleNames) && ruleNames[r] != "" {
		return ruleNames[r]
	}
	return fmt.Sprintf("Rule(%d)", r)
}

// ChainError reports a descriptor chain, or a ring, that breaks a rule of
// the virtio spec. See Rule for the meaning of Desc, Got and Limit.
type ChainError struct {
	Rule      Rule
	Head      uint16 // the chain's id (packed: Buffer ID), when HeadKnown
	HeadKnown bool   // the chain was consumed; false: the ring is broken
	Desc      uint16 // the descriptor (or ring entry) at fault
	Indirect  bool   // Desc indexes an indirect table, not the ring
	Got       uint64
	Limit     uint64
	Err       error // the cause, for RuleAddress
}

func (e *ChainError) Error() string {
	var at string
	switch {
	case e.Rule == RuleAvailIdx || e.Rule == RuleHeadRange:
		at = "read avail ring"
	case e.HeadKnown:
		at = fmt.Sprintf("pop chain %d", e.Head)
	default:
		at = "pop chain"
	}
	d := fmt.Sprintf("descriptor %d", e.Desc)
	if e.Indirect {
		d = "indirect " + d
	}
	var what string
	switch e.Rule {
	case RuleAvailIdx:
		what = fmt.Sprintf("idx %d is %d entries ahead, more than queue size %d", e.Desc, e.Got, e.Limit)
	case RuleHeadRange:
		what = fmt.Sprintf("entry %d: head %d out of range for queue size %d", e.Desc, e.Got, e.Limit)
	case RuleNextRange:
		what = fmt.Sprintf("%s: next %d out of range for table of %d", d, e.Got, e.Limit)
	case RuleChainLen:
		what = fmt.Sprintf("%s: chain longer than %d descriptors", d, e.Limit)
	case RuleChainBytes:
		what = fmt.Sprintf("%s: chain of %d bytes exceeds %d", d, e.Got, e.Limit)
	case RuleOrder:
		what = fmt.Sprintf("%s: device-readable after device-writable", d)
	case RuleIndirectNext:
		what = fmt.Sprintf("%s: INDIRECT with NEXT", d)
	case RuleIndirectNested:
		what = fmt.Sprintf("%s: INDIRECT inside an indirect table", d)
	case RuleIndirectLen:
		what = fmt.Sprintf("%s: indirect table of %d bytes, want a non-zero multiple of 16", d, e.Got)
	case RuleIndirectInList:
		what = fmt.Sprintf("%s: INDIRECT after other descriptors of its list", d)
	case RuleAddress:
		what = fmt.Sprintf("%s: %v", d, e.Err)
	case RuleNotAvail:
		what = fmt.Sprintf("%s: flags %#04x not available for wrap counter %d", d, e.Got, e.Limit)
	case RuleOverrun:
		what = fmt.Sprintf("%s: %d in flight, more than the ring holds (%d)", d, e.Got, e.Limit)
	default:
		what = fmt.Sprintf("%s: %v", d, e.Rule)
	}
	return at + ": " + what
}

// Unwrap returns the cause, if any.
func (e *ChainError) Unwrap() error { return e.Err }

// Is matches ErrBadChain when the chain was consumed and ErrBrokenRing when
// it was not.
func (e *ChainError) Is(target error) bool {
	return target == ErrBadChain && e.HeadKnown || target == ErrBrokenRing && !e.HeadKnown
}

// needEvent is vring_need_event from virtio_ring.h (virtio 1.2 §2.7.10): with
// event idx set by the other side, moving an index from old to new crossed
// event.
func needEvent(event, new, old uint16) bool {
	return new-event-1 < new-old
}

// pushCheck validates a Push of c that wrote written bytes.
func pushCheck(c *Chain, written uint32) error {
	if !c.pending {
		return fmt.Errorf("push chain %d: %w", c.Head, ErrNotPopped)
	}
	if written > c.WriteLen {
		return fmt.Errorf("push chain %d: %d bytes written, more than its %d writable", c.Head, written, c.WriteLen)
	}
	return nil
}
