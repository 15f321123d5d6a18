package backend

import (
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/internal/droplog"
	"github.com/vmnet-dev/vmnet/internal/memfault"
	"github.com/vmnet-dev/vmnet/virtio"
)

// ctrlFeatures are what the device offers when it serves the control
// virtqueue itself (Options.ControlQueue). CTRL_VLAN is not among them:
// a TAP cannot filter VLANs without a program in the kernel, and a device
// that offers it must drop the frames of VLANs the driver did not add.
const ctrlFeatures = virtio.NetFCtrlVQ | virtio.NetFCtrlRx | virtio.NetFCtrlMACAddr |
	virtio.NetFCtrlGuestOffloads | virtio.NetFGuestAnnounce

// maxCtrlLen bounds a command's device-readable bytes: a MAC table of
// about ten thousand addresses. A longer command is answered with
// VIRTIO_NET_ERR, not gathered.
const maxCtrlLen = 64 << 10

// ctrlQueue serves the control virtqueue (virtio 1.2 §5.1.6.5) in a
// goroutine of its own: it sleeps until the driver kicks, then answers
// every available command in order. Commands change the Device, which
// does the work under its lock; the queue itself is touched only here.
type ctrlQueue struct {
	d     *Device
	log   hclog.Logger
	s     *slot
	q     virtio.Queue
	stop  *engine.EventFD
	done  chan struct{}
	chain virtio.Chain
	buf   []byte
	bad   droplog.Limiter
	// logMu is held while commands are answered, so that setLog returns
	// only when the ring logs into the new log.
	logMu sync.Mutex
	// broken: the ring or its kick is unusable until the device is reset;
	// the goroutine ends, and with it any wakeup.
	broken bool
}

// setLog makes the control queue log its acks and ring writes into l
// from now on (StartDirtyLog); it waits for commands being answered.
func (c *ctrlQueue) setLog(l virtio.RingLog) {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	c.q.SetDirtyLog(l)
}

func newCtrlQueue(d *Device, s *slot) (*ctrlQueue, error) {
	stop, err := engine.NewEventFD()
	if err != nil {
		return nil, fmt.Errorf("start control queue: %w", err)
	}
	log := d.log.Named("ctrl")
	c := &ctrlQueue{
		d: d, log: log, s: s, q: s.q, stop: stop,
		done: make(chan struct{}),
		buf:  make([]byte, 0, 256),
		bad:  droplog.Limiter{Log: log},
	}
	c.q.SetDirtyLog(s.log)
	go c.run()
	return c, nil
}

// halt stops the goroutine and waits for it. The Device's lock must not be
// held: a command being answered takes it.
func (c *ctrlQueue) halt() {
	if err := c.stop.Notify(); err != nil {
		c.log.Error("stop control queue", "error", err)
	}
	<-c.done
	c.stop.Close()
	c.s.close()
}

func (c *ctrlQueue) run() {
	defer close(c.done)
	// The guest memory under the ring may go (a front-end that shrinks
	// its file): the queue then stops, not the process. Commands copy
	// their bytes out before they take the device's lock, so a fault
	// never leaves it held.
	if err := memfault.Guard(c.serve); err != nil {
		ctr := &c.d.ctrlCtr
		ctr.add(CtrlMemoryFaults)
		ctr.warn[CtrlMemoryFaults].Error(c.log, "control queue stopped until the device is reset", err)
	}
}

// Event tags of serve's epoll set.
const (
	ctrlTagKick = iota
	ctrlTagStop
)

// serve answers commands as the driver kicks, until halt or until the
// ring or its kick breaks. It watches the kick edge-triggered, as the
// engine's workers do (engine.QueuePair.Start): a kick whose read leaves
// it readable does not wake it again, and one that hangs up or fails
// (EPOLLHUP, EPOLLERR, a read that is no eventfd's) ends it, counted in
// broken_rings.
func (c *ctrlQueue) serve() error {
	// Commands may have been posted before the kick was wired.
	c.process()
	if c.broken {
		return nil
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		c.log.Error("control queue stopped", "error", fmt.Errorf("epoll_create1: %w", err))
		return nil
	}
	defer unix.Close(ep)
	for _, w := range []struct {
		fd     int
		tag    int32
		events uint32
	}{
		{c.s.kick.Fd(), ctrlTagKick, unix.EPOLLIN | unix.EPOLLET},
		{c.stop.Fd(), ctrlTagStop, unix.EPOLLIN},
	} {
		ev := unix.EpollEvent{Events: w.events, Fd: w.tag}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, w.fd, &ev); err != nil {
			c.log.Error("control queue stopped", "error", fmt.Errorf("epoll_ctl add fd %d: %w", w.fd, err))
			return nil
		}
	}
	var events [2]unix.EpollEvent
	for {
		n, err := unix.EpollWait(ep, events[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			c.log.Error("control queue stopped", "error", fmt.Errorf("epoll_wait: %w", err))
			return nil
		}
		kicked := false
		for _, ev := range events[:n] {
			if ev.Fd == ctrlTagStop {
				return nil
			}
			if ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				c.breakRing(fmt.Errorf("kick eventfd %d: epoll events %#x: hung up or failed", c.s.kick.Fd(), ev.Events))
				return nil
			}
			if _, err := c.s.kick.Take(); err != nil {
				c.breakRing(fmt.Errorf("kick: %w", err))
				return nil
			}
			kicked = true
		}
		if kicked {
			c.d.ctrlCtr.add(CtrlKicks)
			c.process()
			if c.broken {
				return nil
			}
		}
	}
}

// breakRing gives up on the control queue until the device is reset: the
// ring or its kick is unusable. Counted once, logged at most once a
// minute across restarts; serve then returns, and nothing wakes it.
func (c *ctrlQueue) breakRing(err error) {
	if c.broken {
		return
	}
	c.broken = true
	ctr := &c.d.ctrlCtr
	ctr.add(CtrlBrokenRings)
	ctr.warn[CtrlBrokenRings].Error(c.log, "control queue unusable until the device is reset", err)
}

// process answers every available command, then returns them to the
// driver with one interrupt.
func (c *ctrlQueue) process() {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	ctr := &c.d.ctrlCtr
	pushed := 0
	c.q.DisableNotify()
	for !c.broken {
		ok, err := c.q.Pop(&c.chain)
		if err != nil {
			if !errors.Is(err, virtio.ErrBadChain) {
				// The ring itself is broken: nothing more can be read
				// until the driver resets the device.
				c.breakRing(err)
				break
			}
			ctr.add(CtrlBadChains)
			c.bad.Drop("malformed control chain", err)
			c.push(0)
			pushed++
			continue
		}
		if !ok {
			if c.q.EnableNotify() {
				c.q.DisableNotify()
				continue
			}
			break
		}
		pushed++
		if c.chain.WriteLen == 0 {
			// No room for the ack: the driver would wait forever for an
			// answer it cannot get; give the chain back unanswered.
			ctr.add(CtrlBadChains)
			c.bad.Drop("control chain without a writable byte", fmt.Errorf("%d readable bytes", c.chain.ReadLen))
			c.push(0)
			continue
		}
		ack := virtio.CtrlOK
		if err := c.answer(); err != nil {
			ack = virtio.CtrlErr
			ctr.add(CtrlErrors)
			c.bad.Drop("control command refused", err)
		} else {
			ctr.add(CtrlCommands)
		}
		// virtio 1.2 §5.1.6.5: the ack is the first device-writable byte.
		c.chain.Writable[0][0] = byte(ack)
		c.q.MarkWritten(c.chain.Writable, 1)
		c.push(1)
	}
	if pushed == 0 {
		return
	}
	c.q.Flush()
	if c.q.NeedsInterrupt() {
		if err := c.s.call.Notify(); err != nil {
			ctr.add(CtrlInterruptErrors)
			ctr.warn[CtrlInterruptErrors].Warn(c.log, "control queue interrupt failed", err)
		}
	}
}

// answer gathers the command of c.chain out of guest memory (the driver
// cannot change the copy while it is checked) and carries it out.
func (c *ctrlQueue) answer() error {
	if c.chain.ReadLen > maxCtrlLen {
		return fmt.Errorf("control command of %d bytes, more than the %d this device reads", c.chain.ReadLen, maxCtrlLen)
	}
	c.buf = c.buf[:0]
	for _, b := range c.chain.Readable {
		c.buf = append(c.buf, b...)
	}
	return c.d.ctrlCommand(c.buf)
}

func (c *ctrlQueue) push(written uint32) {
	if err := c.q.Push(&c.chain, written); err != nil {
		// Only a bug gets here: the chain was popped.
		c.breakRing(fmt.Errorf("return control chain: %w", err))
	}
}

// startCtrl serves control virtqueue index on s. d.mu is held.
func (d *Device) startCtrl(index int, s *slot) error {
	if _, ok := s.call.(noCall); ok {
		return fmt.Errorf("start control queue %d: a call eventfd is required", index)
	}
	c, err := newCtrlQueue(d, s)
	if err != nil {
		return err
	}
	d.ctrl = c
	d.log.Debug("control queue started", "queue", index)
	return nil
}

// stopCtrl stops serving the control queue and returns it. d.mu must not
// be held.
func (d *Device) stopCtrl() (virtio.Queue, error) {
	d.mu.Lock()
	c := d.ctrl
	d.ctrl = nil
	d.mu.Unlock()
	if c == nil {
		return nil, errors.New("stop control queue: not started")
	}
	c.halt()
	return c.q, nil
}

// ctrlCommand parses one command the driver sent and carries it out; an
// error is answered with VIRTIO_NET_ERR.
func (d *Device) ctrlCommand(b []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cmd, err := virtio.ParseCtrl(b, d.config.CtrlLimits(d.acked, virtio.LittleEndian))
	if err != nil {
		return err
	}
	switch cmd.Class {
	case virtio.CtrlRX:
		m := &d.rxMode
		switch cmd.Command {
		case virtio.CtrlRXPromisc:
			m.Promisc = cmd.On
		case virtio.CtrlRXAllMulti:
			m.AllMulti = cmd.On
		case virtio.CtrlRXAllUni:
			m.AllUni = cmd.On
		case virtio.CtrlRXNoMulti:
			m.NoMulti = cmd.On
		case virtio.CtrlRXNoUni:
			m.NoUni = cmd.On
		case virtio.CtrlRXNoBcast:
			m.NoBcast = cmd.On
		}
		return nil
	case virtio.CtrlMAC:
		if cmd.Command == virtio.CtrlMACAddrSet {
			d.config.MAC = cmd.MAC
			d.log.Debug("guest MAC set", "mac", cmd.MAC.String())
			return nil
		}
		d.rxMode.Unicast, d.rxMode.Multicast = cmd.Unicast.Len(), cmd.Multicast.Len()
		return nil
	case virtio.CtrlAnnounce:
		// virtio 1.2 §5.1.6.5.4: the ack clears VIRTIO_NET_S_ANNOUNCE.
		d.config.Status &^= virtio.Announce
		return nil
	case virtio.CtrlMQ:
		switch cmd.Command {
		case virtio.CtrlMQVQPairsSet:
			// Multiqueue enabled by VQ_PAIRS_SET steers automatically
			// (virtio 1.2 §5.1.6.5.6), whatever RSS_CONFIG said before.
			if err := d.autoSteering(); err != nil {
				return err
			}
			return d.setPairs(int(cmd.Pairs))
		case virtio.CtrlMQRSSConfig:
			return d.setRSS(&cmd.RSS)
		case virtio.CtrlMQHashConfig:
			return d.setHashConfig(&cmd.Hash)
		}
	case virtio.CtrlGuestOffloads:
		return d.setGuestOffloads(uint64(cmd.Offloads))
	}
	// ParseCtrl passes only commands of negotiated features, and CTRL_VLAN
	// is never offered.
	return fmt.Errorf("control %s: not served by this device", cmd.Name())
}

// setPairs is VQ_PAIRS_SET: the driver uses pairs [0, n) from now on. The
// other pairs' engines stop and their TAP queues are detached before the
// command is acknowledged, so no frame lands where the driver no longer
// looks (virtio 1.2 §5.1.6.5.5.2). d.mu is held.
func (d *Device) setPairs(n int) error {
	d.active = n
	var errs []error
	for i := range d.pairs {
		if i < n {
			errs = append(errs, d.startPair(i))
		} else {
			errs = append(errs, d.stopPair(i))
		}
	}
	d.log.Debug("queue pairs in use", "pairs", n)
	return errors.Join(errs...)
}

// AnnounceGuest asks for the guest to be announced on the host's network,
// after a migration say. With GUEST_ANNOUNCE negotiated and the control
// queue served, the device sets VIRTIO_NET_S_ANNOUNCE and raises the
// config interrupt, and the guest sends gratuitous ARPs and neighbour
// advertisements for its addresses, then acks (virtio 1.2 §5.1.6.5.4).
// Otherwise the device writes a RARP from the guest's MAC itself, as
// QEMU does for guests that cannot announce themselves.
func (d *Device) AnnounceGuest() error {
	d.mu.Lock()
	guest := d.ctrl != nil && d.acked.Has(virtio.NetFGuestAnnounce)
	mac := d.config.MAC
	if guest {
		d.config.Status |= virtio.Announce
	}
	d.mu.Unlock()
	if guest {
		d.notifyConfig()
		return nil
	}
	return d.Announce(mac[:])
}
