// Package hostile holds the adversarial suite of vmnet's vhost-user
// back-end: a front-end written in Go from vhost-user.rst that behaves as a
// compromised QEMU or a buggy DPDK application would, against the real
// device (backend.Device over a multi-queue TAP in a network namespace of
// its own) through the real server (vhostuser.Server, listening on a unix
// socket as vmnet-helper does). One helper serves one front-end after
// another: each case attacks on a connection of its own, and then a
// well-behaved front-end on a fresh connection must get a frame through
// the TAP and back, the process's descriptors and goroutines must return
// to what they were before the case, and the process must stay idle. The
// suite logs a table of what each case did.
//
// It needs root and /dev/net/tun, and holds no code of its own.
package hostile
