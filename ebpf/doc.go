// Package ebpf holds vmnet's eBPF programs and their loader: the steering
// programs a multi-queue TAP runs to pick the queue of each frame the
// kernel sends to the guest (TUNSETSTEERINGEBPF, tun.c
// tun_ebpf_select_queue, which takes the answer modulo the attached
// queues).
//
// Without a program, tun.c steers by its flow table (tun_automq_select_queue):
// a flow goes to the queue the guest last sent that flow's frames on. A
// guest whose transmit queue for a flow changes (its interrupts and XPS
// mapped to another vCPU, a TCP flow's ACKs sent from whichever CPU ran
// the socket) then sees that flow's frames arrive on two receive queues at
// once, out of order, and TCP retransmits. The hash program keeps every
// flow on one queue for its whole life, whatever the guest does.
//
// The RSS program (RSSProgram) steers as the guest asks with
// VIRTIO_NET_F_RSS: the Toeplitz hash of the fields its enabled hash types
// select, under its key, indexes its indirection table (virtio 1.2
// §5.1.6.5.7). Its configuration lives in a map the device rewrites in
// place, so it stays attached while the guest changes it. The queue
// program sends every frame to one queue, for debugging (SteeringQueue).
//
// The programs are written with cilium/ebpf's asm package, so building
// vmnet needs no C compiler and no object file is checked in. Each has its
// twin in Go: FlowHash the hash program's, virtio.Hasher and RSSQueue the
// RSS program's; tests run the programs in the kernel (BPF_PROG_TEST_RUN)
// against them, and a user can predict the queue of a flow. The package
// loads programs (CAP_BPF or CAP_SYS_ADMIN) and owns their file
// descriptors; it never touches a TAP: callers attach with
// tap.Device.SetSteeringEBPF.
package ebpf
