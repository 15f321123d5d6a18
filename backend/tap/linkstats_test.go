package tap

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/testutil"
)

func TestLinkTable(t *testing.T) {
	if len(linkTable) != int(numLinkCounters) {
		t.Fatalf("linkTable has %d entries, want one per LinkCounter (%d)", len(linkTable), numLinkCounters)
	}
	if err := linkTable.Check(); err != nil {
		t.Fatal(err)
	}
	s := LinkStats{TXDropped: 3, RXDropped: 1<<64 - 1}
	if got, want := s.String(), "tx_dropped=3 rx_dropped=18446744073709551615"; got != want {
		t.Errorf("String: got %q, want %q", got, want)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back LinkStats
	if err := json.Unmarshal(b, &back); err != nil || back != s {
		t.Errorf("JSON %s read back: got %v, %v; want %v", b, back, err, s)
	}
	if err := json.Unmarshal([]byte(`{"rx_packets":1}`), &back); err == nil {
		t.Error("UnmarshalJSON of a name the table does not declare: got no error")
	}
}

// TestLinkStats makes the kernel drop frames for a detached queue (tun.c
// tun_net_xmit: no queue attached) and reads them from Info, as the link's
// tx_dropped.
func TestLinkStats(t *testing.T) {
	d, ns := newTestDevice(t, Options{Queues: 1})
	if err := d.SetUp(true); err != nil {
		t.Fatal(err)
	}
	if err := d.DisableQueue(0); err != nil {
		t.Fatal(err)
	}
	before, err := d.Info()
	if err != nil {
		t.Fatal(err)
	}
	pfd, ifindex := packetSocket(t, ns, d.Name())
	mac, _ := d.MAC()
	peer := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	const n = 10
	for port := uint16(1000); port < 1000+n; port++ {
		if err := unix.Sendto(pfd, udpFrame(mac, peer, port, []byte("nobody reads")), 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}); err != nil {
			t.Fatalf("sendto: %v", err)
		}
	}
	after, err := d.Info()
	if err != nil {
		t.Fatal(err)
	}
	if got := after.Stats[RXDropped] - before.Stats[RXDropped]; got < n {
		t.Errorf("rx_dropped after %d frames for a detached queue: grew by %d, want at least %d", n, got, n)
	}
	// The same numbers as sysfs, the other way round. The kernel sends
	// frames of its own meanwhile (IPv6 router solicitations), dropped
	// too: sysfs is read between two lookups.
	for k, file := range map[LinkCounter]string{TXDropped: "rx_dropped", RXDropped: "tx_dropped"} {
		first, err := d.Info()
		if err != nil {
			t.Fatal(err)
		}
		out := strings.TrimSpace(testutil.Exec(t, ns, "cat", "/sys/class/net/"+d.Name()+"/statistics/"+file))
		v, err := strconv.ParseUint(out, 10, 64)
		if err != nil {
			t.Fatalf("sysfs %s: %q: %v", file, out, err)
		}
		last, err := d.Info()
		if err != nil {
			t.Fatal(err)
		}
		if v < first.Stats[k] || v > last.Stats[k] {
			t.Errorf("%s: read %d and %d around the link's %s, %d", k, first.Stats[k], last.Stats[k], file, v)
		}
	}
}
