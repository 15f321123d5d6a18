// Package ebpf holds vmnet's eBPF programs and their loader: the steering
// program a multi-queue TAP runs to pick the queue of each frame the
// kernel sends to the guest (TUNSETSTEERINGEBPF, tun.c
// tun_ebpf_select_queue).
//
// Without a program, tun.c steers by its flow table (tun_automq_select_queue):
// a flow goes to the queue the guest last sent that flow's frames on. A
// guest whose transmit queue for a flow changes (its interrupts and XPS
// mapped to another vCPU, a TCP flow's ACKs sent from whichever CPU ran
// the socket) then sees that flow's frames arrive on two receive queues at
// once, out of order, and TCP retransmits. The hash program keeps every
// flow on one queue for its whole life, whatever the guest does.
//
// The programs are written with cilium/ebpf's asm package, so building
// vmnet needs no C compiler and no object file is checked in. FlowHash is
// the same hash in Go: tests compare the two, and a user can predict the
// queue of a flow (FlowHash(frame) % attached queues). The package loads
// programs (CAP_BPF or CAP_SYS_ADMIN) and owns their file descriptors; it
// never touches a TAP: callers attach with tap.Device.SetSteeringEBPF.
package ebpf
