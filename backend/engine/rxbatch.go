package engine

import (
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// Batched reads: many TAP reads in one io_uring submission, each into
// receive chains of its own. A frame's size is known only after its read,
// so each read must have room for the largest frame the guest may get:
//
//   - big chains (each holds that frame: no MRG_RXBUF, or mergeable buffers
//     without receive offloads) get one read per chain, zero copy;
//   - small mergeable chains (MRG_RXBUF with a receive offload: a Linux
//     guest's default) get one read per chain with a bounce buffer behind
//     it. A frame that fits its chain, the common case for small frames,
//     is delivered in place; one that spills into the bounce buffer is
//     copied, with the frames after it in the batch, into the chains from
//     the first free one on. So this batch runs only while recent frames
//     fit one chain (smallStreak); bulk traffic of large frames is read one
//     frame at a time, straight into as many chains as it needs.
//
// Either way the chains given back to the driver are always the first
// pending ones, so the rest stay in pop order and release can unpop them.

// smallStreak is how many frames in a row must fit one mergeable chain
// before reads go in bounce batches.
const smallStreak = 8

// maxBounce bounds the reads of a bounce batch: each has a bounce buffer
// of the largest frame (64 KiB with receive offloads).
const maxBounce = 8

// initBounce makes the bounce buffers of a mergeable queue pair that may
// batch: up to maxBounce of the largest frame (512 KiB with receive
// offloads).
func (r *rxState) initBounce(batch int) {
	if !r.mrg || r.qp.cfg.NoIOURing {
		return
	}
	nb := min(batch, maxBounce)
	size := int(r.maxFrame + 1)
	mem := make([]byte, nb*size)
	r.bounce = make([][]byte, nb)
	for i := range r.bounce {
		r.bounce[i] = mem[i*size : (i+1)*size]
	}
}

// big reports whether chain c alone holds the largest frame the guest may
// get with room to spare, so that a read that fills it is a frame larger
// than negotiated (see process).
func (r *rxState) big(c *virtio.Chain) bool {
	return uint64(c.WriteLen) > r.maxFrame
}

// tryBatch reads a batch of up to want frames if the pending chains allow
// one, and reports whether it did.
func (r *rxState) tryBatch(want int) bool {
	bounce := !r.big(r.at(0))
	if bounce {
		if r.bounce == nil || r.small < smallStreak {
			return false
		}
		want = min(want, len(r.bounce))
	}
	k := r.popRun(want, !bounce)
	if k < 2 {
		return false
	}
	r.readBatch(k, bounce)
	return true
}

// popRun pops chains until want are pending (with onlyBig, until one
// popped is not big) and returns how many of the first pending chains a
// batch may use, at most want: with onlyBig, the big ones.
func (r *rxState) popRun(want int, onlyBig bool) int {
	k := 0
	for k < r.count && k < want && (!onlyBig || r.big(r.at(k))) {
		k++
	}
	if k < r.count {
		return k
	}
	for r.count < want && r.count < len(r.chains) {
		// Out of chains: read with those there are; fill asks for a
		// kick when none are left.
		slot := r.popOne()
		if slot == nil || onlyBig && !r.big(slot) {
			break
		}
		k++
	}
	return k
}

// readBatch reads into the first k pending chains, one read each (with a
// bounce buffer behind each chain if bounce), in one io_uring submission,
// and delivers the frames in the order read.
//
// A read that got nothing (EAGAIN) or a frame it drops leaves its chain
// unused; should a later read of the batch get a frame (one arrived in
// between), that frame is copied into the first chain left. With bounce
// buffers, from the first frame that is out of place or spilled over,
// every frame of the rest of the batch is first saved whole in its bounce
// buffer, then copied into the chains from the first free one on.
func (r *rxState) readBatch(k int, bounce bool) {
	qp := r.qp
	skip := 0
	if r.noVnet {
		skip = qp.cfg.HdrLen
	}
	for i := range k {
		c := r.at(i)
		r.bcap[i] = uint64(c.WriteLen)
		if w := c.Writable; len(w) == 1 && !bounce {
			qp.ring.Read(qp.tapFd, w[0][skip:])
			continue
		}
		io := &r.biov[i]
		io.reset()
		io.addAfter(c.Writable, skip)
		if bounce {
			// The frame's bytes from the chain's end on; one byte more
			// than the largest frame tells a frame too big.
			io.addOne(r.bounce[i][min(r.bcap[i], r.maxFrame+1):])
		}
		qp.ring.Readv(qp.tapFd, io.v)
	}
	qp.submit(r.res[:k])
	if r.logging {
		// What the kernel put in each chain, whatever becomes of it.
		for i := range k {
			if r.res[i] > 0 {
				r.q.MarkWritten(r.at(i).Writable, min(uint64(r.res[i])+uint64(skip), r.bcap[i]))
			}
		}
	}
	before := r.tally[RXPackets]
	delivered := 0 // frames delivered in place, one chain each
	saved := false // the rest of the batch is in the bounce buffers
	for i := range k {
		if notDone(r.res[i]) {
			// Nothing was read: the plain reads take over.
			continue
		}
		var err error
		if r.res[i] < 0 {
			err = unix.Errno(-r.res[i])
		}
		n, ok := r.result(int(max(r.res[i], 0)), err)
		if !ok {
			continue
		}
		limit := r.maxFrame // the largest frame delivered, header included
		if !bounce {
			// A big chain: a read that fills it is too big.
			limit = r.bcap[i] - 1
		}
		if uint64(n) > limit {
			r.tooBig()
			continue
		}
		pos := i - delivered // the chain's place among those pending now
		switch {
		case saved:
		case pos == 0 && uint64(n) <= r.bcap[i]:
			// In place, the common case.
			r.deliver(n)
			r.small++
			delivered++
			continue
		case bounce:
			if uint64(n) > r.bcap[i] {
				r.small = 0
			}
			r.save(i, k, delivered, skip)
			saved = true
		default:
			// A big chain out of place: an earlier read got nothing.
			if uint64(n) >= uint64(r.at(0).WriteLen) {
				r.tooBig()
				continue
			}
			gatherFrom(r.spill[:n], r.at(pos).Writable, 0)
			r.place(r.spill[:n])
			delivered++
			continue
		}
		if !r.place(r.bounce[i][:n]) {
			r.tally[RXDropNoBuffers]++
			r.drops.Drop("no receive buffers left for a frame already read", nil)
		}
	}
	got := int(r.tally[RXPackets] - before)
	r.batch = min(max(2*got, 2), len(r.res))
	if got == 0 && !r.tapReadable && !r.gone {
		// Every read found nothing, yet the worker came because the TAP
		// was readable (or the guest posted buffers): one read(2) makes
		// sure. Should io_uring ever answer EAGAIN where read(2) gets a
		// frame, the worker still moves a frame per wake-up rather
		// than spin on a readable TAP.
		r.check = true
		r.tapReadable = true
	}
	// After EAGAIN the worker sleeps: the TAP's file is watched
	// level-triggered, so a frame that came since wakes it at once.
}

// save copies the part in its chain of every frame read from i on into
// the front of its bounce buffer, which then holds the frame whole, and
// the chains from the first pending one on are free. delivered frames
// have left the pending ring since the batch began.
func (r *rxState) save(i, k, delivered, skip int) {
	for j := i; j < k; j++ {
		res := r.res[j]
		if res <= 0 {
			continue
		}
		n := min(uint64(res)+uint64(skip), r.bcap[j], r.maxFrame+1)
		gatherFrom(r.bounce[j][:n], r.at(j-delivered).Writable, 0)
	}
}

// place copies frame (header included) into the chains from the first
// pending one on, popping more as it needs, and delivers it. It reports
// false, delivering nothing, if the driver has too few buffers for it.
func (r *rxState) place(frame []byte) bool {
	for r.capacity < uint64(len(frame)) {
		if r.count == len(r.chains) || r.popOne() == nil {
			return false
		}
	}
	for i, off := 0, 0; off < len(frame); i++ {
		c := r.at(i)
		scatterPut(c.Writable, 0, frame[off:])
		if r.logging {
			r.q.MarkWritten(c.Writable, min(uint64(len(frame)-off), uint64(c.WriteLen)))
		}
		off += int(c.WriteLen)
	}
	r.deliver(len(frame))
	return true
}
