package virtiotest

import (
	"errors"
	"fmt"

	"github.com/vmnet-dev/vmnet/virtio"
)

// QueueSpec is one virtqueue of a Machine and how its Guest posts chains.
// The zero value but for Size is a split ring without EVENT_IDX, one
// descriptor per buffer and 4 KiB of buffer memory per chain.
type QueueSpec struct {
	Size     uint16 // descriptors, as virtio.CheckQueueSize takes them for the layout
	Packed   bool   // negotiate VIRTIO_F_RING_PACKED: a packed ring, else a split one
	EventIdx bool   // negotiate VIRTIO_F_EVENT_IDX
	Indirect bool   // post every chain through an indirect table
	// Segment splits every buffer into descriptors of at most Segment
	// bytes; 0 posts each buffer as one descriptor.
	Segment int
	// SlotSize is the buffer memory of one chain; 0 means 4096.
	SlotSize int
	// AvailAlign2 places the split avail ring at an address that is 2
	// modulo 4, which virtio 1.2 §2.7 allows.
	AvailAlign2 bool
	// StartIdx starts the split ring's avail and used indices there, as a
	// resumed ring would, to reach 16-bit wraparound quickly. The device
	// must start there too: SplitConfig says so, Areas (a new ring's
	// terms) cannot.
	StartIdx uint16
}

func (s QueueSpec) check() error {
	if err := virtio.CheckQueueSize(uint32(s.Size), s.Packed); err != nil {
		return fmt.Errorf("bad queue size %d: %w", s.Size, err)
	}
	if s.SlotSize < 0 {
		return fmt.Errorf("bad slot size %d", s.SlotSize)
	}
	return nil
}

// MachineOptions places a Machine's memory. The zero value is one region
// at guest address 1 MiB and front-end address 0x7f00_0000_0000, in Go
// memory.
type MachineOptions struct {
	// Regions spreads the memory over this many guest memory regions,
	// adjacent in guest address space, with their borders in the middle of
	// buffer slots; 0 means 1. It is capped at the number of slots, the
	// sum of the queue sizes.
	Regions int
	// GuestBase is the guest physical address of the first region; 0
	// means 1 MiB. UserBase is its front-end virtual address; 0 means
	// 0x7f00_0000_0000.
	GuestBase, UserBase uint64
	// Alloc returns the memory, n bytes, zeroed, in one call for the whole
	// machine: a mapping of a file, say, that a test can then take away.
	// nil means Go memory.
	Alloc func(n int) ([]byte, error)
}

// Machine is one guest memory holding several virtqueues, as one VM's RAM
// holds every queue of its devices: the receive and transmit queues of a
// multi-queue net device and its control queue, say. Each queue has a
// Guest of its own, and all of them share Memory.
//
// Queue i lies after queue i-1, 4 KiB aligned: its descriptor, driver and
// device areas, its indirect tables, 64 KiB of scratch memory for its
// Alloc, then one buffer slot per descriptor.
type Machine struct {
	mem    *virtio.Memory
	queues []*Guest
}

// NewMachine lays out one virtqueue per spec, in order, in one guest
// memory.
func NewMachine(opts MachineOptions, queues ...QueueSpec) (*Machine, error) {
	if len(queues) == 0 {
		return nil, errors.New("create machine: no queues")
	}
	for i, s := range queues {
		if err := s.check(); err != nil {
			return nil, fmt.Errorf("create machine: queue %d: %w", i, err)
		}
	}
	m, err := newMachine(opts, queues)
	if err != nil {
		return nil, fmt.Errorf("create machine: %w", err)
	}
	return m, nil
}

// newMachine is NewMachine on checked specs.
func newMachine(opts MachineOptions, specs []QueueSpec) (*Machine, error) {
	if opts.GuestBase == 0 {
		opts.GuestBase = 1 << 20
	}
	if opts.UserBase == 0 {
		opts.UserBase = 0x7f00_0000_0000
	}
	m := &Machine{}
	var end uint64
	slots := 0
	for _, s := range specs {
		if s.SlotSize == 0 {
			s.SlotSize = 4096
		}
		g := &Guest{size: s.Size, packed: s.Packed, spec: s, base: opts.GuestBase, availWrap: 1, usedWrap: 1}
		end = g.place(align(end, 4096))
		m.queues = append(m.queues, g)
		slots += int(s.Size)
	}

	var buf []byte
	if opts.Alloc != nil {
		b, err := opts.Alloc(int(end))
		if err != nil {
			return nil, fmt.Errorf("allocate %d bytes: %w", end, err)
		}
		if uint64(len(b)) < end {
			return nil, fmt.Errorf("allocated %d bytes, want %d", len(b), end)
		}
		buf = b[:end]
	} else {
		buf = make([]byte, end)
	}

	nregions := min(max(opts.Regions, 1), slots)
	borders := []uint64{0}
	for k := 1; k < nregions; k++ {
		borders = append(borders, m.slotMiddle(k*slots/nregions))
	}
	borders = append(borders, end)
	var regions []virtio.Region
	for k := 0; k+1 < len(borders); k++ {
		a, b := borders[k], borders[k+1]
		regions = append(regions, virtio.Region{
			GuestAddr: opts.GuestBase + a, UserAddr: opts.UserBase + a, Host: buf[a:b:b],
		})
	}
	var err error
	if m.mem, err = virtio.NewMemory(regions); err != nil {
		return nil, err
	}
	for _, g := range m.queues {
		g.start(buf, m.mem)
	}
	return m, nil
}

// slotMiddle returns the offset of the middle of the machine's j-th buffer
// slot, counting the slots of every queue in order.
func (m *Machine) slotMiddle(j int) uint64 {
	for _, g := range m.queues {
		if j < int(g.size) {
			return g.slotOff + uint64(j)*g.slotSize + g.slotSize/2
		}
		j -= int(g.size)
	}
	panic("virtiotest: slot out of range")
}

// Memory returns the guest memory, for the device.
func (m *Machine) Memory() *virtio.Memory { return m.mem }

// NumQueues returns the number of virtqueues.
func (m *Machine) NumQueues() int { return len(m.queues) }

// Queue returns the driver of virtqueue i, in the order NewMachine was
// given the specs.
func (m *Machine) Queue(i int) *Guest { return m.queues[i] }
