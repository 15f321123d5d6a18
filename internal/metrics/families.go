package metrics

import (
	"iter"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/stats"
	"github.com/vmnet-dev/vmnet/vhostuser"
)

// namespace prefixes every metric's name.
const namespace = "vmnet"

// Labels. A queue pair's series carry tap and queue, a device's and a
// server's tap: the TAP's name joins them.
const (
	labelTAP      = "tap"
	labelQueue    = "queue"
	labelSteering = "steering"
	labelFeatures = "features"
	labelOffloads = "offloads"
	labelRequest  = "request"
	labelLimit    = "limit"
)

// A family is one metric name: its descriptor, and what docs/operations.md
// says of it.
type family struct {
	desc   *prometheus.Desc
	name   string
	help   string
	kind   stats.Kind
	labels []string
	drop   bool   // the table marks it as a count of losses
	scope  string // what one series describes, for the docs
}

func (f *family) valueType() prometheus.ValueType {
	if f.kind == stats.Gauge {
		return prometheus.GaugeValue
	}
	return prometheus.CounterValue
}

func newFamily(name, help string, kind stats.Kind, drop bool, scope string, labels ...string) *family {
	return &family{
		desc:   prometheus.NewDesc(name, help, labels, nil),
		name:   name,
		help:   help,
		kind:   kind,
		labels: labels,
		drop:   drop,
		scope:  scope,
	}
}

// fromTable makes a family of each entry a table yields, in table order:
// vmnet_SUBSYSTEM_NAME, with _total on counters.
func fromTable(subsystem, scope string, entries iter.Seq2[stats.Desc, uint64], labels ...string) []*family {
	var fs []*family
	for d := range entries {
		name := namespace + "_" + subsystem + "_" + d.Name
		if d.Kind == stats.Counter {
			name += "_total"
		}
		fs = append(fs, newFamily(name, d.Help, d.Kind, d.Drop, scope, labels...))
	}
	return fs
}

// Where a series belongs, for the docs.
const (
	scopeQueue  = "queue pair"
	scopeDevice = "device"
	scopeTAP    = "TAP"
	scopeServer = "vhost-user server"
)

// The families, each from the table that declares its counters. The zero
// values' All yield the tables' declarations.
var (
	queueFamilies  = fromTable("queue", scopeQueue, engine.Snapshot{}.All(), labelTAP, labelQueue)
	ctrlFamilies   = fromTable("ctrl", scopeDevice, backend.CtrlStats{}.All(), labelTAP)
	linkFamilies   = fromTable("tap", scopeTAP, tap.LinkStats{}.All(), labelTAP)
	serverFamilies = fromTable("vhost_user", scopeServer, vhostuser.Stats{}.All(), labelTAP)

	deviceInfo = newFamily(namespace+"_device_info",
		"a device's steering mode, negotiated features and the offloads its TAP delivers (empty until the driver acks features); the value is 1",
		stats.Gauge, false, scopeDevice, labelTAP, labelSteering, labelFeatures, labelOffloads)
	tapUp = newFamily(namespace+"_tap_up",
		"1 while the TAP is administratively up (the guest's link status follows it), 0 while it is down",
		stats.Gauge, false, scopeTAP, labelTAP)
	tapCarrier = newFamily(namespace+"_tap_carrier",
		"1 while the TAP has carrier: it is up and a queue pair runs",
		stats.Gauge, false, scopeTAP, labelTAP)
	messages = newFamily(namespace+"_vhost_user_messages_total",
		"vhost-user requests received, by request name (requests of unknown types are in vmnet_vhost_user_unknown_total)",
		stats.Counter, false, scopeServer, labelTAP, labelRequest)
	limited = newFamily(namespace+"_vhost_user_limited_total",
		"connections closed and requests refused for going past a per-connection limit, by limit",
		stats.Counter, true, scopeServer, labelTAP, labelLimit)
)

// allFamilies lists every family, in the order the docs list them.
func allFamilies() []*family {
	var fs []*family
	fs = append(fs, queueFamilies...)
	fs = append(fs, deviceInfo)
	fs = append(fs, ctrlFamilies...)
	fs = append(fs, tapUp, tapCarrier)
	fs = append(fs, linkFamilies...)
	fs = append(fs, serverFamilies...)
	fs = append(fs, messages, limited)
	return fs
}
