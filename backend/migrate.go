package backend

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/virtio"
)

// What a VMM needs to live-migrate a guest with this device: the pages
// the device wrote while the guest's memory was being copied (a dirty
// log), where each queue stopped (Reset, QueueConfig.Resume), and what the
// driver set through the control queue (CtrlState). docs/embedding.md,
// "Live migration", has the order of the calls.

// ringLog is the log of a queue whose device area is at device, under
// StartDirtyLog; zero without it. d.mu is held.
func (d *Device) ringLog(device uint64) virtio.RingLog {
	if d.dirty == nil {
		return virtio.RingLog{}
	}
	return virtio.RingLog{Log: d.dirty, UsedAddr: device}
}

// StartDirtyLog makes the device mark in log every page it writes to
// guest memory from now on, on every queue that runs and every queue
// started later (Activate, the driver's VQ_PAIRS_SET), until
// StopDirtyLog: frames and headers received, used elements and indices,
// packed descriptor write-backs, the control queue's acks. Each page is
// marked after the write, with an atomic OR, so the VMM may take the log
// (virtio.DirtyLog.Take) while the device runs and copy the pages it
// names; once Reset has returned, one more Take has the last of them.
// log must cover guest memory (virtio.DirtyLog.Covers; an error
// otherwise). When StartDirtyLog returns, every running queue logs; no
// frame is held up or lost meanwhile. A log set already is replaced: the
// device no longer uses the old one once StartDirtyLog returns.
//
// The log is the embedding VMM's; VhostUser's front-end sets the logs of
// its rings itself (vhostuser.DirtyLogger), and the two are not mixed.
func (d *Device) StartDirtyLog(log *virtio.DirtyLog) error {
	if log == nil {
		return errors.New("start dirty log: no log")
	}
	return d.setDirtyLog(log)
}

// StopDirtyLog stops the logging StartDirtyLog started; when it returns
// the device no longer touches the log.
func (d *Device) StopDirtyLog() {
	if err := d.setDirtyLog(nil); err != nil {
		d.log.Warn("stop dirty log", "error", err)
	}
}

func (d *Device) setDirtyLog(log *virtio.DirtyLog) error {
	d.mu.Lock()
	if log != nil && d.mem != nil {
		if err := log.Covers(d.mem); err != nil {
			d.mu.Unlock()
			return fmt.Errorf("start dirty log: %w", err)
		}
	}
	d.dirty = log
	var errs []error
	for i := range d.pairs {
		p := &d.pairs[i]
		for _, s := range p.q {
			if s != nil {
				s.log = d.ringLog(s.device)
			}
		}
		if p.run != nil {
			errs = append(errs, p.run.SetDirtyLog(p.q[0].log, p.q[1].log))
		}
	}
	c := d.ctrl
	var cl virtio.RingLog
	if c != nil {
		c.s.log = d.ringLog(c.s.device)
		cl = c.s.log
	}
	d.mu.Unlock()
	// The control queue answers commands under d.mu, and sets its log
	// between two batches of them.
	if c != nil {
		c.setLog(cl)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("set dirty log: %w", err)
	}
	return nil
}

// setQueueLog sets the log of started virtqueue index, for the vhost-user
// adapter: its pair's engine, if it runs, takes it before this returns.
func (d *Device) setQueueLog(index int, l virtio.RingLog) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if index < 0 || index >= 2*len(d.pairs) {
		return fmt.Errorf("set dirty log of queue %d: out of range [0, %d)", index, 2*len(d.pairs))
	}
	p := &d.pairs[index/2]
	s := p.q[index%2]
	if s == nil {
		return fmt.Errorf("set dirty log of queue %d: not started", index)
	}
	s.log = l
	if p.run == nil {
		return nil
	}
	if err := p.run.SetDirtyLog(p.q[0].log, p.q[1].log); err != nil {
		return fmt.Errorf("set dirty log of queue %d: %w", index, err)
	}
	return nil
}

// CtrlState is what the driver set through the control queue of a device
// that serves it (Options.ControlQueue), which Reset forgets: what a VMM
// carries to the device on the other side of a migration (or across its
// own restart) along with the acked features and each queue's
// QueueState. Its fields are exported for the VMM's encoding of choice
// (encoding/json works).
type CtrlState struct {
	// Pairs is the number of queue pairs the driver uses (VQ_PAIRS_SET,
	// or RSS_CONFIG's max_tx_vq and table).
	Pairs int
	// MAC is the config space's MAC (MAC ADDR_SET, or a config write).
	MAC net.HardwareAddr
	// RXMode is the receive filter the driver asked for.
	RXMode RXMode
	// GuestOffloads is GUEST_OFFLOADS_SET's last bitmap, nil if the driver
	// sent none since it acked its features.
	GuestOffloads *uint64 `json:",omitempty"`
	// RSS is the driver's RSS_CONFIG while RSS steers (Device.RSS); nil
	// while the automatic steering does.
	RSS *virtio.RSSConfig `json:",omitempty"`
	// Hash is the hash received frames report (HASH_CONFIG, or RSS_CONFIG's
	// key and types); nil when they report none.
	Hash *virtio.HashConfig `json:",omitempty"`
	// Announce is VIRTIO_NET_S_ANNOUNCE set and not yet acknowledged.
	Announce bool
}

// CtrlState returns what the driver set through the control queue, for
// RestoreCtrlState on another device (or this one after Reset, which
// forgets it): read it after the guest's vCPUs stop and before Reset.
func (d *Device) CtrlState() CtrlState {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := CtrlState{
		Pairs:    d.active,
		MAC:      append(net.HardwareAddr(nil), d.config.MAC[:]...),
		RXMode:   d.rxMode,
		Announce: d.config.Status&virtio.Announce != 0,
	}
	if d.offlSet {
		v := d.offl
		st.GuestOffloads = &v
	}
	if d.rss.on {
		c := d.rss.cfg
		c.IndirectionTable = slices.Clone(c.IndirectionTable)
		c.Key = slices.Clone(c.Key)
		st.RSS = &c
	}
	if h := d.rss.hasher.Load(); h != nil {
		st.Hash = &virtio.HashConfig{HashTypes: h.Types(), Key: h.Key()}
	}
	return st
}

// RestoreCtrlState gives the driver's control-queue state back to a
// device that serves its control queue: after SetFeatures with the
// features the driver acked on the source and Activate with each queue's
// QueueConfig.Resume, before the guest's vCPUs run. It starts the queue
// pairs the driver used, sets the MAC, the receive mode, the guest
// offloads (TUNSETOFFLOAD), RSS steering and the reported hash as the
// commands did. The state comes from another process: everything is
// checked as a command would be; on error part of it may be applied, and
// the VMM should reset the device.
func (d *Device) RestoreCtrlState(st CtrlState) error {
	if !d.opts.ControlQueue {
		return errors.New("restore control queue state: the device does not serve its control queue")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.ackedOK || d.running() < 0 {
		return errors.New("restore control queue state: the device is not active (SetFeatures, Activate)")
	}
	if st.Pairs < 1 || st.Pairs > d.usablePairs() {
		return fmt.Errorf("restore control queue state: %d queue pairs, the acked features allow 1 to %d", st.Pairs, d.usablePairs())
	}
	if err := virtio.CheckUnicastMAC(st.MAC); err != nil {
		return fmt.Errorf("restore control queue state: %w", err)
	}
	if st.RSS != nil {
		if err := d.checkRSS(st.RSS); err != nil {
			return fmt.Errorf("restore control queue state: %w", err)
		}
	}
	copy(d.config.MAC[:], st.MAC)
	d.rxMode = st.RXMode
	if st.Announce && d.acked.Has(virtio.NetFGuestAnnounce) {
		d.config.Status |= virtio.Announce
	}
	if st.GuestOffloads != nil {
		if err := d.setGuestOffloads(*st.GuestOffloads); err != nil {
			return fmt.Errorf("restore control queue state: %w", err)
		}
	}
	if err := d.setPairs(st.Pairs); err != nil {
		return fmt.Errorf("restore control queue state: %w", err)
	}
	if st.RSS != nil {
		if err := d.setRSS(st.RSS); err != nil {
			return fmt.Errorf("restore control queue state: %w", err)
		}
	}
	if st.Hash != nil {
		if !d.acked.Has(virtio.NetFHashReport) {
			return errors.New("restore control queue state: a hash configuration without HASH_REPORT acked")
		}
		if err := d.setHashConfig(st.Hash); err != nil {
			return fmt.Errorf("restore control queue state: %w", err)
		}
	}
	d.log.Debug("control queue state restored", "pairs", st.Pairs, "rss", st.RSS != nil, "hash", st.Hash != nil)
	return nil
}

// checkRSS checks an RSS configuration that did not come through ParseCtrl
// against what it checks: RSS acked, a table of a power of two entries up
// to the config space's length, queues below max_virtqueue_pairs. d.mu is
// held.
func (d *Device) checkRSS(c *virtio.RSSConfig) error {
	n := len(c.IndirectionTable)
	switch {
	case !d.acked.Has(virtio.NetFRSS):
		return errors.New("rss config without RSS acked")
	case n == 0 || n&(n-1) != 0 || n > ebpf.RSSMaxTable:
		return fmt.Errorf("rss config: indirection table of %d entries, want a power of two up to %d", n, ebpf.RSSMaxTable)
	case int(c.MaxTxVQ) > len(d.pairs):
		return fmt.Errorf("rss config: max_tx_vq %d, the device has %d queue pairs", c.MaxTxVQ, len(d.pairs))
	}
	for _, q := range append(slices.Clone(c.IndirectionTable), c.UnclassifiedQueue) {
		if int(q) >= len(d.pairs) {
			return fmt.Errorf("rss config: queue %d, the device has %d queue pairs", q, len(d.pairs))
		}
	}
	return nil
}
