package engine

import (
	"encoding/binary"
	"errors"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/droplog"
	"github.com/vmnet-dev/vmnet/virtio"
)

// rxState is the TAP → guest direction: pop enough receive chains for the
// largest frame the guest may get, readv the next frame straight into
// them, then return as many as it filled. The kernel writes the vnet
// header; the engine adds num_buffers (virtio 1.2 §5.1.6.4).
//
// Chains popped but not yet filled stay pending, in pop order, for the
// next frame: with VIRTIO_NET_F_MRG_RXBUF one frame may span many of them,
// and the frame's size is known only after the read.
type rxState struct {
	qp        *QueuePair
	q         virtio.Queue
	chains    []virtio.Chain // a ring of pending chains, len == queue size
	head      int            // first pending chain
	count     int            // pending chains
	capacity  uint64         // their writable bytes
	iov       iovecs
	spill     []byte // catches the excess of a frame too big for the guest
	mrg       bool
	guestCsum bool   // flags may be non-zero
	maxFrame  uint64 // vnet header plus the largest frame the guest may receive
	noVnet    bool   // the TAP has no vnet header: the engine writes a zero one

	// Batched reads (io_uring, rxbatch.go).
	biov   []iovecs // each read's buffers
	res    []int32  // their results
	bcap   []uint64 // each read's chain's bytes
	bounce [][]byte // behind small mergeable chains (initBounce)
	batch  int      // reads in the next batch: twice the frames the last one got
	check  bool     // a batch found nothing: the next read is read(2)
	small  int      // frames in a row that fit one chain

	tally  tally // this pass's counts
	pushed int   // chains this pass returned to the driver

	// logging: the ring has a dirty log (Config.RXLog), and every write
	// into its buffers, the kernel's reads included, is marked after it.
	logging bool

	tapReadable bool // the TAP may hold a frame
	starved     bool // waiting for the driver to post buffers (kick armed)
	broken      bool
	gone        bool // the TAP file will never read again
	drops       droplog.Limiter
}

// maxGSOFrame is the largest frame a GSO skb can be: 64 KiB of IP packet
// behind an Ethernet header with one VLAN tag.
const maxGSOFrame = 65535 + 14 + 4

func (r *rxState) init(qp *QueuePair, batch int) {
	r.qp = qp
	r.biov = make([]iovecs, batch)
	for i := range r.biov {
		r.biov[i].v = make([]unix.Iovec, 0, 4)
	}
	r.res = make([]int32, batch)
	r.bcap = make([]uint64, batch)
	r.batch = batch
	r.drops.Log = qp.log
	r.q = qp.cfg.RX
	r.chains = make([]virtio.Chain, qp.cfg.RX.Size())
	// Room for a few buffers per chain up front, so that the first pop
	// into each slot does not allocate either (Pop reuses the slices).
	const perChain = 4
	bufs := make([][]byte, perChain*len(r.chains))
	for i := range r.chains {
		r.chains[i].Writable = bufs[perChain*i : perChain*i : perChain*(i+1)]
	}
	r.iov.v = make([]unix.Iovec, 0, 64)
	f := qp.cfg.Features
	r.mrg = f.Has(virtio.NetFMrgRxbuf)
	r.guestCsum = f.Has(virtio.NetFGuestCsum)
	r.noVnet = qp.cfg.NoVnetHdr
	frame := uint64(qp.cfg.MTU) + 14 + 4
	if f&(virtio.NetFGuestTSO4|virtio.NetFGuestTSO6|virtio.NetFGuestUFO|virtio.NetFGuestUSO4|virtio.NetFGuestUSO6) != 0 {
		frame = maxGSOFrame
	}
	r.maxFrame = uint64(qp.cfg.HdrLen) + frame
	r.spill = make([]byte, virtio.HdrLenHash+maxGSOFrame)
	r.initBounce(batch)
}

// at returns the i-th pending chain. The ring of pending chains wraps
// with a compare, not a division: a packed ring's size need not be a power
// of two, and a 64 KB frame in 4 KiB buffers walks 17 chains several times.
func (r *rxState) at(i int) *virtio.Chain {
	j := r.head + i
	if j >= len(r.chains) {
		j -= len(r.chains)
	}
	return &r.chains[j]
}

// advance drops the first pending chain from the ring.
func (r *rxState) advance() {
	if r.head++; r.head == len(r.chains) {
		r.head = 0
	}
}

// kicked handles an RX kick: the driver posted buffers.
func (r *rxState) kicked() {
	if r.starved {
		r.starved = false
		r.q.DisableNotify()
	}
	r.tapReadable = true
}

// process delivers up to Budget frames and reports whether it delivered
// any.
func (r *rxState) process() bool {
	qp := r.qp
	hdrLen := qp.cfg.HdrLen
	r.tally, r.pushed = tally{}, 0
	t := &r.tally
	// Frames dropped count against the budget too: a TAP that only
	// fails reads still lets the worker turn to TX.
	for left := qp.cfg.Budget; left > 0; left = qp.cfg.Budget - int(t[RXPackets]+t[RXDropTruncated]+t[RXDropKernel]) {
		if !r.fill() {
			if !r.broken {
				r.starved = true
				qp.ctr.Add(RXWaitBuffers, 1)
			}
			break
		}
		if qp.ring != nil && !r.check {
			ran := r.tryBatch(min(r.batch, left))
			if r.broken || ran && !r.tapReadable {
				break
			}
			if ran {
				continue
			}
		}
		r.check = false
		r.iov.reset()
		readCap := r.capacity
		// Without a vnet header on the TAP the frame goes behind the
		// header's place in the first buffer, and the engine writes the
		// header.
		skip := 0
		if r.noVnet {
			skip = hdrLen
		}
		if r.mrg {
			r.iov.addAfter(r.chains[r.head].Writable, skip)
			for i := 1; i < r.count; i++ {
				r.iov.add(r.at(i).Writable)
			}
		} else {
			r.iov.addAfter(r.chains[r.head].Writable, skip)
			readCap = uint64(r.chains[r.head].WriteLen)
		}
		// The kernel truncates a frame that does not fit and reports only
		// what it copied (tun_put_user, skb_copy_datagram_iter), so an
		// exact fit and a truncation look alike. A spill buffer behind the
		// guest's tells them apart; or, when one buffer holds the largest
		// frame the guest may get with room to spare, the frame is read
		// into it alone with read(2), whose single-segment copy
		// (ITER_UBUF) costs 8 to 15% less than readv's, and a read that
		// fills it is a frame larger than negotiated, dropped.
		var n int
		var err error
		single := len(r.iov.v) == 1 && readCap > r.maxFrame
		if single {
			n, err = r.iov.read(qp.tapFd)
		} else {
			r.iov.addOne(r.spill)
			n, err = r.iov.readv(qp.tapFd)
		}
		if r.logging && err == nil && n > 0 {
			r.markRead(min(uint64(n+skip), readCap))
		}
		n, ok := r.result(n, err)
		if !ok {
			if !r.tapReadable {
				break
			}
			continue
		}
		if uint64(n) > readCap || single && uint64(n) == readCap {
			// Too big for the guest's buffers: drop it and keep the
			// chains for the next frame.
			r.tooBig()
			continue
		}
		if used := r.deliver(n); used == 1 {
			r.small++
		} else {
			r.small = 0
		}
	}
	if r.pushed > 0 {
		qp.publish(r.q, qp.cfg.RXCall, RXInterrupts, "RX")
	}
	if t[RXPackets] > 0 {
		t[RXBatches] = 1
	}
	qp.ctr.addTally(t)
	return t[RXPackets]+t[RXDropTruncated]+t[RXDropKernel]+t[RXDropBadDescriptor] > 0
}

// result sorts out what a read of the TAP gave: n bytes, or err. It
// returns the frame's length with the header's place (Config.NoVnetHdr)
// and whether there is a frame. Without one, the TAP is either empty or
// gone (tapReadable is then false) or the read failed (counted).
func (r *rxState) result(n int, err error) (int, bool) {
	switch {
	case err == unix.EAGAIN:
		r.tapReadable = false
		return 0, false
	case err == unix.EBADFD || err == nil && n == 0:
		r.markGone(err)
		return 0, false
	case err != nil:
		r.tally[RXDropKernel]++
		r.drops.Drop("TAP read failed", err)
		return 0, false
	}
	if r.noVnet {
		n += r.qp.cfg.HdrLen
	}
	if n < r.qp.cfg.HdrLen {
		r.tally[RXDropKernel]++
		return 0, false
	}
	return n, true
}

// tooBig drops a frame larger than the guest's buffers can take.
func (r *rxState) tooBig() {
	r.tally[RXDropTruncated]++
	r.drops.Drop("frame larger than the guest's receive buffers", nil)
}

// fill pops chains until the pending ones can take the largest frame, or
// the driver has no more. It returns whether a read may go ahead.
func (r *rxState) fill() bool {
	for {
		if r.count > 0 && (!r.mrg || r.capacity >= r.maxFrame) {
			return true
		}
		if r.count == len(r.chains) {
			// The driver gave every buffer the ring holds: read with
			// them, however few bytes they add up to.
			return true
		}
		if r.popOne() != nil {
			continue
		}
		if r.broken {
			return false
		}
		// Empty: ask for a kick, then look once more, so that a chain
		// posted in between is not left waiting for one.
		if r.q.EnableNotify() {
			r.q.DisableNotify()
			continue
		}
		return false
	}
}

// popOne pops one chain into the pending ring and returns it, or nil when
// the ring has none (or broke). Malformed chains and chains too small for
// the header go back to the driver, counted.
func (r *rxState) popOne() *virtio.Chain {
	for {
		slot := r.at(r.count)
		ok, err := r.q.Pop(slot)
		if err != nil {
			if !errors.Is(err, virtio.ErrBadChain) {
				r.breakRing(err)
				return nil
			}
			r.drops.Drop("malformed RX chain", err)
			r.badChain(slot)
			continue
		}
		if !ok {
			return nil
		}
		if slot.WriteLen < uint32(r.qp.cfg.HdrLen) {
			// No room for even the header: virtio 1.2 §5.1.6.3.1 wants
			// every receive buffer to hold at least the header.
			r.drops.Drop("RX chain smaller than the header", nil)
			r.badChain(slot)
			continue
		}
		r.count++
		r.capacity += uint64(slot.WriteLen)
		return slot
	}
}

// badChain returns a chain unused and counts it.
func (r *rxState) badChain(c *virtio.Chain) {
	r.pushSlot(c, 0)
	r.tally[RXDropBadDescriptor]++
	r.pushed++
}

// deliver returns the chains holding an n-byte read (header included) to
// the driver, sets num_buffers and counts the frame. It returns how many
// chains it pushed.
func (r *rxState) deliver(n int) int {
	hdrLen := r.qp.cfg.HdrLen
	first := &r.chains[r.head]
	used := 1
	if r.mrg {
		left := uint64(n)
		for used = 0; left > 0 && used < r.count; used++ {
			left -= min(left, uint64(r.at(used).WriteLen))
		}
	}
	r.finishHeader(first, hdrLen, n)
	if hdrLen >= virtio.HdrLenV1 {
		if w := first.Writable[0]; len(w) >= virtio.HdrLenV1 {
			virtio.PutNumBuffers(w, uint16(used), r.qp.cfg.Endian)
		} else {
			// The header spans descriptors (virtio 1.2 §5.1.6.4 allows
			// any framing): set the field in a copy, then scatter it.
			var h [virtio.HdrLenV1]byte
			virtio.PutNumBuffers(h[:], uint16(used), r.qp.cfg.Endian)
			scatterPut(first.Writable, virtio.HdrLenLegacy, h[virtio.HdrLenLegacy:])
		}
	}
	if r.logging {
		r.q.MarkWritten(first.Writable, uint64(hdrLen))
	}
	left := uint64(n)
	for i := 0; i < used; i++ {
		c := &r.chains[r.head]
		take := min(left, uint64(c.WriteLen))
		left -= take
		r.pushSlot(c, uint32(take))
		r.capacity -= uint64(c.WriteLen)
		r.advance()
		r.count--
	}
	r.tally[RXPackets]++
	r.tally[RXBytes] += uint64(n - hdrLen)
	r.pushed += used
	return used
}

// markRead marks in the dirty log the n bytes a read put in the pending
// chains, from the first on (the vnet header's place included).
func (r *rxState) markRead(n uint64) {
	for i := 0; n > 0 && i < r.count; i++ {
		c := r.at(i)
		k := min(n, uint64(c.WriteLen))
		r.q.MarkWritten(c.Writable, k)
		n -= k
	}
}

// finishHeader completes the header of the n-byte read (header included)
// at the start of chain c: tun writes struct virtio_net_hdr (10 bytes) and
// skips the rest of its vnet header size, so the hash fields would hold
// stale guest bytes; they get the frame's hash report, or zeros.
func (r *rxState) finishHeader(c *virtio.Chain, hdrLen, n int) {
	if r.noVnet {
		// A frame the kernel completed: no flags, no GSO (virtio 1.2
		// §5.1.6.4); deliver sets num_buffers.
		var zero [virtio.HdrLenHash]byte
		scatterPut(c.Writable, 0, zero[:hdrLen])
	} else if !r.guestCsum {
		// Without GUEST_CSUM the device must leave flags zero (virtio
		// 1.2 §5.1.6.4.1); tun still sets DATA_VALID for checksums the
		// stack verified.
		scatterPut(c.Writable, 0, []byte{0})
	}
	if hdrLen == virtio.HdrLenHash {
		// hash_value, hash_report, padding_reserved.
		var tail [virtio.HdrLenHash - virtio.HdrLenV1]byte
		if v, rep := r.hashOf(c, n); rep != virtio.HashReportNone {
			binary.LittleEndian.PutUint32(tail[0:], v)
			binary.LittleEndian.PutUint16(tail[4:], uint16(rep))
		}
		scatterPut(c.Writable, virtio.HdrLenV1, tail[:])
	}
}

// hashPeek is how much of a frame whose headers span descriptors is
// gathered for its hash: two VLAN tags, an IPv6 header, 160 bytes of
// extension headers and a TCP header.
const hashPeek = 256

// hashOf is the hash report of the n-byte read (header included) at the
// start of chain c, under the driver's hash configuration
// (Config.Hash), computed from the frame in the guest's buffers. The
// guest may rewrite them meanwhile: it then gets the hash of what it
// wrote.
func (r *rxState) hashOf(c *virtio.Chain, n int) (uint32, virtio.HashReport) {
	if r.qp.cfg.Hash == nil {
		return 0, virtio.HashReportNone
	}
	h := r.qp.cfg.Hash.Load()
	if h == nil {
		return 0, virtio.HashReportNone
	}
	const hdr = virtio.HdrLenHash
	n = min(n, int(c.WriteLen)) // the frame's bytes in this chain
	if w := c.Writable[0]; len(w) >= n || len(w) >= hdr+hashPeek {
		return h.Hash(w[hdr:min(len(w), n)])
	}
	var buf [hashPeek]byte
	k := min(n-hdr, hashPeek)
	gatherFrom(buf[:k], c.Writable, hdr)
	return h.Hash(buf[:k])
}

// markGone stops reading a TAP file that will never read again: the
// device is gone (tun.c tun_detach_all: the file reads EBADFD and polls
// EPOLLERR for good), or the other end of a socket closed. The worker
// stops watching the file, or its error would wake it forever.
func (r *rxState) markGone(err error) {
	r.tapReadable = false
	if !r.gone {
		r.gone = true
		r.qp.ctr.warn[warnTAPGone].Warn(r.qp.log, "TAP queue gone, not reading it any more", err)
	}
}

// release gives every pending chain back to the ring unused, newest
// first, when the worker stops: the next Pop (this engine's or a
// successor's on the same ring) sees them again, and the driver never sees
// its buffers come back empty.
func (r *rxState) release() {
	for r.count > 0 {
		c := r.at(r.count - 1)
		if err := r.q.Unpop(c); err != nil {
			// Cannot happen for chains popped in order; return the rest
			// empty rather than lose them.
			r.qp.ctr.warn[warnGiveBack].Warn(r.qp.log, "give back RX chain", err)
			break
		}
		r.capacity -= uint64(c.WriteLen)
		r.count--
	}
	if r.count == 0 {
		return
	}
	for r.count > 0 {
		r.pushSlot(&r.chains[r.head], 0)
		r.advance()
		r.count--
	}
	r.capacity = 0
	r.qp.publish(r.q, r.qp.cfg.RXCall, RXInterrupts, "RX")
}

func (r *rxState) pushSlot(c *virtio.Chain, written uint32) {
	if err := r.q.Push(c, written); err != nil {
		r.breakRing(err)
	}
}

// breakRing abandons the RX ring until the device is reset: counted
// once, logged at most once a minute across restarts.
func (r *rxState) breakRing(err error) {
	if r.broken {
		return
	}
	r.broken = true
	r.qp.ctr.Add(BrokenRings, 1)
	r.qp.ctr.warn[warnRXBroken].Error(r.qp.log, "RX ring unusable until the device is reset", err)
}

// scatterPut writes src at byte offset off of the buffers bufs.
func scatterPut(bufs [][]byte, off int, src []byte) {
	for _, b := range bufs {
		if len(src) == 0 {
			return
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n := copy(b[off:], src)
		src = src[n:]
		off = 0
	}
}
