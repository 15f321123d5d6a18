package harness

import (
	"reflect"
	"testing"

	"github.com/vmnet-dev/vmnet/backend/engine"
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
