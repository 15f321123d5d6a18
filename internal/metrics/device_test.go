package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/tap"
	itest "github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/vhostuser"
)

// series counts what c exports of each family.
func series(t *testing.T, c prometheus.Collector) map[string]int {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, mf := range mfs {
		n[mf.GetName()] = len(mf.GetMetric())
	}
	return n
}

// TestCollectorDevices adds a real device, its server and a handed-out
// TAP, and checks that each one's series come and go with it.
func TestCollectorDevices(t *testing.T) {
	itest.RequireTUN(t)
	ns := itest.NetNS(t)
	tp, err := tap.Create(tap.Options{Name: "mt%d", Queues: 2, NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	dev, err := backend.New(backend.Options{TAP: tp, ControlQueue: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	srv := vhostuser.NewServer(dev.VhostUser(), vhostuser.Options{})

	c := NewCollector()
	if n := series(t, c); len(n) != 0 {
		t.Errorf("empty collector: got %v", n)
	}
	removeDev := c.AddDevice(dev)
	removeSrv := c.AddServer(srv, tp.Name())
	n := series(t, c)
	for f, want := range map[string]int{"vmnet_queue_tx_packets_total": 2, "vmnet_device_info": 1, "vmnet_ctrl_commands_total": 1,
		"vmnet_tap_up": 1, "vmnet_tap_tx_dropped_total": 1, "vmnet_vhost_user_sessions_total": 1} {
		if n[f] != want {
			t.Errorf("%s: got %d series, want %d", f, n[f], want)
		}
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
	s := c.Snapshot()
	if len(s.Devices) != 1 || s.Devices[0].TAP != tp.Name() || s.Devices[0].Link == nil || s.Devices[0].Link.Up ||
		s.Devices[0].Features != "" || s.Devices[0].Steering != "hash" {
		t.Errorf("snapshot of a new device (TAP down, nothing acked): got %+v", s.Devices)
	}
	if err := tp.SetUp(true); err != nil {
		t.Fatal(err)
	}
	if s := c.Snapshot(); !s.Devices[0].Link.Up {
		t.Errorf("TAP up: snapshot says %+v", s.Devices[0].Link)
	}

	// A handed-out TAP, in this namespace as serve-fds makes them.
	other, err := tap.Create(tap.Options{Name: "mt%d", NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	info, err := other.Info()
	if err != nil {
		other.Close()
		t.Fatal(err)
	}
	c.AddTAP(info, ns)
	if got := series(t, c)["vmnet_tap_up"]; got != 2 {
		t.Errorf("with a handed-out TAP: got %d vmnet_tap_up series, want 2", got)
	}
	other.Close()
	if got := series(t, c)["vmnet_tap_up"]; got != 1 {
		t.Errorf("the handed-out TAP gone: got %d vmnet_tap_up series, want 1", got)
	}
	if len(c.taps) != 0 {
		t.Errorf("the handed-out TAP gone: still %d in the list", len(c.taps))
	}

	removeSrv()
	removeDev()
	if n := series(t, c); len(n) != 0 {
		t.Errorf("everything removed: got %v", n)
	}
}
