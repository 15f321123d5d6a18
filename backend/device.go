package backend

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// ringFeatures are the transport features vmnet's virtqueues implement.
const ringFeatures = virtio.FVersion1 | virtio.FIndirectDesc | virtio.FEventIdx | virtio.FRingPacked

// Options configure a Device.
type Options struct {
	// TAP is the device the queue pairs read and write; one queue pair
	// per TAP queue. The caller owns it and closes it after the Device.
	TAP *tap.Device

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

	// NoIOURing makes each queue pair read and write its TAP queue one
	// system call per frame (engine.Config.NoIOURing). The zero value
	// batches them through io_uring where the kernel allows.
	NoIOURing bool

	// ControlQueue makes the device serve its control virtqueue (number
	// 2×Pairs) itself, as an embedding VMM needs: it then offers CTRL_VQ,
	// CTRL_RX, CTRL_MAC_ADDR, CTRL_GUEST_OFFLOADS and GUEST_ANNOUNCE, uses
	// only the first queue pair until the driver asks for more
	// (VQ_PAIRS_SET), and applies GUEST_OFFLOADS_SET to the TAP. The zero
	// value leaves the control queue to the transport, as vhost-user
	// front-ends (QEMU, cloud-hypervisor, DPDK's virtio-user) serve it
	// themselves and tell the device which rings run; VhostUser never
	// offers it.
	ControlQueue bool

	// ConfigChanged is the configuration change interrupt: the device
	// notifies it after the config space changed (the link went up or
	// down, an announce was requested). nil: the driver is not told.
	ConfigChanged engine.Notifier

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

	ctrlCtr   ctrlCounters
	stopWatch context.CancelFunc

	mu      sync.Mutex
	acked   virtio.Features
	ackedOK bool
	config  virtio.NetConfig
	active  int        // queue pairs the driver uses: TAP queues attached while their rings run
	ctrl    *ctrlQueue // the control queue's server, while it runs
	rxMode  RXMode
}

// RXMode is what the driver asked of the receive filter with the CTRL_RX
// class and MAC TABLE_SET (virtio 1.2 §5.1.6.5.1, §5.1.6.5.2). A TAP
// delivers every frame the host sends it, so the device is in effect
// always promiscuous; the spec lets these commands be best effort, and
// the device records and acknowledges them.
type RXMode struct {
	Promisc, AllMulti, AllUni, NoMulti, NoUni, NoBcast bool
	Unicast, Multicast                                 int // addresses in the last MAC table
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
		log:      opts.Logger.Named("device").With("tap", opts.TAP.Name()),
		pairs:    make([]pair, n),
		counters: make([]*engine.Counters, n),
	}
	for i := range d.counters {
		d.counters[i] = new(engine.Counters)
	}
	tapFeatures := opts.TAP.DriverFeatures()
	d.offered = ringFeatures | virtio.NetFMrgRxbuf | virtio.NetFMAC | virtio.NetFStatus |
		offload.Offer(tapFeatures.Offloads, tapFeatures.OffloadsProbed, offload.OfferOptions{List: opts.Offloads})
	d.txCaps = offload.TXCapsFor(tapFeatures.Offloads, tapFeatures.OffloadsProbed, offload.OfferOptions{List: opts.Offloads})
	if opts.MTU != 0 {
		d.offered |= virtio.NetFMTU
	}
	if n > 1 {
		d.offered |= virtio.NetFMQ
	}
	if opts.ControlQueue {
		d.offered |= ctrlFeatures
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
	d.config.MaxVirtqueuePairs = uint16(n)
	d.config.MTU = uint16(opts.MTU)
	d.config.Speed = virtio.SpeedUnknown
	d.config.Duplex = virtio.DuplexUnknown
	d.active = n
	// VIRTIO_NET_S_LINK_UP follows the TAP's administrative state: the
	// host's `ip link set dev TAP down` is the guest's cable pulled. The
	// TAP's carrier is not used: it follows the queues this device
	// attaches, so it would say only whether the guest runs.
	ctx, cancel := context.WithCancel(context.Background())
	// The state WatchLink finds, before it returns, is no change to
	// announce; the calls after it come from its goroutine, started after.
	first := true
	if err := opts.TAP.WatchLink(ctx, func(st tap.LinkState) { d.linkChanged(st, !first); first = false }); err != nil {
		cancel()
		return nil, fmt.Errorf("new net device: %w", err)
	}
	d.stopWatch = cancel
	return d, nil
}

// linkChanged sets the link status from the TAP's state and, with
// notify, tells the driver if it changed.
func (d *Device) linkChanged(st tap.LinkState, notify bool) {
	d.mu.Lock()
	changed := (d.config.Status&virtio.LinkUp != 0) != st.Up
	if st.Up {
		d.config.Status |= virtio.LinkUp
	} else {
		d.config.Status &^= virtio.LinkUp
	}
	d.mu.Unlock()
	if changed && notify {
		d.log.Debug("link status", "tap_state", st.String())
		d.notifyConfig()
	}
}

// notifyConfig raises the configuration change interrupt, if there is one.
func (d *Device) notifyConfig() {
	if d.opts.ConfigChanged == nil {
		return
	}
	if err := d.opts.ConfigChanged.Notify(); err != nil {
		d.log.Warn("config change interrupt failed", "error", err)
	}
}

// Close stops watching the TAP and resets the device: every queue stops.
// The TAP stays open (it is the caller's). Close is idempotent.
func (d *Device) Close() {
	d.stopWatch()
	d.Reset()
}

// Features are the features the device offers.
func (d *Device) Features() virtio.Features { return d.offered }

// Pairs is the number of queue pairs.
func (d *Device) Pairs() int { return len(d.pairs) }

// Queues is the number of virtqueues: two per pair, and the control
// queue (the last) with Options.ControlQueue.
func (d *Device) Queues() int {
	if d.opts.ControlQueue {
		return 2*len(d.pairs) + 1
	}
	return 2 * len(d.pairs)
}

// ActivePairs is the number of queue pairs the driver uses: all of them
// unless the device serves the control queue, where it is 1 until the
// driver sends VQ_PAIRS_SET.
func (d *Device) ActivePairs() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.active
}

// RXMode is the receive filter the driver last asked for.
func (d *Device) RXMode() RXMode {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rxMode
}

// CtrlStats are the control queue's counters.
func (d *Device) CtrlStats() CtrlStats { return d.ctrlCtr.snapshot() }

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
	check := acked
	if !d.opts.ControlQueue {
		check |= virtio.NetFCtrlVQ
	}
	if err := virtio.ValidateNet(check); err != nil {
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
	if err := d.opts.TAP.SetOffload(offload.TunFlagsFor(acked)); err != nil {
		return fmt.Errorf("set features: %w", err)
	}
	d.acked = acked
	d.ackedOK = true
	// virtio 1.2 §5.1.6.5.5: multiqueue starts disabled; the driver
	// enables more pairs with VQ_PAIRS_SET.
	d.active = len(d.pairs)
	if d.opts.ControlQueue {
		d.active = 1
	}
	d.log.Debug("features acked", "features", acked.String(), "tun_offload", offload.TunFlagsFor(acked).String())
	return nil
}

// SetGuestOffloads applies VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET: the receive
// offloads the guest wants now (ethtool -K in the guest).
func (d *Device) SetGuestOffloads(bits uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.setGuestOffloads(bits)
}

func (d *Device) setGuestOffloads(bits uint64) error {
	flags, err := offload.GuestOffloads(bits, d.acked)
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
	if d.isCtrl(index) {
		return d.startCtrl(q, kick, call)
	}
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
	if p.q[0] == nil || p.q[1] == nil || p.run != nil || i >= d.active {
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
	if d.isCtrl(index) {
		return d.stopCtrl()
	}
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
	err = d.stopPair(index / 2)
	p.q[dir] = nil
	return s.q, err
}

// stopPair stops pair i's engine, if it runs, and detaches its TAP queue
// so the kernel stops steering frames to it.
func (d *Device) stopPair(i int) error {
	p := &d.pairs[i]
	if p.run == nil {
		return nil
	}
	errs := []error{p.run.Stop()}
	p.run = nil
	if err := d.opts.TAP.DisableQueue(i); err != nil {
		errs = append(errs, err)
	}
	d.log.Debug("queue pair stopped", "queue", i)
	return errors.Join(errs...)
}

// Reset stops every queue pair and forgets the acked features: the driver
// reset the device, or the front-end went away.
func (d *Device) Reset() {
	d.stopCtrl()
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.pairs {
		if err := d.stopPair(i); err != nil {
			d.log.Warn("stop queue pair on reset", "queue", i, "error", err)
		}
		d.pairs[i].q = [2]*slot{}
	}
	d.acked = 0
	d.ackedOK = false
	d.active = len(d.pairs)
	// What the driver changed goes back to what the device was made with.
	copy(d.config.MAC[:], d.opts.MAC)
	d.config.Status &^= virtio.Announce
	d.rxMode = RXMode{}
}

// isCtrl reports whether virtqueue index is the control queue the device
// serves.
func (d *Device) isCtrl(index int) bool {
	return d.opts.ControlQueue && index == 2*len(d.pairs)
}

func (d *Device) pairOf(index int) (*pair, int, error) {
	if index < 0 || index >= 2*len(d.pairs) {
		return nil, 0, fmt.Errorf("queue %d: out of range [0, %d)", index, 2*len(d.pairs))
	}
	return &d.pairs[index/2], index % 2, nil
}
