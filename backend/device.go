package backend

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/internal/droplog"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// ringFeatures are the transport features vmnet's virtqueues implement.
const ringFeatures = virtio.FVersion1 | virtio.FIndirectDesc | virtio.FEventIdx | virtio.FRingPacked

// Options configure a Device. Only TAP is required.
type Options struct {
	// TAP is the device the queue pairs read and write: one queue pair per
	// TAP queue (tap.Options.Queues). The caller owns it and closes it
	// after Device.Close.
	TAP *tap.Device

	// MAC is the guest's address in the config space. nil picks a random
	// locally administered unicast address.
	MAC net.HardwareAddr

	// MTU is offered with VIRTIO_NET_F_MTU, tap.MinMTU to tap.MaxMTU. 0
	// offers none (the guest assumes 1500). It does not change the TAP's
	// own MTU.
	MTU int

	// Offloads restricts the offloads offered (vmnet-helper --offloads);
	// the zero value offers every offload the TAP's kernel takes.
	Offloads offload.OfferList

	// Steering is how the TAP spreads the frames it sends to the guest
	// across the queue pairs. The zero value (ebpf.SteeringAuto) attaches
	// the hash program to a multi-queue TAP, which keeps each flow on one
	// queue pair, and falls back to the kernel's own steering, with one
	// log line, where the program cannot be loaded (no CAP_BPF);
	// ebpf.SteeringHash fails New instead; ebpf.SteeringKernel detaches
	// any program; ebpf.SteeringQueue(n) sends every frame to pair n. See
	// SetSteering.
	Steering ebpf.Steering

	// BusyPoll is each queue pair's busy-poll window (engine.Config).
	BusyPoll time.Duration

	// NoIOURing makes each queue pair read and write its TAP queue one
	// system call per frame (engine.Config.NoIOURing). The zero value
	// batches them through io_uring where the kernel allows.
	NoIOURing bool

	// ControlQueue makes the device serve its control virtqueue itself, as
	// an embedding VMM needs: it then offers CTRL_VQ, CTRL_RX,
	// CTRL_MAC_ADDR, CTRL_GUEST_OFFLOADS, GUEST_ANNOUNCE and HASH_REPORT,
	// and RSS where the hash program steers and the RSS program loads
	// (see Device.RSS), uses only the first queue pair until the driver
	// asks for more (VQ_PAIRS_SET, RSS_CONFIG), and applies
	// GUEST_OFFLOADS_SET to the TAP. The zero value leaves the
	// control queue to the transport, as vhost-user front-ends (QEMU,
	// cloud-hypervisor, DPDK's virtio-user) serve it themselves; VhostUser
	// never offers it.
	ControlQueue bool

	// ConfigInterrupt is an eventfd the device signals after the config
	// space changed (the link went up or down, an announce was requested):
	// the VMM's configuration change interrupt (an irqfd, say). New
	// duplicates it; the caller keeps its own file. Anything but an
	// eventfd, or a semaphore one, is refused (engine.EventFDFromFile).
	// nil: the driver is not told.
	ConfigInterrupt *os.File

	// Logger receives log lines; nil means none.
	Logger hclog.Logger
}

// Device is a virtio-net device backed by a multi-queue TAP. Its methods
// are safe for concurrent use.
//
// Its life follows the driver's (virtio 1.2 §3.1): New, then Features (the
// offer), SetFeatures at FEATURES_OK, Activate at DRIVER_OK, Reset when the
// driver resets the device (then SetFeatures and Activate again), and
// Close when the device goes away.
type Device struct {
	opts     Options
	log      hclog.Logger
	offered  virtio.Features
	txCaps   offload.TXCaps
	steering ebpf.Steering
	cfgIRQ   *engine.EventFD // nil without Options.ConfigInterrupt
	// cfgIRQWarn thins out the lines of a config interrupt that fails
	// (the link may flap as often as the host likes).
	cfgIRQWarn droplog.Warner
	pairs      []pair
	counters   []*engine.Counters

	ctrlCtr   ctrlCounters
	stopWatch context.CancelFunc

	mu      sync.Mutex
	acked   virtio.Features
	ackedOK bool
	tunOffl offload.TunFlags // the TAP's TUNSETOFFLOAD, from the acked features or GUEST_OFFLOADS_SET
	config  virtio.NetConfig
	active  int        // queue pairs the driver uses: TAP queues attached while their rings run
	ctrl    *ctrlQueue // the control queue's server, while it runs
	rxMode  RXMode
	rss     rssState // RSS steering and hash reports (rss.go)
	closed  bool

	// Live migration (migrate.go): the guest memory of the last Activate,
	// the dirty log of StartDirtyLog, and GUEST_OFFLOADS_SET's bits
	// (offlSet: the driver sent it since the last reset).
	mem     *virtio.Memory
	dirty   *virtio.DirtyLog
	offl    uint64
	offlSet bool
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

// New makes a device over opts.TAP with one queue pair per TAP queue,
// sets the TAP's steering (Options.Steering), and watches the TAP's link
// state until Close. The TAP's queues are detached from traffic until the
// driver starts their rings.
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
	if err := virtio.CheckUnicastMAC(opts.MAC); err != nil {
		return nil, fmt.Errorf("new net device: %w", err)
	}
	// The guest's frames go through the TAP: the MTU it is offered is
	// one the TAP can carry.
	if opts.MTU != 0 {
		if err := tap.CheckMTU(opts.MTU); err != nil {
			return nil, fmt.Errorf("new net device: %w", err)
		}
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
	drv := opts.TAP.DriverFeatures()
	offer := offload.OfferOptions{List: opts.Offloads}
	d.offered = ringFeatures | virtio.NetFMrgRxbuf | virtio.NetFMAC | virtio.NetFStatus |
		offload.Offer(drv.Offloads, drv.OffloadsProbed, offer)
	d.txCaps = offload.TXCapsFor(drv.Offloads, drv.OffloadsProbed, offer)
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
	var err error
	if d.steering, err = SetSteering(opts.TAP, opts.Steering, d.log); err != nil {
		return nil, fmt.Errorf("new net device: %w", err)
	}
	if opts.ConfigInterrupt != nil {
		if d.cfgIRQ, err = dupEventFD(opts.ConfigInterrupt, false); err != nil {
			return nil, fmt.Errorf("new net device: config interrupt: %w", err)
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
		d.closeConfigIRQ()
		return nil, fmt.Errorf("new net device: %w", err)
	}
	d.stopWatch = cancel
	d.initRSS()
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
	if d.cfgIRQ == nil {
		return
	}
	if err := d.cfgIRQ.Notify(); err != nil {
		d.cfgIRQWarn.Warn(d.log, "config change interrupt failed", err)
	}
}

func (d *Device) closeConfigIRQ() {
	if d.cfgIRQ != nil {
		d.cfgIRQ.Close()
	}
}

// Close stops every queue, stops watching the TAP and closes the files
// the device duplicated. The TAP stays open (it is the caller's), with
// its steering as New set it. Close is idempotent; the device cannot be
// used afterwards.
func (d *Device) Close() {
	d.Reset()
	d.mu.Lock()
	closed := d.closed
	d.closed = true
	d.mu.Unlock()
	if closed {
		return
	}
	d.stopWatch()
	d.closeConfigIRQ()
	d.closeRSS()
}

// Features are the features the device offers (device_features).
func (d *Device) Features() virtio.Features { return d.offered }

// Steering is the steering in effect on the TAP: Options.Steering with
// auto resolved.
func (d *Device) Steering() ebpf.Steering { return d.steering }

// TAP is Options.TAP, the device the queue pairs read and write.
func (d *Device) TAP() *tap.Device { return d.opts.TAP }

// Negotiated returns the features the driver acked and the receive
// offloads the TAP delivers to the guest now (TUNSETOFFLOAD: from the
// acked features, then GUEST_OFFLOADS_SET); ok is false before
// SetFeatures succeeds and after Reset.
func (d *Device) Negotiated() (acked virtio.Features, offloads offload.TunFlags, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.acked, d.tunOffl, d.ackedOK
}

// Pairs is the number of queue pairs: max_virtqueue_pairs.
func (d *Device) Pairs() int { return len(d.pairs) }

// Queues is the number of virtqueues the device has (virtio-pci's
// num_queues): two per pair, and the control queue with
// Options.ControlQueue.
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

// Config is the device's config space (struct virtio_net_config), for a
// transport that keeps its own copy; ReadConfig reads it by offset.
func (d *Device) Config() virtio.NetConfig {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.config
}

// MAC is the guest's MAC address now: Options.MAC, or what the driver set
// since (CTRL_MAC_ADDR, a config space write).
func (d *Device) MAC() net.HardwareAddr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append(net.HardwareAddr(nil), d.config.MAC[:]...)
}

// ReadConfig reads len(b) bytes of the config space from offset off, as a
// driver's access to the device-specific configuration does (virtio-pci's
// device_cfg). Fields the offered features leave out read as zero.
func (d *Device) ReadConfig(off int, b []byte) error {
	cfg := d.Config()
	return cfg.ReadWindow(b, off, d.offered, virtio.LittleEndian)
}

// WriteConfig writes b to the config space at offset off. A driver may
// write only the MAC (legacy drivers without CTRL_MAC_ADDR, virtio 1.2
// §5.1.4); anything else is refused.
func (d *Device) WriteConfig(off int, b []byte) error {
	return d.writeConfig(off, b, false)
}

// writeConfig writes the config space; migration lifts the read-only rule
// (vhost-user SET_CONFIG from a migration stream).
func (d *Device) writeConfig(off int, b []byte, migration bool) error {
	end := off + len(b)
	if off < 0 || end > 6 && !migration {
		return fmt.Errorf("write config: bytes %d to %d are read-only", off, end)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var buf [virtio.NetConfigMaxLen]byte
	if err := d.config.Encode(buf[:], virtio.LittleEndian); err != nil {
		return err
	}
	if end > len(buf) {
		return fmt.Errorf("write config: bytes %d to %d outside the %d-byte config", off, end, len(buf))
	}
	copy(buf[off:], b)
	return d.config.Decode(buf[:], virtio.LittleEndian)
}

// Counters returns the statistics of queue pair i, which live as long as
// the Device, across restarts.
func (d *Device) Counters(i int) *engine.Counters { return d.counters[i] }

// SetFeatures takes the features the driver acked, at FEATURES_OK: it
// checks them against the offer and the spec's dependency rules (virtio
// 1.2 §5.1.3.1), sets the TAP's vnet header size to the header they imply,
// and asks the kernel for the receive offloads the guest can take
// (TUNSETOFFLOAD). The acked features decide everything Activate builds:
// split or packed rings, EVENT_IDX, the header size, how many queue pairs
// and where the control queue is. It fails while the device is active
// (after Activate, before Reset).
func (d *Device) SetFeatures(acked virtio.Features) error { return d.setFeatures(acked, d.offered) }

// setFeatures is SetFeatures against offered, the offer of the transport
// the driver negotiated through (VhostUser's).
func (d *Device) setFeatures(acked, offered virtio.Features) error {
	if extra := acked &^ offered; extra != 0 {
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
	if i := d.running(); i >= 0 {
		return fmt.Errorf("set features: queue %d is running", i)
	}
	// Until the TAP agrees, the device has no features: a failure below
	// must not leave the old ones acked over a TAP set up for the new.
	d.ackedOK = false
	if err := d.opts.TAP.SetVnetHdrSize(virtio.HdrLenFor(acked)); err != nil {
		return fmt.Errorf("set features: %w", err)
	}
	if err := d.opts.TAP.SetOffload(offload.TunFlagsFor(acked)); err != nil {
		return fmt.Errorf("set features: %w", err)
	}
	d.acked = acked
	d.tunOffl = offload.TunFlagsFor(acked)
	d.offl, d.offlSet = 0, false
	d.ackedOK = true
	// virtio 1.2 §5.1.6.5.5: multiqueue starts disabled; the driver
	// enables more pairs with VQ_PAIRS_SET.
	d.active = d.usablePairs()
	if d.opts.ControlQueue {
		d.active = 1
	}
	d.log.Debug("features acked", "features", acked.String(), "tun_offload", offload.TunFlagsFor(acked).String())
	return nil
}

// usablePairs is how many queue pairs the driver may use. Where the
// device serves the control queue it talks to the driver itself, and the
// spec's rule holds: max_virtqueue_pairs with VIRTIO_NET_F_MQ, one without
// (virtio 1.2 §5.1.2). Where the transport serves it (vhost-user), the
// transport decides which rings run, and does not pass MQ on (QEMU keeps
// it for its own control queue): every pair may. d.mu is held.
func (d *Device) usablePairs() int {
	if !d.opts.ControlQueue || d.acked.Has(virtio.NetFMQ) {
		return len(d.pairs)
	}
	return 1
}

// ctrlIndex is the control queue's virtqueue number for the acked
// features (virtio 1.2 §5.1.2: 2N, N the usable pairs), or -1 where the
// device does not serve it. d.mu is held.
func (d *Device) ctrlIndex() int {
	if !d.opts.ControlQueue || !d.acked.Has(virtio.NetFCtrlVQ) {
		return -1
	}
	return 2 * d.usablePairs()
}

// running returns the number of a virtqueue that runs, or -1. d.mu is held.
func (d *Device) running() int {
	if d.ctrl != nil {
		return d.ctrlIndex()
	}
	for i := range d.pairs {
		for dir, s := range d.pairs[i].q {
			if s != nil {
				return 2*i + dir
			}
		}
	}
	return -1
}

// SetGuestOffloads applies VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET: the receive
// offloads the guest wants now (ethtool -K in the guest), for a transport
// that serves the control queue itself.
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
	if err := d.opts.TAP.SetOffload(flags); err != nil {
		return err
	}
	d.tunOffl = flags
	d.offl, d.offlSet = bits, true
	return nil
}

// Reset is the driver's device reset (writing 0 to device_status), or
// the transport going away: every queue stops, the acked features are
// forgotten and what the driver changed in the config space goes back to
// what New set. It returns where each virtqueue stopped, by virtqueue
// number (Queues() of them; the zero QueueState for one that did not
// run): what a VMM saves to restore the rings later with
// QueueConfig.Resume (a snapshot, a migration). Frames the guest had
// posted and the device not yet used stay posted.
func (d *Device) Reset() []QueueState {
	states := make([]QueueState, d.Queues())
	d.mu.Lock()
	ci := d.ctrlIndex()
	d.mu.Unlock()
	if q, err := d.stopCtrl(); err == nil && ci >= 0 && ci < len(states) {
		states[ci] = stateOf(q)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.pairs {
		if err := d.stopPair(i); err != nil {
			d.log.Warn("stop queue pair on reset", "queue", i, "error", err)
		}
		for dir, s := range d.pairs[i].q {
			if s != nil {
				states[2*i+dir] = stateOf(s.q)
				s.close()
			}
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
	d.offl, d.offlSet = 0, false
	d.mem = nil
	d.resetRSS()
	return states
}
