package virtio

import (
	"encoding/binary"
	"fmt"
)

// Split ring flags, virtio 1.2 §2.7.7 and §2.7.10 (virtio_ring.h
// VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY).
const (
	availFNoInterrupt = 1
	usedFNoNotify     = 1
)

// SplitConfig places a split virtqueue (virtio 1.2 §2.7) in guest memory.
// The zero indices start a new ring.
type SplitConfig struct {
	Size      uint16 // descriptors: a power of two, 1 to MaxQueueSize (CheckQueueSize)
	DescAddr  uint64 // guest physical address of the descriptor table, 16-byte aligned
	AvailAddr uint64 // guest physical address of the available ring, 2-byte aligned
	UsedAddr  uint64 // guest physical address of the used ring, 4-byte aligned
	EventIdx  bool   // VIRTIO_F_EVENT_IDX negotiated: used_event and avail_event replace the flags
	NextAvail uint16 // avail ring index to pop next: VHOST_USER_SET_VRING_BASE's num on resume
	// NextUsed is the used ring index to fill next. 0 takes the used idx
	// found in the ring, as Linux vhost_vq_init_access does: the ring is
	// where the previous device left it, for a new ring and on resume alike.
	NextUsed uint16
}

// SplitQueue is the device side of a split virtqueue.
type SplitQueue struct {
	mem      *Memory
	size     uint16
	mask     uint16
	eventIdx bool

	desc      []byte // the descriptor table
	availRing []byte // avail->ring[]
	usedRing  []byte // used->ring[]
	usedWord  *uint32
	availIdx  field16
	availFlag field16
	usedEvent field16
	availEvt  field16

	lastAvail   uint16 // next avail ring index to pop
	availShadow uint16 // avail idx as last read
	nextUsed    uint16 // next used ring index to fill
	pubUsed     uint16 // used idx as last published
	usedFlags   uint16 // used->flags as last published
	signalled   uint16 // pubUsed at the previous NeedsInterrupt
	since       uint32 // used elements published since then
	decided     bool   // NeedsInterrupt has judged a publication
	inflight    uint32 // chains popped and not pushed
	fence       uint32 // see ring_unsafe.go

	log     *DirtyLog // SetDirtyLog; nil: no logging
	usedLog uint64    // where the used ring's first byte is logged
}

// NewSplitQueue returns the device side of the split virtqueue that cfg
// places in mem. Each part of the ring must lie in one region, aligned as
// virtio 1.2 §2.7 requires (and, for the words shared with the driver, as
// aligned in host memory). It writes nothing in guest memory and reads only
// the used idx, when cfg.NextUsed is 0.
func NewSplitQueue(mem *Memory, cfg SplitConfig) (*SplitQueue, error) {
	n := uint64(cfg.Size)
	if err := CheckQueueSize(uint32(cfg.Size), false); err != nil {
		return nil, fmt.Errorf("create split queue: %w", err)
	}
	q := &SplitQueue{
		mem: mem, size: cfg.Size, mask: cfg.Size - 1, eventIdx: cfg.EventIdx,
		lastAvail: cfg.NextAvail, availShadow: cfg.NextAvail,
		nextUsed: cfg.NextUsed, pubUsed: cfg.NextUsed, signalled: cfg.NextUsed,
	}
	areas := RingAreas(cfg.Size, false, cfg.EventIdx)
	var err error
	if q.desc, err = ringPart(mem, areas[0], cfg.DescAddr, 1); err != nil {
		return nil, fmt.Errorf("create split queue: %w", err)
	}
	avail, err := ringPart(mem, areas[1], cfg.AvailAddr, 2)
	if err != nil {
		return nil, fmt.Errorf("create split queue: %w", err)
	}
	used, err := ringPart(mem, areas[2], cfg.UsedAddr, 4)
	if err != nil {
		return nil, fmt.Errorf("create split queue: %w", err)
	}
	q.availRing = avail[4 : 4+2*n]
	q.usedRing = used[4 : 4+8*n]
	q.usedWord = wordAt(used, 0)
	if cfg.NextUsed == 0 {
		idx := uint16(loadLE32(q.usedWord) >> 16)
		q.nextUsed, q.pubUsed, q.signalled = idx, idx, idx
	}
	if d := q.lastAvail - q.nextUsed; d > q.size {
		return nil, fmt.Errorf("create split queue: next avail %d is %d chains past next used %d, more than size %d",
			q.lastAvail, d, q.nextUsed, n)
	}
	fields := []struct {
		f   *field16
		gpa uint64
	}{
		{&q.availFlag, cfg.AvailAddr},
		{&q.availIdx, cfg.AvailAddr + 2},
		{&q.usedEvent, cfg.AvailAddr + 4 + 2*n},
		{&q.availEvt, cfg.UsedAddr + 4 + 8*n},
	}
	if !cfg.EventIdx {
		fields = fields[:2]
	}
	for _, f := range fields {
		var ok bool
		if *f.f, ok = newField16(mem, f.gpa, &q.fence); !ok {
			return nil, fmt.Errorf("create split queue: place ring field at guest %#x: not 2-byte aligned in host memory", f.gpa)
		}
	}
	return q, nil
}

// ringPart returns the n bytes of a ring part at gpa, checking its guest
// alignment (virtio 1.2 §2.7, §2.8.10.1) and its host alignment, which the
// atomics on its shared words need.
func ringPart(mem *Memory, a RingArea, gpa uint64, hostAlign uintptr) ([]byte, error) {
	if err := a.CheckAlign(gpa); err != nil {
		return nil, err
	}
	b, err := mem.Slice(gpa, a.Len)
	if err != nil {
		return nil, fmt.Errorf("place %s: %w", a.Name, err)
	}
	if !hostAligned(b, 0, hostAlign) {
		return nil, fmt.Errorf("place %s at guest %#x: host mapping not %d-byte aligned", a.Name, gpa, hostAlign)
	}
	return b, nil
}

// Size returns the number of descriptors in the ring.
func (q *SplitQueue) Size() uint16 { return q.size }

// NextAvail returns the index of the next avail ring entry to pop.
func (q *SplitQueue) NextAvail() uint16 { return q.lastAvail }

// NextUsed returns the used ring index the next Push fills.
func (q *SplitQueue) NextUsed() uint16 { return q.nextUsed }

// Unpop gives back the most recently popped chain (see Queue).
func (q *SplitQueue) Unpop(c *Chain) error {
	if !c.pending || q.inflight == 0 {
		return fmt.Errorf("unpop chain %d: %w", c.Head, ErrNotPopped)
	}
	if head := binary.LittleEndian.Uint16(q.availRing[2*int((q.lastAvail-1)&q.mask):]); head != c.Head {
		return fmt.Errorf("unpop chain %d: the last popped avail entry names chain %d: %w", c.Head, head, ErrNotPopped)
	}
	q.lastAvail--
	q.inflight--
	c.pending = false
	return nil
}

// Pop reads the next available chain into c (see Queue).
func (q *SplitQueue) Pop(c *Chain) (bool, error) {
	c.reset()
	if q.lastAvail == q.availShadow {
		idx := q.availIdx.load()
		if ahead := idx - q.lastAvail; ahead > q.size {
			return false, &ChainError{Rule: RuleAvailIdx, Desc: idx, Got: uint64(ahead), Limit: uint64(q.size)}
		}
		q.availShadow = idx
		if idx == q.lastAvail {
			return false, nil
		}
	}
	slot := q.lastAvail & q.mask
	head := binary.LittleEndian.Uint16(q.availRing[2*int(slot):])
	if head >= q.size {
		return false, &ChainError{Rule: RuleHeadRange, Desc: slot, Got: uint64(head), Limit: uint64(q.size)}
	}
	if q.inflight == uint32(q.size) {
		return false, &ChainError{Rule: RuleOverrun, Desc: head, Got: uint64(q.inflight) + 1, Limit: uint64(q.size)}
	}
	q.lastAvail++
	q.inflight++
	c.Head, c.descs, c.pending = head, 1, true
	if e := q.walk(c, head); e != nil {
		e.Head, e.HeadKnown = head, true
		c.fail()
		return false, e
	}
	return true, nil
}

// walk follows the chain at head: zero or more direct descriptors, the last
// of which may point to an indirect table (virtio 1.2 §2.7.5.3.2).
func (q *SplitQueue) walk(c *Chain, head uint16) *ChainError {
	table, n := q.desc, uint32(q.size) // the table i indexes, and its entries
	indirect := false
	i := head
	count := uint32(0)   // buffer descriptors so far, at most Size
	inTable := uint32(0) // descriptors visited in table, at most n
	for {
		d := table[int(i)*descSize : int(i)*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d)
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		inTable++
		if flags&descFIndirect != 0 {
			switch {
			case indirect:
				return &ChainError{Rule: RuleIndirectNested, Desc: i, Indirect: true}
			case flags&descFNext != 0:
				return &ChainError{Rule: RuleIndirectNext, Desc: i}
			case length == 0 || length%descSize != 0:
				return &ChainError{Rule: RuleIndirectLen, Desc: i, Got: uint64(length)}
			}
			t, err := q.mem.Slice(addr, uint64(length))
			if err != nil {
				return &ChainError{Rule: RuleAddress, Desc: i, Got: addr, Limit: uint64(length), Err: err}
			}
			// A table may be longer than its chain: only count bounds it.
			table, n, indirect, i, inTable = t, length/descSize, true, 0, 0
			continue
		}
		count++
		if count > uint32(q.size) {
			return &ChainError{Rule: RuleChainLen, Desc: i, Indirect: indirect, Got: uint64(count), Limit: uint64(q.size)}
		}
		if inTable > n {
			return &ChainError{Rule: RuleChainLen, Desc: i, Indirect: indirect, Got: uint64(inTable), Limit: uint64(n)}
		}
		if e := c.add(q.mem, addr, length, flags&descFWrite != 0); e != nil {
			e.Desc, e.Indirect = i, indirect
			return e
		}
		if flags&descFNext == 0 {
			return nil
		}
		if uint32(next) >= n {
			return &ChainError{Rule: RuleNextRange, Desc: i, Indirect: indirect, Got: uint64(next), Limit: uint64(n)}
		}
		i = next
	}
}

// Push stages c as used with written bytes (see Queue). The used element
// is written now and published by Flush (virtio 1.2 §2.7.8.2: len before
// idx).
func (q *SplitQueue) Push(c *Chain, written uint32) error {
	if err := pushCheck(c, written); err != nil {
		return err
	}
	if q.inflight == 0 {
		return fmt.Errorf("push chain %d: %w", c.Head, ErrNotPopped)
	}
	slot := uint64(q.nextUsed & q.mask)
	e := q.usedRing[8*slot:]
	binary.LittleEndian.PutUint32(e, uint32(c.Head))
	binary.LittleEndian.PutUint32(e[4:], written)
	if q.log != nil {
		q.log.Mark(q.usedLog+4+8*slot, 8)
	}
	q.nextUsed++
	q.inflight--
	c.pending = false
	return nil
}

// Flush publishes the staged used elements: one release store of the used
// ring's flags and idx, which only the device writes.
func (q *SplitQueue) Flush() {
	if q.nextUsed == q.pubUsed {
		return
	}
	q.since += uint32(q.nextUsed - q.pubUsed)
	q.pubUsed = q.nextUsed
	q.storeUsedWord()
}

// storeUsedWord publishes the used ring's flags and idx, and logs them.
func (q *SplitQueue) storeUsedWord() {
	storeLE32(q.usedWord, uint32(q.usedFlags)|uint32(q.pubUsed)<<16)
	if q.log != nil {
		q.log.Mark(q.usedLog, 4)
	}
}

// SetDirtyLog sets the queue's dirty log (see Queue).
func (q *SplitQueue) SetDirtyLog(l RingLog) { q.log, q.usedLog = l.Log, l.UsedAddr }

// MarkWritten marks buffer bytes the device wrote (see Queue).
func (q *SplitQueue) MarkWritten(bufs [][]byte, n uint64) {
	if q.log != nil {
		markBufs(q.mem, q.log, bufs, n)
	}
}

// NeedsInterrupt reports whether the driver wants a used buffer
// notification for what Flush published since the previous call (virtio
// 1.2 §2.7.7.2; Linux vhost_notify). With EVENT_IDX the first publication
// after NewSplitQueue always notifies: on resume the device cannot know
// which used_event the driver is waiting for (vhost's signalled_used_valid).
func (q *SplitQueue) NeedsInterrupt() bool {
	old, since := q.signalled, q.since
	q.signalled, q.since = q.pubUsed, 0
	if since == 0 {
		return false
	}
	first := !q.decided
	q.decided = true
	switch {
	case !q.eventIdx:
		return q.availFlag.load()&availFNoInterrupt == 0
	case first || since > 0xffff:
		// Over 65,535 entries, every value of used_event was crossed.
		return true
	default:
		return needEvent(q.usedEvent.load(), q.pubUsed, old)
	}
}

// EnableNotify asks the driver for kicks, by avail_event or by clearing
// NO_NOTIFY, then re-reads avail idx (virtio 1.2 §2.7.10.2; Linux
// vhost_enable_notify). True means the ring is not empty.
func (q *SplitQueue) EnableNotify() bool {
	if q.eventIdx {
		q.availEvt.store(q.lastAvail)
		if q.log != nil {
			q.log.Mark(q.usedLog+4+8*uint64(q.size), 2)
		}
	} else if q.usedFlags&usedFNoNotify != 0 {
		q.usedFlags &^= usedFNoNotify
		q.storeUsedWord()
	}
	idx := q.availIdx.load()
	if idx-q.lastAvail <= q.size {
		q.availShadow = idx
	}
	return idx != q.lastAvail
}

// DisableNotify sets NO_NOTIFY. With EVENT_IDX it does nothing: avail_event
// stays behind and the driver stops kicking once past it (Linux
// vhost_disable_notify).
func (q *SplitQueue) DisableNotify() {
	if q.eventIdx || q.usedFlags&usedFNoNotify != 0 {
		return
	}
	q.usedFlags |= usedFNoNotify
	q.storeUsedWord()
}
