package virtiotest_test

import (
	"fmt"
	"log"

	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// A net device with two queue pairs and a control queue: receive 0,
// transmit 0, receive 1, transmit 1, control (virtio 1.2 §5.1.2), in one
// guest memory. Its Areas are what the driver writes into the device's
// common configuration, one queue at a time, and its Memory is what the
// device gets once.
func ExampleNewMachine() {
	rx := virtiotest.QueueSpec{Size: 256, SlotSize: 2048, EventIdx: true}
	tx := virtiotest.QueueSpec{Size: 256, EventIdx: true}
	ctrl := virtiotest.QueueSpec{Size: 64, SlotSize: 256}
	m, err := virtiotest.NewMachine(virtiotest.MachineOptions{}, rx, tx, rx, tx, ctrl)
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range m.Memory().Regions() {
		fmt.Printf("memory %#x, %d KiB\n", r.GuestAddr, len(r.Host)>>10)
	}
	for i := range m.NumQueues() {
		a := m.Queue(i).Areas()
		fmt.Printf("queue %d: size %d, desc %#x, driver %#x, device %#x, event idx %v\n",
			i, a.Size, a.Desc, a.Driver, a.Device, a.EventIdx)
	}
	// Output:
	// memory 0x100000, 3441 KiB
	// queue 0: size 256, desc 0x100000, driver 0x101004, device 0x101240, event idx true
	// queue 1: size 256, desc 0x192000, driver 0x193004, device 0x193240, event idx true
	// queue 2: size 256, desc 0x2a4000, driver 0x2a5004, device 0x2a5240, event idx true
	// queue 3: size 256, desc 0x336000, driver 0x337004, device 0x337240, event idx true
	// queue 4: size 64, desc 0x448000, driver 0x448404, device 0x4484c0, event idx false
}
