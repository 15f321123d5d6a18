// Package engine is vmnet's data path: a QueuePair moves frames between one
// guest queue pair (an RX and a TX virtqueue in guest memory) and one TAP
// queue file, without copying them (but for TX frames of at most copyBreak
// bytes, and RX frames that spill out of a bounce batch: see
// docs/architecture.md). The guest's vnet header passes through:
// the TAP's vnet header size equals the guest's header size; the engine
// writes only num_buffers and, in the 20-byte header of
// VIRTIO_NET_F_HASH_REPORT, the frame's hash (Config.Hash), which tun
// leaves unwritten. Where the TAP
// cannot take an offload the guest was offered (a file without vnet
// header, a kernel without USO), the engine completes checksums and
// segments frames itself, into scratch it allocates once per queue pair.
//
// It is handed guest memory and virtqueues (virtio.Queue), kick eventfds,
// call notifiers and a TAP file, by vhost-user or by an embedding VMM
// alike, and never learns which. It owns one worker goroutine, one epoll
// instance and one io_uring (its TAP reads and writes go in batches, one
// system call each) per running queue pair, and nothing else: the queues,
// eventfds and TAP file stay the caller's. It never logs per packet; it
// counts, into counters declared once in a table (Counter, built on
// internal/stats) from which their printout, JSON and metrics derive. A
// fault on guest memory (a front-end that shrank its file) stops that
// queue pair, not the process.
//
// For live migration each ring can log what the engine writes to guest
// memory into a dirty log (Config.RXLog, TXLog; virtio.DirtyLog): the
// bytes the kernel reads into receive buffers, the headers the engine
// completes, frames it copies, and through the rings themselves their
// used elements, indices and event suppression, each marked after the
// write. SetDirtyLog switches logs on a running queue pair between two
// passes of the worker, losing no frame. Without a log every such write
// costs one predicted branch (BenchmarkTAPDirtyLog measures both).
package engine
