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
// # Live migration
//
// For a Device that implements DirtyLogger the server offers VHOST_F_LOG_ALL and LOG_SHMFD
// (vhost-user.rst "Migration"): it maps the log of SET_LOG_BASE (and answers it with the
// same request type), refuses a log that does not cover guest memory, and gives each ring
// the log to write to: while VHOST_F_LOG_ALL is acked, a log is mapped and the ring's
// SET_VRING_ADDR carries VHOST_VRING_F_LOG, with its used area logged at log_guest_addr.
// Those changes reach running rings through DirtyLogger.SetQueueLog, without stopping them;
// a new log replaces the old, unmapped once no ring writes to it. SET_LOG_FD's eventfd is
// kept and never signalled. GET_VRING_BASE stops a ring as always: the device has logged
// every write by then.
//
// # What it refuses
//
// Every message is validated before it is acted on (DecodeRequest): exact payload sizes,
// descriptor counts, region and config bounds, reserved bits. A malformed message ends the
// connection with an error log; it never panics and never leaks the descriptors it carried.
// Requests the package does not implement (inflight tracking, IOTLB, postcopy, in-band
// notifications, device state migration; dirty page logging for a device that does not
// log) are answered with a failure when
// the front-end expects an answer, and logged once per request type. A well-formed request
// that fails (a ring index out of range, addresses outside guest memory, a device error) is
// answered with a failure if the front-end asked for an ack (REPLY_ACK); otherwise the
// connection ends, since the front-end could not know.
//
// # What a front-end can make it hold
//
// A front-end may be less trusted than the process serving it, so each connection is held
// to limits (Options, with their Default constants; LimitError, counted in Stats.Limited):
// a first message within FirstMessageTimeout, every message complete within
// MessageTimeout of its first byte, every reply taken within ReplyTimeout, payloads of at
// most MaxPayloadSize with at most MaxFDs descriptors, guest memory mapped of at most
// MaxMemBytes in at most MaxMemSlots regions (MaxMemTableRegions by SET_MEM_TABLE). A
// timeout or a framing limit ends the connection; a memory limit refuses the request. The
// server holds one message at a time, queues nothing, and never writes to the back-end
// channel of SET_BACKEND_REQ_FD, so nothing else grows with what a front-end sends.
//
// It never exits the process and keeps no global state.
package vhostuser
