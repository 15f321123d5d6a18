// Package virtiotest is a virtio driver written in Go, for tests of device
// code: it lays out split and packed virtqueues in ordinary memory, posts
// device-readable and device-writable buffers, kicks and reaps used buffers
// as Linux's virtio_ring.c does, and checks what the device hands back.
//
// It owns the guest's side of the memory: NewGuest lays out one virtqueue
// in memory of its own; NewMachine lays out several in one guest memory,
// as one VM's RAM holds the 2N+1 virtqueues of a multi-queue net device,
// so that a device or a vhost-user back-end is handed that memory once.
// Either way each virtqueue is driven by a Guest, whose Areas are what a
// driver writes into a virtio-pci device's common configuration.
//
// It never builds the device side, beyond Guest.NewQueue's convenience:
// that is package virtio's. A Guest is used by one goroutine; the device
// under test may run on another. It never panics on what the device does:
// a device that breaks the protocol makes Err return non-nil.
package virtiotest
