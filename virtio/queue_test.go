package virtio_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

var (
	_ virtio.Queue = (*virtio.SplitQueue)(nil)
	_ virtio.Queue = (*virtio.PackedQueue)(nil)
)

// layouts are the ring variants every end-to-end test runs on.
var layouts = []struct {
	name   string
	packed bool
	opts   virtiotest.Options
}{
	{"split", false, virtiotest.Options{}},
	{"split/event-idx", false, virtiotest.Options{EventIdx: true}},
	{"split/indirect", false, virtiotest.Options{Indirect: true}},
	{"split/segments", false, virtiotest.Options{Segment: 100}},
	{"split/indirect-segments", false, virtiotest.Options{Indirect: true, Segment: 128}},
	{"split/regions", false, virtiotest.Options{Regions: 3}},
	{"split/avail-align-2", false, virtiotest.Options{AvailAlign2: true, EventIdx: true}},
	{"packed", true, virtiotest.Options{}},
	{"packed/event-idx", true, virtiotest.Options{EventIdx: true}},
	{"packed/indirect", true, virtiotest.Options{Indirect: true}},
	{"packed/segments", true, virtiotest.Options{Segment: 100}},
	{"packed/indirect-segments-regions", true, virtiotest.Options{Indirect: true, Segment: 128, Regions: 3}},
}

func newPair(t testing.TB, size uint16, packed bool, opts virtiotest.Options) (*virtiotest.Guest, virtio.Queue) {
	t.Helper()
	g, err := virtiotest.NewGuest(size, packed, opts)
	if err != nil {
		t.Fatalf("NewGuest: %v", err)
	}
	q, err := g.NewQueue()
	if err != nil {
		t.Fatalf("NewQueue: %v", err)
	}
	return g, q
}

func frame(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + seed)
	}
	return b
}

func gather(bufs [][]byte) []byte {
	var out []byte
	for _, b := range bufs {
		out = append(out, b...)
	}
	return out
}

// scatter writes data into bufs and returns the bytes written.
func scatter(bufs [][]byte, data []byte) uint32 {
	n := 0
	for _, b := range bufs {
		n += copy(b, data[n:])
	}
	return uint32(n)
}

func mustPop(t testing.TB, q virtio.Queue, c *virtio.Chain) {
	t.Helper()
	ok, err := q.Pop(c)
	if err != nil || !ok {
		t.Fatalf("Pop = %v, %v; want true, nil", ok, err)
	}
}

func TestPostPopPushReap(t *testing.T) {
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			g, q := newPair(t, 16, l.packed, l.opts)
			var c virtio.Chain
			if ok, err := q.Pop(&c); ok || err != nil {
				t.Fatalf("Pop on empty ring = %v, %v; want false, nil", ok, err)
			}
			// TX: readable only.
			tx := frame(1000, 1)
			id, err := g.PostTX(tx)
			if err != nil {
				t.Fatal(err)
			}
			mustPop(t, q, &c)
			if c.Head != id || c.ReadLen != 1000 || c.WriteLen != 0 || len(c.Writable) != 0 {
				t.Fatalf("TX chain = head %d read %d write %d; want head %d read 1000 write 0", c.Head, c.ReadLen, c.WriteLen, id)
			}
			if got := gather(c.Readable); !bytes.Equal(got, tx) {
				t.Fatalf("TX bytes differ")
			}
			if err := q.Push(&c, 0); err != nil {
				t.Fatal(err)
			}
			q.Flush()
			used := g.Reap()
			if len(used) != 1 || used[0].ID != id || used[0].Len != 0 {
				t.Fatalf("Reap = %+v; want one of id %d len 0", used, id)
			}

			// RX: a header-sized readable part, then writable.
			hdr := frame(12, 2)
			id, err = g.Post([][]byte{hdr}, []int{300, 1200})
			if err != nil {
				t.Fatal(err)
			}
			mustPop(t, q, &c)
			if c.Head != id || c.ReadLen != 12 || c.WriteLen != 1500 {
				t.Fatalf("RX chain = head %d read %d write %d; want head %d read 12 write 1500", c.Head, c.ReadLen, c.WriteLen, id)
			}
			rx := frame(1400, 3)
			n := scatter(c.Writable, rx)
			if err := q.Push(&c, n); err != nil {
				t.Fatal(err)
			}
			if got := g.Reap(); len(got) != 0 {
				t.Fatalf("Reap before Flush = %+v; want nothing", got)
			}
			q.Flush()
			used = g.Reap()
			if len(used) != 1 || used[0].ID != id || used[0].Len != 1400 || !bytes.Equal(used[0].Data, rx) {
				t.Fatalf("Reap = id %d len %d; want id %d len 1400 and the frame", used[0].ID, used[0].Len, id)
			}
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestBatches(t *testing.T) {
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			g, q := newPair(t, 16, l.packed, l.opts)
			var chains [9]virtio.Chain
			for round := range 50 {
				var ids []uint16
				for k := 0; k < 1+round%8; k++ {
					id, err := g.Post([][]byte{frame(10+k, round)}, []int{64})
					if err != nil {
						t.Fatalf("round %d post %d: %v", round, k, err)
					}
					ids = append(ids, id)
				}
				n := 0
				for ; ; n++ {
					ok, err := q.Pop(&chains[n])
					if err != nil {
						t.Fatal(err)
					}
					if !ok {
						break
					}
				}
				if n != len(ids) {
					t.Fatalf("round %d: popped %d; want %d", round, n, len(ids))
				}
				// Complete out of order: last first.
				for k := n - 1; k >= 0; k-- {
					w := scatter(chains[k].Writable, []byte(fmt.Sprint(k)))
					if err := q.Push(&chains[k], w); err != nil {
						t.Fatal(err)
					}
				}
				if got := g.Reap(); len(got) != 0 {
					t.Fatalf("round %d: reaped %d before Flush", round, len(got))
				}
				q.Flush()
				used := g.Reap()
				if len(used) != n {
					t.Fatalf("round %d: reaped %d; want %d", round, len(used), n)
				}
				for i, u := range used {
					k := n - 1 - i
					if u.ID != ids[k] || string(u.Data) != fmt.Sprint(k) {
						t.Fatalf("round %d: used %d = id %d data %q; want id %d data %q", round, i, u.ID, u.Data, ids[k], fmt.Sprint(k))
					}
				}
			}
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPushErrors(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprint("packed=", packed), func(t *testing.T) {
			g, q := newPair(t, 4, packed, virtiotest.Options{})
			var c virtio.Chain
			if err := q.Push(&c, 0); !errors.Is(err, virtio.ErrNotPopped) {
				t.Fatalf("Push of a fresh chain = %v; want ErrNotPopped", err)
			}
			if _, err := g.PostRX(100); err != nil {
				t.Fatal(err)
			}
			mustPop(t, q, &c)
			if err := q.Push(&c, 101); err == nil {
				t.Fatalf("Push of 101 bytes into 100 = nil; want error")
			}
			if err := q.Push(&c, 100); err != nil {
				t.Fatalf("Push = %v", err)
			}
			if err := q.Push(&c, 0); !errors.Is(err, virtio.ErrNotPopped) {
				t.Fatalf("second Push = %v; want ErrNotPopped", err)
			}
			q.Flush()
			if u := g.Reap(); len(u) != 1 || u[0].Len != 100 {
				t.Fatalf("Reap = %+v; want one of len 100", u)
			}
		})
	}
}

// TestOverrun has the driver make available more than the ring holds while
// the device still holds every chain.
func TestOverrun(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprint("packed=", packed), func(t *testing.T) {
			g, q := newPair(t, 4, packed, virtiotest.Options{})
			var cs [5]virtio.Chain
			for i := range 4 {
				if _, err := g.PostTX([]byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
				mustPop(t, q, &cs[i])
			}
			// Reuse descriptor 0 (split) or ring position 0 (packed) while
			// the device holds it.
			buf := g.Alloc(1)
			if packed {
				g.MakeAvailable([]virtiotest.Desc{{Addr: buf, Len: 1}})
			} else {
				g.WriteDesc(0, virtiotest.Desc{Addr: buf, Len: 1})
				g.PublishHead(0)
			}
			_, err := q.Pop(&cs[4])
			checkChainError(t, err, &virtio.ChainError{Rule: virtio.RuleOverrun, Got: 5, Limit: 4})
			// Returning a chain makes room. (In a packed ring its used
			// descriptor lands on the reused position: nothing to pop.)
			if err := q.Push(&cs[0], 0); err != nil {
				t.Fatal(err)
			}
			q.Flush()
			if ok, err := q.Pop(&cs[4]); ok == packed || err != nil {
				t.Fatalf("Pop after Push = %v, %v; want %v, nil", ok, err, !packed)
			}
		})
	}
}
