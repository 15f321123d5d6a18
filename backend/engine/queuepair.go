package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/uring"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// Notifier interrupts the guest: an irqfd or vhost-user call eventfd
// (*EventFD). The engine takes any implementation (its tests use one
// that fails); backend.Device hands it eventfds.
type Notifier interface {
	Notify() error
}

// Config is everything a queue pair needs. vhost-user and an embedding VMM
// fill it the same way; the engine never learns which one did.
type Config struct {
	// Index is the queue pair's number, for logs.
	Index int

	// RX is the receive virtqueue (the device writes: virtqueue 2N), TX the
	// transmit one (the device reads: 2N+1). The engine uses them from its
	// worker only, between Start and Stop.
	RX, TX virtio.Queue

	// RXKick and TXKick are the driver's doorbells: from NewEventFD, or
	// KickFromFile for an eventfd received from elsewhere. The caller owns
	// them.
	RXKick, TXKick *EventFD

	// RXCall and TXCall interrupt the driver after used buffers.
	RXCall, TXCall Notifier

	// TAP is the queue's file: one frame per read or write, preceded by a
	// vnet header of HdrLen bytes unless NoVnetHdr (a TAP queue file, or a
	// SOCK_SEQPACKET socket in tests). The caller owns it and keeps it open
	// until Stop returns. New puts it in non-blocking mode (O_NONBLOCK,
	// shared with every duplicate of the file) if it is not: the worker
	// never waits in a read or write.
	TAP *os.File

	// HdrLen is the virtio-net header size the guest negotiated
	// (virtio.HdrLenFor); the TAP's vnet header size must match it, so the
	// header passes through untouched.
	HdrLen int

	// NoVnetHdr says the TAP file carries no vnet header at all
	// (IFF_VNET_HDR unset: a file a hypervisor handed over without one, or
	// an old persistent device). The engine then writes bare frames,
	// completing partial checksums and segmenting GSO frames in software
	// first (offload.TXCaps), and puts a zero header in front of each frame
	// it reads. The zero value is a TAP whose vnet header is HdrLen bytes.
	NoVnetHdr bool

	// NoUSO says the kernel under the TAP does not take
	// VIRTIO_NET_HDR_GSO_UDP_L4 (before Linux 6.2, offload.TXCaps.USO
	// false): the engine segments USO frames itself. The zero value writes
	// them to the TAP as they are.
	NoUSO bool

	// Features are the features the guest acked.
	Features virtio.Features

	// Endian is the byte order of the header's fields (virtio.EndianFor).
	Endian virtio.Endian

	// MTU bounds the frames the guest can receive when it negotiated no
	// receive offload: the mtu it was offered, within virtio.CheckMTU's
	// bounds (a TAP's own are narrower: tap.CheckMTU). 0 means 1500.
	MTU int

	// Budget is the most chains one direction handles before the worker
	// looks at the other. 0 means 64.
	Budget int

	// BusyPoll keeps the worker polling the rings and the TAP for this
	// long after its last work before it sleeps (like vhost-net's poll_us),
	// and tells the driver not to kick meanwhile. It trades a CPU for
	// latency: BenchmarkTAPLatency's round trip through the engine falls
	// to about a third with 50 us; bulk throughput (BenchmarkTAPTX, RX)
	// does not change beyond noise, the worker being busy anyway.
	// 0 sleeps at once.
	BusyPoll time.Duration

	// NoIOURing makes every TAP read and write its own system call. The
	// zero value batches them through an io_uring (one system call for up
	// to Budget frames; BenchmarkTAPTX and BenchmarkTAPRX show the gain)
	// where the kernel has io_uring and takes RWF_NOWAIT on the TAP file,
	// and falls back to system calls by itself where it does not.
	NoIOURing bool

	// Hash, where the guest acked VIRTIO_NET_F_HASH_REPORT (HdrLen 20),
	// holds the hash configuration the driver set (HASH_CONFIG or
	// RSS_CONFIG); the caller swaps it whenever the driver changes it. The
	// worker fills each received frame's hash_value and hash_report with
	// what the Hasher it holds then computes (virtio 1.2 §5.1.6.4.4); nil,
	// or no Hasher, reports VIRTIO_NET_HASH_REPORT_NONE.
	Hash *atomic.Pointer[virtio.Hasher]

	// RXLog and TXLog are where each ring logs what the engine writes to
	// guest memory, for live migration (virtio.RingLog; dirtylog.go): the
	// receive ring's frames and headers (including what the kernel reads
	// into its buffers) and both rings' used elements, indices and event
	// suppression. The zero value logs nothing, at the cost of a branch
	// per write; SetDirtyLog changes them while the queue pair runs.
	RXLog, TXLog virtio.RingLog

	// Counters receives the statistics; nil makes the queue pair its own.
	Counters *Counters

	// Logger receives log lines; nil means none.
	Logger hclog.Logger
}

// QueuePair moves frames between one RX/TX virtqueue pair and one TAP
// queue file, in one worker goroutine.
type QueuePair struct {
	cfg   Config
	log   hclog.Logger
	ctr   *Counters
	tapFd int

	mu      sync.Mutex
	running bool
	stop    *EventFD // wakes the worker: to stop, or to take a new dirty log
	done    chan error
	exited  chan struct{} // closed when the worker has returned

	// stopping tells the worker that stop was written to end it, not to
	// take logReq.
	stopping atomic.Bool
	// logReq is a change of dirty logs SetDirtyLog waits for the worker to
	// take, between two passes.
	logReq atomic.Pointer[logChange]

	tx txState
	rx rxState

	// ring batches the worker's TAP reads and writes; nil: one system
	// call each. The worker owns it from Start until it returns.
	ring      batchRing
	ringInUse atomic.Bool // ring != nil, for IOURing
}

// batchRing runs a batch of TAP reads or writes in one system call: an
// io_uring (internal/uring), or a stand-in in tests.
type batchRing interface {
	Read(fd int, b []byte) bool
	Readv(fd int, iov []unix.Iovec) bool
	Write(fd int, b []byte) bool
	Writev(fd int, iov []unix.Iovec) bool
	Submit(res []int32) error
	Close() error
}

// newBatchRing makes the ring of a starting queue pair.
var newBatchRing = func(entries int) (batchRing, error) {
	r, err := uring.New(entries)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// maxBatch bounds the frames one io_uring submission carries: past it the
// per-frame cost no longer falls, and the batch's buffers cost memory.
const maxBatch = 256

// New checks cfg and prepares a queue pair; Start runs it.
func New(cfg Config) (*QueuePair, error) {
	switch {
	case cfg.RX == nil || cfg.TX == nil:
		return nil, errors.New("new queue pair: RX and TX queues are required")
	case cfg.RXKick == nil || cfg.TXKick == nil:
		return nil, errors.New("new queue pair: RX and TX kick eventfds are required")
	case cfg.RXCall == nil || cfg.TXCall == nil:
		return nil, errors.New("new queue pair: RX and TX call notifiers are required")
	case cfg.TAP == nil:
		return nil, errors.New("new queue pair: TAP file is required")
	}
	if err := virtio.CheckHdrLen(cfg.HdrLen); err != nil {
		return nil, fmt.Errorf("new queue pair: %w", err)
	}
	if want := virtio.HdrLenFor(cfg.Features); cfg.HdrLen != want {
		return nil, fmt.Errorf("new queue pair: header length %d, but features %v imply %d", cfg.HdrLen, cfg.Features, want)
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if err := virtio.CheckMTU(cfg.MTU); err != nil {
		return nil, fmt.Errorf("new queue pair: %w", err)
	}
	if cfg.Budget == 0 {
		cfg.Budget = 64
	}
	if cfg.Budget < 1 {
		return nil, fmt.Errorf("new queue pair: budget %d, want at least 1", cfg.Budget)
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Counters == nil {
		cfg.Counters = new(Counters)
	}
	var tapFd int
	rc, err := cfg.TAP.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("new queue pair: TAP file: %w", err)
	}
	var nbErr error
	if err := rc.Control(func(fd uintptr) {
		tapFd = int(fd)
		nbErr = unix.SetNonblock(tapFd, true)
	}); err != nil {
		return nil, fmt.Errorf("new queue pair: TAP file: %w", err)
	}
	if nbErr != nil {
		return nil, fmt.Errorf("new queue pair: make TAP file non-blocking: %w", nbErr)
	}
	qp := &QueuePair{
		cfg:   cfg,
		log:   cfg.Logger.With("queue", cfg.Index),
		ctr:   cfg.Counters,
		tapFd: tapFd,
	}
	batch := min(cfg.Budget, maxBatch)
	qp.tx.init(qp, batch)
	qp.rx.init(qp, batch)
	return qp, nil
}

// Counters are the queue pair's statistics.
func (qp *QueuePair) Counters() *Counters { return qp.ctr }

// Start runs the worker. Starting a running queue pair is an error.
//
// The worker watches the kick eventfds edge-triggered (EPOLLET): it wakes
// once per write to a kick, however much of the count its read leaves (a
// semaphore eventfd gives up 1 per read), never for a kick that only
// stays readable. A kick that hangs up or fails (EPOLLHUP, EPOLLERR, a
// read that is no eventfd's: the end of a pipe whose writer closed)
// breaks its ring: counted in broken_rings, logged (at most once a
// minute, across restarts on the same Counters), taken out of the epoll
// set so that it never wakes the worker again. The other ring goes on.
func (qp *QueuePair) Start() error {
	qp.mu.Lock()
	defer qp.mu.Unlock()
	if qp.running {
		return fmt.Errorf("start queue pair %d: already running", qp.cfg.Index)
	}
	stop, err := NewEventFD()
	if err != nil {
		return fmt.Errorf("start queue pair %d: %w", qp.cfg.Index, err)
	}
	p, err := qp.newPoller(stop)
	if err != nil {
		stop.Close()
		return fmt.Errorf("start queue pair %d: %w", qp.cfg.Index, err)
	}
	qp.ring = nil
	if !qp.cfg.NoIOURing {
		// Entries: a power of two that holds a batch.
		n := 1
		for n < len(qp.tx.frames) {
			n <<= 1
		}
		if qp.ring, err = newBatchRing(n); err != nil {
			qp.ring = nil
			qp.log.Info("no io_uring: one TAP read or write per system call", "error", err)
		}
	}
	qp.ringInUse.Store(qp.ring != nil)
	qp.stop = stop
	qp.done = make(chan error, 1)
	qp.exited = make(chan struct{})
	qp.stopping.Store(false)
	qp.setLogs(qp.cfg.RXLog, qp.cfg.TXLog)
	qp.running = true
	go func() {
		err := qp.runGuarded(p)
		if qp.ring != nil {
			qp.ring.Close()
		}
		close(qp.exited)
		qp.done <- err
	}()
	return nil
}

// logTimeout bounds SetDirtyLog's wait for the worker, which takes a new
// log within one pass (Budget frames each way).
const logTimeout = 5 * time.Second

// logChange is a SetDirtyLog the worker has yet to take.
type logChange struct {
	rx, tx virtio.RingLog
	done   chan struct{} // closed once the worker logs into rx and tx
}

// SetDirtyLog makes the rings log the engine's writes into rx and tx from
// now on (Config.RXLog, TXLog); the zero RingLog stops a ring's logging.
// On a running queue pair the worker takes them between two passes, and
// SetDirtyLog returns once it has: every write before is logged in the
// old logs, every write after in the new, no frame waits or is dropped
// for it, and the old logs may be unmapped. It fails only when the worker
// does not answer within logTimeout; it may then still take the new logs,
// and uses the old ones until it does or stops.
func (qp *QueuePair) SetDirtyLog(rx, tx virtio.RingLog) error {
	qp.mu.Lock()
	defer qp.mu.Unlock()
	qp.cfg.RXLog, qp.cfg.TXLog = rx, tx
	if !qp.running {
		return nil
	}
	c := &logChange{rx: rx, tx: tx, done: make(chan struct{})}
	qp.logReq.Store(c)
	if err := qp.stop.Notify(); err != nil {
		return fmt.Errorf("set dirty log of queue pair %d: %w", qp.cfg.Index, err)
	}
	select {
	case <-c.done:
	case <-qp.exited:
		// The worker is gone (a memory fault): the rings are the
		// caller's until Stop, and log nothing more.
		qp.logReq.Store(nil)
	case <-time.After(logTimeout):
		return fmt.Errorf("set dirty log of queue pair %d: the worker did not take it within %s", qp.cfg.Index, logTimeout)
	}
	return nil
}

// takeLog applies the change SetDirtyLog asked for, if any, between two
// passes of the worker.
func (qp *QueuePair) takeLog() {
	c := qp.logReq.Swap(nil)
	if c == nil {
		return
	}
	qp.setLogs(c.rx, c.tx)
	close(c.done)
}

// setLogs sets the rings' dirty logs; the worker, or Start before it, is
// the only goroutine that uses them.
func (qp *QueuePair) setLogs(rx, tx virtio.RingLog) {
	qp.rx.q.SetDirtyLog(rx)
	qp.rx.logging = rx.Log != nil
	qp.tx.q.SetDirtyLog(tx)
}

// submit runs the batch prepared on the ring; res gets one result per
// operation. An operation notDone reports on was not carried out, and the
// caller does it the plain way: the ring failed, or cannot read or write
// the TAP file without waiting (RWF_NOWAIT). Either way the ring is
// dropped for good.
func (qp *QueuePair) submit(res []int32) {
	err := qp.ring.Submit(res)
	if err == nil {
		for _, v := range res {
			if v == -int32(unix.EOPNOTSUPP) {
				err = errors.New("io_uring cannot read or write the TAP file without waiting (RWF_NOWAIT)")
				break
			}
		}
	}
	if err != nil {
		qp.dropRing(err)
	}
}

// notDone reports whether a result of submit is an operation not carried
// out. tun answers neither errno to a read or write of its own.
func notDone(res int32) bool {
	return res == -int32(unix.EOPNOTSUPP) || res == -int32(unix.ECANCELED)
}

// dropRing stops using the io_uring for good, the kernel or the file
// having refused it.
func (qp *QueuePair) dropRing(err error) {
	qp.log.Info("TAP reads and writes go one system call each from now on", "error", err)
	qp.ring.Close()
	qp.ring = nil
	qp.ringInUse.Store(false)
}

// IOURing reports whether the worker batches TAP reads and writes through
// io_uring (see Config.NoIOURing). It is meaningful while running.
func (qp *QueuePair) IOURing() bool {
	qp.mu.Lock()
	defer qp.mu.Unlock()
	return qp.running && qp.ringInUse.Load()
}

// Stop ends the worker and waits for it. Frames already handed to the
// guest or the TAP stay delivered; receive buffers popped but not filled
// go back to the driver unused. After Stop the queues are the caller's
// again (NextAvail is what GET_VRING_BASE reports). Stopping a stopped
// queue pair does nothing.
func (qp *QueuePair) Stop() error {
	qp.mu.Lock()
	defer qp.mu.Unlock()
	if !qp.running {
		return nil
	}
	qp.running = false
	qp.stopping.Store(true)
	if err := qp.stop.Notify(); err != nil {
		return fmt.Errorf("stop queue pair %d: %w", qp.cfg.Index, err)
	}
	err := <-qp.done
	qp.stop.Close()
	qp.stop = nil
	return err
}

// Event tags in the poller.
const (
	tagStop int32 = iota
	tagTXKick
	tagRXKick
	tagTAP
)

func (qp *QueuePair) newPoller(stop *EventFD) (*poller, error) {
	p, err := newPoller()
	if err != nil {
		return nil, err
	}
	// Kicks edge-triggered (Start says why); the TAP level-triggered: a
	// pass may leave frames in it for the next.
	for _, w := range []struct {
		fd     int
		tag    int32
		events uint32
	}{
		{stop.Fd(), tagStop, unix.EPOLLIN},
		{qp.cfg.TXKick.Fd(), tagTXKick, unix.EPOLLIN | unix.EPOLLET},
		{qp.cfg.RXKick.Fd(), tagRXKick, unix.EPOLLIN | unix.EPOLLET},
		{qp.tapFd, tagTAP, unix.EPOLLIN},
	} {
		if err := p.add(w.fd, w.tag, w.events); err != nil {
			p.close()
			return nil, err
		}
	}
	return p, nil
}

// run is the worker: it handles TX and RX in turns, each up to Budget
// chains, and sleeps in epoll_wait when neither has work.
func (qp *QueuePair) run(p *poller) error {
	defer p.close()
	tx, rx := &qp.tx, &qp.rx
	// Look at both rings once: the driver may have posted buffers before
	// the kicks were wired (a restart after GET_VRING_BASE).
	tx.pending = true
	rx.tapReadable = true
	tapWatched := true
	lastWork := time.Now()
	busy := qp.cfg.BusyPoll
	for {
		if qp.logReq.Load() != nil {
			qp.takeLog()
		}
		polling := busy > 0 && time.Since(lastWork) < busy
		tx.poll = polling
		work := false
		if tx.pending && !tx.broken {
			if tx.process() {
				work = true
			}
		}
		if rx.tapReadable && !rx.starved && !rx.broken && !rx.gone {
			if rx.process() {
				work = true
			}
		}
		// Watch the TAP only while the guest has buffers for it; otherwise
		// the level-triggered TAP fd would wake the worker for nothing.
		// Unwatching takes the fd out of the set: epoll reports EPOLLERR
		// and EPOLLHUP whatever the interest, and a file whose device
		// went away reports EPOLLERR for good.
		if want := !rx.starved && !rx.broken && !rx.gone; want != tapWatched {
			var err error
			if want {
				err = p.add(qp.tapFd, tagTAP, unix.EPOLLIN)
			} else {
				err = p.remove(qp.tapFd)
			}
			if err != nil {
				return qp.fail(err)
			}
			tapWatched = want
		}
		if work {
			lastWork = time.Now()
			continue
		}
		timeout := -1
		if polling {
			timeout = 0
			// Poll the rings themselves, as vhost-net's busy poll does.
			tx.pending, rx.tapReadable = true, true
		} else if tx.quiet {
			// Done polling: ask for kicks again, and look once more
			// for a chain posted without one.
			tx.quiet = false
			if tx.q.EnableNotify() {
				tx.q.DisableNotify()
				tx.pending = true
				continue
			}
		}
		events, err := p.wait(timeout)
		if err != nil {
			return qp.fail(err)
		}
		qp.ctr.Add(Wakeups, 1)
		if timeout != 0 {
			qp.ctr.Add(Sleeps, 1)
		}
		for _, ev := range events {
			switch ev.Fd {
			case tagStop:
				qp.stop.Drain()
				if !qp.stopping.Load() {
					// A new dirty log: taken at the top of the loop.
					continue
				}
				rx.release()
				return nil
			case tagTXKick:
				if err := qp.takeKick(p, qp.cfg.TXKick, ev.Events); err != nil {
					tx.breakRing(fmt.Errorf("TX kick: %w", err))
					continue
				}
				qp.ctr.Add(TXKicks, 1)
				tx.pending = true
			case tagRXKick:
				if err := qp.takeKick(p, qp.cfg.RXKick, ev.Events); err != nil {
					rx.breakRing(fmt.Errorf("RX kick: %w", err))
					continue
				}
				qp.ctr.Add(RXKicks, 1)
				rx.kicked()
			case tagTAP:
				rx.tapReadable = true
			}
		}
	}
}

// takeKick takes the kick epoll reported on k with events. A kick that
// hung up or failed will never kick again: it leaves the epoll set, so
// that it cannot wake the worker either, and the error says what
// happened; the caller breaks the ring.
func (qp *QueuePair) takeKick(p *poller, k *EventFD, events uint32) error {
	var err error
	if events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		err = fmt.Errorf("eventfd %d: epoll events %#x: hung up or failed", k.Fd(), events)
	} else if _, err = k.Take(); err == nil {
		return nil
	}
	if rerr := p.remove(k.Fd()); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return err
}

func (qp *QueuePair) fail(err error) error {
	qp.log.Error("queue pair worker stopped", "error", err)
	qp.rx.release()
	return fmt.Errorf("queue pair %d: %w", qp.cfg.Index, err)
}

// validateTX checks a TX header the guest wrote, already copied out of
// guest memory, against the negotiated features, and leaves it decoded in
// h.
func (qp *QueuePair) validateTX(h *virtio.NetHdr, hdr []byte, frameLen int) error {
	if frameLen >= minFrame && allZero(hdr[:virtio.HdrLenLegacy]) {
		// No offload and no hdr_len: nothing to check but the length,
		// the common case without offloads, worth skipping the decode.
		// num_buffers and the hash fields mean nothing on transmit.
		*h = virtio.NetHdr{}
		return nil
	}
	if err := h.Decode(hdr, qp.cfg.HdrLen, qp.cfg.Endian); err != nil {
		return err
	}
	return offload.ValidateTX(h, frameLen, qp.cfg.Features)
}

// allZero reports whether the 10 bytes of struct virtio_net_hdr are zero.
func allZero(b []byte) bool {
	return binary.LittleEndian.Uint64(b) == 0 && binary.LittleEndian.Uint16(b[8:]) == 0
}

// publish returns the chains pushed to q to the driver with one index
// store, and interrupts the driver if it asked to be (virtio 1.2 §2.7.10,
// §2.8.10). A notifier that fails (a call fd the front-end broke) is
// counted each time and logged at most once a minute: it may fail for
// every frame.
func (qp *QueuePair) publish(q virtio.Queue, call Notifier, interrupts Counter, dir string) {
	q.Flush()
	if q.NeedsInterrupt() {
		if err := call.Notify(); err != nil {
			qp.ctr.Add(InterruptErrors, 1)
			if n, ok := qp.ctr.warn[warnInterrupt].Next(); ok {
				qp.log.Warn(dir+" interrupt failed", "error", err, "times", n)
			}
			return
		}
		qp.ctr.Add(interrupts, 1)
	}
}
