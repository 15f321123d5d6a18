package engine

import (
	"errors"
	"fmt"

	"github.com/vmnet-dev/vmnet/internal/droplog"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
	"golang.org/x/sys/unix"
)

// minFrame is an Ethernet header: anything shorter is no frame.
const minFrame = 14

// txState is the guest → TAP direction: pop a chain, copy its vnet header
// out of guest memory, validate the copy, and writev the copy plus the
// rest of the chain (still in guest memory) to the TAP in one frame.
type txState struct {
	qp      *QueuePair
	q       virtio.Queue
	chain   virtio.Chain
	iov     iovecs
	hdr     [virtio.HdrLenHash]byte // the header, read once
	small   []byte                  // header and frame, for frames up to copyBreak
	h       virtio.NetHdr           // hdr decoded
	soft    softTX                  // the software fallbacks' scratch
	pending bool                    // the ring may hold chains
	poll    bool                    // the worker is busy polling
	quiet   bool                    // kicks left off while polling
	broken  bool                    // the ring is unusable until reset
	drops   droplog.Limiter
}

func (t *txState) init(qp *QueuePair) {
	t.qp = qp
	t.drops.Log = qp.log
	t.q = qp.cfg.TX
	t.iov.v = make([]unix.Iovec, 0, 64)
	t.small = make([]byte, virtio.HdrLenHash+copyBreak)
	t.soft.init(&qp.cfg)
}

// process moves up to Budget frames and reports whether it moved any. It
// leaves pending set when the ring may hold more.
func (t *txState) process() bool {
	qp := t.qp
	hdrLen := qp.cfg.HdrLen
	var packets, bytes, badHdr, badDesc, kernel, softCsum, softGSO, softSegs, softDrop uint64
	pushed := 0
	t.q.DisableNotify()
	for pushed < qp.cfg.Budget {
		ok, err := t.q.Pop(&t.chain)
		if err != nil {
			if !errors.Is(err, virtio.ErrBadChain) {
				t.breakRing(err)
				break
			}
			badDesc++
			t.drops.Drop("malformed TX chain", err)
			t.push(0)
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
			// Empty: ask for a kick, then look once more so a chain added
			// in between is not left waiting for one.
			if t.q.EnableNotify() {
				t.q.DisableNotify()
				continue
			}
			t.pending = false
			break
		}
		pushed++
		frameLen := int(t.chain.ReadLen) - hdrLen
		if frameLen < minFrame {
			badHdr++
			if t.drops.Next() {
				t.drops.Emit("runt TX frame", fmt.Errorf("chain of %d bytes holds no frame behind a %d-byte header", t.chain.ReadLen, hdrLen))
			}
			t.push(0)
			continue
		}
		gather(t.hdr[:hdrLen], t.chain.Readable)
		if err := qp.validateTX(&t.h, t.hdr[:hdrLen], frameLen); err != nil {
			badHdr++
			t.drops.Drop("bad TX header", err)
			t.push(0)
			continue
		}
		var werr error
		switch t.soft.caps.Fallback(&t.h) {
		case offload.FallbackNone:
			_, werr = t.write(frameLen)
		case offload.FallbackCsum:
			if werr = t.writeCsum(frameLen); werr == nil {
				softCsum++
			}
		case offload.FallbackSegment:
			var n int
			n, werr = t.writeSegments(frameLen)
			softSegs += uint64(n)
			if werr == nil {
				softGSO++
			}
		}
		switch {
		case werr == nil:
			packets++
			bytes += uint64(frameLen)
		case isErrno(werr):
			kernel++
			t.drops.Drop("TAP refused TX frame", werr)
		default:
			softDrop++
			t.drops.Drop("TX software offload failed", werr)
		}
		t.push(0)
	}
	if pushed > 0 {
		qp.publish(t.q, qp.cfg.TXCall, &qp.ctr.TXInterrupts, "TX")
	}
	c := qp.ctr
	if packets > 0 {
		c.TXPackets.Add(packets)
		c.TXBytes.Add(bytes)
		c.TXBatches.Add(1)
	}
	add(&c.TXDropBadHeader, badHdr)
	add(&c.TXDropBadDescriptor, badDesc)
	add(&c.TXDropKernel, kernel)
	add(&c.TXSoftCsum, softCsum)
	add(&c.TXSoftGSO, softGSO)
	add(&c.TXSoftSegments, softSegs)
	add(&c.TXDropSoftware, softDrop)
	return pushed > 0
}

// copyBreak is the largest frame written from a copy: write(2) of one
// buffer takes the kernel's single-segment path (ITER_UBUF) and costs
// about 8% less per frame than writev(2) of the header copy and the
// frame in guest memory, more than copying an MTU-sized frame costs.
// Larger frames go from guest memory, without a copy.
const copyBreak = 2048

// write sends the frame of t.chain, behind the header copy if the TAP
// takes one, as one write.
func (t *txState) write(frameLen int) (int, error) {
	hdrLen := t.qp.cfg.HdrLen
	n := 0
	if t.soft.caps.VnetHdr {
		n = hdrLen
	}
	if frameLen <= copyBreak {
		b := t.small[:n+frameLen]
		copy(b, t.hdr[:n])
		gatherFrom(b[n:], t.chain.Readable, hdrLen)
		return writeFd(t.qp.tapFd, b)
	}
	t.iov.reset()
	t.iov.addOne(t.hdr[:n])
	t.iov.addAfter(t.chain.Readable, hdrLen)
	return t.iov.writev(t.qp.tapFd)
}

func (t *txState) push(written uint32) {
	if err := t.q.Push(&t.chain, written); err != nil {
		// Only a bug in the engine gets here: the chain was popped.
		t.breakRing(err)
	}
}

func (t *txState) breakRing(err error) {
	t.broken = true
	t.pending = false
	t.qp.ctr.BrokenRings.Add(1)
	t.qp.log.Error("TX ring unusable until the device is reset", "error", err)
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
