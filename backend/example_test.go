package backend_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/netns"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// A VMM embeds a vmnet device in its virtio-net PCI function: New when it
// builds the function, Features for device_features, SetFeatures at
// FEATURES_OK, Activate at DRIVER_OK with guest memory and every queue's
// areas and eventfds (KVM's ioeventfd and irqfd), Reset when the driver
// resets the device, Close when the function goes away.
//
// Here the Go driver of virtiotest stands in for KVM and the guest's
// virtio-net driver: it lays out the virtqueues in guest memory, posts
// buffers and reaps what the device used. The guest asks who has
// 10.0.0.1, the host's address on the TAP, and the kernel answers.
func Example() {
	ns := exampleNetNS() // tests keep their TAPs in a network namespace of their own
	defer ns.del()

	// The host side: a TAP with one queue pair per guest queue pair.
	t, err := tap.Create(tap.Options{Queues: 2, NetNS: ns.name})
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	ns.ip("addr", "add", "10.0.0.1/24", "dev", t.Name())
	ns.ip("link", "set", t.Name(), "up")

	// The device: the VMM serves no control queue itself, vmnet does.
	dev, err := backend.New(backend.Options{TAP: t, MAC: guestMAC, ControlQueue: true})
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close()

	// FEATURES_OK: a Linux guest acks all it knows of the offer.
	acked := dev.Features()
	if err := dev.SetFeatures(acked); err != nil {
		log.Fatal(err)
	}

	// The driver lays out every queue in guest memory, as the acked
	// features say (split or packed rings, the event index).
	specs := make([]virtiotest.QueueSpec, dev.Queues())
	for i := range specs {
		specs[i] = virtiotest.QueueSpec{Size: 256, SlotSize: 2048,
			Packed: acked.Has(virtio.FRingPacked), EventIdx: acked.Has(virtio.FEventIdx)}
	}
	vm, err := virtiotest.NewMachine(virtiotest.MachineOptions{}, specs...)
	if err != nil {
		log.Fatal(err)
	}

	// DRIVER_OK: each queue's areas, as the driver wrote them into the
	// common configuration, and its eventfds. The device duplicates the
	// eventfds: the VMM's stay the VMM's.
	queues := make([]backend.QueueConfig, dev.Queues())
	for i := range queues {
		a := vm.Queue(i).Areas()
		queues[i] = backend.QueueConfig{Size: a.Size, DescAddr: a.Desc, DriverAddr: a.Driver, DeviceAddr: a.Device,
			Kick: newEventFD(), Call: newEventFD()}
		defer queues[i].Kick.Close()
		defer queues[i].Call.Close()
	}
	if err := dev.Activate(vm.Memory(), queues); err != nil {
		log.Fatal(err)
	}

	// The guest fills receive queue 0 with buffers, as Linux does (with
	// receive offloads acked, a frame may need 64 KiB of them), and sends
	// an ARP request on transmit queue 0, behind the virtio-net header.
	rx, tx := vm.Queue(0), vm.Queue(1)
	for {
		if _, err := rx.PostRX(2048); err != nil {
			break
		}
	}
	kick(rx, queues[0].Kick)
	hdr := make([]byte, virtio.HdrLenFor(acked))
	tx.PostTX(append(hdr, arpRequest(guestMAC, guestIP, hostIP)...))
	kick(tx, queues[1].Kick)

	reply := waitARPReply(rx, queues[0].Call, len(hdr))
	fmt.Printf("guest: %s is at the TAP's MAC: %v\n", hostIP, bytes.Equal(reply, tapMAC(t)))

	// The driver resets the device: where each queue stopped is what a
	// VMM saves to resume the rings later (QueueConfig.Resume).
	states := dev.Reset()
	fmt.Printf("transmit queue 0 stopped at %d\n", states[1].NextAvail&^virtio.PackedWrap)
	// Output:
	// guest: 10.0.0.1 is at the TAP's MAC: true
	// transmit queue 0 stopped at 1
}

var (
	guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	guestIP  = net.IPv4(10, 0, 0, 2).To4()
	hostIP   = net.IPv4(10, 0, 0, 1).To4()
)

// newEventFD makes an eventfd, as a VMM makes the ioeventfds and irqfds
// it registers with KVM.
func newEventFD() *os.File {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		log.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "eventfd")
}

// kick notifies the device of what g made available, if it wants to know:
// what the guest's write to the notify address does through KVM.
func kick(g *virtiotest.Guest, f *os.File) {
	if g.Kick() {
		if _, err := f.Write(binary.NativeEndian.AppendUint64(nil, 1)); err != nil {
			log.Fatal(err)
		}
	}
}

// waitARPReply waits for interrupts on call and reaps g until an ARP
// reply arrives (the kernel may send other frames first, IPv6 router
// solicitations say), and returns the sender's MAC.
func waitARPReply(g *virtiotest.Guest, call *os.File, hdrLen int) net.HardwareAddr {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		// The irqfd: a read that waits for the device's write.
		var n [8]byte
		call.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		call.Read(n[:])
		for _, u := range g.Reap() {
			f := u.Data[hdrLen:]
			if len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2 {
				return net.HardwareAddr(f[22:28])
			}
		}
	}
	log.Fatalf("no ARP reply in 10 s (%d chains in flight)", g.InFlight())
	return nil
}

// arpRequest is an Ethernet frame asking who has ip, from mac at from.
func arpRequest(mac net.HardwareAddr, from, ip net.IP) []byte {
	f := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	f = append(f, mac...)
	f = append(f, 0x08, 0x06)             // ARP
	f = append(f, 0, 1, 8, 0, 6, 4, 0, 1) // Ethernet, IPv4, request
	f = append(f, mac...)
	f = append(f, from...)
	f = append(f, 0, 0, 0, 0, 0, 0)
	return append(f, ip...)
}

func tapMAC(t *tap.Device) net.HardwareAddr {
	mac, err := t.MAC()
	if err != nil {
		log.Fatal(err)
	}
	return mac
}

// exampleNS is a scratch network namespace.
type exampleNS struct {
	name string
	del  func() error
}

func exampleNetNS() exampleNS {
	name := fmt.Sprintf("vmnet-example-%d", os.Getpid())
	del, err := netns.Add(context.Background(), name)
	if err != nil {
		log.Fatal(err)
	}
	return exampleNS{name: name, del: del}
}

func (ns exampleNS) ip(args ...string) {
	if out, err := exec.Command("ip", append([]string{"-n", ns.name}, args...)...).CombinedOutput(); err != nil {
		log.Fatalf("ip %v: %v: %s", args, err, out)
	}
}
