// Package netdev is the virtio-net device model over a multi-queue TAP:
// the features it offers, its config space, the offloads it applies from
// what the guest acked, and one engine.QueuePair per queue pair, started
// when both of the pair's virtqueues are and stopped when either stops.
//
// It is transport-neutral: an embedding VMM calls StartQueue and StopQueue
// with its own virtqueues and eventfds, and VhostUser adapts it to the
// vhost-user server. It owns its queue pairs and the eventfds it dups; the
// TAP device stays the caller's. It never exits the process or logs per
// packet.
package netdev
