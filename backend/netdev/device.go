package netdev

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// ringFeatures are the transport features vmnet's virtqueues implement.
const ringFeatures = virtio.FVersion1 | virtio.FIndirectDesc | virtio.FEventIdx | virtio.FRingPacked

// Options configure a Device.
type Options struct {
	// TAP is the device the queue pairs read and write; one queue pair
	// per TAP queue. The caller owns it and closes it after the Device.
	TAP *backend.Device

	// MAC is the guest's address in the config space. nil picks a random
	// locally administered unicast address.
	MAC net.HardwareAddr

	// MTU is offered with VIRTIO_NET_F_MTU. 0 offers none (the guest
	// assumes 1500).
	MTU int

	// Offloads restricts the offloads offered (--offloads); the zero value
	// is "auto".
	Offloads offload.OfferList

	// BusyPoll is each queue pair's busy-poll window (engine.Config).
	BusyPoll time.Duration

	// Logger receives log lines; nil means none.
	Logger hclog.Logger
}

// Device is a virtio-net device backed by a TAP. Its methods are safe for
// concurrent use.
type Device struct {
	opts     Options
	log      hclog.Logger
	offered  virtio.Features
	txCaps   offload.TXCaps
	pairs    []pair
	counters []*engine.Counters

	mu      sync.Mutex
	acked   virtio.Features
	ackedOK bool
	config  virtio.NetConfig
}

// pair is one queue pair's two virtqueues and its engine.
type pair struct {
	q   [2]*slot // 0: RX (virtqueue 2N), 1: TX (2N+1)
	run *engine.QueuePair
}

// slot is one started virtqueue.
type slot struct {
	q    virtio.Queue
	kick *engine.EventFD
	call engine.Notifier
}

// New makes a device over opts.TAP with one queue pair per TAP queue.
func New(opts Options) (*Device, error) {
	if opts.TAP == nil {
		return nil, errors.New("new net device: no TAP device")
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.MAC == nil {
		opts.MAC = make(net.HardwareAddr, 6)
		if _, err := rand.Read(opts.MAC); err != nil {
			return nil, fmt.Errorf("new net device: pick a MAC: %w", err)
		}
		opts.MAC[0] = opts.MAC[0]&^1 | 2 // unicast, locally administered
	}
	if len(opts.MAC) != 6 || opts.MAC[0]&1 != 0 {
		return nil, fmt.Errorf("new net device: MAC %s is not a unicast Ethernet address", opts.MAC)
	}
	if opts.MTU != 0 && (opts.MTU < 68 || opts.MTU > 65535) {
		return nil, fmt.Errorf("new net device: MTU %d, want 68 to 65535", opts.MTU)
	}
	n := opts.TAP.NumQueues()
	d := &Device{
		opts:     opts,
		log:      opts.Logger.Named("netdev").With("tap", opts.TAP.Name()),
		pairs:    make([]pair, n),
		counters: make([]*engine.Counters, n),
	}
	for i := range d.counters {
		d.counters[i] = new(engine.Counters)
	}
	tapFeatures := opts.TAP.Features()
	d.offered = ringFeatures | virtio.NetFMrgRxbuf | virtio.NetFMAC | virtio.NetFStatus |
		offload.Offer(tapFeatures.Offloads, tapFeatures.OffloadsProbed, offload.OfferOptions{List: opts.Offloads})
	d.txCaps = offload.TXCapsFor(tapFeatures.Offloads, tapFeatures.OffloadsProbed, offload.OfferOptions{List: opts.Offloads})
	if opts.MTU != 0 {
		d.offered |= virtio.NetFMTU
	}
	if n > 1 {
		d.offered |= virtio.NetFMQ
	}
	// Until the guest starts a pair, the kernel must not steer frames to
	// its TAP queue: nobody would read them.
	for i := 0; i < n; i++ {
		if opts.TAP.Queue(i) != nil {
			if err := opts.TAP.DisableQueue(i); err != nil {
				return nil, fmt.Errorf("new net device: %w", err)
			}
		}
	}
	copy(d.config.MAC[:], opts.MAC)
	d.config.Status = virtio.LinkUp
	d.config.MaxVirtqueuePairs = uint16(n)
	d.config.MTU = uint16(opts.MTU)
	d.config.Speed = virtio.SpeedUnknown
	d.config.Duplex = virtio.DuplexUnknown
	return d, nil
}

// Features are the features the device offers.
func (d *Device) Features() virtio.Features { return d.offered }

// Pairs is the number of queue pairs.
func (d *Device) Pairs() int { return len(d.pairs) }

// Config is the device's config space.
func (d *Device) Config() virtio.NetConfig {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.config
}

// Counters returns the statistics of queue pair i, which live as long as
// the Device, across restarts.
func (d *Device) Counters(i int) *engine.Counters { return d.counters[i] }

// SetFeatures takes the features the driver acked: it sets the TAP's vnet
// header size to the header they imply and asks the kernel for the receive
// offloads the guest can take (TUNSETOFFLOAD). No queue may be running.
func (d *Device) SetFeatures(acked virtio.Features) error {
	if extra := acked &^ d.offered; extra != 0 {
		return fmt.Errorf("set features: %v: %w", extra, &virtio.NotOfferedError{Bits: extra})
	}
	// A front-end that serves the control queue itself (QEMU, DPDK's
	// virtio-user) passes only the data-path bits, so rules that involve
	// CTRL_VQ cannot be checked here; the guest's own stack checked them.
	if err := virtio.ValidateNet(acked | virtio.NetFCtrlVQ); err != nil {
		return fmt.Errorf("set features %v: %w", acked, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.pairs {
		if d.pairs[i].run != nil {
			return fmt.Errorf("set features: queue pair %d is running", i)
		}
	}
	if err := d.opts.TAP.SetVnetHdrSize(virtio.HdrLenFor(acked)); err != nil {
		return fmt.Errorf("set features: %w", err)
	}
	if err := d.opts.TAP.SetOffload(offload.TunFlags(acked)); err != nil {
		return fmt.Errorf("set features: %w", err)
	}
	d.acked = acked
	d.ackedOK = true
	d.log.Debug("features acked", "features", acked.String(), "tun_offload", offload.TunFlags(acked).String())
	return nil
}

// SetGuestOffloads applies VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET: the receive
// offloads the guest wants now (ethtool -K in the guest).
func (d *Device) SetGuestOffloads(bits uint64) error {
	d.mu.Lock()
	acked := d.acked
	d.mu.Unlock()
	flags, err := offload.GuestOffloads(bits, acked)
	if err != nil {
		return err
	}
	return d.opts.TAP.SetOffload(flags)
}

// StartQueue starts virtqueue index (2N: RX of pair N, 2N+1: TX) with its
// kick eventfd and call notifier. The pair's engine starts once both of its
// queues are started. The Device uses kick only until StopQueue.
func (d *Device) StartQueue(index int, q virtio.Queue, kick *engine.EventFD, call engine.Notifier) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, dir, err := d.pairOf(index)
	if err != nil {
		return err
	}
	if !d.ackedOK {
		return fmt.Errorf("start queue %d: features not set", index)
	}
	if p.q[dir] != nil {
		return fmt.Errorf("start queue %d: already started", index)
	}
	p.q[dir] = &slot{q: q, kick: kick, call: call}
	return d.startPair(index / 2)
}

// startPair runs pair i's engine if both its queues are started.
func (d *Device) startPair(i int) error {
	p := &d.pairs[i]
	if p.q[0] == nil || p.q[1] == nil || p.run != nil {
		return nil
	}
	tq, err := d.opts.TAP.OpenQueue(i)
	if err != nil {
		return fmt.Errorf("start queue pair %d: %w", i, err)
	}
	if err := d.opts.TAP.EnableQueue(i); err != nil {
		return fmt.Errorf("start queue pair %d: %w", i, err)
	}
	qp, err := engine.New(engine.Config{
		Index:    i,
		RX:       p.q[0].q,
		TX:       p.q[1].q,
		RXKick:   p.q[0].kick,
		TXKick:   p.q[1].kick,
		RXCall:   p.q[0].call,
		TXCall:   p.q[1].call,
		TAP:      tq.File(),
		HdrLen:   virtio.HdrLenFor(d.acked),
		Features: d.acked,
		MTU:      d.opts.MTU,
		BusyPoll: d.opts.BusyPoll,
		// USO frames the kernel cannot take (before Linux 6.2) are
		// segmented in software, as Offer promised.
		NoUSO:    !d.txCaps.USO,
		Counters: d.counters[i],
		Logger:   d.log,
	})
	if err != nil {
		return fmt.Errorf("start queue pair %d: %w", i, err)
	}
	if err := qp.Start(); err != nil {
		return err
	}
	p.run = qp
	d.log.Debug("queue pair started", "queue", i)
	return nil
}

// StopQueue stops virtqueue index and its pair's engine, and returns the
// queue, whose NextAvail (and NextUsed) say where it stopped. The TAP
// queue is detached so the kernel stops steering frames to it.
func (d *Device) StopQueue(index int) (virtio.Queue, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, dir, err := d.pairOf(index)
	if err != nil {
		return nil, err
	}
	s := p.q[dir]
	if s == nil {
		return nil, fmt.Errorf("stop queue %d: not started", index)
	}
	var errs []error
	if p.run != nil {
		errs = append(errs, p.run.Stop())
		p.run = nil
		if err := d.opts.TAP.DisableQueue(index / 2); err != nil {
			errs = append(errs, err)
		}
		d.log.Debug("queue pair stopped", "queue", index/2)
	}
	p.q[dir] = nil
	return s.q, errors.Join(errs...)
}

// Reset stops every queue pair and forgets the acked features: the driver
// reset the device, or the front-end went away.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.pairs {
		p := &d.pairs[i]
		if p.run != nil {
			if err := p.run.Stop(); err != nil {
				d.log.Warn("stop queue pair on reset", "queue", i, "error", err)
			}
			p.run = nil
			if err := d.opts.TAP.DisableQueue(i); err != nil {
				d.log.Warn("detach TAP queue on reset", "queue", i, "error", err)
			}
		}
		p.q = [2]*slot{}
	}
	d.acked = 0
	d.ackedOK = false
}

func (d *Device) pairOf(index int) (*pair, int, error) {
	if index < 0 || index >= 2*len(d.pairs) {
		return nil, 0, fmt.Errorf("queue %d: out of range [0, %d)", index, 2*len(d.pairs))
	}
	return &d.pairs[index/2], index % 2, nil
}
