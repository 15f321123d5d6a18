package virtio_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// TestWraparound runs 3 × 65,536 chains through rings of several sizes, in
// batches of every length, so that every 16-bit index and every packed wrap
// counter transition happens, and checks every byte.
func TestWraparound(t *testing.T) {
	cases := []struct {
		name   string
		size   uint16
		packed bool
		opts   virtiotest.Options
		full   bool // 3 × 65,536 even under -short and -race
	}{
		{"split/256", 256, false, virtiotest.Options{SlotSize: 256}, true},
		{"split/256/event-idx", 256, false, virtiotest.Options{SlotSize: 256, EventIdx: true, StartIdx: 65000}, false},
		{"split/4/indirect", 4, false, virtiotest.Options{SlotSize: 256, Indirect: true, Segment: 50}, false},
		{"packed/256", 256, true, virtiotest.Options{SlotSize: 256}, false},
		{"packed/250/event-idx", 250, true, virtiotest.Options{SlotSize: 256, EventIdx: true}, true},
		{"packed/7/segments", 7, true, virtiotest.Options{SlotSize: 256, Segment: 50}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			total := 3 * 65536
			if !tc.full && (testing.Short() || raceEnabled) {
				total = 70000
			}
			g, q := newPair(t, tc.size, tc.packed, tc.opts)
			rng := rand.New(rand.NewPCG(1, uint64(tc.size)))
			chains := make([]virtio.Chain, tc.size+1)
			want := map[uint16][]byte{}
			done := 0
			for seq := 0; done < total; {
				// Post until full.
				for batch := 1 + rng.IntN(int(tc.size)); batch > 0; batch-- {
					hdr := binary.LittleEndian.AppendUint32(nil, uint32(seq))
					id, err := g.Post([][]byte{hdr}, []int{96 + seq%50})
					if err == virtiotest.ErrFull {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					want[id] = bytes.Repeat(hdr, 2+seq%23)
					seq++
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
				// Complete in a random order, flushing now and then.
				perm := rng.Perm(n)
				for k, j := range perm {
					c := &chains[j]
					hdr := gather(c.Readable)
					w := scatter(c.Writable, bytes.Repeat(hdr, 2+int(binary.LittleEndian.Uint32(hdr))%23))
					if err := q.Push(c, w); err != nil {
						t.Fatal(err)
					}
					if rng.IntN(4) == 0 || k == n-1 {
						q.Flush()
					}
				}
				for _, u := range g.Reap() {
					if !bytes.Equal(u.Data, want[u.ID]) {
						t.Fatalf("chain %d: got %x; want %x", u.ID, u.Data, want[u.ID])
					}
					delete(want, u.ID)
					done++
				}
				if err := g.Err(); err != nil {
					t.Fatal(err)
				}
			}
			if got, w := q.NextAvail(), g.NextAvail(); got != w {
				t.Fatalf("NextAvail = %#x; want %#x", got, w)
			}
			if !tc.packed {
				if got, w := g.UsedIdx(), tc.opts.StartIdx+uint16(done); got != w {
					t.Fatalf("used idx = %d; want %d", got, w)
				}
			}
		})
	}
}

// inRange reports whether the ring position ev lies among the k positions
// before next, counting modulo m: the spec's "the device wrote the entry at
// used_event" (virtio 1.2 §2.7.7.2), written without vring_need_event.
func inRange(ev, next, k, m int) bool {
	back := ((next-ev)%m + m) % m // positions from ev forward to next
	return back >= 1 && back <= k
}

func TestSplitEventIdx(t *testing.T) {
	const size = 64
	var c virtio.Chain
	for _, old := range []uint16{0, 1, 100, 32767, 32768, 65472, 65535} {
		for _, k := range []int{0, 1, 2, 5, 63, 64} {
			evs := []int{-2, -1, 0, 1, k - 1, k, k + 1, 32768, 40000}
			for _, d := range evs {
				event := old + uint16(d)
				g, qi := newPair(t, size, false, virtiotest.Options{EventIdx: true, StartIdx: old - 1, SlotSize: 16})
				q := qi.(*virtio.SplitQueue)
				// The first publication always notifies (see NeedsInterrupt).
				if _, err := g.PostRX(8); err != nil {
					t.Fatal(err)
				}
				mustPop(t, q, &c)
				if err := q.Push(&c, 0); err != nil {
					t.Fatal(err)
				}
				q.Flush()
				g.SetUsedEvent(old + 1000)
				if !q.NeedsInterrupt() {
					t.Fatalf("old %d: first NeedsInterrupt = false; want true", old)
				}
				g.Reap()
				for range k {
					if _, err := g.PostRX(8); err != nil {
						t.Fatal(err)
					}
				}
				for j := range k {
					mustPop(t, q, &c)
					if err := q.Push(&c, 1); err != nil {
						t.Fatal(err)
					}
					if j%3 == 0 {
						q.Flush() // several publications, one decision
					}
				}
				q.Flush()
				g.SetUsedEvent(event)
				want := inRange(int(event), int(old)+k, k, 65536)
				if got := q.NeedsInterrupt(); got != want {
					t.Fatalf("old %d new %d used_event %d: NeedsInterrupt = %v; want %v", old, old+uint16(k), event, got, want)
				}
				if q.NeedsInterrupt() {
					t.Fatalf("old %d new %d used_event %d: second NeedsInterrupt = true", old, old+uint16(k), event)
				}
			}
		}
	}
}

func TestPackedEventIdx(t *testing.T) {
	var c virtio.Chain
	for _, size := range []uint16{16, 10} {
		n := int(size)
		for start := 1; start <= 2*n; start++ { // device position before publishing, on 2 laps
			for _, k := range []int{0, 1, 2, n / 2, n - 1, n} {
				for ev := range 2 * n { // event position on the same 2-lap scale
					g, qi := newPair(t, size, true, virtiotest.Options{EventIdx: true, SlotSize: 16})
					q := qi.(*virtio.PackedQueue)
					// Move both sides to start: chains of one descriptor.
					for range start {
						if _, err := g.PostRX(8); err != nil {
							t.Fatal(err)
						}
						mustPop(t, q, &c)
						if err := q.Push(&c, 0); err != nil {
							t.Fatal(err)
						}
						q.Flush()
						g.Reap()
					}
					q.NeedsInterrupt()
					for range k {
						if _, err := g.PostRX(8); err != nil {
							t.Fatal(err)
						}
					}
					for j := range k {
						mustPop(t, q, &c)
						if err := q.Push(&c, 1); err != nil {
							t.Fatal(err)
						}
						if j%3 == 1 {
							q.Flush()
						}
					}
					q.Flush()
					// Lap 0 has wrap counter 1 (virtio 1.2 §2.8.1).
					off := uint16(ev % n)
					wrap := uint16(1 - ev/n)
					g.SetDriverEvent(off|wrap<<15, 2)
					want := k == n || inRange(ev, (start+k)%(2*n), k, 2*n)
					if got := q.NeedsInterrupt(); got != want {
						t.Fatalf("size %d: published %d from %d, event %d (off %d wrap %d): NeedsInterrupt = %v; want %v",
							n, k, start, ev, off, wrap, got, want)
					}
				}
			}
		}
	}
}

// TestConcurrent runs the guest driver and the device on two goroutines,
// each sleeping until the other notifies it, as a VM and a back-end do. A
// lost kick or interrupt shows as a stall; a missing barrier as wrong bytes
// or, under -race, a report.
func TestConcurrent(t *testing.T) {
	total := 100000
	if testing.Short() || raceEnabled {
		total = 20000
	}
	for _, l := range []struct {
		name   string
		packed bool
		opts   virtiotest.Options
	}{
		{"split", false, virtiotest.Options{}},
		{"split/event-idx", false, virtiotest.Options{EventIdx: true}},
		{"split/indirect", false, virtiotest.Options{Indirect: true, Segment: 300}},
		{"packed", true, virtiotest.Options{}},
		{"packed/event-idx", true, virtiotest.Options{EventIdx: true, Segment: 300}},
	} {
		t.Run(l.name, func(t *testing.T) {
			l.opts.SlotSize = 2048
			g, q := newPair(t, 128, l.packed, l.opts)
			kick := make(chan struct{}, 1)
			irq := make(chan struct{}, 1)
			stop := make(chan struct{})
			derr := make(chan error, 1)
			signal := func(ch chan struct{}) {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
			go func() {
				derr <- device(q, kick, irq, stop, signal)
			}()
			defer func() {
				close(stop)
				if err := <-derr; err != nil {
					t.Error(err)
				}
			}()

			seqOf := map[uint16]uint32{}
			sent, done := 0, 0
			kicks, irqs := 0, 0
			for done < total {
				for sent < total {
					hdr := binary.LittleEndian.AppendUint32(nil, uint32(sent))
					id, err := g.Post([][]byte{hdr}, []int{1024})
					if err == virtiotest.ErrFull {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					seqOf[id] = uint32(sent)
					sent++
				}
				if g.Kick() {
					kicks++
					signal(kick)
				}
				g.DisableInterrupts()
				used := g.Reap()
				if len(used) == 0 {
					g.EnableInterrupts()
					if used = g.Reap(); len(used) == 0 {
						select {
						case <-irq:
							irqs++
						case <-time.After(10 * time.Second):
							t.Fatalf("stalled after %d of %d chains (%d in flight): lost notification", done, total, g.InFlight())
						}
						continue
					}
				}
				for _, u := range used {
					seq := seqOf[u.ID]
					want := payload(seq)
					if !bytes.Equal(u.Data, want) {
						t.Fatalf("chain %d (seq %d): got %d bytes %x...; want %d bytes %x...", u.ID, seq, len(u.Data), u.Data[:min(8, len(u.Data))], len(want), want[:8])
					}
					done++
				}
				if err := g.Err(); err != nil {
					t.Fatal(err)
				}
			}
			t.Logf("%d chains, %d kicks, %d interrupts", total, kicks, irqs)
		})
	}
}

// payload is what the device writes for sequence number seq.
func payload(seq uint32) []byte {
	b := make([]byte, 1+int(seq%1000))
	for i := range b {
		b[i] = byte(seq) + byte(i)
	}
	return b
}

// device is the back-end loop of TestConcurrent, shaped like the queue-pair
// engine's: sleep until kicked, then drain with notifications off.
func device(q virtio.Queue, kick, irq, stop chan struct{}, signal func(chan struct{})) error {
	var c virtio.Chain
	for {
		select {
		case <-kick:
		case <-stop:
			return nil
		}
		for {
			q.DisableNotify()
			for n := 0; ; n++ {
				ok, err := q.Pop(&c)
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				hdr := gather(c.Readable)
				if len(hdr) != 4 {
					return fmt.Errorf("chain %d: header of %d bytes", c.Head, len(hdr))
				}
				w := scatter(c.Writable, payload(binary.LittleEndian.Uint32(hdr)))
				if err := q.Push(&c, w); err != nil {
					return err
				}
				if n%16 == 15 {
					q.Flush()
					if q.NeedsInterrupt() {
						signal(irq)
					}
				}
			}
			q.Flush()
			if q.NeedsInterrupt() {
				signal(irq)
			}
			if !q.EnableNotify() {
				break
			}
		}
	}
}
