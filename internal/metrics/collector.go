package metrics

import (
	"slices"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
)

// Collector is a prometheus.Collector of the devices, vhost-user servers
// and TAPs added to it, until they are removed. Its methods are safe for
// concurrent use; the zero value is ready.
//
// A device's series are there from AddDevice to its remove: its queue
// pairs' counters live as long as the device, across the driver's resets
// and the front-ends that come and go. Remove a device before closing it
// or its TAP.
type Collector struct {
	mu      sync.Mutex
	devices []*deviceEntry
	servers []*serverEntry
	taps    []*tapEntry
}

type deviceEntry struct{ dev *backend.Device }

type serverEntry struct {
	srv *vhostuser.Server
	tap string
}

// tapEntry is a TAP known by name and ifindex, so that another link that
// takes the name later is not reported as this one.
type tapEntry struct {
	name, netNS string
	index       int
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns an empty Collector.
func NewCollector() *Collector { return new(Collector) }

// NewRegistry returns a registry of c, client_golang's process collector
// (process_*: CPU, memory, open fds) and its Go collector (go_*): what
// vmnet-helper serves.
func NewRegistry(c *Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return reg
}

// AddDevice exports dev's counters and state, labelled with its TAP's
// name, until remove is called.
func (c *Collector) AddDevice(dev *backend.Device) (remove func()) {
	e := &deviceEntry{dev: dev}
	c.mu.Lock()
	c.devices = append(c.devices, e)
	c.mu.Unlock()
	return func() { removeEntry(c, &c.devices, e) }
}

// AddServer exports srv's counters, labelled tap (the name of the TAP of
// the device it serves), until remove is called.
func (c *Collector) AddServer(srv *vhostuser.Server, tapName string) (remove func()) {
	e := &serverEntry{srv: srv, tap: tapName}
	c.mu.Lock()
	c.servers = append(c.servers, e)
	c.mu.Unlock()
	return func() { removeEntry(c, &c.servers, e) }
}

// AddTAP exports the link state and kernel counters of a TAP this process
// made and handed on (vmnet-helper serve-fds), found by info's name and
// index in network namespace netNS ("" for the caller's), for as long as
// it exists: the first scrape that does not find it forgets it. Adding
// also forgets every TAP already gone, so the list holds only TAPs the
// kernel holds.
func (c *Collector) AddTAP(info tap.Info, netNS string) {
	c.mu.Lock()
	taps := slices.Clone(c.taps)
	c.mu.Unlock()
	var gone []*tapEntry
	for _, e := range taps {
		if _, ok := e.lookup(); !ok {
			gone = append(gone, e)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.taps = slices.DeleteFunc(c.taps, func(e *tapEntry) bool { return slices.Contains(gone, e) })
	c.taps = append(c.taps, &tapEntry{name: info.Name, netNS: netNS, index: info.Index})
}

func (e *tapEntry) lookup() (tap.Info, bool) {
	info, err := tap.Lookup(e.name, e.netNS)
	return info, err == nil && info.Index == e.index
}

func removeEntry[E comparable](c *Collector, list *[]E, e E) {
	c.mu.Lock()
	defer c.mu.Unlock()
	*list = slices.DeleteFunc(*list, func(x E) bool { return x == e })
}

// Snapshot reads every counter now.
func (c *Collector) Snapshot() Snapshot {
	c.mu.Lock()
	devices, servers, taps := slices.Clone(c.devices), slices.Clone(c.servers), slices.Clone(c.taps)
	c.mu.Unlock()
	s := Snapshot{Devices: make([]DeviceStats, 0, len(devices))}
	for _, e := range devices {
		s.Devices = append(s.Devices, deviceStats(e.dev))
	}
	for _, e := range servers {
		s.VhostUser = append(s.VhostUser, ServerStats{TAP: e.tap, Stats: e.srv.Stats()})
	}
	var gone []*tapEntry
	for _, e := range taps {
		info, ok := e.lookup()
		if !ok {
			gone = append(gone, e)
			continue
		}
		s.TAPs = append(s.TAPs, TAPStats{Name: e.name, Link: *linkStatsOf(info)})
	}
	if len(gone) > 0 {
		c.mu.Lock()
		c.taps = slices.DeleteFunc(c.taps, func(e *tapEntry) bool { return slices.Contains(gone, e) })
		c.mu.Unlock()
	}
	return s
}

func deviceStats(dev *backend.Device) DeviceStats {
	t := dev.TAP()
	ds := DeviceStats{TAP: t.Name(), Steering: string(dev.Steering())}
	if info, err := t.Info(); err == nil {
		ds.Link = linkStatsOf(info)
	}
	if acked, offloads, ok := dev.Negotiated(); ok {
		ds.Features, ds.Offloads = acked.String(), offloads.String()
	}
	ds.Queues = make([]engine.Snapshot, dev.Pairs())
	for i := range ds.Queues {
		ds.Queues[i] = dev.Counters(i).Snapshot()
	}
	if dev.Features().Has(virtio.NetFCtrlVQ) {
		ctrl := dev.CtrlStats()
		ds.Ctrl = &ctrl
	}
	return ds
}

// Describe sends the descriptor of every metric the Collector can export.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range allFamilies() {
		ch <- f.desc
	}
}

// Collect sends the metrics of a Snapshot.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.Snapshot().collect(ch)
}

func (s Snapshot) collect(ch chan<- prometheus.Metric) {
	emit := func(f *family, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(f.desc, f.valueType(), float64(v), labels...)
	}
	for _, d := range s.Devices {
		for q, qs := range d.Queues {
			queue := strconv.Itoa(q)
			i := 0
			for _, v := range qs.All() {
				emit(queueFamilies[i], v, d.TAP, queue)
				i++
			}
		}
		emit(deviceInfo, 1, d.TAP, d.Steering, d.Features, d.Offloads)
		if d.Ctrl != nil {
			i := 0
			for _, v := range d.Ctrl.All() {
				emit(ctrlFamilies[i], v, d.TAP)
				i++
			}
		}
		if d.Link != nil {
			d.Link.collect(emit, d.TAP)
		}
	}
	for _, t := range s.TAPs {
		t.Link.collect(emit, t.Name)
	}
	for _, srv := range s.VhostUser {
		i := 0
		for _, v := range srv.Stats.All() {
			emit(serverFamilies[i], v, srv.TAP)
			i++
		}
		for r, n := range srv.Stats.Messages {
			emit(messages, n, srv.TAP, r.String())
		}
		for d, v := range srv.Stats.Limited.All() {
			emit(limited, v, srv.TAP, d.Name)
		}
	}
}

func (l *LinkStats) collect(emit func(*family, uint64, ...string), name string) {
	emit(tapUp, b2u(l.Up), name)
	emit(tapCarrier, b2u(l.Carrier), name)
	i := 0
	for _, v := range l.Counters.All() {
		emit(linkFamilies[i], v, name)
		i++
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
