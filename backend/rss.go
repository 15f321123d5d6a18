package backend

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/virtio"
)

// rssFeatures are the receive steering and hash report features. They
// need the control queue (the driver configures them there), so only a
// device that serves it offers them, and the vhost-user adapter never
// does: a front-end that serves the control queue offers its own.
const rssFeatures = virtio.NetFRSS | virtio.NetFHashReport

// rssState is the device's side of VIRTIO_NET_F_RSS (virtio 1.2
// §5.1.6.5.7) and HASH_REPORT: the RSS steering program, whether the TAP
// runs it, and the hash configuration frames report. d.mu guards it, but
// for hasher, which the engines read.
type rssState struct {
	// hasher is the hash configuration received frames report
	// (engine.Config.Hash), from RSS_CONFIG or HASH_CONFIG; nil reports
	// none.
	hasher atomic.Pointer[virtio.Hasher]
	// order is the queue pairs whose TAP queues are attached, in the
	// order tun.c numbers them (tunAttached).
	order []int
	// prog is the RSS program, loaded by New; nil where RSS is not
	// offered.
	prog *ebpf.RSSProgram
	// auto is the hash program, the automatic steering (virtio 1.2
	// §5.1.6.5.6) the TAP goes back to when the driver sends
	// VQ_PAIRS_SET or resets the device.
	auto *ebpf.Program
	// on: prog steers the TAP, with cfg, the driver's last RSS_CONFIG.
	on  bool
	cfg virtio.RSSConfig
}

// loadRSSProgram loads the RSS program; tests replace it.
var loadRSSProgram = ebpf.LoadRSSProgram

// initRSS decides the receive steering and hash report features of a
// device that serves its control queue, at the end of New: HASH_REPORT
// always (the engines compute the hash in Go), RSS where the TAP's
// steering is vmnet's hash program and the RSS program loads too. A TAP
// whose steering the caller chose otherwise (kernel, queue:N) keeps it:
// the guest is not offered a way to change it. Where the program cannot
// be loaded, RSS is not offered and hash steering goes on: one warning
// says so.
func (d *Device) initRSS() {
	if !d.opts.ControlQueue {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.offered |= virtio.NetFHashReport
	d.config.RSSMaxKeySize = virtio.RSSKeySize
	d.config.SupportedHashTypes = virtio.HashAll
	if d.steering != ebpf.SteeringHash {
		d.log.Debug("RSS not offered: the TAP's steering is not the hash program", "steering", d.steering)
		return
	}
	prog, err := loadRSSProgram()
	var auto *ebpf.Program
	if err == nil {
		if auto, err = ebpf.LoadHashProgram(); err != nil {
			prog.Close()
		}
	}
	if err != nil {
		d.log.Warn("RSS not offered: its steering program cannot be loaded; the hash program steers", "error", err)
		return
	}
	d.rss.prog, d.rss.auto = prog, auto
	d.offered |= virtio.NetFRSS
	d.config.RSSMaxIndirectionTableLength = ebpf.RSSMaxTable
}

// closeRSS releases the programs, at Close, after Reset put the hash
// program back on the TAP.
func (d *Device) closeRSS() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rss.prog != nil {
		d.rss.prog.Close()
		d.rss.auto.Close()
		d.rss.prog, d.rss.auto = nil, nil
	}
}

// RSS returns the driver's RSS configuration (VIRTIO_NET_CTRL_MQ_RSS_CONFIG)
// while it steers the TAP; ok is false while the automatic steering
// (Steering) does: before the first RSS_CONFIG, after VQ_PAIRS_SET, after
// a reset.
func (d *Device) RSS() (cfg virtio.RSSConfig, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.rss.on {
		return virtio.RSSConfig{}, false
	}
	cfg = d.rss.cfg
	cfg.IndirectionTable = slices.Clone(cfg.IndirectionTable)
	cfg.Key = slices.Clone(cfg.Key)
	return cfg, true
}

// setRSS is VIRTIO_NET_CTRL_MQ_RSS_CONFIG, which ParseCtrl checked against
// the config space (table length, key length, hash types, queues below
// max_virtqueue_pairs). Each queue the table or unclassified_queue names
// must be one the driver set up (virtio 1.2 §5.1.6.5.7.2: "only with
// enabled receive virtqueues"). The driver then uses the pairs up to
// max_tx_vq and every pair the table names; the program is configured
// in place, then attached if it was not, so the TAP steers by the driver's
// table from the ack on. With HASH_REPORT, received frames report the
// same hash. d.mu is held.
func (d *Device) setRSS(c *virtio.RSSConfig) error {
	if d.rss.prog == nil {
		return errors.New("rss config: RSS not offered")
	}
	pairs := int(c.MaxTxVQ)
	for _, q := range slices.Concat(c.IndirectionTable, []uint16{c.UnclassifiedQueue}) {
		p := &d.pairs[q] // ParseCtrl: below max_virtqueue_pairs
		if p.q[0] == nil || p.q[1] == nil {
			return fmt.Errorf("rss config: receive queue %d: queue pair %d not set up by the driver: %w", q, q, virtio.ErrCtrlValue)
		}
		pairs = max(pairs, int(q)+1)
	}
	h, err := virtio.NewHasher(c.Key, c.HashTypes)
	if err != nil {
		return fmt.Errorf("rss config: %w: %w", err, virtio.ErrCtrlValue)
	}
	if err := d.setPairs(pairs); err != nil {
		return fmt.Errorf("rss config: %w", err)
	}
	// The table names queue pairs; the program answers with the TAP's
	// numbers for their queues.
	slot := func(q uint16) (uint16, error) {
		i := slices.Index(d.rss.order, int(q))
		if i < 0 {
			return 0, fmt.Errorf("rss config: queue pair %d does not run", q)
		}
		return uint16(i), nil
	}
	pc := ebpf.RSSConfig{Hasher: h, Table: make([]uint16, len(c.IndirectionTable))}
	for i, q := range c.IndirectionTable {
		if pc.Table[i], err = slot(q); err != nil {
			return err
		}
	}
	if pc.Unclassified, err = slot(c.UnclassifiedQueue); err != nil {
		return err
	}
	if err := d.rss.prog.Configure(pc); err != nil {
		return err
	}
	if !d.rss.on {
		if err := d.opts.TAP.SetSteeringEBPF(d.rss.prog.FD()); err != nil {
			return fmt.Errorf("rss config: %w", err)
		}
		d.rss.on = true
	}
	d.rss.cfg = *c
	d.rss.cfg.IndirectionTable = slices.Clone(c.IndirectionTable)
	d.rss.cfg.Key = slices.Clone(c.Key)
	if d.acked.Has(virtio.NetFHashReport) {
		d.rss.hasher.Store(h)
	}
	d.log.Debug("rss config", "hash_types", c.HashTypes.String(), "table", len(c.IndirectionTable),
		"unclassified", c.UnclassifiedQueue, "pairs", pairs)
	return nil
}

// setHashConfig is VIRTIO_NET_CTRL_MQ_HASH_CONFIG: the hash types and key
// that received frames report (virtio 1.2 §5.1.6.5.6.4); steering stays
// as it is. d.mu is held.
func (d *Device) setHashConfig(c *virtio.HashConfig) error {
	h, err := virtio.NewHasher(c.Key, c.HashTypes)
	if err != nil {
		return fmt.Errorf("hash config: %w: %w", err, virtio.ErrCtrlValue)
	}
	d.rss.hasher.Store(h)
	d.log.Debug("hash config", "hash_types", c.HashTypes.String())
	return nil
}

// autoSteering puts the automatic steering back on the TAP where RSS
// steered it: "when multiqueue is enabled by VQ_PAIRS_SET, the device
// MUST use automatic receive steering based on packet flow" (virtio 1.2
// §5.1.6.5.6), and after a reset. The hash configuration frames report
// stays. d.mu is held.
func (d *Device) autoSteering() error {
	if !d.rss.on {
		return nil
	}
	if err := d.opts.TAP.SetSteeringEBPF(d.rss.auto.FD()); err != nil {
		return fmt.Errorf("steering back to hash: %w", err)
	}
	d.rss.on = false
	d.rss.cfg = virtio.RSSConfig{}
	return nil
}

// resetRSS is the device reset's part: automatic steering, and no hash
// reported ("initially the device has all hash types disabled", virtio
// 1.2 §5.1.6.5.6.4). d.mu is held.
func (d *Device) resetRSS() {
	if err := d.autoSteering(); err != nil {
		d.log.Warn("reset RSS", "error", err)
	}
	d.rss.hasher.Store(nil)
}

// tunAttached and tunDetached follow the order in which tun.c numbers the
// TAP's attached queues, the numbers a steering program answers with:
// an attached queue takes the next number (tun_attach), a detached one's
// number goes to the last attached queue (__tun_detach). Pair i's TAP
// queue is attached exactly while its engine runs. d.mu is held.
func (d *Device) tunAttached(i int) { d.rss.order = append(d.rss.order, i) }

func (d *Device) tunDetached(i int) {
	k := slices.Index(d.rss.order, i)
	if k < 0 {
		return
	}
	last := len(d.rss.order) - 1
	d.rss.order[k] = d.rss.order[last]
	d.rss.order = d.rss.order[:last]
}
