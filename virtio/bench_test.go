package virtio_test

import (
	"fmt"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// The data-path benchmarks cycle 2-descriptor chains (a 12-byte readable
// header, a 1500-byte writable buffer) through a 256-entry ring: the device
// pops, pushes and flushes (every batch chains) and asks NeedsInterrupt; the
// guest side only republishes the same descriptors, so nearly all the time
// is the device's. Each op is one chain; none may allocate.

func BenchmarkSplitPopPushFlush(b *testing.B) {
	for _, batch := range []int{1, 32} {
		for _, eventIdx := range []bool{false, true} {
			b.Run(fmt.Sprintf("batch=%d/event-idx=%v", batch, eventIdx), func(b *testing.B) {
				g, q := newPair(b, 256, false, virtiotest.Options{EventIdx: eventIdx, SlotSize: 2048})
				for range 128 {
					if _, err := g.Post([][]byte{make([]byte, 12)}, []int{1500}); err != nil {
						b.Fatal(err)
					}
				}
				chains := make([]virtio.Chain, batch)
				runDataPath(b, q, chains, func(c *virtio.Chain) { g.PublishHead(c.Head) })
			})
		}
	}
}

func BenchmarkPackedPopPushFlush(b *testing.B) {
	for _, batch := range []int{1, 32} {
		for _, eventIdx := range []bool{false, true} {
			b.Run(fmt.Sprintf("batch=%d/event-idx=%v", batch, eventIdx), func(b *testing.B) {
				g, q := newPair(b, 256, true, virtiotest.Options{EventIdx: eventIdx, SlotSize: 2048})
				hdr, data := g.Alloc(12), g.Alloc(1500)
				list := []virtiotest.Desc{
					{Addr: hdr, Len: 12, Flags: virtiotest.FlagNext},
					{Addr: data, Len: 1500, Flags: virtiotest.FlagWrite},
				}
				repost := func(c *virtio.Chain) {
					list[1].Next = c.Head
					g.MakeAvailable(list)
				}
				for id := range 64 {
					repost(&virtio.Chain{Head: uint16(id)})
				}
				chains := make([]virtio.Chain, batch)
				runDataPath(b, q, chains, repost)
			})
		}
	}
}

func runDataPath(b *testing.B, q virtio.Queue, chains []virtio.Chain, repost func(*virtio.Chain)) {
	cycle := func() {
		for i := range chains {
			if ok, err := q.Pop(&chains[i]); !ok || err != nil {
				b.Fatalf("Pop = %v, %v", ok, err)
			}
		}
		for i := range chains {
			if err := q.Push(&chains[i], 1500); err != nil {
				b.Fatal(err)
			}
		}
		q.Flush()
		q.NeedsInterrupt()
		for i := range chains {
			repost(&chains[i])
		}
	}
	cycle() // grow the chains' slices once
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		cycle()
		n += len(chains)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/chain")
	b.ReportMetric(float64(n)/b.Elapsed().Seconds()/1e6, "Mchains/s")
}
