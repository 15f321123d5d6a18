package engine

import (
	"errors"

	"github.com/vmnet-dev/vmnet/virtio"
	"golang.org/x/sys/unix"
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

// rxBatch is what one batch of reads got.
type rxBatch struct {
	packets, bytes, truncated, kernel, noBufs, bad uint64
	pushed                                         int  // chains returned to the driver
	stop                                           bool // the TAP is empty or gone
}

// big reports whether chain c alone holds the largest frame the guest may
// get with room to spare, so that a read that fills it is a frame larger
// than negotiated (see process).
func (r *rxState) big(c *virtio.Chain) bool {
	return uint64(c.WriteLen) > r.maxFrame
}

// tryBatch reads a batch of up to want frames if the pending chains allow
// one, and reports whether it did.
func (r *rxState) tryBatch(want int) (got rxBatch, ran bool) {
	if r.big(r.at(0)) {
		k := r.popRun(want, true, &got)
		if k < 2 {
			return got, false
		}
		r.readBatch(k, false, &got)
		return got, true
	}
	if r.bounce == nil || r.small < smallStreak {
		return got, false
	}
	k := r.popRun(min(want, len(r.bounce)), false, &got)
	if k < 2 {
		return got, false
	}
	r.readBatch(k, true, &got)
	return got, true
}

// popRun pops chains until want are pending (with onlyBig, until one
// popped is not big) and returns how many of the first pending chains a
// batch may use, at most want: with onlyBig, the big ones.
func (r *rxState) popRun(want int, onlyBig bool, got *rxBatch) int {
	k := 0
	for k < r.count && k < want && (!onlyBig || r.big(r.at(k))) {
		k++
	}
	if k < r.count {
		return k
	}
	for r.count < want && r.count < len(r.chains) {
		slot, ok := r.popOne(got)
		if !ok {
			// Out of chains: read with those there are; fill asks for
			// a kick when none are left.
			break
		}
		if onlyBig && !r.big(slot) {
			break
		}
		k++
	}
	return k
}

// popOne pops one chain into the pending ring. Malformed chains and
// chains too small for the header go back to the driver, counted in got.
func (r *rxState) popOne(got *rxBatch) (*virtio.Chain, bool) {
	for {
		slot := r.at(r.count)
		ok, err := r.q.Pop(slot)
		if err != nil {
			if !errors.Is(err, virtio.ErrBadChain) {
				r.breakRing(err)
				return nil, false
			}
			r.drops.Drop("malformed RX chain", err)
			r.pushSlot(slot, 0)
			got.bad++
			got.pushed++
			continue
		}
		if !ok {
			return nil, false
		}
		if uint64(slot.WriteLen) < uint64(r.qp.cfg.HdrLen) {
			r.drops.Drop("RX chain smaller than the header", nil)
			r.pushSlot(slot, 0)
			got.bad++
			got.pushed++
			continue
		}
		r.count++
		r.capacity += uint64(slot.WriteLen)
		return slot, true
	}
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
func (r *rxState) readBatch(k int, bounce bool, got *rxBatch) {
	qp := r.qp
	hdrLen := qp.cfg.HdrLen
	skip := 0
	if r.noVnet {
		skip = hdrLen
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
	err := qp.ring.Submit(r.res)
	if err != nil {
		qp.dropRing(err)
	}
	limit := r.maxFrame // the largest frame delivered, header included
	delivered := 0      // frames delivered in place, one chain each
	saved := false      // the rest of the batch is in the bounce buffers
	for i := range k {
		res := r.res[i]
		if res == -int32(unix.EOPNOTSUPP) || res == -int32(unix.ECANCELED) && err != nil {
			// Nothing was read: the plain reads take over.
			if qp.ring != nil {
				qp.dropRing(errors.New("io_uring cannot read the TAP file without waiting (RWF_NOWAIT)"))
			}
			continue
		}
		if res == -int32(unix.EAGAIN) {
			r.tapReadable = false
			got.stop = true
			continue
		}
		if res == -int32(unix.EBADFD) || res == 0 {
			var err error // a socket's end: read returns 0
			if res < 0 {
				err = unix.Errno(-res)
			}
			r.markGone(err)
			got.stop = true
			continue
		}
		if res < 0 {
			got.kernel++
			r.drops.Drop("TAP read failed", unix.Errno(-res))
			continue
		}
		n := int(res) + skip
		if !bounce {
			// A big chain: a read that fills it is too big.
			limit = r.bcap[i] - 1
		}
		switch {
		case n < hdrLen:
			got.kernel++
			continue
		case uint64(n) > limit:
			got.truncated++
			r.drops.Drop("frame larger than the guest's receive buffers", nil)
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
			got.pushed++
			got.packets++
			got.bytes += uint64(n - hdrLen)
			continue
		case bounce:
			if uint64(n) > r.bcap[i] {
				r.small = 0
			}
			r.save(i, k, delivered, skip)
			saved = true
		default:
			// A big chain out of place: an earlier read got nothing.
			if uint64(n) >= uint64(r.chains[r.head].WriteLen) {
				got.truncated++
				r.drops.Drop("frame larger than the guest's receive buffers", nil)
				continue
			}
			b := r.spill[:n]
			gatherFrom(b, r.at(pos).Writable, 0)
			scatterPut(r.chains[r.head].Writable, 0, b)
			r.deliver(n)
			delivered++
			got.pushed++
			got.packets++
			got.bytes += uint64(n - hdrLen)
			continue
		}
		used, ok := r.place(r.bounce[i][:n], got)
		if !ok {
			got.noBufs++
			r.drops.Drop("no receive buffers left for a frame already read", nil)
			continue
		}
		got.pushed += used
		got.packets++
		got.bytes += uint64(n - hdrLen)
	}
	if delivered == 0 && got.packets == 0 && got.stop && !r.gone {
		// Every read found nothing, yet the worker came because the TAP
		// was readable (or the guest posted buffers): one read(2) makes
		// sure. Should io_uring ever answer EAGAIN where read(2) gets a
		// frame, the worker still moves a frame per wake-up rather
		// than spin on a readable TAP.
		r.check = true
		r.tapReadable = true
		got.stop = false
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
// how many chains went back to the driver, and false if the driver has
// too few buffers for the frame.
func (r *rxState) place(frame []byte, got *rxBatch) (int, bool) {
	for r.capacity < uint64(len(frame)) {
		if r.count == len(r.chains) {
			return 0, false
		}
		if _, ok := r.popOne(got); !ok {
			return 0, false
		}
	}
	left := frame
	for i := 0; len(left) > 0; i++ {
		for _, b := range r.at(i).Writable {
			n := copy(b, left)
			left = left[n:]
			if len(left) == 0 {
				break
			}
		}
	}
	return r.deliver(len(frame)), true
}
