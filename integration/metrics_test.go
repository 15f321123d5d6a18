package integration

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/integration/harness"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// inFlight bounds the frames one queue pair has moved that its counters do
// not show yet: the engine adds to them once per pass, and a pass moves up
// to engine.Config.Budget (64 by default) chains each way.
const inFlight = 64

// scraper polls a helper's /metrics until stopped, keeping the queue pairs'
// frame counts of each scrape and the last scrape.
type scraper struct {
	stop chan struct{}
	done chan struct{}

	mu     sync.Mutex
	tx, rx []float64 // vmnet_queue_{tx,rx}_packets_total summed over the pairs
	last   []byte
	err    error
}

func startScraper(h *helperProc, every time.Duration) *scraper {
	s := &scraper{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			b, err := h.Scrape()
			var sc harness.Scrape
			if err == nil {
				sc, err = harness.ParseScrape(b)
			}
			s.mu.Lock()
			if err != nil {
				s.err = err
				s.mu.Unlock()
				return
			}
			tx, _ := sc.Sum("vmnet_queue_tx_packets_total", "tap", h.tap)
			rx, _ := sc.Sum("vmnet_queue_rx_packets_total", "tap", h.tap)
			s.tx, s.rx, s.last = append(s.tx, tx), append(s.rx, rx), b
			s.mu.Unlock()
		}
	}()
	return s
}

// finish stops the scraper and fails t if a scrape failed or a count went
// down; it returns the scrapes' frame counts and the last scrape.
func (s *scraper) finish(t *testing.T) (tx, rx []float64, last []byte) {
	t.Helper()
	close(s.stop)
	<-s.done
	if s.err != nil {
		t.Fatalf("scrape: %v", s.err)
	}
	for i := 1; i < len(s.tx); i++ {
		if s.tx[i] < s.tx[i-1] || s.rx[i] < s.rx[i-1] {
			t.Errorf("scrape %d: frames went down: tx %v -> %v, rx %v -> %v", i, s.tx[i-1], s.tx[i], s.rx[i-1], s.rx[i])
		}
	}
	return s.tx, s.rx, s.last
}

// checkMetrics scrapes the helper's /metrics every 100 ms while iperf3
// runs each way: the queue pairs' frame counts move, never back; promtool
// accepts the scrape. Then, idle, the counters agree with the TAP's own in
// sysfs (the kernel counts the guest's frames as received, and its frames
// for the guest as sent) within the frames a pass may not have added yet,
// and the TAP's drop counters are sysfs's.
func (g *vhostUserGuest) checkMetrics(t *testing.T, pairs int) {
	tap := g.helper.tap
	sc := startScraper(g.helper, 100*time.Millisecond)
	g.iperf(t, 5201, "-t 2")
	g.iperf(t, 5201, "-t 2 -R")
	tx, rx, last := sc.finish(t)
	if len(tx) < 10 {
		t.Fatalf("%d scrapes in 4 s of iperf3, want at least 10 (one per 100 ms)", len(tx))
	}
	moved := 0
	for i := 1; i < len(tx); i++ {
		if tx[i] > tx[i-1] && rx[i] > rx[i-1] {
			moved++
		}
	}
	t.Logf("%d scrapes during iperf3 both ways; frames both ways grew between %d of them; tx %v -> %v, rx %v -> %v",
		len(tx), moved, tx[0], tx[len(tx)-1], rx[0], rx[len(rx)-1])
	if moved < len(tx)/3 {
		t.Errorf("frames both ways grew between %d of %d scrapes during iperf3, want most", moved, len(tx))
	}
	testutil.PromtoolCheckMetrics(t, last)
	_, s := g.helper.scrape(t)
	for _, want := range []struct {
		name  string
		match []string
	}{
		{"vmnet_tap_up", []string{"tap", tap}},
		{"vmnet_tap_carrier", []string{"tap", tap}},
		{"vmnet_device_info", []string{"tap", tap, "steering", "hash"}},
		{"vmnet_vhost_user_messages_total", []string{"tap", tap, "request", "SET_VRING_KICK"}},
	} {
		if v, ok := s.Sum(want.name, want.match...); !ok || v < 1 {
			t.Errorf("%s%v: got %v (%v), want a series of at least 1", want.name, want.match, v, ok)
		}
	}
	for _, se := range s["vmnet_device_info"] {
		if !strings.Contains(se.Labels["features"], "VERSION_1") || se.Labels["offloads"] == "none" {
			t.Errorf("vmnet_device_info: features %q, offloads %q; want those a Linux guest acks", se.Labels["features"], se.Labels["offloads"])
		}
	}

	// Idle: the counters read before and after the TAP's sysfs bracket
	// it, give or take a pass per queue pair.
	slack := float64(inFlight * pairs)
	_, before := g.helper.scrape(t)
	link, err := harness.ReadLinkStats(context.Background(), g.ns, tap)
	if err != nil {
		t.Fatal(err)
	}
	_, after := g.helper.scrape(t)
	for _, c := range []struct {
		metric string
		kernel uint64
		name   string
		slack  float64
	}{
		{"vmnet_queue_tx_packets_total", link.RXPackets + link.RXDropped, "rx_packets+rx_dropped", slack},
		{"vmnet_queue_rx_packets_total", link.TXPackets, "tx_packets", slack},
		{"vmnet_tap_tx_dropped_total", link.RXDropped, "rx_dropped", 0},
		{"vmnet_tap_rx_dropped_total", link.TXDropped, "tx_dropped", 0},
	} {
		lo, _ := before.Sum(c.metric, "tap", tap)
		hi, _ := after.Sum(c.metric, "tap", tap)
		k := float64(c.kernel)
		t.Logf("%s: %v and %v around the TAP's %s, %v", c.metric, lo, hi, c.name, k)
		if k < lo || k > hi+c.slack {
			t.Errorf("%s: read %v and %v around the TAP's %s, %v; want it between, give or take %v frames in flight",
				c.metric, lo, hi, c.name, k, c.slack)
		}
	}
	if n, which := g.helper.counters(t).Queues[0].Drops(); n != 0 {
		t.Errorf("queue pair 0 dropped frames: %s", which)
	}
}
