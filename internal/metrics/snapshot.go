package metrics

import (
	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/vhostuser"
)

// Snapshot is every counter a Collector exports, read at one moment: what
// Handler serves as JSON on /stats. Each counter object's names come from
// the table that declares it, as the metrics' do.
type Snapshot struct {
	Devices   []DeviceStats `json:"devices"`
	VhostUser []ServerStats `json:"vhost_user,omitempty"`
	// TAPs are those added with Collector.AddTAP that still exist.
	TAPs []TAPStats `json:"taps,omitempty"`
}

// DeviceStats are one device's counters and state.
type DeviceStats struct {
	TAP string `json:"tap"`
	// Link is nil when the TAP's link could not be read.
	Link *LinkStats `json:"link,omitempty"`
	// Steering is backend.Device.Steering; Features and Offloads are
	// what backend.Device.Negotiated reports, "" until the driver acks
	// features.
	Steering string `json:"steering"`
	Features string `json:"features"`
	Offloads string `json:"offloads"`
	// Queues are the queue pairs' counters, by pair.
	Queues []engine.Snapshot `json:"queues"`
	// Ctrl is the control queue's, where the device serves it.
	Ctrl *backend.CtrlStats `json:"ctrl,omitempty"`
}

// LinkStats are a TAP's link state and kernel counters.
type LinkStats struct {
	Up       bool          `json:"up"`
	Carrier  bool          `json:"carrier"`
	Counters tap.LinkStats `json:"counters"`
}

// TAPStats are a handed-out TAP's link state and kernel counters.
type TAPStats struct {
	Name string    `json:"name"`
	Link LinkStats `json:"link"`
}

// ServerStats are a vhost-user server's counters; TAP names the device it
// serves.
type ServerStats struct {
	TAP   string          `json:"tap"`
	Stats vhostuser.Stats `json:"stats"`
}

// Queue returns the counters of queue pair q of the device on the TAP
// called name, and whether there is one.
func (s Snapshot) Queue(name string, q int) (engine.Snapshot, bool) {
	for _, d := range s.Devices {
		if d.TAP == name && q >= 0 && q < len(d.Queues) {
			return d.Queues[q], true
		}
	}
	return engine.Snapshot{}, false
}

func linkStatsOf(info tap.Info) *LinkStats {
	return &LinkStats{Up: info.Up, Carrier: info.Carrier, Counters: info.Stats}
}
