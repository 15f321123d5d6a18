package metrics

import (
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/vhostuser"
)

// snapshotCollector exports a Snapshot made by hand, as a Collector
// exports the one it reads.
type snapshotCollector Snapshot

func (s snapshotCollector) Describe(ch chan<- *prometheus.Desc) { (*Collector)(nil).Describe(ch) }
func (s snapshotCollector) Collect(ch chan<- prometheus.Metric) { Snapshot(s).collect(ch) }

// testSnapshot is a two-pair device that serves its control queue, its
// vhost-user server, and a handed-out TAP.
func testSnapshot() Snapshot {
	var q0, q1 engine.Snapshot
	q0[engine.TXPackets], q0[engine.TXBytes], q0[engine.RXDropNoBuffers] = 10, 1500, 2
	q1[engine.RXPackets] = 7
	var ctrl backend.CtrlStats
	ctrl[backend.CtrlErrors] = 1
	st := vhostuser.Stats{Sessions: 3, Rejected: 1, Messages: map[vhostuser.Request]uint64{vhostuser.ReqGetFeatures: 3, vhostuser.ReqSetMemTable: 2}}
	st.Limited[vhostuser.LimitMemSlots] = 1
	return Snapshot{
		Devices: []DeviceStats{{
			TAP:      "vu0",
			Link:     &LinkStats{Up: true, Carrier: true, Counters: tap.LinkStats{tap.TXDropped: 4, tap.RXDropped: 5}},
			Steering: "hash", Features: "NET_F_CSUM|VERSION_1", Offloads: "csum",
			Queues: []engine.Snapshot{q0, q1},
			Ctrl:   &ctrl,
		}},
		VhostUser: []ServerStats{{TAP: "vu0", Stats: st}},
		TAPs:      []TAPStats{{Name: "tap7", Link: LinkStats{Up: true}}},
	}
}

func TestCollect(t *testing.T) {
	want := `
# HELP vmnet_queue_tx_packets_total frames written to the TAP
# TYPE vmnet_queue_tx_packets_total counter
vmnet_queue_tx_packets_total{queue="0",tap="vu0"} 10
vmnet_queue_tx_packets_total{queue="1",tap="vu0"} 0
# HELP vmnet_queue_rx_drop_no_buffers_total frames read in a batch that then found too few guest buffers for them
# TYPE vmnet_queue_rx_drop_no_buffers_total counter
vmnet_queue_rx_drop_no_buffers_total{queue="0",tap="vu0"} 2
vmnet_queue_rx_drop_no_buffers_total{queue="1",tap="vu0"} 0
# HELP vmnet_device_info ` + deviceInfo.help + `
# TYPE vmnet_device_info gauge
vmnet_device_info{features="NET_F_CSUM|VERSION_1",offloads="csum",steering="hash",tap="vu0"} 1
# HELP vmnet_ctrl_errors_total control commands answered VIRTIO_NET_ERR: unknown, not negotiated, malformed or failed
# TYPE vmnet_ctrl_errors_total counter
vmnet_ctrl_errors_total{tap="vu0"} 1
# HELP vmnet_tap_up ` + tapUp.help + `
# TYPE vmnet_tap_up gauge
vmnet_tap_up{tap="tap7"} 1
vmnet_tap_up{tap="vu0"} 1
# HELP vmnet_tap_tx_dropped_total frames written to the TAP's queue files that the kernel dropped (the link's rx_dropped)
# TYPE vmnet_tap_tx_dropped_total counter
vmnet_tap_tx_dropped_total{tap="tap7"} 0
vmnet_tap_tx_dropped_total{tap="vu0"} 4
# HELP vmnet_vhost_user_sessions_total front-end connections served
# TYPE vmnet_vhost_user_sessions_total counter
vmnet_vhost_user_sessions_total{tap="vu0"} 3
# HELP vmnet_vhost_user_messages_total ` + messages.help + `
# TYPE vmnet_vhost_user_messages_total counter
vmnet_vhost_user_messages_total{request="GET_FEATURES",tap="vu0"} 3
vmnet_vhost_user_messages_total{request="SET_MEM_TABLE",tap="vu0"} 2
`
	names := []string{"vmnet_queue_tx_packets_total", "vmnet_queue_rx_drop_no_buffers_total", "vmnet_device_info",
		"vmnet_ctrl_errors_total", "vmnet_tap_up", "vmnet_tap_tx_dropped_total", "vmnet_vhost_user_sessions_total",
		"vmnet_vhost_user_messages_total"}
	c := snapshotCollector(testSnapshot())
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// Every family is there: one series per queue pair and counter, and
	// one per limit.
	for f, n := range map[string]int{
		"vmnet_queue_wakeups_total":        2,
		"vmnet_ctrl_kicks_total":           1,
		"vmnet_vhost_user_limited_total":   len(vhostuser.LimitStats{}),
		"vmnet_tap_carrier":                2,
		"vmnet_tap_rx_dropped_total":       2,
		"vmnet_vhost_user_unknown_total":   1,
		"vmnet_queue_tx_soft_csum_total":   2,
		"vmnet_vhost_user_rejected_total":  1,
		"vmnet_queue_memory_faults_total":  2,
		"vmnet_ctrl_memory_faults_total":   1,
		"vmnet_queue_rx_interrupts_total":  2,
		"vmnet_queue_tx_drop_kernel_total": 2,
	} {
		if got := testutil.CollectAndCount(c, f); got != n {
			t.Errorf("%s: got %d series, want %d", f, got, n)
		}
	}
	if got, want := testutil.CollectAndCount(c), 2*len(queueFamilies)+1+len(ctrlFamilies)+2*(2+len(linkFamilies))+
		len(serverFamilies)+2+len(vhostuser.LimitStats{}); got != want {
		t.Errorf("series: got %d, want %d", got, want)
	}
}

// TestLint runs promlint, the Prometheus conventions as client_golang
// checks them, over every family.
func TestLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(snapshotCollector(testSnapshot()))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestFamilies checks the names the tables make: the namespace, _total
// on every counter and only there, each name once.
func TestFamilies(t *testing.T) {
	valid := regexp.MustCompile(`^vmnet_[a-z0-9_]+[a-z0-9]$`)
	seen := map[string]bool{}
	for _, f := range allFamilies() {
		if !valid.MatchString(f.name) || strings.Contains(f.name, "__") {
			t.Errorf("%s: not vmnet_snake_case", f.name)
		}
		if seen[f.name] {
			t.Errorf("%s: twice", f.name)
		}
		seen[f.name] = true
		if counter := f.valueType() == prometheus.CounterValue; counter != strings.HasSuffix(f.name, "_total") {
			t.Errorf("%s: a %v, want _total on counters only", f.name, f.kind)
		}
		if f.help == "" || f.scope == "" {
			t.Errorf("%s: no help or scope", f.name)
		}
	}
	if n := len(engine.Snapshot{}); len(queueFamilies) != n {
		t.Errorf("queue families: got %d, want one per engine counter (%d)", len(queueFamilies), n)
	}
}

func TestSnapshotJSON(t *testing.T) {
	s := testSnapshot()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"tx_packets":10`, `"rx_drop_no_buffers":2`, `"errors":1`, `"tx_dropped":4`,
		`"GET_FEATURES":3`, `"sessions":3`, `"mem_slots":1`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	var back Snapshot
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("read back %s: %v", b, err)
	}
	if !reflect.DeepEqual(back, s) {
		t.Errorf("read back:\ngot  %+v\nwant %+v", back, s)
	}
	if q, ok := back.Queue("vu0", 1); !ok || q[engine.RXPackets] != 7 {
		t.Errorf("Queue(vu0, 1): got %v, %v", q, ok)
	}
	if _, ok := back.Queue("vu1", 0); ok {
		t.Error("Queue of a TAP not there: found")
	}
}
