package harness

import "strconv"

// VhostUserNIC is a virtio-net NIC on a vhost-user socket, as QEMU options.
type VhostUserNIC struct {
	Socket string
	Queues int    // queue pairs; 0 means 1. More than one adds mq=on.
	MAC    string // "" means 52:54:00:12:34:56
	// Server makes QEMU listen on Socket (server=on) for a helper that
	// connects with --client; otherwise QEMU connects to the helper.
	Server bool
	// Reconnect, for QEMU as client, is how many seconds QEMU waits before
	// it connects again to a helper that went away; 0 never.
	Reconnect int
	// DeviceOpts are more properties of the virtio-net-pci device, such as
	// "guest_announce=off"; "" for none.
	DeviceOpts string
}

// Args are QEMU's -chardev, -netdev and -device options for the NIC.
//
// vectors=0: under TCG, QEMU 7.2 crashes (SIGSEGV in
// msix_set_vector_notifiers) when the guest enables MSI-X on a vhost-user
// virtio-net device, so the device gets no MSI-X vectors and interrupts
// through INTx.
func (n VhostUserNIC) Args() []string {
	queues := max(n.Queues, 1)
	mac := n.MAC
	if mac == "" {
		mac = "52:54:00:12:34:56"
	}
	chardev := "socket,id=vu0,path=" + n.Socket
	if n.Server {
		// wait=off: QEMU's vhost-user netdev still waits for the helper to
		// connect before the guest starts; the chardev need not.
		chardev += ",server=on,wait=off"
	} else if n.Reconnect > 0 {
		chardev += ",reconnect=" + strconv.Itoa(n.Reconnect)
	}
	device := "virtio-net-pci,netdev=n0,vectors=0,mac=" + mac
	if queues > 1 {
		device += ",mq=on"
	}
	if n.DeviceOpts != "" {
		device += "," + n.DeviceOpts
	}
	return []string{
		"-chardev", chardev,
		"-netdev", "vhost-user,id=n0,chardev=vu0,queues=" + strconv.Itoa(queues),
		"-device", device,
	}
}
