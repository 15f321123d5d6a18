// Package vhostuser is the back-end (device) side of the vhost-user protocol, as QEMU's
// docs/interop/vhost-user.rst specifies it: it reads the front-end's messages from a unix
// socket, keeps the protocol state (features, guest memory table, ring configuration), and
// turns it into calls on a Device, the device. It is transport only: it knows nothing of
// TAP devices or packets, and never touches a ring's contents.
//
// # What it owns
//
// A Server serves one Device to one front-end at a time, listening on a socket path
// (Serve), connecting to a front-end that listens (Dial, QEMU's server=on), or on a
// connection the caller made (ServeConn, e.g. a --fd handed over by a management layer).
// Per connection it owns every file descriptor the front-end sends and every guest memory
// mapping it makes, and releases all of them when the connection ends, whatever the reason:
// the rings are stopped (Device.StopQueue), the device is reset (Device.Reset), then the
// eventfds are closed and the memory is unmapped. Descriptors a request does not keep
// (those of a malformed or refused message, a REM_MEM_REG descriptor, memory region
// descriptors once mapped) are closed as soon as the request is handled.
//
// # How rings reach the device
//
// A ring is started with Device.StartQueue once it has a size (SET_VRING_NUM), addresses
// (SET_VRING_ADDR), a kick eventfd (SET_VRING_KICK), guest memory, and is enabled: by
// SET_VRING_ENABLE when VHOST_USER_F_PROTOCOL_FEATURES was acked, by SET_FEATURES otherwise
// (vhost-user.rst "Ring states"). Ring addresses arrive as front-end virtual addresses and
// reach the device as guest physical addresses, checked to lie inside guest memory, so
// that the device builds its virtio queues from guest addresses as an embedding VMM would.
// A ring is stopped with Device.StopQueue by GET_VRING_BASE, by SET_VRING_ENABLE 0, and
// before anything it uses changes while it runs (a new call eventfd, a new memory table);
// in the last case it is started again from where it stopped. This package treats "started
// but disabled" as stopped: a net device then neither receives nor transmits on the ring.
//
// # What it refuses
//
// Every message is validated before it is acted on (DecodeRequest): exact payload sizes,
// descriptor counts, region and config bounds, reserved bits. A malformed message ends the
// connection with an error log; it never panics and never leaks the descriptors it carried.
// Requests the package does not implement (dirty page logging, inflight tracking, IOTLB,
// postcopy, in-band notifications, device state migration) are answered with a failure when
// the front-end expects an answer, and logged once per request type. A well-formed request
// that fails (a ring index out of range, addresses outside guest memory, a device error) is
// answered with a failure if the front-end asked for an ack (REPLY_ACK); otherwise the
// connection ends, since the front-end could not know.
//
// It never exits the process and keeps no global state.
package vhostuser
