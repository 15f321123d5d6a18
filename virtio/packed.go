package virtio

import (
	"encoding/binary"
	"fmt"
)

// Event suppression flags, virtio 1.2 §2.8.10 (virtio_ring.h
// VRING_PACKED_EVENT_FLAG_*).
const (
	eventFlagEnable  = 0
	eventFlagDisable = 1
	eventFlagDesc    = 2
)

// PackedWrap is bit 15 of a packed ring index as vhost-user carries it
// (VHOST_USER_GET_VRING_BASE, SET_VRING_BASE): the wrap counter. Both wrap
// counters start at 1 (virtio 1.2 §2.8.1), so a new ring starts at index
// PackedWrap, not 0.
const PackedWrap = 1 << 15

// PackedConfig places a packed virtqueue (virtio 1.2 §2.8) in guest memory.
type PackedConfig struct {
	Size       uint16 // descriptors: 1 to MaxQueueSize, not necessarily a power of two (CheckQueueSize)
	DescAddr   uint64 // guest physical address of the descriptor ring, 16-byte aligned
	DriverAddr uint64 // guest physical address of the driver event suppression structure, 4-byte aligned
	DeviceAddr uint64 // guest physical address of the device event suppression structure, 4-byte aligned
	EventIdx   bool   // VIRTIO_F_EVENT_IDX negotiated: RING_EVENT_FLAGS_DESC is used
	// NextAvail and NextUsed are the ring positions (bits 0-14) and wrap
	// counters (bit 15) where the device pops and fills next. A new ring
	// starts both at PackedWrap; the zero value is position 0 with wrap
	// counter 0, valid only on resume.
	NextAvail uint16
	NextUsed  uint16
}

// PackedQueue is the device side of a packed virtqueue.
type PackedQueue struct {
	mem      *Memory
	size     uint16
	eventIdx bool

	desc   []byte  // the descriptor ring
	driver *uint32 // driver event suppression: off_wrap | flags<<16
	device *uint32 // device event suppression, written only by the device

	availPos  uint16 // next ring position to pop
	availWrap uint16 // its wrap counter, 0 or 1
	usedPos   uint16 // next ring position to fill
	usedWrap  uint16
	pubPos    uint16 // usedPos as last published
	pubWrap   uint16
	devEvent  uint32 // last value stored in *device; ^0 before the first
	inflight  uint32 // ring descriptors popped and not pushed
	since     uint32 // ring descriptors published since the previous NeedsInterrupt
	decided   bool   // NeedsInterrupt has judged a publication
	stagedN   uint32 // used descriptors staged since the last Flush
	stagedLen uint32 // ring descriptors they cover
	first     *uint32
	firstVal  uint32 // id and flags of the first staged used descriptor
	firstOff  uint64 // its offset in the descriptor ring

	descAddr uint64    // guest physical address of the descriptor ring, for the log
	log      *DirtyLog // SetDirtyLog; nil: no logging
	usedLog  uint64    // where the device event suppression area is logged
}

// NewPackedQueue returns the device side of the packed virtqueue that cfg
// places in mem. Each part of the ring must lie in one region, aligned as
// virtio 1.2 §2.8.10.1 requires in guest memory and to 4 bytes in host
// memory. It reads and writes nothing in guest memory.
func NewPackedQueue(mem *Memory, cfg PackedConfig) (*PackedQueue, error) {
	n := uint64(cfg.Size)
	if err := CheckQueueSize(uint32(cfg.Size), true); err != nil {
		return nil, fmt.Errorf("create packed queue: %w", err)
	}
	for _, x := range []struct {
		what string
		v    uint16
	}{{"next avail", cfg.NextAvail}, {"next used", cfg.NextUsed}} {
		if uint64(x.v&^PackedWrap) >= n {
			return nil, fmt.Errorf("create packed queue: %s position %d out of range for size %d", x.what, x.v&^PackedWrap, n)
		}
	}
	q := &PackedQueue{
		mem: mem, size: cfg.Size, eventIdx: cfg.EventIdx,
		availPos: cfg.NextAvail &^ PackedWrap, availWrap: cfg.NextAvail >> 15,
		usedPos: cfg.NextUsed &^ PackedWrap, usedWrap: cfg.NextUsed >> 15,
		devEvent: ^uint32(0), descAddr: cfg.DescAddr,
	}
	q.pubPos, q.pubWrap = q.usedPos, q.usedWrap
	q.inflight = q.distance(q.usedPos, q.usedWrap, q.availPos, q.availWrap)
	if q.inflight > uint32(n) {
		return nil, fmt.Errorf("create packed queue: next avail %#x is more than size %d past next used %#x",
			cfg.NextAvail, n, cfg.NextUsed)
	}
	areas := RingAreas(cfg.Size, true, cfg.EventIdx)
	var err error
	if q.desc, err = ringPart(mem, areas[0], cfg.DescAddr, 4); err != nil {
		return nil, fmt.Errorf("create packed queue: %w", err)
	}
	drv, err := ringPart(mem, areas[1], cfg.DriverAddr, 4)
	if err != nil {
		return nil, fmt.Errorf("create packed queue: %w", err)
	}
	dev, err := ringPart(mem, areas[2], cfg.DeviceAddr, 4)
	if err != nil {
		return nil, fmt.Errorf("create packed queue: %w", err)
	}
	q.driver, q.device = wordAt(drv, 0), wordAt(dev, 0)
	return q, nil
}

// distance is the number of ring positions from (p0, w0) forward to
// (p1, w1), in [0, 2*Size): positions and wrap counters together count
// modulo 2*Size, the wrap counter being 1 on the first lap.
func (q *PackedQueue) distance(p0, w0, p1, w1 uint16) uint32 {
	n := uint32(q.size)
	lin := func(p, w uint16) uint32 { return uint32(p) + n*uint32(w^1) }
	return (lin(p1, w1) + 2*n - lin(p0, w0)) % (2 * n)
}

// Size returns the number of descriptors in the ring.
func (q *PackedQueue) Size() uint16 { return q.size }

// NextAvail returns the next ring position to pop, with the wrap counter in
// bit 15.
func (q *PackedQueue) NextAvail() uint16 { return q.availPos | q.availWrap<<15 }

// NextUsed returns the ring position the next Push fills, with the wrap
// counter in bit 15.
func (q *PackedQueue) NextUsed() uint16 { return q.usedPos | q.usedWrap<<15 }

// isAvail reports whether descriptor flags mark it available to a device
// whose wrap counter is wrap (virtio 1.2 §2.8.1): AVAIL matches it, USED
// does not.
func isAvail(flags, wrap uint16) bool {
	return (flags&descFAvail != 0) == (wrap != 0) && (flags&descFUsed != 0) != (wrap != 0)
}

// Pop reads the next available list into c (see Queue). The Buffer ID is in
// its last descriptor (virtio 1.2 §2.8.6), so the list is read to its end
// even when an earlier descriptor is bad, to return it with length 0.
func (q *PackedQueue) Pop(c *Chain) (bool, error) {
	c.reset()
	pos, wrap := q.availPos, q.availWrap
	// The head's flags are read first, with acquire: the driver writes them
	// last (virtio 1.2 §2.8.21.1).
	w := loadLE32(wordAt(q.desc, int(pos)*descSize+12))
	if !isAvail(uint16(w>>16), wrap) {
		return false, nil
	}
	var bad *ChainError
	for n := uint16(1); ; n++ {
		d := q.desc[int(pos)*descSize : int(pos)*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d)
		length := binary.LittleEndian.Uint32(d[8:])
		if n > 1 {
			w = binary.LittleEndian.Uint32(d[12:])
		}
		flags := uint16(w >> 16)
		if n > 1 && !isAvail(flags, wrap) {
			c.fail()
			return false, &ChainError{Rule: RuleNotAvail, Desc: pos, Got: uint64(flags), Limit: uint64(wrap)}
		}
		if bad == nil {
			bad = q.buffer(c, pos, n, addr, length, flags)
		}
		if flags&descFNext == 0 {
			c.Head, c.descs, c.pending = uint16(w), n, true
			break
		}
		if n == q.size {
			c.fail()
			return false, &ChainError{Rule: RuleChainLen, Desc: pos, Got: uint64(n) + 1, Limit: uint64(q.size)}
		}
		if pos++; pos == q.size {
			pos, wrap = 0, wrap^1
		}
	}
	if held := q.inflight + uint32(c.descs); held > uint32(q.size) {
		c.fail()
		c.pending = false
		return false, &ChainError{Rule: RuleOverrun, Desc: q.availPos, Got: uint64(held), Limit: uint64(q.size)}
	}
	q.availPos, q.availWrap = q.advance(q.availPos, q.availWrap, c.descs)
	q.inflight += uint32(c.descs)
	if bad != nil {
		bad.Head, bad.HeadKnown = c.Head, true
		c.fail()
		return false, bad
	}
	return true, nil
}

// buffer adds the n'th descriptor of a list, at ring position pos, to c.
func (q *PackedQueue) buffer(c *Chain, pos, n uint16, addr uint64, length uint32, flags uint16) *ChainError {
	if flags&descFIndirect == 0 {
		if e := c.add(q.mem, addr, length, flags&descFWrite != 0); e != nil {
			e.Desc = pos
			return e
		}
		return nil
	}
	switch {
	case flags&descFNext != 0:
		return &ChainError{Rule: RuleIndirectNext, Desc: pos}
	case n > 1:
		return &ChainError{Rule: RuleIndirectInList, Desc: pos}
	case length == 0 || length%descSize != 0:
		return &ChainError{Rule: RuleIndirectLen, Desc: pos, Got: uint64(length)}
	case length/descSize > uint32(q.size):
		return &ChainError{Rule: RuleChainLen, Desc: pos, Got: uint64(length / descSize), Limit: uint64(q.size)}
	}
	t, err := q.mem.Slice(addr, uint64(length))
	if err != nil {
		return &ChainError{Rule: RuleAddress, Desc: pos, Got: addr, Limit: uint64(length), Err: err}
	}
	// Every entry is used, in order; only WRITE counts among the flags
	// (virtio 1.2 §2.8.7).
	for i := 0; i < len(t); i += descSize {
		d := t[i : i+descSize]
		addr := binary.LittleEndian.Uint64(d)
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[14:])
		if e := c.add(q.mem, addr, length, flags&descFWrite != 0); e != nil {
			e.Desc, e.Indirect = uint16(i/descSize), true
			return e
		}
	}
	return nil
}

// Unpop gives back the most recently popped chain (see Queue): the
// available position moves back over its descriptors.
func (q *PackedQueue) Unpop(c *Chain) error {
	if !c.pending || c.descs == 0 || uint32(c.descs) > q.inflight {
		return fmt.Errorf("unpop chain %d: %w", c.Head, ErrNotPopped)
	}
	p := int(q.availPos) - int(c.descs)
	if p < 0 {
		p += int(q.size)
		q.availWrap ^= 1
	}
	q.availPos = uint16(p)
	q.inflight -= uint32(c.descs)
	c.pending = false
	return nil
}

// advance moves (pos, wrap) forward by n <= Size positions.
func (q *PackedQueue) advance(pos, wrap, n uint16) (uint16, uint16) {
	p := uint32(pos) + uint32(n)
	if p >= uint32(q.size) {
		p -= uint32(q.size)
		wrap ^= 1
	}
	return uint16(p), wrap
}

// Push stages c as used with written bytes (see Queue): one used descriptor
// at the next used position, which then skips the chain's length (virtio
// 1.2 §2.8.6). The first used descriptor of a batch gets its flags in Flush,
// so the driver never sees part of a batch (§2.8.9).
func (q *PackedQueue) Push(c *Chain, written uint32) error {
	if err := pushCheck(c, written); err != nil {
		return err
	}
	if uint32(c.descs) > q.inflight || c.descs == 0 {
		return fmt.Errorf("push chain %d: %w", c.Head, ErrNotPopped)
	}
	off := int(q.usedPos) * descSize
	binary.LittleEndian.PutUint32(q.desc[off+8:], written)
	flags := uint32(0)
	if q.usedWrap != 0 {
		flags = descFAvail | descFUsed
	}
	if written > 0 {
		// WRITE in a used descriptor says len is meaningful (§2.8.3).
		flags |= descFWrite
	}
	v := uint32(c.Head) | flags<<16
	if q.stagedN == 0 {
		q.first, q.firstVal, q.firstOff = wordAt(q.desc, off+12), v, uint64(off)+12
	} else {
		// Ordered before the driver can look by the release store of the
		// first descriptor's flags: the driver reads used descriptors in
		// ring order (virtio 1.2 §2.8.22).
		binary.LittleEndian.PutUint32(q.desc[off+12:], v)
	}
	if q.log != nil {
		// len, and id and flags but for the first (logged by Flush).
		q.log.Mark(q.descAddr+uint64(off)+8, 8)
	}
	q.stagedN++
	q.stagedLen += uint32(c.descs)
	q.usedPos, q.usedWrap = q.advance(q.usedPos, q.usedWrap, c.descs)
	q.inflight -= uint32(c.descs)
	c.pending = false
	return nil
}

// Flush publishes the staged used descriptors by storing the flags of the
// first one, with release semantics.
func (q *PackedQueue) Flush() {
	if q.stagedN == 0 {
		return
	}
	storeLE32(q.first, q.firstVal)
	if q.log != nil {
		q.log.Mark(q.descAddr+q.firstOff, 4)
	}
	q.since += q.stagedLen
	q.stagedN, q.stagedLen, q.first = 0, 0, nil
	q.pubPos, q.pubWrap = q.usedPos, q.usedWrap
}

// NeedsInterrupt reports whether the driver event suppression structure asks
// for a used buffer notification for what Flush published since the
// previous call (virtio 1.2 §2.8.10; Linux virtqueue_kick_prepare_packed is
// the same test from the driver's side). In RING_EVENT_FLAGS_DESC mode the
// first publication after NewPackedQueue always notifies, as for split
// rings.
func (q *PackedQueue) NeedsInterrupt() bool {
	since := q.since
	q.since = 0
	if since == 0 {
		return false
	}
	first := !q.decided
	q.decided = true
	w := loadLE32(q.driver)
	switch uint16(w>>16) & 3 {
	case eventFlagDisable:
		return false
	case eventFlagDesc:
		// Past a whole lap every position was used at least once.
		if q.eventIdx && !first && since < uint32(q.size) {
			break
		}
		fallthrough
	default:
		return true
	}
	offWrap := uint16(w)
	event := offWrap &^ PackedWrap
	if offWrap>>15 != q.pubWrap {
		event -= q.size
	}
	return needEvent(event, q.pubPos, q.pubPos-uint16(since))
}

// EnableNotify asks the driver for kicks, with RING_EVENT_FLAGS_DESC at the
// next position to pop when EVENT_IDX is on, then looks at that position
// again. True means a buffer is available.
func (q *PackedQueue) EnableNotify() bool {
	v := uint32(eventFlagEnable) << 16
	if q.eventIdx {
		v = uint32(q.availPos|q.availWrap<<15) | eventFlagDesc<<16
	}
	q.storeDevEvent(v)
	w := loadLE32(wordAt(q.desc, int(q.availPos)*descSize+12))
	return isAvail(uint16(w>>16), q.availWrap)
}

// DisableNotify sets RING_EVENT_FLAGS_DISABLE in the device event
// suppression structure.
func (q *PackedQueue) DisableNotify() {
	q.storeDevEvent(uint32(eventFlagDisable) << 16)
}

// storeDevEvent sets the device event suppression structure to v, if it
// holds something else, and logs it.
func (q *PackedQueue) storeDevEvent(v uint32) {
	if v == q.devEvent {
		return
	}
	q.devEvent = v
	storeLE32(q.device, v)
	if q.log != nil {
		q.log.Mark(q.usedLog, 4)
	}
}

// SetDirtyLog sets the queue's dirty log (see Queue).
func (q *PackedQueue) SetDirtyLog(l RingLog) { q.log, q.usedLog = l.Log, l.UsedAddr }

// MarkWritten marks buffer bytes the device wrote (see Queue).
func (q *PackedQueue) MarkWritten(bufs [][]byte, n uint64) {
	if q.log != nil {
		markBufs(q.mem, q.log, bufs, n)
	}
}
