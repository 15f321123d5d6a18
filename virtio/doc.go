// Package virtio is the pure virtio layer of vmnet: what the virtio 1.2
// specification and Linux include/uapi/linux/virtio_net.h define for a
// network device, as plain Go over byte slices.
//
// It owns
//   - feature bits, their names and negotiation rules (features.go),
//   - the net header that precedes every packet, in its 10, 12 and 20-byte
//     layouts and either byte order (nethdr.go),
//   - the device configuration space (config.go),
//   - control-queue commands and their acks (ctrl.go),
//   - the per-packet hash of RSS and hash reports: which fields of a frame
//     the enabled hash types select, and the Toeplitz function over them
//     (rsshash.go, toeplitz.go),
//   - the guest memory map (memory.go),
//   - the device side of split and packed virtqueues (queue.go, split.go,
//     packed.go),
//   - the dirty page log of live migration, in vhost's layout, and where a
//     queue logs what the device writes (dirtylog.go),
//   - the spec's limits, for every other package to check against rather
//     than restate: CheckMTU, CheckUnicastMAC, CheckHdrLen, CheckQueueSize
//     and RingAreas.
//
// It never opens, reads or writes a file descriptor, makes a system call,
// starts a goroutine or logs. Notifications (kicks and calls) are the
// caller's: a queue says when the guest needs an interrupt, the caller
// delivers it. Everything here runs without root. What it reads comes from
// the guest, which is not trusted: malformed input is an error naming the
// numbers involved, never a panic.
//
// Guest memory is shared with a running guest that may rewrite it at any
// moment. Decoders read each field once into a local copy and validate the
// copy.
package virtio
