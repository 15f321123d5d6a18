package ebpf

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
)

// msKey is the key of Microsoft's RSS verification suite.
var msKey = []byte{0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
	0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
	0xbe, 0xac, 0x01, 0xfa}

// weighted is the indirection table `ethtool -X eth0 weight w...` makes in
// a Linux guest: n entries shared out in proportion to the weights
// (ethtool's own rounding, as the table is filled queue by queue).
func weighted(n int, w ...int) []uint16 {
	sum := 0
	for _, x := range w {
		sum += x
	}
	t := make([]uint16, 0, n)
	acc := 0
	for q, x := range w {
		acc += x
		for len(t) < n*acc/sum {
			t = append(t, uint16(q))
		}
	}
	return t
}

// equal is `ethtool -X eth0 equal k`: entry i is queue i % k.
func equal(n, k int) []uint16 {
	t := make([]uint16, n)
	for i := range t {
		t[i] = uint16(i % k)
	}
	return t
}

func attachRSS(t *testing.T, r *steeringRig, c RSSConfig) *RSSProgram {
	t.Helper()
	p := loadRSSForTest(t, false)
	if err := p.Configure(c); err != nil {
		t.Fatal(err)
	}
	if err := r.tap.SetSteeringEBPF(p.FD()); err != nil {
		t.Fatal(err)
	}
	return p
}

// With the RSS program attached every flow lands exactly on the queue Go
// predicts from the key and the table, and stays there whatever queue the
// guest answers on.
func TestRSSSteeringOnTAP(t *testing.T) {
	r := newSteeringRig(t)
	for _, c := range []RSSConfig{
		{Hasher: hasher(t, msKey, virtio.HashAll), Table: equal(128, tapQueues)},
		{Hasher: hasher(t, msKey, virtio.HashAll), Table: weighted(128, 4, 2, 1, 1)},
		// Addresses only: every flow between the two hosts on one queue.
		{Hasher: hasher(t, msKey, virtio.HashIPv4), Table: equal(128, tapQueues)},
		// Nothing enabled: every flow on the unclassified queue.
		{Hasher: hasher(t, msKey, 0), Table: equal(128, tapQueues), Unclassified: 3},
	} {
		attachRSS(t, r, c)
		r.send()
		queue, frames := r.collect()
		used := map[int]bool{}
		for i, q := range queue {
			used[q] = true
			if want := int(RSSQueue(c, frames[i])) % tapQueues; q != want {
				t.Errorf("types %s: flow %d on queue %d, RSSQueue says %d", c.Hasher.Types(), i, q, want)
			}
		}
		for i, q := range queue {
			r.reply((q+1)%tapQueues, i)
		}
		r.send()
		again, _ := r.collect()
		for i := range again {
			if again[i] != queue[i] {
				t.Errorf("types %s: flow %d moved from queue %d to %d after the guest answered on another", c.Hasher.Types(), i, queue[i], again[i])
			}
		}
		t.Logf("types %s, table %v...: %d flows on queues %v", c.Hasher.Types(), c.Table[:8], flows, used)
	}
}

// Configure changes the table while frames flow: none is lost (the
// program stays attached), each lands where the old or the new table
// says, and once Configure returns, where the new one says.
func TestRSSTableUpdateLive(t *testing.T) {
	r := newSteeringRig(t)
	h := hasher(t, msKey, virtio.HashAll)
	a := RSSConfig{Hasher: h, Table: equal(128, tapQueues)}
	b := RSSConfig{Hasher: h, Table: weighted(128, 1, 1, 3, 3), Unclassified: 1}
	p := attachRSS(t, r, a)
	var stop atomic.Bool
	var updates atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			c := a
			if i%2 == 0 {
				c = b
			}
			if err := p.Configure(c); err != nil {
				t.Error(err)
				return
			}
			updates.Add(1)
		}
	}()
	const rounds = 50
	moved := 0
	for round := range rounds {
		payload := binary.BigEndian.AppendUint32([]byte("round"), uint32(round))
		r.sendN(flows, payload)
		queue, frames := r.collectN(flows) // fails the test if a datagram is missing
		for i, q := range queue {
			wa, wb := int(RSSQueue(a, frames[i]))%tapQueues, int(RSSQueue(b, frames[i]))%tapQueues
			if q != wa && q != wb {
				t.Errorf("round %d, flow %d: queue %d, want %d (old table) or %d (new)", round, i, q, wa, wb)
			}
			if wa != wb {
				moved++
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	if err := p.Configure(b); err != nil {
		t.Fatal(err)
	}
	r.send()
	queue, frames := r.collect()
	for i, q := range queue {
		if want := int(RSSQueue(b, frames[i])) % tapQueues; q != want {
			t.Errorf("after the last update: flow %d on queue %d, want %d", i, q, want)
		}
	}
	if moved == 0 {
		t.Error("no flow's queue differs between the two tables: the test shows nothing")
	}
	t.Logf("%d rounds of %d flows, none lost, over %d configuration updates", rounds, flows, updates.Load())
}

// queue:N sends everything to one queue.
func TestQueueSteeringOnTAP(t *testing.T) {
	r := newSteeringRig(t)
	p, err := LoadQueueProgram(2)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := r.tap.SetSteeringEBPF(p.FD()); err != nil {
		t.Fatal(err)
	}
	r.send()
	queue, _ := r.collect()
	for i, q := range queue {
		if q != 2 {
			t.Errorf("flow %d on queue %d, want 2", i, q)
		}
	}
}

// How 64 UDP flows from one host to one guest port spread over 4 queues
// under each steering: logged, for the record (docs/embedding.md).
func TestFlowDistribution(t *testing.T) {
	r := newSteeringRig(t)
	const n = 64
	h := hasher(t, msKey, virtio.HashAll)
	modes := []struct {
		name   string
		attach func() (predict func([]byte) int)
	}{
		{"kernel (tun's flow table)", func() func([]byte) int {
			if err := r.tap.SetSteeringEBPF(-1); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{"hash", func() func([]byte) int {
			p := loadHash(t)
			if err := r.tap.SetSteeringEBPF(p.FD()); err != nil {
				t.Fatal(err)
			}
			return func(f []byte) int { return int(FlowHash(f) % tapQueues) }
		}},
		{"rss, equal 4", func() func([]byte) int {
			c := RSSConfig{Hasher: h, Table: equal(128, 4)}
			attachRSS(t, r, c)
			return func(f []byte) int { return int(RSSQueue(c, f)) % tapQueues }
		}},
		{"rss, weight 4 2 1 1", func() func([]byte) int {
			c := RSSConfig{Hasher: h, Table: weighted(128, 4, 2, 1, 1)}
			attachRSS(t, r, c)
			return func(f []byte) int { return int(RSSQueue(c, f)) % tapQueues }
		}},
		{"queue:2", func() func([]byte) int {
			p, err := LoadQueueProgram(2)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if err := r.tap.SetSteeringEBPF(p.FD()); err != nil {
				t.Fatal(err)
			}
			return func([]byte) int { return 2 }
		}},
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%-28s %6s %6s %6s %6s\n", "steering", "q0", "q1", "q2", "q3")
	for _, m := range modes {
		predict := m.attach()
		r.sendN(n, nil)
		queue, frames := r.collectN(n)
		var count [tapQueues]int
		for i, q := range queue {
			count[q]++
			if predict != nil && predict(frames[i]) != q {
				t.Errorf("%s: flow %d on queue %d, predicted %d", m.name, i, q, predict(frames[i]))
			}
		}
		fmt.Fprintf(&table, "%-28s %6d %6d %6d %6d\n", m.name, count[0], count[1], count[2], count[3])
	}
	t.Logf("%d UDP flows 10.9.0.1:40000-%d -> 10.9.0.2:%d over %d queues:\n%s", n, 40000+n-1, dstPort, tapQueues, table.String())
}
