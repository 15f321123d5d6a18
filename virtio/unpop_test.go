package virtio_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// Unpop gives chains back in reverse order; popping again returns the same
// chains with the same buffers, across the ring's wrap point too.
func TestUnpop(t *testing.T) {
	for _, packed := range []bool{false, true} {
		for _, opts := range []virtiotest.Options{{SlotSize: 128}, {SlotSize: 128, Segment: 40}, {SlotSize: 128, Indirect: true}} {
			t.Run(fmt.Sprintf("packed=%v/segment=%d/indirect=%v", packed, opts.Segment, opts.Indirect), func(t *testing.T) {
				g, q := newPair(t, 16, packed, opts)
				chains := make([]virtio.Chain, 3)
				for round := 0; round < 40; round++ { // 40 rounds of 3 chains pass the wrap point of a 16-entry ring many times
					var ids []uint16
					for i := 0; i < 3; i++ {
						id, err := g.Post([][]byte{{byte(round), byte(i)}}, []int{100})
						if err != nil {
							t.Fatal(err)
						}
						ids = append(ids, id)
					}
					before := q.NextAvail()
					for i := 0; i < 3; i++ {
						if ok, err := q.Pop(&chains[i]); !ok || err != nil {
							t.Fatalf("round %d pop %d: %v, %v", round, i, ok, err)
						}
					}
					// Out of order is refused for split rings, whose avail
					// ring says which chain came last.
					if !packed {
						if err := q.Unpop(&chains[0]); !errors.Is(err, virtio.ErrNotPopped) {
							t.Fatalf("unpop of a chain that is not the last popped: got %v", err)
						}
					}
					for i := 2; i >= 0; i-- {
						if err := q.Unpop(&chains[i]); err != nil {
							t.Fatalf("round %d unpop %d: %v", round, i, err)
						}
					}
					if err := q.Unpop(&chains[0]); !errors.Is(err, virtio.ErrNotPopped) {
						t.Fatalf("second unpop: got %v, want ErrNotPopped", err)
					}
					if got := q.NextAvail(); got != before {
						t.Fatalf("round %d: NextAvail %#x after unpop, want %#x", round, got, before)
					}
					for i := 0; i < 3; i++ {
						if ok, err := q.Pop(&chains[i]); !ok || err != nil {
							t.Fatalf("round %d re-pop %d: %v, %v", round, i, ok, err)
						}
						if chains[i].Head != ids[i] || !bytes.Equal(gather(chains[i].Readable), []byte{byte(round), byte(i)}) || chains[i].WriteLen != 100 {
							t.Fatalf("round %d re-pop %d: head %d data %x writable %d; want %d, %x, 100",
								round, i, chains[i].Head, gather(chains[i].Readable), chains[i].WriteLen, ids[i], []byte{byte(round), byte(i)})
						}
						if err := q.Push(&chains[i], 0); err != nil {
							t.Fatal(err)
						}
					}
					q.Flush()
					if got := len(g.Reap()); got != 3 {
						t.Fatalf("round %d: reaped %d, want 3", round, got)
					}
					if err := g.Err(); err != nil {
						t.Fatal(err)
					}
				}
			})
		}
	}
}
