package engine

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/droplog"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// minFrame is an Ethernet header: anything shorter is no frame.
const minFrame = 14

// txState is the guest → TAP direction: pop a chain, copy its vnet header
// out of guest memory, validate the copy, and write the copy plus the rest
// of the chain (still in guest memory) to the TAP as one frame.
//
// Frames go in batches: the chains popped in one pass are written together
// (through io_uring, one system call for the batch, where the kernel
// allows) and only then returned to the driver, in the order popped.
type txState struct {
	qp      *QueuePair
	q       virtio.Queue
	frames  []txFrame // the batch; len is its largest size
	n       int       // frames in the batch
	res     []int32   // io_uring's results for the batch
	tally   tally     // this pass's counts
	iov     iovecs    // the software fallbacks' writes
	h       virtio.NetHdr
	soft    softTX // the software fallbacks' scratch
	pending bool   // the ring may hold chains
	poll    bool   // the worker is busy polling
	quiet   bool   // kicks left off while polling
	broken  bool   // the ring is unusable until reset
	drops   droplog.Limiter
}

// txFrame is one chain of a batch, from pop until its write is done.
type txFrame struct {
	chain virtio.Chain
	hdr   [virtio.HdrLenHash]byte // the header, read once
	small []byte                  // room for a copy of header and frame
	out   []byte                  // the copy in small, for frames up to copyBreak
	iov   iovecs                  // else header copy and guest buffers
	len   int                     // frame bytes, without the header
	write bool                    // written by the batch (else returned unwritten)
	res   int32                   // bytes written or -errno
}

func (t *txState) init(qp *QueuePair, batch int) {
	t.qp = qp
	t.drops.Log = qp.log
	t.q = qp.cfg.TX
	t.iov.v = make([]unix.Iovec, 0, 64)
	t.frames = make([]txFrame, batch)
	small := make([]byte, batch*(virtio.HdrLenHash+copyBreak))
	for i := range t.frames {
		f := &t.frames[i]
		f.small = small[i*(virtio.HdrLenHash+copyBreak) : (i+1)*(virtio.HdrLenHash+copyBreak)]
		f.iov.v = make([]unix.Iovec, 0, 8)
	}
	t.res = make([]int32, batch)
	t.soft.init(&qp.cfg)
}

// process moves up to Budget frames and reports whether it moved any. It
// leaves pending set when the ring may hold more.
func (t *txState) process() bool {
	qp := t.qp
	hdrLen := qp.cfg.HdrLen
	t.tally = tally{}
	pushed := 0
	t.q.DisableNotify()
	for pushed < qp.cfg.Budget {
		f := &t.frames[t.n]
		ok, err := t.q.Pop(&f.chain)
		if err != nil {
			if !errors.Is(err, virtio.ErrBadChain) {
				t.breakRing(err)
				break
			}
			t.tally[TXDropBadDescriptor]++
			t.drops.Drop("malformed TX chain", err)
			t.skip(f)
			pushed++
			continue
		}
		if !ok {
			if t.poll || pushed > 0 && qp.cfg.BusyPoll > 0 {
				// Busy polling, or about to (work was done): the
				// worker looks again soon, so the driver need not
				// kick; run asks for kicks before it sleeps
				// (vhost_net_busy_poll).
				t.quiet = true
				t.pending = false
				break
			}
			// Empty: write what is batched, so that the driver is not
			// kept waiting for its buffers; then ask for a kick and look
			// once more, so a chain added in between is not left
			// waiting for one.
			t.flush()
			if t.q.EnableNotify() {
				t.q.DisableNotify()
				continue
			}
			t.pending = false
			break
		}
		pushed++
		frameLen := int(f.chain.ReadLen) - hdrLen
		if frameLen < minFrame {
			t.tally[TXDropBadHeader]++
			if t.drops.Next() {
				t.drops.Emit("runt TX frame", fmt.Errorf("chain of %d bytes holds no frame behind a %d-byte header", f.chain.ReadLen, hdrLen))
			}
			t.skip(f)
			continue
		}
		gather(f.hdr[:hdrLen], f.chain.Readable)
		if err := qp.validateTX(&t.h, f.hdr[:hdrLen], frameLen); err != nil {
			t.tally[TXDropBadHeader]++
			t.drops.Drop("bad TX header", err)
			t.skip(f)
			continue
		}
		if fb := t.soft.caps.Fallback(&t.h); fb != offload.FallbackNone {
			// Rare (a TAP without the offload): the frames before it go
			// first, then this one on its own.
			t.flush()
			t.writeSoft(f, fb, frameLen)
			continue
		}
		t.queue(f, frameLen)
	}
	t.flush()
	if pushed > 0 {
		qp.publish(t.q, qp.cfg.TXCall, TXInterrupts, "TX")
	}
	if t.tally[TXPackets] > 0 {
		t.tally[TXBatches] = 1
	}
	qp.ctr.addTally(&t.tally)
	return pushed > 0
}

// skip adds f's chain to the batch to go back unwritten.
func (t *txState) skip(f *txFrame) {
	f.write = false
	t.add()
}

// add takes the frame at t.n into the batch, writing the batch when full.
func (t *txState) add() {
	if t.n++; t.n == len(t.frames) {
		t.flush()
	}
}

// copyBreak is the largest frame written from a copy: one flat buffer
// (write, ITER_UBUF) is cheaper for the kernel than an iovec of the header
// copy and the frame in guest memory, by more than copying a small frame
// costs. Larger frames go from guest memory, without a copy. In io_uring
// batches the copy pays for 64-byte frames (1.14-1.49 Mpps copied against
// 1.05-1.09 not) but no longer for MTU-sized ones (1.27-1.33 not copied
// against 0.98-1.26 copied; BenchmarkTAPTX), which it did with one
// write(2) per frame.
const copyBreak = 256

// queue adds the frame of f to the batch, behind the header copy if the
// TAP takes one: copied whole when small, else as an iovec over the
// header copy and guest memory.
func (t *txState) queue(f *txFrame, frameLen int) {
	hdrLen := t.qp.cfg.HdrLen
	n := 0
	if t.soft.caps.VnetHdr {
		n = hdrLen
	}
	f.write, f.len = true, frameLen
	if frameLen <= copyBreak {
		f.out = f.small[:n+frameLen]
		copy(f.out, f.hdr[:n])
		gatherFrom(f.out[n:], f.chain.Readable, hdrLen)
	} else {
		f.out = nil
		f.iov.reset()
		f.iov.addOne(f.hdr[:n])
		f.iov.addAfter(f.chain.Readable, hdrLen)
	}
	t.add()
}

// flush writes the batch, counts the results and returns every chain of
// it to the driver, in the order popped.
func (t *txState) flush() {
	if t.n == 0 {
		return
	}
	frames := t.frames[:t.n]
	t.writeAll(frames)
	for i := range frames {
		f := &frames[i]
		if f.write {
			if f.res >= 0 {
				t.tally[TXPackets]++
				t.tally[TXBytes] += uint64(f.len)
			} else {
				t.tally[TXDropKernel]++
				t.drops.Drop("TAP refused TX frame", unix.Errno(-f.res))
			}
		}
		t.push(&f.chain, 0)
	}
	t.n = 0
}

// writeAll writes the frames of a batch: through the queue pair's
// io_uring when there are two or more (one system call for all), else
// with write(2) or writev(2).
func (t *txState) writeAll(frames []txFrame) {
	fd := t.qp.tapFd
	ring := t.qp.ring
	ops := 0
	for i := range frames {
		if frames[i].write {
			ops++
		}
	}
	if ring == nil || ops < 2 {
		for i := range frames {
			if f := &frames[i]; f.write {
				f.res = f.writeNow(fd)
			}
		}
		return
	}
	for i := range frames {
		f := &frames[i]
		switch {
		case !f.write:
		case f.out != nil:
			ring.Write(fd, f.out)
		default:
			ring.Writev(fd, f.iov.v)
		}
	}
	t.qp.submit(t.res[:ops])
	k := 0
	for i := range frames {
		if f := &frames[i]; f.write {
			if f.res = t.res[k]; notDone(f.res) {
				f.res = f.writeNow(fd)
			}
			k++
		}
	}
}

// writeNow writes f with one system call and returns the bytes written or
// -errno.
func (f *txFrame) writeNow(fd int) int32 {
	var n int
	var err error
	if f.out != nil {
		n, err = writeFd(fd, f.out)
	} else {
		n, err = f.iov.writev(fd)
	}
	if errno, ok := err.(unix.Errno); ok {
		return -int32(errno)
	}
	return int32(n)
}

// writeSoft writes the frame of f (the next in the batch, the batch being
// empty) through a software fallback, and returns its chain.
func (t *txState) writeSoft(f *txFrame, fb offload.Fallback, frameLen int) {
	var err error
	switch fb {
	case offload.FallbackCsum:
		if err = t.writeCsum(&f.chain, frameLen); err == nil {
			t.tally[TXSoftCsum]++
		}
	case offload.FallbackSegment:
		var n int
		n, err = t.writeSegments(&f.chain, frameLen)
		t.tally[TXSoftSegments] += uint64(n)
		if err == nil {
			t.tally[TXSoftGSO]++
		}
	}
	switch {
	case err == nil:
		t.tally[TXPackets]++
		t.tally[TXBytes] += uint64(frameLen)
	case isErrno(err):
		t.tally[TXDropKernel]++
		t.drops.Drop("TAP refused TX frame", err)
	default:
		t.tally[TXDropSoftware]++
		t.drops.Drop("TX software offload failed", err)
	}
	t.push(&f.chain, 0)
}

func (t *txState) push(c *virtio.Chain, written uint32) {
	if err := t.q.Push(c, written); err != nil {
		// Only a bug in the engine gets here: the chain was popped.
		t.breakRing(err)
	}
}

// breakRing abandons the TX ring until the device is reset: counted
// once, logged at most once a minute across restarts.
func (t *txState) breakRing(err error) {
	if t.broken {
		return
	}
	t.broken = true
	t.pending = false
	t.qp.ctr.Add(BrokenRings, 1)
	t.qp.ctr.warn[warnTXBroken].Error(t.qp.log, "TX ring unusable until the device is reset", err)
}

// isErrno tells a write the kernel refused from a frame the fallbacks
// could not handle.
func isErrno(err error) bool {
	_, ok := err.(unix.Errno)
	return ok
}

// gather copies the first len(dst) bytes of bufs into dst.
func gather(dst []byte, bufs [][]byte) {
	n := 0
	for _, b := range bufs {
		if n == len(dst) {
			return
		}
		n += copy(dst[n:], b)
	}
}

// addAfter appends bufs without their first skip bytes.
func (io *iovecs) addAfter(bufs [][]byte, skip int) {
	for _, b := range bufs {
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		io.addOne(b[skip:])
		skip = 0
	}
}
