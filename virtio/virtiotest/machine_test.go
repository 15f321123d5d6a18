package virtiotest_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// deviceQueue builds the device side of a ring from its Areas alone, as a
// device would from what the driver wrote into its common configuration.
func deviceQueue(t *testing.T, mem *virtio.Memory, a virtiotest.Areas) virtio.Queue {
	t.Helper()
	var q virtio.Queue
	var err error
	if a.Packed {
		q, err = virtio.NewPackedQueue(mem, virtio.PackedConfig{
			Size: a.Size, DescAddr: a.Desc, DriverAddr: a.Driver, DeviceAddr: a.Device, EventIdx: a.EventIdx,
			NextAvail: virtio.PackedWrap, NextUsed: virtio.PackedWrap,
		})
	} else {
		q, err = virtio.NewSplitQueue(mem, virtio.SplitConfig{
			Size: a.Size, DescAddr: a.Desc, AvailAddr: a.Driver, UsedAddr: a.Device, EventIdx: a.EventIdx,
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// span is a range of guest memory one queue owns.
type span struct {
	queue      int
	what       string
	start, end uint64
}

// ringSpans returns the descriptor, driver and device areas of a ring,
// sized and checked for alignment by virtio.RingAreas.
func ringSpans(t *testing.T, i int, a virtiotest.Areas) []span {
	t.Helper()
	var spans []span
	for k, ra := range virtio.RingAreas(a.Size, a.Packed, a.EventIdx) {
		gpa := [3]uint64{a.Desc, a.Driver, a.Device}[k]
		if err := ra.CheckAlign(gpa); err != nil {
			t.Errorf("queue %d: %v", i, err)
		}
		spans = append(spans, span{i, ra.Name, gpa, gpa + ra.Len})
	}
	return spans
}

// A machine's queues do not overlap: their ring areas are apart, and with
// every ring full, each device writing its own byte into every buffer, each
// queue reaps only its own bytes.
func TestMachineQueuesApart(t *testing.T) {
	specs := []virtiotest.QueueSpec{
		{Size: 16, SlotSize: 256, EventIdx: true},
		{Size: 12, Packed: true, SlotSize: 100},
		{Size: 8, SlotSize: 300, Indirect: true, Segment: 50},
		{Size: 6, Packed: true, Indirect: true, EventIdx: true},
		{Size: 4, SlotSize: 64, AvailAlign2: true},
	}
	m, err := virtiotest.NewMachine(virtiotest.MachineOptions{Regions: 4}, specs...)
	if err != nil {
		t.Fatal(err)
	}
	if m.NumQueues() != len(specs) {
		t.Fatalf("NumQueues = %d; want %d", m.NumQueues(), len(specs))
	}
	if n := len(m.Memory().Regions()); n != 4 {
		t.Errorf("%d regions; want 4", n)
	}

	var spans []span
	for i, s := range specs {
		g := m.Queue(i)
		a := g.Areas()
		if a.Size != s.Size || a.Packed != s.Packed || a.EventIdx != s.EventIdx || g.Memory() != m.Memory() {
			t.Errorf("queue %d: Areas %+v, own memory %v; want size %d, packed %v, event idx %v, the machine's memory",
				i, a, g.Memory() != m.Memory(), s.Size, s.Packed, s.EventIdx)
		}
		for _, sp := range ringSpans(t, i, a) {
			if _, err := m.Memory().Slice(sp.start, sp.end-sp.start); err != nil {
				t.Errorf("queue %d: %s area not in one region: %v", i, sp.what, err)
			}
			spans = append(spans, sp)
		}
	}
	for j, a := range spans {
		for _, b := range spans[j+1:] {
			if a.start < b.end && b.start < a.end {
				t.Errorf("queue %d %s [%#x, %#x) overlaps queue %d %s [%#x, %#x)",
					a.queue, a.what, a.start, a.end, b.queue, b.what, b.start, b.end)
			}
		}
	}

	// Fill every ring, each chain a readable id and the rest of its slot
	// writable.
	posted := make([]int, len(specs))
	for i, s := range specs {
		slot := s.SlotSize
		if slot == 0 {
			slot = 4096
		}
		for {
			_, err := m.Queue(i).Post([][]byte{{byte(i), byte(posted[i])}}, []int{slot - 2})
			if errors.Is(err, virtiotest.ErrFull) {
				break
			}
			if err != nil {
				t.Fatalf("queue %d: Post %d: %v", i, posted[i], err)
			}
			posted[i]++
		}
	}
	// Pop everything before any device writes, so that a write of one
	// queue cannot hide behind a later post of another.
	devices := make([]virtio.Queue, len(specs))
	chains := make([][]*virtio.Chain, len(specs))
	for i := range specs {
		devices[i] = deviceQueue(t, m.Memory(), m.Queue(i).Areas())
		for k := range posted[i] {
			c := new(virtio.Chain)
			if ok, err := devices[i].Pop(c); !ok || err != nil {
				t.Fatalf("queue %d: Pop %d = %v, %v; want a chain", i, k, ok, err)
			}
			var got []byte
			for _, b := range c.Readable {
				got = append(got, b...)
			}
			if want := []byte{byte(i), byte(k)}; !bytes.Equal(got, want) {
				t.Errorf("queue %d: chain %d reads %x; want %x", i, k, got, want)
			}
			chains[i] = append(chains[i], c)
		}
	}
	for i, q := range devices {
		for _, c := range chains[i] {
			for _, b := range c.Writable {
				for k := range b {
					b[k] = byte(0x10 + i)
				}
			}
			if err := q.Push(c, c.WriteLen); err != nil {
				t.Fatalf("queue %d: Push: %v", i, err)
			}
		}
		q.Flush()
	}
	for i := range specs {
		g := m.Queue(i)
		used := g.Reap()
		if len(used) != posted[i] || g.Err() != nil {
			t.Fatalf("queue %d: reaped %d, Err %v; want %d", i, len(used), g.Err(), posted[i])
		}
		for _, u := range used {
			if want := bytes.Repeat([]byte{byte(0x10 + i)}, len(u.Data)); len(u.Data) == 0 || !bytes.Equal(u.Data, want) {
				t.Fatalf("queue %d: buffer %d holds %x...; want only %#x", i, u.ID, u.Data[:min(len(u.Data), 8)], 0x10+i)
			}
		}
	}
}

// Alloc is called once, for the whole machine's memory, and all of it is
// what the regions map.
func TestMachineAlloc(t *testing.T) {
	var calls int
	var mem []byte
	opts := virtiotest.MachineOptions{Regions: 3, Alloc: func(n int) ([]byte, error) {
		calls++
		mem = make([]byte, n+100) // more than asked: the machine takes n
		return mem, nil
	}}
	m, err := virtiotest.NewMachine(opts, virtiotest.QueueSpec{Size: 4}, virtiotest.QueueSpec{Size: 4, Packed: true})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Fatalf("Alloc called %d times; want once", calls)
	}
	rs := m.Memory().Regions()
	total := 0
	for _, r := range rs {
		total += len(r.Host)
	}
	if &rs[0].Host[0] != &mem[0] || total != len(mem)-100 {
		t.Errorf("regions map %d bytes from %p; want the %d allocated at %p", total, &rs[0].Host[0], len(mem)-100, &mem[0])
	}

	errNoMemory := errors.New("no memory")
	opts.Alloc = func(int) ([]byte, error) { return nil, errNoMemory }
	if _, err := virtiotest.NewMachine(opts, virtiotest.QueueSpec{Size: 4}); !errors.Is(err, errNoMemory) {
		t.Errorf("NewMachine with a failing Alloc = %v; want %v", err, errNoMemory)
	}
	opts.Alloc = func(n int) ([]byte, error) { return make([]byte, n-1), nil }
	if _, err := virtiotest.NewMachine(opts, virtiotest.QueueSpec{Size: 4}); err == nil {
		t.Error("NewMachine with a short Alloc = nil; want an error")
	}
}

func TestNewMachineErrors(t *testing.T) {
	tests := []struct {
		queues []virtiotest.QueueSpec
		want   string
	}{
		{nil, "no queues"},
		{[]virtiotest.QueueSpec{{Size: 4}, {Size: 3}}, "queue 1: bad queue size 3"},
		{[]virtiotest.QueueSpec{{Size: 4, SlotSize: -1}}, "queue 0: bad slot size -1"},
	}
	for _, tt := range tests {
		if _, err := virtiotest.NewMachine(virtiotest.MachineOptions{}, tt.queues...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewMachine(%+v) = %v; want error containing %q", tt.queues, err, tt.want)
		}
	}
}

// Regions is capped at the number of buffer slots of all queues, and the
// regions are adjacent.
func TestMachineRegions(t *testing.T) {
	m, err := virtiotest.NewMachine(virtiotest.MachineOptions{Regions: 100},
		virtiotest.QueueSpec{Size: 2}, virtiotest.QueueSpec{Size: 3, Packed: true})
	if err != nil {
		t.Fatal(err)
	}
	rs := m.Memory().Regions()
	if len(rs) != 5 {
		t.Fatalf("%d regions; want 5, one per slot", len(rs))
	}
	for k := 1; k < len(rs); k++ {
		if rs[k].GuestAddr != rs[k-1].GuestAddr+uint64(len(rs[k-1].Host)) {
			t.Errorf("region %d at %#x; want %#x, right after region %d", k, rs[k].GuestAddr, rs[k-1].GuestAddr+uint64(len(rs[k-1].Host)), k-1)
		}
	}
}
