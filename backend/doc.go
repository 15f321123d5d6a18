// Package backend is the virtio-net device model over a multi-queue TAP:
// the features it offers, its config space, the offloads it applies from
// what the guest acked, and one engine.QueuePair per queue pair, started
// when both of the pair's virtqueues are and stopped when either stops.
//
// It is transport-neutral: an embedding VMM calls StartQueue and StopQueue
// with its own virtqueues and eventfds (and, with Options.ControlQueue,
// has the device serve the control virtqueue too), and VhostUser adapts
// it to the vhost-user server, whose front-end serves the control queue.
// The config space's link status follows the TAP's administrative state,
// watched over netlink until Close.
//
// It owns its queue pairs, its control queue server and the eventfds it
// dups; the TAP device stays the caller's. It never exits the process or
// logs per packet.
package backend
