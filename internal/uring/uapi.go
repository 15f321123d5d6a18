package uring

// Mirrors of include/uapi/linux/io_uring.h and include/uapi/linux/fs.h,
// the parts this package uses.

const (
	ioringOpReadv  = 1  // IORING_OP_READV
	ioringOpWritev = 2  // IORING_OP_WRITEV
	ioringOpRead   = 22 // IORING_OP_READ
	ioringOpWrite  = 23 // IORING_OP_WRITE

	ioringEnterGetevents = 1 << 0 // IORING_ENTER_GETEVENTS

	ioringFeatSingleMmap = 1 << 0 // IORING_FEAT_SINGLE_MMAP
	ioringFeatNoDrop     = 1 << 1 // IORING_FEAT_NODROP

	ioringOffSqRing = 0          // IORING_OFF_SQ_RING
	ioringOffCqRing = 0x8000000  // IORING_OFF_CQ_RING
	ioringOffSqes   = 0x10000000 // IORING_OFF_SQES

	rwfNowait = 0x8 // RWF_NOWAIT
)

// ioSqringOffsets is struct io_sqring_offsets.
type ioSqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

// ioCqringOffsets is struct io_cqring_offsets.
type ioCqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// ioUringParams is struct io_uring_params.
type ioUringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  ioSqringOffsets
	cqOff                                                                  ioCqringOffsets
}

// ioUringSqe is struct io_uring_sqe (64 bytes), with the unions this
// package uses.
type ioUringSqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	rwFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	fileIndex   int32
	addr3       uint64
	pad         uint64
}

// ioUringCqe is struct io_uring_cqe (16 bytes).
type ioUringCqe struct {
	userData uint64
	res      int32
	flags    uint32
}
