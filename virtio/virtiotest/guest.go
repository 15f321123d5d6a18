package virtiotest

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmnet-dev/vmnet/virtio"
)

// Descriptor flags (virtio 1.2 §2.7.5, §2.8), for raw descriptors.
const (
	FlagNext     = 1
	FlagWrite    = 2
	FlagIndirect = 4
	FlagAvail    = 1 << 7
	FlagUsed     = 1 << 15
)

// Options configures a Guest alone in its memory: the options of its queue
// (QueueSpec) and of its memory (MachineOptions) in one, for NewGuest. The
// zero value is one region at 1 MiB, one descriptor per buffer and 4 KiB
// of buffer memory per chain.
type Options struct {
	// Options of the queue, as in QueueSpec.
	EventIdx    bool
	Indirect    bool
	Segment     int
	SlotSize    int
	AvailAlign2 bool
	StartIdx    uint16

	// Options of the memory, as in MachineOptions. Regions is capped at
	// the queue size.
	Regions             int
	GuestBase, UserBase uint64
	Alloc               func(n int) ([]byte, error)
}

// Used is one used buffer reaped from the ring.
type Used struct {
	ID   uint16 // split: head descriptor index; packed: Buffer ID
	Len  uint32 // bytes the device says it wrote
	Data []byte // a copy of those bytes, gathered from the writable buffers
}

// Desc is a raw descriptor in either layout.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16 // split: next descriptor index; packed: Buffer ID
}

// scratchSize is the memory Alloc hands out.
const scratchSize = 64 << 10

type seg struct {
	off uint64 // in buf
	n   int
}

type chain struct {
	inUse    bool
	descs    []uint16 // split: descriptor indices to free
	ndesc    uint16   // packed: ring positions taken
	writable []seg
	capacity uint32 // bytes in writable
}

// Guest is the driver side of one virtqueue, in memory of its own
// (NewGuest) or of a Machine's.
type Guest struct {
	size   uint16
	packed bool
	spec   QueueSpec
	mem    *virtio.Memory
	buf    []byte // all guest memory; buf[0] is at guest address base
	base   uint64

	descOff, availOff, usedOff uint64 // split
	driverOff, deviceOff       uint64 // packed
	tableOff, tableSize        uint64 // indirect tables, one per id
	slotOff, slotSize          uint64 // buffer slots, one per id
	scratchNext, scratchEnd    uint64

	chains   []chain // by id
	freeDesc []uint16
	freeIDs  []uint16
	freeRing int // packed: ring positions not in flight

	availIdx, lastUsed  uint16 // split
	availPos, availWrap uint16 // packed
	usedPos, usedWrap   uint16
	sinceKick           uint32
	inflight            int
	err                 error
	list                []Desc // Post's scratch
}

// NewGuest lays out a virtqueue of size descriptors, split or packed, with
// memory for its buffers, alone in a guest memory. For a split ring size
// must be a power of two.
func NewGuest(size uint16, packed bool, opts Options) (*Guest, error) {
	spec := QueueSpec{
		Size: size, Packed: packed, EventIdx: opts.EventIdx, Indirect: opts.Indirect, Segment: opts.Segment,
		SlotSize: opts.SlotSize, AvailAlign2: opts.AvailAlign2, StartIdx: opts.StartIdx,
	}
	if err := spec.check(); err != nil {
		return nil, fmt.Errorf("create guest: %w", err)
	}
	mopts := MachineOptions{Regions: opts.Regions, GuestBase: opts.GuestBase, UserBase: opts.UserBase, Alloc: opts.Alloc}
	m, err := newMachine(mopts, []QueueSpec{spec})
	if err != nil {
		return nil, fmt.Errorf("create guest: %w", err)
	}
	return m.queues[0], nil
}

// place lays the queue out from start, an offset in its memory that is 64
// bytes aligned, and returns the offset where it ends.
func (g *Guest) place(start uint64) uint64 {
	n := uint64(g.size)
	g.descOff = start
	off := start
	if g.packed {
		off = align(off+16*n+16, 64)
		g.driverOff, g.deviceOff = off, off+64
		off += 128
	} else {
		// Padding around every 16-bit field (see ring_unsafe.go).
		off += 16*n + 4
		if g.spec.AvailAlign2 {
			off += 2
		}
		g.availOff = off
		off = align(off+4+2*n+2+4, 64)
		g.usedOff = off
		off += 4 + 8*n + 2 + 6
	}
	off = align(off, 64)
	if g.spec.Indirect {
		g.tableOff, g.tableSize = off, 16*n
		off += n * g.tableSize
	}
	g.scratchNext, g.scratchEnd = off, off+scratchSize
	off = align(g.scratchEnd, 64)
	g.slotOff, g.slotSize = off, uint64(g.spec.SlotSize)
	return off + n*g.slotSize
}

// start readies the placed queue in buf, mapped by mem, for its first
// chain.
func (g *Guest) start(buf []byte, mem *virtio.Memory) {
	g.buf, g.mem = buf, mem
	g.chains = make([]chain, g.size)
	for i := int(g.size) - 1; i >= 0; i-- {
		g.freeDesc = append(g.freeDesc, uint16(i))
		g.freeIDs = append(g.freeIDs, uint16(i))
	}
	g.freeRing = int(g.size)
	if !g.packed {
		g.availIdx, g.lastUsed = g.spec.StartIdx, g.spec.StartIdx
		store16(g.buf, g.availOff+2, g.spec.StartIdx)
		store16(g.buf, g.usedOff+2, g.spec.StartIdx)
	}
}

func align(x, a uint64) uint64 { return (x + a - 1) &^ (a - 1) }

// Memory returns the guest memory, for the device: the Machine's, for a
// queue of a Machine.
func (g *Guest) Memory() *virtio.Memory { return g.mem }

// Size returns the queue size.
func (g *Guest) Size() uint16 { return g.size }

// Packed reports whether the ring is packed.
func (g *Guest) Packed() bool { return g.packed }

// Areas is where a virtqueue lies in guest memory and in which format, in
// the terms of virtio-pci's common configuration (virtio 1.2 §4.1.4.3:
// queue_size, queue_desc, queue_driver, queue_device) and of the features
// a driver acknowledges. The addresses are guest physical.
type Areas struct {
	Size     uint16
	Desc     uint64 // descriptor area: split descriptor table, packed descriptor ring
	Driver   uint64 // driver area: split available ring, packed driver event suppression
	Device   uint64 // device area: split used ring, packed device event suppression
	Packed   bool   // VIRTIO_F_RING_PACKED
	EventIdx bool   // VIRTIO_F_EVENT_IDX
}

// Areas returns where the ring lies and its format.
func (g *Guest) Areas() Areas {
	a := Areas{Size: g.size, Desc: g.base + g.descOff, Packed: g.packed, EventIdx: g.spec.EventIdx}
	if g.packed {
		a.Driver, a.Device = g.base+g.driverOff, g.base+g.deviceOff
	} else {
		a.Driver, a.Device = g.base+g.availOff, g.base+g.usedOff
	}
	return a
}

// SplitConfig returns the configuration of a split ring for the device.
func (g *Guest) SplitConfig() virtio.SplitConfig {
	a := g.Areas()
	return virtio.SplitConfig{
		Size: a.Size, DescAddr: a.Desc, AvailAddr: a.Driver, UsedAddr: a.Device,
		EventIdx: a.EventIdx, NextAvail: g.spec.StartIdx, NextUsed: g.spec.StartIdx,
	}
}

// PackedConfig returns the configuration of a packed ring for the device.
func (g *Guest) PackedConfig() virtio.PackedConfig {
	a := g.Areas()
	return virtio.PackedConfig{
		Size: a.Size, DescAddr: a.Desc, DriverAddr: a.Driver, DeviceAddr: a.Device,
		EventIdx: a.EventIdx, NextAvail: virtio.PackedWrap, NextUsed: virtio.PackedWrap,
	}
}

// NewQueue builds the device side of the ring.
func (g *Guest) NewQueue() (virtio.Queue, error) {
	if g.packed {
		return virtio.NewPackedQueue(g.mem, g.PackedConfig())
	}
	return virtio.NewSplitQueue(g.mem, g.SplitConfig())
}

// Err returns the first protocol error the device made, as Reap saw it.
func (g *Guest) Err() error { return g.err }

func (g *Guest) fail(format string, args ...any) {
	if g.err == nil {
		g.err = fmt.Errorf(format, args...)
	}
}

// InFlight returns the number of chains posted and not reaped.
func (g *Guest) InFlight() int { return g.inflight }

// PostTX posts frame as one device-readable buffer.
func (g *Guest) PostTX(frame []byte) (uint16, error) {
	return g.Post([][]byte{frame}, nil)
}

// PostRX posts one device-writable buffer of n bytes.
func (g *Guest) PostRX(n int) (uint16, error) {
	return g.Post(nil, []int{n})
}

// ErrFull is returned by Post when the ring or the descriptor table has no
// room for the chain.
var ErrFull = errors.New("ring full")

// Post makes a chain available: the readable buffers, copied into guest
// memory, then writable buffers of the given sizes, filled with 0xa5 so
// that what the device did not write shows. It returns the chain's id.
func (g *Guest) Post(readable [][]byte, writable []int) (uint16, error) {
	g.list = g.list[:0]
	total := 0
	for _, b := range readable {
		total += len(b)
	}
	for _, n := range writable {
		total += n
	}
	if total > int(g.slotSize) {
		return 0, fmt.Errorf("post chain of %d bytes: slot holds %d", total, g.slotSize)
	}
	for _, b := range readable {
		g.split(len(b), 0)
	}
	for _, n := range writable {
		g.split(n, FlagWrite)
	}
	if len(g.list) == 0 {
		return 0, errors.New("post chain: no buffers")
	}
	ring := len(g.list)
	if g.spec.Indirect {
		if len(g.list) > int(g.size) {
			return 0, fmt.Errorf("post chain of %d descriptors: more than queue size %d", len(g.list), g.size)
		}
		ring = 1
	}
	var id uint16
	var descs []uint16
	if g.packed {
		if len(g.freeIDs) == 0 || ring > g.freeRing {
			return 0, ErrFull
		}
		id = g.freeIDs[len(g.freeIDs)-1]
		g.freeIDs = g.freeIDs[:len(g.freeIDs)-1]
	} else {
		if ring > len(g.freeDesc) {
			return 0, ErrFull
		}
		for range ring {
			descs = append(descs, g.freeDesc[len(g.freeDesc)-1])
			g.freeDesc = g.freeDesc[:len(g.freeDesc)-1]
		}
		id = descs[0]
	}

	c := &g.chains[id]
	*c = chain{inUse: true, descs: descs, ndesc: uint16(ring), writable: c.writable[:0]}
	off := g.slotOff + uint64(id)*g.slotSize
	i := 0
	for _, b := range readable {
		copy(g.buf[off:], b)
		for n := len(b); ; {
			g.list[i].Addr = g.base + off
			off += uint64(g.list[i].Len)
			n -= int(g.list[i].Len)
			i++
			if n <= 0 {
				break
			}
		}
	}
	for _, wn := range writable {
		fill := g.buf[off : off+uint64(wn)]
		for k := range fill {
			fill[k] = 0xa5
		}
		c.writable = append(c.writable, seg{off, wn})
		c.capacity += uint32(wn)
		for n := wn; ; {
			g.list[i].Addr = g.base + off
			off += uint64(g.list[i].Len)
			n -= int(g.list[i].Len)
			i++
			if n <= 0 {
				break
			}
		}
	}

	if g.packed {
		g.postPacked(id)
	} else {
		g.postSplit(descs)
	}
	g.inflight++
	return id, nil
}

// split appends the descriptors of one buffer of n bytes to g.list.
func (g *Guest) split(n int, flags uint16) {
	seg := g.spec.Segment
	if seg <= 0 || n <= seg {
		g.list = append(g.list, Desc{Len: uint32(n), Flags: flags})
		return
	}
	for ; n > 0; n -= seg {
		g.list = append(g.list, Desc{Len: uint32(min(n, seg)), Flags: flags})
	}
}

// indirectTable writes g.list into id's indirect table (split: entry j
// linking to j+1) and returns the descriptor that points to the table.
func (g *Guest) indirectTable(id uint16) Desc {
	t := g.tableOff + uint64(id)*g.tableSize
	for j, d := range g.list {
		b := g.buf[t+16*uint64(j):]
		if g.packed {
			// struct pvirtq_desc: id then flags; only WRITE counts
			// (virtio 1.2 §2.8.7).
			binary.LittleEndian.PutUint64(b, d.Addr)
			binary.LittleEndian.PutUint32(b[8:], d.Len)
			binary.LittleEndian.PutUint16(b[12:], 0)
			binary.LittleEndian.PutUint16(b[14:], d.Flags)
			continue
		}
		if j+1 < len(g.list) {
			d.Flags |= FlagNext
			d.Next = uint16(j + 1)
		}
		putDesc(b, d)
	}
	return Desc{Addr: g.base + t, Len: uint32(16 * len(g.list)), Flags: FlagIndirect}
}

func putDesc(b []byte, d Desc) {
	binary.LittleEndian.PutUint64(b, d.Addr)
	binary.LittleEndian.PutUint32(b[8:], d.Len)
	binary.LittleEndian.PutUint16(b[12:], d.Flags)
	binary.LittleEndian.PutUint16(b[14:], d.Next)
}

func (g *Guest) postSplit(descs []uint16) {
	if g.spec.Indirect {
		g.WriteDesc(descs[0], g.indirectTable(descs[0]))
	} else {
		for j, d := range g.list {
			if j+1 < len(g.list) {
				d.Flags |= FlagNext
				d.Next = descs[j+1]
			}
			g.WriteDesc(descs[j], d)
		}
	}
	g.PublishHead(descs[0])
}

func (g *Guest) postPacked(id uint16) {
	list := g.list
	if g.spec.Indirect {
		list = []Desc{g.indirectTable(id)}
	}
	for j := range list {
		list[j].Next = id
		if j+1 < len(list) {
			list[j].Flags |= FlagNext
		}
	}
	g.MakeAvailable(list)
	g.freeRing -= len(list)
}

// descOffset returns the offset in buf of descriptor i.
func (g *Guest) descOffset(i uint16) uint64 { return g.descOff + 16*uint64(i) }

// WriteDesc writes descriptor i of the split table, or the packed ring's
// descriptor at position i, as given: flags included, availability bits and
// all.
func (g *Guest) WriteDesc(i uint16, d Desc) {
	off := g.descOffset(i % g.size)
	if !g.packed {
		putDesc(g.buf[off:], d)
		return
	}
	binary.LittleEndian.PutUint64(g.buf[off:], d.Addr)
	binary.LittleEndian.PutUint32(g.buf[off+8:], d.Len)
	store32(wordAt(g.buf, off+12), uint32(d.Next)|uint32(d.Flags)<<16)
}

// ReadDesc returns descriptor i of the split table or packed ring.
func (g *Guest) ReadDesc(i uint16) Desc {
	b := g.buf[g.descOffset(i%g.size):]
	d := Desc{Addr: binary.LittleEndian.Uint64(b), Len: binary.LittleEndian.Uint32(b[8:])}
	if g.packed {
		w := load32(wordAt(g.buf, g.descOffset(i%g.size)+12))
		d.Next, d.Flags = uint16(w), uint16(w>>16)
	} else {
		d.Flags, d.Next = binary.LittleEndian.Uint16(b[12:]), binary.LittleEndian.Uint16(b[14:])
	}
	return d
}

// PublishHead puts head in the next split avail ring entry and bumps idx,
// with release semantics.
func (g *Guest) PublishHead(head uint16) {
	binary.LittleEndian.PutUint16(g.buf[g.availOff+4+2*uint64(g.availIdx%g.size):], head)
	g.availIdx++
	g.sinceKick++
	store16(g.buf, g.availOff+2, g.availIdx)
}

// SetAvailIdx stores idx as the split avail ring's idx, whatever it was.
func (g *Guest) SetAvailIdx(idx uint16) {
	g.availIdx = idx
	store16(g.buf, g.availOff+2, idx)
}

// MakeAvailable writes descs at the next packed ring positions, adding the
// AVAIL and USED bits of the driver's wrap counter to their flags, the
// first descriptor's flags last (virtio 1.2 §2.8.21.1). The Guest does not
// track them: tests of malformed lists use it and never Reap.
func (g *Guest) MakeAvailable(descs []Desc) {
	pos, wrap := g.availPos, g.availWrap
	head := Desc{}
	for j, d := range descs {
		if wrap != 0 {
			d.Flags |= FlagAvail
		} else {
			d.Flags |= FlagUsed
		}
		if j == 0 {
			head = d
		} else {
			g.WriteDesc(pos, d)
		}
		if pos++; pos == g.size {
			pos, wrap = 0, wrap^1
		}
	}
	g.WriteDesc(g.availPos, head)
	g.availPos, g.availWrap = pos, wrap
	g.sinceKick += uint32(len(descs))
}

// Kick reports whether the driver must notify the device of what it made
// available since the previous Kick (Linux virtqueue_kick_prepare).
func (g *Guest) Kick() bool {
	since := g.sinceKick
	g.sinceKick = 0
	if since == 0 {
		return false
	}
	n := uint64(g.size)
	if g.packed {
		w := load32(wordAt(g.buf, g.deviceOff))
		switch (w >> 16) & 3 {
		case 1:
			return false
		case 2:
			if g.spec.EventIdx && since < uint32(g.size) {
				break
			}
			fallthrough
		default:
			return true
		}
		event := uint16(w) &^ virtio.PackedWrap
		if uint16(w)>>15 != g.availWrap {
			event -= g.size
		}
		return needEvent(event, g.availPos, g.availPos-uint16(since))
	}
	if !g.spec.EventIdx {
		return load16(g.buf, g.usedOff)&1 == 0
	}
	if since > 0xffff {
		return true
	}
	return needEvent(load16(g.buf, g.usedOff+4+8*n), g.availIdx, g.availIdx-uint16(since))
}

func needEvent(event, new, old uint16) bool { return new-event-1 < new-old }

// EnableInterrupts asks for used buffer notifications from the next used
// buffer on (Linux virtqueue_enable_cb_prepare).
func (g *Guest) EnableInterrupts() {
	switch {
	case g.packed && g.spec.EventIdx:
		g.SetDriverEvent(g.usedPos|g.usedWrap<<15, 2)
	case g.packed:
		g.SetDriverEvent(0, 0)
	case g.spec.EventIdx:
		g.SetUsedEvent(g.lastUsed)
	default:
		store16(g.buf, g.availOff, 0)
	}
}

// DisableInterrupts asks the device not to notify.
func (g *Guest) DisableInterrupts() {
	switch {
	case g.packed:
		g.SetDriverEvent(0, 1)
	case g.spec.EventIdx:
		g.SetUsedEvent(g.lastUsed - 1)
	default:
		store16(g.buf, g.availOff, 1)
	}
}

// SetAvailFlags stores the split avail ring's flags.
func (g *Guest) SetAvailFlags(flags uint16) { store16(g.buf, g.availOff, flags) }

// SetUsedEvent stores the split avail ring's used_event.
func (g *Guest) SetUsedEvent(idx uint16) {
	store16(g.buf, g.availOff+4+2*uint64(g.size), idx)
}

// SetDriverEvent stores the packed driver event suppression structure.
func (g *Guest) SetDriverEvent(offWrap, flags uint16) {
	store32(wordAt(g.buf, g.driverOff), uint32(offWrap)|uint32(flags)<<16)
}

// UsedFlags returns the split used ring's flags.
func (g *Guest) UsedFlags() uint16 { return load16(g.buf, g.usedOff) }

// UsedIdx returns the split used ring's idx as the device published it.
func (g *Guest) UsedIdx() uint16 { return load16(g.buf, g.usedOff+2) }

// AvailEvent returns the split used ring's avail_event.
func (g *Guest) AvailEvent() uint16 { return load16(g.buf, g.usedOff+4+8*uint64(g.size)) }

// DeviceEvent returns the packed device event suppression structure.
func (g *Guest) DeviceEvent() (offWrap, flags uint16) {
	w := load32(wordAt(g.buf, g.deviceOff))
	return uint16(w), uint16(w >> 16)
}

// NextAvail returns the driver's next avail index: split, avail idx;
// packed, position with the wrap counter in bit 15.
func (g *Guest) NextAvail() uint16 {
	if g.packed {
		return g.availPos | g.availWrap<<15
	}
	return g.availIdx
}

// Reap collects the used buffers the device has published, in order, and
// frees their descriptors.
func (g *Guest) Reap() []Used {
	var out []Used
	if g.packed {
		for {
			off := g.descOffset(g.usedPos)
			w := load32(wordAt(g.buf, off+12))
			flags := uint16(w >> 16)
			used := flags&FlagUsed != 0
			if used != (g.usedWrap != 0) || (flags&FlagAvail != 0) != used {
				return out
			}
			n := binary.LittleEndian.Uint32(g.buf[off+8:])
			if flags&FlagWrite == 0 {
				n = 0 // reserved (virtio 1.2 §2.8.4)
			}
			u, ok := g.reap(uint16(w), n)
			if !ok {
				return out
			}
			out = append(out, u)
			c := &g.chains[u.ID]
			g.usedPos += c.ndesc
			if g.usedPos >= g.size {
				g.usedPos -= g.size
				g.usedWrap ^= 1
			}
			g.freeRing += int(c.ndesc)
			g.freeIDs = append(g.freeIDs, u.ID)
		}
	}
	idx := g.UsedIdx()
	if d := int(idx - g.lastUsed); d > g.inflight {
		g.fail("used idx %d is %d past last seen %d, with %d in flight", idx, d, g.lastUsed, g.inflight)
		return out
	}
	for ; g.lastUsed != idx; g.lastUsed++ {
		e := g.buf[g.usedOff+4+8*uint64(g.lastUsed%g.size):]
		id := binary.LittleEndian.Uint32(e)
		if id >= uint32(g.size) {
			g.fail("used elem %d: id %d out of range", g.lastUsed, id)
			return out
		}
		u, ok := g.reap(uint16(id), binary.LittleEndian.Uint32(e[4:]))
		if !ok {
			return out
		}
		out = append(out, u)
		g.freeDesc = append(g.freeDesc, g.chains[id].descs...)
	}
	return out
}

// reap checks one used buffer and copies out what the device wrote.
func (g *Guest) reap(id uint16, n uint32) (Used, bool) {
	if id >= g.size || !g.chains[id].inUse {
		g.fail("used buffer %d: not in flight", id)
		return Used{}, false
	}
	c := &g.chains[id]
	if n > c.capacity {
		g.fail("used buffer %d: len %d exceeds its %d writable bytes", id, n, c.capacity)
		return Used{}, false
	}
	u := Used{ID: id, Len: n}
	if c.capacity > 0 {
		u.Data = make([]byte, 0, n)
		for _, s := range c.writable {
			take := min(int(n)-len(u.Data), s.n)
			u.Data = append(u.Data, g.buf[s.off:s.off+uint64(take)]...)
		}
	}
	c.inUse = false
	g.inflight--
	return u, true
}

// Bytes returns the host view of n bytes of guest memory at gpa, which
// must lie in the Guest's memory (for a queue of a Machine, anywhere in
// the Machine's).
func (g *Guest) Bytes(gpa uint64, n int) []byte {
	off := gpa - g.base
	return g.buf[off : off+uint64(n)]
}

// Alloc returns the guest address of n zeroed bytes of scratch memory,
// 16-byte aligned, for raw descriptors, tables and buffers. It panics when
// the 64 KiB of scratch memory run out.
func (g *Guest) Alloc(n int) uint64 {
	off := align(g.scratchNext, 16)
	if off+uint64(n) > g.scratchEnd {
		panic("virtiotest: scratch memory exhausted")
	}
	g.scratchNext = off + uint64(n)
	return g.base + off
}
