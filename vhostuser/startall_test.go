package vhostuser

import (
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// refusingDevice refuses to start one ring, as the net device refuses a
// ring whose kick is no eventfd.
type refusingDevice struct {
	*fakeDevice
	refuse int
}

func (d refusingDevice) StartQueue(index int, q QueueSetup) error {
	if index == d.refuse {
		return errors.New("kick is a regular file, not an eventfd")
	}
	return d.fakeDevice.StartQueue(index, q)
}

// running lists the rings the device runs, of n.
func running(dev *fakeDevice, n int) string {
	var out []int
	for i := range n {
		if _, ok := dev.queue(i); ok {
			out = append(out, i)
		}
	}
	return fmt.Sprint(out)
}

// A ring that cannot start does not keep the rings after it from
// starting, when a memory change restarts them all or SET_FEATURES
// without PROTOCOL_FEATURES enables them all; the request fails, as the
// front-end must hear of the ring. A refused ring 1 kept rings 2 and 3
// stopped: a new memory table under four running rings left the second
// queue pair stopped.
func TestRefusedRingKeepsNoOtherStopped(t *testing.T) {
	for _, withProtocol := range []bool{true, false} {
		t.Run(fmt.Sprintf("protocol features %t", withProtocol), func(t *testing.T) {
			before := openFDs(t)
			dev := newFakeDevice()
			dev.queues = 4
			srv := NewServer(refusingDevice{dev, 1}, Options{})
			c, fe := socketPair(t)
			wait := serve(t, srv, c)
			mfd := memfd(t, guestSize)
			defer unix.Close(mfd)
			acked := uint64(virtio.FVersion1)
			if withProtocol {
				acked |= FProtocolFeatures
			}
			if withProtocol {
				negotiate(t, fe, dev, qemuProtocol, acked)
			} else {
				// A front-end without protocol features sets the rings up
				// first; SET_FEATURES enables them all (vhost-user.rst "Ring
				// states"). NEED_REPLY is acked all the same.
				fe.callU64(ReqGetFeatures, Empty{})
				fe.mustAck(ReqSetMemTable, MemoryTable{Regions: []MemoryRegion{guestRegion()}}, mfd)
			}
			for i := uint32(0); i < 4; i++ {
				fe.setUpRing(i, 256)
			}
			if withProtocol {
				fe.mustAck(ReqSetMemTable, MemoryTable{Regions: []MemoryRegion{guestRegion()}}, mfd)
				for i := uint32(0); i < 4; i++ {
					if got, want := fe.ack(ReqSetVringEnable, VringState{Index: i, Num: 1}), uint64(0); (got == want) != (i != 1) {
						t.Fatalf("SET_VRING_ENABLE of ring %d: got ack %d, want failure only for ring 1", i, got)
					}
				}
				if got := running(dev, 4); got != "[0 2 3]" {
					t.Fatalf("rings running after they were enabled: got %s, want [0 2 3]", got)
				}
				// A new memory table restarts every ring that can start.
				if got := fe.ack(ReqSetMemTable, MemoryTable{Regions: []MemoryRegion{guestRegion()}}, mfd); got == 0 {
					t.Errorf("SET_MEM_TABLE with ring 1 refused: got ack 0, want failure")
				}
			} else if got := fe.ack(ReqSetFeatures, U64(acked)); got == 0 {
				t.Errorf("SET_FEATURES with ring 1 refused: got ack 0, want failure")
			}
			if got := running(dev, 4); got != "[0 2 3]" {
				t.Errorf("rings running: got %s, want [0 2 3]; device events %q", got, dev.eventList())
			}
			fe.close()
			if err := wait(); err != nil {
				t.Fatalf("ServeConn: %v", err)
			}
			unix.Close(mfd)
			checkNoFDLeak(t, before)
		})
	}
}
