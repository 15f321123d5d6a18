package backend

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/internal/memfault"
	"github.com/vmnet-dev/vmnet/virtio"
)

// QueueConfig is one virtqueue as the driver set it up, in the terms of
// virtio-pci's common configuration (virtio 1.2 §4.1.4.3): its size, the
// guest physical addresses of its three areas, and its notifications. The
// layout (split or packed) and whether the event index fields are used
// are not here: the acked features decide them.
type QueueConfig struct {
	// Size is queue_size, the number of descriptors. 0 is a queue the
	// driver did not enable (queue_enable 0): the device leaves it alone.
	Size uint16

	// DescAddr, DriverAddr and DeviceAddr are queue_desc, queue_driver and
	// queue_device: for a split ring the descriptor table, the available
	// ring and the used ring; for a packed ring the descriptor ring and
	// the driver and device event suppression areas.
	DescAddr, DriverAddr, DeviceAddr uint64

	// Kick is the eventfd the driver's notifications arrive on (a KVM
	// ioeventfd on the queue's notify address, say); Call the eventfd the
	// device signals to interrupt the driver (a KVM irqfd). Both are
	// required, and must be eventfds made without EFD_SEMAPHORE: anything
	// else is refused with an error matching engine.ErrNotEventFD
	// (engine.KickFromFile, EventFDFromFile say what is told apart).
	// Activate duplicates them: the caller keeps its files and may close
	// them whenever it likes; the device closes its duplicates when the
	// queue stops (Reset, Close).
	Kick, Call *os.File

	// Resume, if not nil, is where a ring that ran before continues: what
	// Reset returned for this queue, on this VMM or the one a migration
	// came from. nil is a ring the driver has just set up.
	Resume *QueueState
}

// QueueState is where a stopped virtqueue left off. NextAvail is the next
// available entry the device will read (a split ring counts chains, a
// packed ring descriptors); for a packed ring bit 15 is the
// driver ring wrap counter, and NextUsed, with the device ring wrap
// counter in bit 15, is where the next used descriptor goes. A split ring
// keeps its used index in guest memory, and reads it back from there when
// it resumes; NextUsed is then informational.
type QueueState struct {
	NextAvail, NextUsed uint16
}

// slot is one started virtqueue and the eventfds the device duplicated
// for it.
type slot struct {
	q    virtio.Queue
	kick *engine.EventFD
	call engine.Notifier // an *engine.EventFD, or noCall
	// device is the guest address of the queue's device area, where an
	// embedding VMM's dirty log logs it (StartDirtyLog); log is the
	// queue's dirty log of the moment, zero when it logs nothing.
	device uint64
	log    virtio.RingLog
}

// close closes the slot's duplicated eventfds.
func (s *slot) close() {
	s.kick.Close()
	if c, ok := s.call.(*engine.EventFD); ok {
		c.Close()
	}
}

// noCall stands in for the call eventfd of a vhost-user front-end that
// polls.
type noCall struct{}

func (noCall) Notify() error { return nil }

// Activate starts the device as the driver sets DRIVER_OK: it builds each
// enabled virtqueue on mem from queues[i] (i is the virtqueue number:
// 2N the RX and 2N+1 the TX queue of pair N, then the control queue),
// split or packed and with or without EVENT_IDX as the acked features say,
// and starts the queue pairs whose two queues are enabled (only the first
// with the control queue served until the driver sends VQ_PAIRS_SET).
//
// queues may be shorter than Queues(): missing entries are queues the
// driver did not enable. Queues beyond what the acked features use (pairs
// past the first without VIRTIO_NET_F_MQ, the control queue without
// CTRL_VQ, which then sits at 2 when MQ is not acked) must not be
// enabled. Either every queue starts or none does: on error nothing runs
// and nothing of queues is kept open. mem must stay mapped until Reset or
// Close returns.
//
// Activate needs SetFeatures first and fails while the device is active;
// Reset makes it inactive.
func (d *Device) Activate(mem *virtio.Memory, queues []QueueConfig) error {
	if mem == nil {
		return errors.New("activate: no guest memory")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return errors.New("activate: device closed")
	case !d.ackedOK:
		return errors.New("activate: features not set (SetFeatures)")
	case len(queues) > d.Queues():
		return fmt.Errorf("activate: %d queues, the device has %d", len(queues), d.Queues())
	}
	if i := d.running(); i >= 0 {
		return fmt.Errorf("activate: queue %d is running: reset the device first", i)
	}
	if d.dirty != nil {
		if err := d.dirty.Covers(mem); err != nil {
			return fmt.Errorf("activate: dirty log: %w", err)
		}
	}
	used := 2 * d.usablePairs()
	ci := d.ctrlIndex()
	if ci >= 0 {
		used++
	}
	var started []int
	fail := func(err error) error {
		for i := len(started) - 1; i >= 0; i-- {
			if err := d.stopQueueLocked(started[i]); err != nil {
				d.log.Warn("stop queue after a failed activation", "queue", started[i], "error", err)
			}
		}
		return fmt.Errorf("activate: %w", err)
	}
	for i, qc := range queues {
		if qc.Size == 0 {
			continue
		}
		if i >= used {
			return fail(fmt.Errorf("queue %d is enabled, but the acked features (%v) use queues 0 to %d", i, d.acked&(virtio.NetFMQ|virtio.NetFCtrlVQ), used-1))
		}
		if qc.Kick == nil || qc.Call == nil {
			return fail(fmt.Errorf("queue %d: a kick and a call eventfd are required", i))
		}
		q, err := d.newQueue(mem, qc)
		if err != nil {
			return fail(fmt.Errorf("queue %d: %w", i, err))
		}
		if err := d.startQueueLocked(i, q, qc.Kick, qc.Call, d.ringLog(qc.DeviceAddr), qc.DeviceAddr); err != nil {
			return fail(err)
		}
		started = append(started, i)
	}
	d.mem = mem
	d.log.Debug("activated", "queues", len(started))
	return nil
}

// newQueue builds the device side of a virtqueue on mem: split or packed,
// with or without the event index, as the acked features say. A new split
// ring reads its used index from guest memory, which a front-end may have
// shrunk away (internal/memfault): that is an error matching
// engine.ErrMemoryFault, not a crash. d.mu is held.
func (d *Device) newQueue(mem *virtio.Memory, qc QueueConfig) (virtio.Queue, error) {
	packed := d.acked.Has(virtio.FRingPacked)
	eventIdx := d.acked.Has(virtio.FEventIdx)
	st := QueueState{}
	if packed {
		st = QueueState{NextAvail: virtio.PackedWrap, NextUsed: virtio.PackedWrap}
	}
	if qc.Resume != nil {
		st = *qc.Resume
	}
	var q virtio.Queue
	err := memfault.Guard(func() error {
		var err error
		if packed {
			q, err = virtio.NewPackedQueue(mem, virtio.PackedConfig{Size: qc.Size, DescAddr: qc.DescAddr,
				DriverAddr: qc.DriverAddr, DeviceAddr: qc.DeviceAddr, EventIdx: eventIdx,
				NextAvail: st.NextAvail, NextUsed: st.NextUsed})
		} else {
			// NextUsed 0: the used index is read from the ring.
			q, err = virtio.NewSplitQueue(mem, virtio.SplitConfig{Size: qc.Size, DescAddr: qc.DescAddr,
				AvailAddr: qc.DriverAddr, UsedAddr: qc.DeviceAddr, EventIdx: eventIdx, NextAvail: st.NextAvail})
		}
		return err
	})
	return q, err
}

// stateOf is where q stopped.
func stateOf(q virtio.Queue) QueueState {
	st := QueueState{NextAvail: q.NextAvail()}
	switch q := q.(type) {
	case *virtio.PackedQueue:
		st.NextUsed = q.NextUsed()
	case *virtio.SplitQueue:
		st.NextUsed = q.NextUsed()
	}
	return st
}

// startQueue starts virtqueue index on q, the per-queue path of a
// transport that starts rings one at a time (vhost-user). kick and call
// are duplicated (call nil: the front-end polls); the caller keeps its
// files. On error nothing of the queue is kept.
func (d *Device) startQueue(index int, q virtio.Queue, kick, call *os.File) error {
	return d.startQueueLog(index, q, kick, call, virtio.RingLog{})
}

// startQueueLog is startQueue for a queue whose writes go to log from the
// start (a vhost-user ring restarted during a migration).
func (d *Device) startQueueLog(index int, q virtio.Queue, kick, call *os.File, log virtio.RingLog) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("start queue %d: device closed", index)
	}
	return d.startQueueLocked(index, q, kick, call, log, log.UsedAddr)
}

// startQueueLocked starts virtqueue index on q, logging into log, with
// its device area at device (for StartDirtyLog). d.mu is held.
func (d *Device) startQueueLocked(index int, q virtio.Queue, kickFile, callFile *os.File, log virtio.RingLog, device uint64) error {
	if !d.ackedOK {
		return fmt.Errorf("start queue %d: features not set", index)
	}
	isCtrl := index == d.ctrlIndex()
	var p *pair
	dir := 0
	if !isCtrl {
		if index < 0 || index >= 2*d.usablePairs() {
			return fmt.Errorf("start queue %d: out of range [0, %d) for the acked features", index, 2*d.usablePairs())
		}
		p, dir = &d.pairs[index/2], index%2
		if p.q[dir] != nil {
			return fmt.Errorf("start queue %d: already started", index)
		}
	} else if d.ctrl != nil {
		return fmt.Errorf("start control queue %d: already started", index)
	}
	s, err := newSlot(q, kickFile, callFile)
	if err != nil {
		return fmt.Errorf("start queue %d: %w", index, err)
	}
	s.device, s.log = device, log
	if isCtrl {
		if err := d.startCtrl(index, s); err != nil {
			s.close()
			return err
		}
		return nil
	}
	p.q[dir] = s
	if err := d.startPair(index / 2); err != nil {
		p.q[dir] = nil
		s.close()
		return err
	}
	return nil
}

// newSlot duplicates a queue's eventfds, refusing any that is not an
// eventfd or a semaphore one (dupEventFD).
func newSlot(q virtio.Queue, kickFile, callFile *os.File) (*slot, error) {
	kick, err := dupEventFD(kickFile, true)
	if err != nil {
		return nil, fmt.Errorf("kick: %w", err)
	}
	s := &slot{q: q, kick: kick, call: noCall{}}
	if callFile != nil {
		c, err := dupEventFD(callFile, false)
		if err != nil {
			kick.Close()
			return nil, fmt.Errorf("call: %w", err)
		}
		s.call = c
	}
	return s, nil
}

// startPair runs pair i's engine if both its queues are started and the
// driver uses the pair. On error the pair does not run and its TAP queue
// is detached. d.mu is held.
func (d *Device) startPair(i int) error {
	p := &d.pairs[i]
	if p.q[0] == nil || p.q[1] == nil || p.run != nil || i >= d.active {
		return nil
	}
	tq, err := d.opts.TAP.OpenQueue(i)
	if err != nil {
		return fmt.Errorf("start queue pair %d: %w", i, err)
	}
	qp, err := engine.New(engine.Config{
		Index:     i,
		RX:        p.q[0].q,
		TX:        p.q[1].q,
		RXKick:    p.q[0].kick,
		TXKick:    p.q[1].kick,
		RXCall:    p.q[0].call,
		TXCall:    p.q[1].call,
		TAP:       tq.File(),
		HdrLen:    virtio.HdrLenFor(d.acked),
		Features:  d.acked,
		MTU:       d.opts.MTU,
		BusyPoll:  d.opts.BusyPoll,
		NoIOURing: d.opts.NoIOURing,
		Hash:      &d.rss.hasher,
		RXLog:     p.q[0].log,
		TXLog:     p.q[1].log,
		// USO frames the kernel cannot take (before Linux 6.2) are
		// segmented in software, as Offer promised.
		NoUSO:    !d.txCaps.USO,
		Counters: d.counters[i],
		Logger:   d.log,
	})
	if err != nil {
		return fmt.Errorf("start queue pair %d: %w", i, err)
	}
	if err := d.opts.TAP.EnableQueue(i); err != nil {
		return fmt.Errorf("start queue pair %d: %w", i, err)
	}
	d.tunAttached(i)
	if err := qp.Start(); err != nil {
		if derr := d.opts.TAP.DisableQueue(i); derr != nil {
			d.log.Warn("detach TAP queue after a failed start", "queue", i, "error", derr)
		} else {
			d.tunDetached(i)
		}
		return fmt.Errorf("start queue pair %d: %w", i, err)
	}
	p.run = qp
	d.log.Debug("queue pair started", "queue", i)
	return nil
}

// stopQueue stops virtqueue index (and its pair's engine) and returns
// where it stopped, the per-queue path of vhost-user. The TAP queue is
// detached so the kernel stops steering frames to it, and the eventfds the
// device duplicated for the queue are closed.
func (d *Device) stopQueue(index int) (virtio.Queue, error) {
	d.mu.Lock()
	if index == d.ctrlIndex() {
		d.mu.Unlock()
		return d.stopCtrl()
	}
	defer d.mu.Unlock()
	s, err := d.takeQueue(index)
	if err != nil {
		return nil, err
	}
	err = d.stopPair(index / 2)
	s.close()
	return s.q, err
}

// stopQueueLocked is stopQueue with d.mu held, for unwinding Activate.
func (d *Device) stopQueueLocked(index int) error {
	if index == d.ctrlIndex() {
		c := d.ctrl
		d.ctrl = nil
		if c == nil {
			return nil
		}
		// The control queue answers commands under d.mu: let it go.
		d.mu.Unlock()
		c.halt()
		d.mu.Lock()
		return nil
	}
	s, err := d.takeQueue(index)
	if err != nil {
		return err
	}
	err = d.stopPair(index / 2)
	s.close()
	return err
}

// takeQueue removes started virtqueue index from its pair. d.mu is held.
func (d *Device) takeQueue(index int) (*slot, error) {
	if index < 0 || index >= 2*len(d.pairs) {
		return nil, fmt.Errorf("stop queue %d: out of range [0, %d)", index, 2*len(d.pairs))
	}
	p := &d.pairs[index/2]
	s := p.q[index%2]
	if s == nil {
		return nil, fmt.Errorf("stop queue %d: not started", index)
	}
	p.q[index%2] = nil
	return s, nil
}

// stopPair stops pair i's engine, if it runs, and detaches its TAP queue
// so the kernel stops steering frames to it. d.mu is held.
func (d *Device) stopPair(i int) error {
	p := &d.pairs[i]
	if p.run == nil {
		return nil
	}
	errs := []error{p.run.Stop()}
	p.run = nil
	if err := d.opts.TAP.DisableQueue(i); err != nil {
		errs = append(errs, err)
	} else {
		d.tunDetached(i)
	}
	d.log.Debug("queue pair stopped", "queue", i)
	return errors.Join(errs...)
}

// dupEventFD duplicates an eventfd the caller keeps, for as long as the
// device needs it: every eventfd the device is handed (kick, call, a
// vhost-user ring's err, the config interrupt) comes through here, and is
// checked here, once (engine.KickFromFile for one the device reads,
// engine.EventFDFromFile for one it writes). Anything else is an error
// matching engine.ErrNotEventFD that names the caller's fd and what it
// is; nothing is kept open.
func dupEventFD(f *os.File, kick bool) (*engine.EventFD, error) {
	if f == nil {
		return nil, errors.New("no eventfd")
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd, nfd int
	var derr error
	if err := rc.Control(func(u uintptr) {
		fd = int(u)
		nfd, derr = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("dup fd %d: %w", fd, derr)
	}
	dup := os.NewFile(uintptr(nfd), f.Name())
	from := engine.EventFDFromFile
	if kick {
		from = engine.KickFromFile
	}
	e, err := from(dup)
	if err != nil {
		dup.Close()
		return nil, fmt.Errorf("fd %d: %w", fd, err)
	}
	return e, nil
}
