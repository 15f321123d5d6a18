package harness

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/internal/metrics"
	"github.com/vmnet-dev/vmnet/vhostuser"
)

func TestParseStats(t *testing.T) {
	// An earlier printout, then one with a log line between its lines.
	in := `vmnet-helper: tap vu0 queue 0: tx_packets=1 tx_bytes=2 rx_packets=3 rx_bytes=4
vmnet-helper: vhost-user sessions=1 rejected=0 unknown=0 messages: [GET_FEATURES=1]
2026-11-25T11:45:09.956Z [DEBUG] vmnet-helper.vhostuser: ring started: queue=0 size=256
vmnet-helper: tap vu0 queue 0: tx_packets=13 tx_bytes=1146 rx_packets=10 rx_bytes=880 rx_wait_buffers=2
2026-11-25T11:45:09.957Z [DEBUG] vmnet-helper.netdev: queue pair started: tap=vu0 queue=1
vmnet-helper: tap vu0 queue 1: tx_packets=0 rx_packets=2 tx_drop_kernel=5 broken_rings=1
vmnet-helper: vhost-user sessions=2 rejected=1 unknown=3 messages: [ADD_MEM_REG=2 GET_FEATURES=4]
`
	st, err := ParseStats(in)
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{
		Text: `vmnet-helper: tap vu0 queue 0: tx_packets=13 tx_bytes=1146 rx_packets=10 rx_bytes=880 rx_wait_buffers=2
vmnet-helper: tap vu0 queue 1: tx_packets=0 rx_packets=2 tx_drop_kernel=5 broken_rings=1
vmnet-helper: vhost-user sessions=2 rejected=1 unknown=3 messages: [ADD_MEM_REG=2 GET_FEATURES=4]
`,
		TAP: "vu0",
		Queues: []Counters{
			{engine.TXPackets: 13, engine.TXBytes: 1146, engine.RXPackets: 10, engine.RXBytes: 880, engine.RXWaitBuffers: 2},
			{engine.TXPackets: 0, engine.RXPackets: 2, engine.TXDropKernel: 5, engine.BrokenRings: 1},
		},
		Sessions: 2, Rejected: 1, Unknown: 3,
		Messages: map[string]uint64{"ADD_MEM_REG": 2, "GET_FEATURES": 4},
	}
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("ParseStats:\ngot  %+v\nwant %+v", st, want)
	}
	if n, which := st.Queues[1].Drops(); n != 6 || which != "tx_drop_kernel=5 broken_rings=1" {
		t.Errorf("Drops: got %d %q, want 6 %q", n, which, "tx_drop_kernel=5 broken_rings=1")
	}
	if got, want := st.Queues[0].Sub(st.Queues[1]).Brief(), "tx_packets=13 tx_bytes=1146 rx_packets=8 rx_bytes=880"; got != want {
		t.Errorf("Sub and Brief: got %q, want %q", got, want)
	}
	if got := st.Total(engine.RXPackets); got != 12 {
		t.Errorf("Total(rx_packets): got %d, want 12", got)
	}
	if got := st.MessageList(); got != "ADD_MEM_REG=2 GET_FEATURES=4" {
		t.Errorf("MessageList: got %q", got)
	}
	// Refusals by limit come after the messages when there are any.
	withLimits := "vmnet-helper: tap vu0 queue 0: tx_packets=1 rx_packets=0\n" +
		"vmnet-helper: vhost-user sessions=1 rejected=2 unknown=0 messages: [GET_FEATURES=1] limited: [mem_slots=2]\n"
	if st, err := ParseStats(withLimits); err != nil || st.Rejected != 2 || st.MessageList() != "GET_FEATURES=1" {
		t.Errorf("ParseStats(%q): got %+v, %v", withLimits, st, err)
	}
	for _, bad := range []string{"", "vmnet-helper: vhost-user sessions=1 rejected=0 unknown=0 messages: []\n",
		"vmnet-helper: tap vu0 queue 1: tx_packets=1\nvmnet-helper: vhost-user sessions=1 rejected=0 unknown=0 messages: []\n"} {
		if _, err := ParseStats(bad); err == nil {
			t.Errorf("ParseStats(%q): got no error", bad)
		}
	}
}

func TestParsePing(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     Ping
	}{
		{"busybox", "--- 10.0.2.2 ping statistics ---\n3 packets transmitted, 3 packets received, 0% packet loss\n" +
			"round-trip min/avg/max = 0.902/4.686/17.817 ms\n", Ping{3, 3, 0.902, 4.686, 17.817}},
		{"iputils", "--- 10.0.2.15 ping statistics ---\n5 packets transmitted, 5 received, 0% packet loss, time 2030ms\n" +
			"rtt min/avg/max/mdev = 0.757/1.463/3.083/0.833 ms\n", Ping{5, 5, 0.757, 1.463, 3.083}},
		{"busybox, no reply", "3 packets transmitted, 0 packets received, 100% packet loss\n", Ping{Sent: 3}},
	} {
		got, err := ParsePing(c.in)
		if err != nil || got != c.want {
			t.Errorf("%s: got %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
	if _, err := ParsePing("ping: sendto: Network unreachable"); err == nil {
		t.Errorf("ParsePing of an error: got no error")
	}
}

func TestParseIperfJSON(t *testing.T) {
	in := `[ 1.2] kernel noise
{"start": {"test_start": {"num_streams": 2}},
 "end": {"sum_sent": {"seconds": 5.0, "bytes": 1000, "bits_per_second": 1.6e9, "retransmits": 7},
         "sum_received": {"seconds": 5.0, "bytes": 990, "bits_per_second": 1.5e9}}}`
	got, err := ParseIperfJSON(in)
	want := Iperf{Seconds: 5, SentBytes: 1000, SentBPS: 1.6e9, RecvBytes: 990, RecvBPS: 1.5e9, Retransmits: 7, Streams: 2}
	if err != nil || got != want {
		t.Fatalf("ParseIperfJSON: got %+v, %v; want %+v", got, err, want)
	}
	if got.Gbps() != 1.5 {
		t.Errorf("Gbps: got %v, want 1.5", got.Gbps())
	}
	for _, bad := range []string{"iperf3: error", `{"start": {}, "end": {}, "error": "unable to connect to server"}`, `{"end": {}}`} {
		if _, err := ParseIperfJSON(bad); err == nil {
			t.Errorf("ParseIperfJSON(%q): got no error", bad)
		}
	}
}

func TestParseEthtool(t *testing.T) {
	f := ParseEthtoolFeatures("Features for eth0:\nrx-checksumming: on [fixed]\ntx-checksumming: off\n\ttx-checksum-ipv4: off [fixed]\nrx-gro-hw: on\n")
	want := map[string]bool{"rx-checksumming": true, "tx-checksumming": false, "tx-checksum-ipv4": false, "rx-gro-hw": true}
	if !reflect.DeepEqual(f, want) {
		t.Errorf("ParseEthtoolFeatures: got %v, want %v", f, want)
	}
	s := ParseEthtoolStats("NIC statistics:\n     rx_queue_0_packets: 14\n     tx_queue_1_packets: 0\n")
	if want := map[string]uint64{"rx_queue_0_packets": 14, "tx_queue_1_packets": 0}; !reflect.DeepEqual(s, want) {
		t.Errorf("ParseEthtoolStats: got %v, want %v", s, want)
	}
}

func TestParseTestpmd(t *testing.T) {
	in := `Telling cores to stop...
Waiting for lcores to finish...

  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 3              RX-dropped: 1             RX-total: 4
  TX-packets: 581696         TX-dropped: 79740384      TX-total: 80322080
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 3              RX-dropped: 1             RX-total: 4
  TX-packets: 581696         TX-dropped: 79740384      TX-total: 80322080
`
	got, err := ParseTestpmd(in)
	if want := (Testpmd{RXPackets: 3, RXDropped: 1, TXPackets: 581696, TXDropped: 79740384}); err != nil || got != want {
		t.Fatalf("ParseTestpmd: got %+v, %v; want %+v", got, err, want)
	}
	if _, err := ParseTestpmd("EAL: Cannot create lock on '/var/run/dpdk/x/config'"); err == nil {
		t.Errorf("ParseTestpmd without statistics: got no error")
	}
}

func TestVhostUserNICArgs(t *testing.T) {
	for _, c := range []struct {
		nic  VhostUserNIC
		want []string
	}{
		{VhostUserNIC{Socket: "/s"}, []string{"-chardev", "socket,id=vu0,path=/s",
			"-netdev", "vhost-user,id=n0,chardev=vu0,queues=1",
			"-device", "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:12:34:56"}},
		{VhostUserNIC{Socket: "/s", Queues: 2, Reconnect: 1, MAC: "52:54:00:00:00:01"}, []string{"-chardev", "socket,id=vu0,path=/s,reconnect=1",
			"-netdev", "vhost-user,id=n0,chardev=vu0,queues=2",
			"-device", "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:00:00:01,mq=on"}},
		{VhostUserNIC{Socket: "/s", Server: true}, []string{"-chardev", "socket,id=vu0,path=/s,server=on,wait=off",
			"-netdev", "vhost-user,id=n0,chardev=vu0,queues=1",
			"-device", "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:12:34:56"}},
	} {
		if got := c.nic.Args(); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%+v: got %q, want %q", c.nic, got, c.want)
		}
	}
}

// StatsOf reads what a helper serves on /stats.
func TestStatsOf(t *testing.T) {
	var q0 engine.Snapshot
	q0[engine.TXPackets], q0[engine.MemoryFaults] = 5, 1
	s := metrics.Snapshot{
		Devices:   []metrics.DeviceStats{{TAP: "vu0", Queues: []engine.Snapshot{q0, {}}}},
		VhostUser: []metrics.ServerStats{{TAP: "vu0", Stats: vhostuser.Stats{Sessions: 2, Unknown: 1, Messages: map[vhostuser.Request]uint64{vhostuser.ReqGetFeatures: 3}}}},
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back metrics.Snapshot
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	st, err := StatsOf(back, string(b))
	if err != nil {
		t.Fatal(err)
	}
	if st.TAP != "vu0" || len(st.Queues) != 2 || st.Queues[0][engine.TXPackets] != 5 || st.Sessions != 2 || st.Unknown != 1 ||
		st.MessageList() != "GET_FEATURES=3" || st.Text != string(b) {
		t.Errorf("StatsOf: got %+v", st)
	}
	if n, which := st.Queues[0].Drops(); n != 1 || which != "memory_faults=1" {
		t.Errorf("Drops: got %d %q", n, which)
	}
	if _, err := StatsOf(metrics.Snapshot{}, "{}"); err == nil {
		t.Error("StatsOf of no device: got no error")
	}
}

func TestParseScrape(t *testing.T) {
	in := `# HELP vmnet_queue_tx_packets_total frames written to the TAP
# TYPE vmnet_queue_tx_packets_total counter
vmnet_queue_tx_packets_total{queue="0",tap="vu0"} 10
vmnet_queue_tx_packets_total{queue="1",tap="vu0"} 5
# TYPE vmnet_tap_up gauge
vmnet_tap_up{tap="vu0"} 1
# TYPE go_goroutines gauge
go_goroutines 12
`
	s, err := ParseScrape([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := s.Sum("vmnet_queue_tx_packets_total", "tap", "vu0"); !ok || v != 15 {
		t.Errorf("Sum of tx_packets: got %v, %v; want 15", v, ok)
	}
	if v, ok := s.Sum("vmnet_queue_tx_packets_total", "tap", "vu0", "queue", "1"); !ok || v != 5 {
		t.Errorf("Sum of queue 1's tx_packets: got %v, %v; want 5", v, ok)
	}
	if _, ok := s.Sum("vmnet_tap_up", "tap", "vu1"); ok {
		t.Error("Sum of another TAP's series: found one")
	}
	if v, _ := s.Sum("go_goroutines"); v != 12 {
		t.Errorf("go_goroutines: got %v", v)
	}
	want := []string{`vmnet_queue_tx_packets_total{queue=0,tap=vu0}`, `vmnet_queue_tx_packets_total{queue=1,tap=vu0}`, `vmnet_tap_up{tap=vu0}`}
	if got := s.SeriesNames(); !reflect.DeepEqual(got, want) {
		t.Errorf("SeriesNames: got %v, want %v", got, want)
	}
	if _, err := ParseScrape([]byte("vmnet_x{ 1\n")); err == nil {
		t.Error("ParseScrape of a broken line: got no error")
	}
}

// An iperf3 -J -R client interrupted after 2.5 s: its own count is what it
// received.
func TestParseIperfStream(t *testing.T) {
	in := `[   12.3] a kernel line
{"start": {"test_start": {"num_streams": 1, "reverse": 1}},
 "intervals": [{"sum": {"start": 0, "end": 1.000154, "bytes": 1310720}},
  {"sum": {"start": 1.000154, "end": 2.000131, "bytes": 1310720}},
  {"sum": {"start": 2.000131, "end": 2.522932, "bytes": 655360}}],
 "end": {"sum_sent": {"end": 2.522932, "bytes": 0}, "sum_received": {"end": 2.522932, "bytes": 3276800}},
 "error": "interrupt - the client has terminated"}`
	st, err := ParseIperfStream(in)
	if err != nil {
		t.Fatal(err)
	}
	if st.Bytes != 3276800 || !st.Interrupted || len(st.Intervals) != 3 || st.Seconds != 2.522932 || st.Intervals[2].Bytes != 655360 {
		t.Errorf("ParseIperfStream = %+v", st)
	}
	if _, err := ParseIperfStream(`{"error": "unable to connect to server: Connection refused"}`); err == nil {
		t.Error("ParseIperfStream of a failed client: got nil error")
	}
}

func TestParsePingReplies(t *testing.T) {
	in := `PING 10.0.2.15 (10.0.2.15) 56(84) bytes of data.
[1796215877.100000] 64 bytes from 10.0.2.15: icmp_seq=1 ttl=64 time=0.5 ms
[1796215877.150210] 64 bytes from 10.0.2.15: icmp_seq=2 ttl=64 time=0.6 ms
[1796215877.650001] 64 bytes from 10.0.2.15: icmp_seq=12 ttl=64 time=40.1 ms
[1796215877.7] 64 bytes from 10.0.2.15: icmp_seq=13 ttl=64 time=0.4 ms

--- 10.0.2.15 ping statistics ---
13 packets transmitted, 4 received, 69.2308% packet loss, time 600ms
`
	r := ParsePingReplies(in)
	if len(r) != 4 || r[2].Seq != 12 || r[3].At.Nanosecond() != 700000000 {
		t.Fatalf("ParsePingReplies = %+v", r)
	}
	gap, from := LongestSilence(r)
	if gap != 499791*time.Microsecond || !from.Equal(r[1].At) {
		t.Errorf("LongestSilence = %s from %s, want 499.791ms from reply 2", gap, from)
	}
}
