package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// guestPages is a copy of every page of a guest's memory, by page number
// (guest physical address / virtio.LogPageSize).
type guestPages map[uint64][]byte

func snapshot(g *virtiotest.Guest) guestPages {
	s := guestPages{}
	for _, r := range g.Memory().Regions() {
		for off := uint64(0); off < uint64(len(r.Host)); {
			gpa := r.GuestAddr + off
			page := gpa / virtio.LogPageSize
			n := min(virtio.LogPageSize-gpa%virtio.LogPageSize, uint64(len(r.Host))-off)
			s[page] = append(s[page], r.Host[off:off+n]...)
			off += n
		}
	}
	return s
}

// pageOf copies what g's memory holds of a page.
func pageOf(g *virtiotest.Guest, page uint64) []byte {
	var b []byte
	for _, r := range g.Memory().Regions() {
		first, end := page*virtio.LogPageSize, (page+1)*virtio.LogPageSize
		lo, hi := max(first, r.GuestAddr), min(end, r.GuestAddr+uint64(len(r.Host)))
		if lo < hi {
			b = append(b, r.Host[lo-r.GuestAddr:hi-r.GuestAddr]...)
		}
	}
	return b
}

// changed lists the pages whose bytes differ between two snapshots.
func changed(a, b guestPages) []uint64 {
	var p []uint64
	for page, v := range a {
		if !bytes.Equal(v, b[page]) {
			p = append(p, page)
		}
	}
	slices.Sort(p)
	return p
}

// logOf makes a dirty log that covers g's memory.
func logOf(g *virtiotest.Guest) *virtio.DirtyLog {
	var end uint64
	for _, r := range g.Memory().Regions() {
		end = max(end, r.GuestAddr+uint64(len(r.Host)))
	}
	return virtio.NewDirtyLog(end)
}

// takePages lists and clears the pages marked in l.
func takePages(t testing.TB, l *virtio.DirtyLog) []uint64 {
	t.Helper()
	dst := make([]uint64, l.Pages()/64)
	if _, err := l.Take(dst); err != nil {
		t.Fatal(err)
	}
	var p []uint64
	for w, v := range dst {
		for b := range 64 {
			if v&(1<<b) != 0 {
				p = append(p, uint64(w)*64+uint64(b))
			}
		}
	}
	return p
}

// ringPages are the pages of g's ring: its descriptor, driver and device
// areas.
func ringPages(g *virtiotest.Guest) map[uint64]bool {
	a := g.Areas()
	m := map[uint64]bool{}
	for i, ra := range virtio.RingAreas(a.Size, a.Packed, a.EventIdx) {
		gpa := [3]uint64{a.Desc, a.Driver, a.Device}[i]
		for p := gpa / virtio.LogPageSize; p <= (gpa+ra.Len-1)/virtio.LogPageSize; p++ {
			m[p] = true
		}
	}
	return m
}

// ringLog logs a guest's ring with its used area where it is, as an
// embedding VMM has it.
func ringLog(l *virtio.DirtyLog, g *virtiotest.Guest) virtio.RingLog {
	return virtio.RingLog{Log: l, UsedAddr: g.Areas().Device}
}

// TestDirtyLogCoversWrites runs traffic both ways through a queue pair
// whose rings log, with the guest idle (every buffer and frame posted
// before it starts), and compares the guest's memory before and after:
// every page the engine (or the kernel, reading into the guest's buffers)
// changed is marked, and no page is marked that did not change but for
// the rings' own. Buffers of 3000 bytes straddle pages; the cases take
// the plain reads, io_uring batches of one chain each, bounce batches of
// mergeable buffers with frames spilling over into the next buffers, and
// frames too big for the guest that the engine drops after the kernel
// wrote them.
func TestDirtyLogCoversWrites(t *testing.T) {
	const mrgOffloads = virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFGuestCsum | virtio.NetFGuestTSO4
	small := func(n int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = 60 + 37*i
		}
		return s
	}
	tests := []struct {
		name     string
		packed   bool
		features virtio.Features
		noRing   bool
		frames   []int // RX frame sizes, in the order the peer sends them
	}{
		{"split io_uring", false, virtio.FVersion1, false, append(small(20), 1514, 2500, 4000, 60)},
		{"split syscalls", false, virtio.FVersion1, true, append(small(20), 1514, 2500, 4000, 60)},
		{"packed io_uring", true, virtio.FVersion1, false, append(small(20), 1514, 2500, 4000, 60)},
		{"split mergeable offloads", false, mrgOffloads, false,
			slices.Concat(small(12), []int{5000, 9000}, small(10), []int{20000}, small(4))},
		{"packed mergeable offloads", true, mrgOffloads, false,
			slices.Concat(small(12), []int{5000, 9000}, small(10), []int{20000}, small(4))},
		{"split mergeable syscalls", false, mrgOffloads, true, slices.Concat(small(6), []int{5000, 20000}, small(3))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, rigOptions{stopped: true, packed: tt.packed, features: tt.features, size: 64,
				rxSlot: 3000, txSlot: 3000})
			r.rings()
			for range 64 {
				if _, err := r.rx.PostRX(3000); err != nil {
					t.Fatal(err)
				}
			}
			const txFrames = 30
			for i := range txFrames {
				f := make([]byte, 60+97*i)
				for j := range f {
					f[j] = byte(i + j)
				}
				if _, err := r.tx.PostTX(withHdr(virtio.NetHdr{}, r.hdrLen, f)); err != nil {
					t.Fatal(err)
				}
			}
			for i, n := range tt.frames {
				f := make([]byte, n)
				for j := range f {
					f[j] = byte(7*i + j + 1)
				}
				r.writePeer(f)
			}
			rxBefore, txBefore := snapshot(r.rx), snapshot(r.tx)
			lrx, ltx := logOf(r.rx), logOf(r.tx)
			r.mod = func(c *Config) {
				c.NoIOURing = tt.noRing
				c.RXLog, c.TXLog = ringLog(lrx, r.rx), ringLog(ltx, r.tx)
			}
			rxq, err := r.rx.NewQueue()
			if err != nil {
				t.Fatal(err)
			}
			txq, err := r.tx.NewQueue()
			if err != nil {
				t.Fatal(err)
			}
			r.run(rxq, txq)
			r.readN(txFrames)
			deadline := time.Now().Add(5 * time.Second)
			for {
				s := r.qp.Counters().Snapshot()
				if s[RXPackets]+s[RXDropTruncated] == uint64(len(tt.frames)) {
					t.Logf("counters %s", s)
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("counters %s: want %d frames received or dropped", s, len(tt.frames))
				}
				time.Sleep(time.Millisecond)
			}
			r.stop()

			for _, side := range []struct {
				name   string
				g      *virtiotest.Guest
				before guestPages
				log    *virtio.DirtyLog
			}{{"RX", r.rx, rxBefore, lrx}, {"TX", r.tx, txBefore, ltx}} {
				wrote := changed(side.before, snapshot(side.g))
				got := takePages(t, side.log)
				rings := ringPages(side.g)
				for _, p := range wrote {
					if _, ok := slices.BinarySearch(got, p); !ok {
						t.Errorf("%s: page %d (guest %#x) changed but is not marked", side.name, p, p*virtio.LogPageSize)
					}
				}
				for _, p := range got {
					if _, ok := slices.BinarySearch(wrote, p); !ok && !rings[p] {
						t.Errorf("%s: page %d (guest %#x) marked but not written, and not the ring's", side.name, p, p*virtio.LogPageSize)
					}
				}
				if side.name == "TX" {
					for _, p := range got {
						if !rings[p] {
							t.Errorf("TX: page %d marked outside the ring: the engine only reads TX buffers", p)
						}
					}
				}
				t.Logf("%s: %d pages changed, %d marked", side.name, len(wrote), len(got))
			}
		})
	}
}

// TestDirtyLogSwitchRunning turns the RX and TX logs on and off while
// frames flow both ways: no frame is lost, repeated or reordered by the
// switches, and a frame sent and received while the log is on has its
// buffer's pages marked.
func TestDirtyLogSwitchRunning(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprintf("packed=%t", packed), func(t *testing.T) {
			r := newRig(t, rigOptions{packed: packed, size: 64, rxSlot: 2048})
			r.postRX(64, 2048)
			lrx, ltx := logOf(r.rx), logOf(r.tx)
			rings := ringPages(r.rx)
			var rxSeq, txSeq, gotRX, gotTX uint32
			frame := func(seq uint32) []byte {
				f := make([]byte, 100)
				binary.BigEndian.PutUint32(f, seq)
				return f
			}
			on := false
			for round := range 60 {
				if round%5 == 0 {
					on = !on
					rl, tl := virtio.RingLog{}, virtio.RingLog{}
					if on {
						rl, tl = ringLog(lrx, r.rx), ringLog(ltx, r.tx)
					}
					if err := r.qp.SetDirtyLog(rl, tl); err != nil {
						t.Fatal(err)
					}
					takePages(t, lrx)
				}
				var tx [][]byte
				for range 4 {
					r.writePeer(frame(rxSeq))
					rxSeq++
					tx = append(tx, frame(txSeq))
					txSeq++
				}
				r.send(make([]virtio.NetHdr, len(tx)), tx)
				for _, m := range r.readN(len(tx)) {
					if seq := binary.BigEndian.Uint32(m[r.hdrLen:]); seq != gotTX {
						t.Fatalf("TX frame %d arrived as number %d", seq, gotTX)
					}
					gotTX++
				}
				for uint32(gotRX) < rxSeq {
					for _, f := range r.reap(2 * time.Second) {
						if seq := binary.BigEndian.Uint32(f.frame); seq != gotRX {
							t.Fatalf("RX frame %d arrived as number %d", seq, gotRX)
						}
						gotRX++
					}
				}
				buffers := 0
				for _, p := range takePages(t, lrx) {
					if !rings[p] {
						buffers++
					}
				}
				switch {
				case on && buffers == 0:
					t.Fatalf("round %d: RX frames received with the log on, no buffer page marked", round)
				case !on && buffers > 0:
					t.Fatalf("round %d: %d buffer pages marked with the log off", round, buffers)
				}
			}
			if err := r.qp.SetDirtyLog(virtio.RingLog{}, virtio.RingLog{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestDirtyLogMigrates plays the migration the log is for: while the queue
// pair receives and sends frames with its rings logging, another goroutine
// does what QEMU does on each pass, takes the log and copies the pages it
// names into a destination that started as a copy of the whole memory;
// after the queue pair stops, one last pass. The destination must then
// equal the guest's memory: a write marked before it was made, or not at
// all, leaves a stale page behind (the more likely the more rounds run).
// The guest is idle meanwhile, its buffers and frames posted before the
// start: its own writes are the VMM's to track. The copier reads guest
// memory the worker writes, which the race detector would report.
func TestDirtyLogMigrates(t *testing.T) {
	if raceEnabled {
		t.Skip("the copier races with the worker by design, as QEMU's migration thread does")
	}
	const mrgOffloads = virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFGuestCsum | virtio.NetFGuestTSO4
	for _, tt := range []struct {
		name     string
		packed   bool
		features virtio.Features
	}{
		{"split", false, virtio.FVersion1},
		{"packed mergeable offloads", true, mrgOffloads},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, rigOptions{stopped: true, packed: tt.packed, features: tt.features, size: 256,
				rxSlot: 3000, txSlot: 3000})
			for round := range 10 {
				r.rings()
				for range 256 {
					if _, err := r.rx.PostRX(3000); err != nil {
						t.Fatal(err)
					}
				}
				for i := range 200 {
					if _, err := r.tx.PostTX(withHdr(virtio.NetHdr{}, r.hdrLen, make([]byte, 60+i))); err != nil {
						t.Fatal(err)
					}
				}
				lrx, ltx := logOf(r.rx), logOf(r.tx)
				dest := []guestPages{snapshot(r.rx), snapshot(r.tx)}
				stop := make(chan struct{})
				copied := make(chan struct{})
				pass := func() {
					for i, side := range []struct {
						g   *virtiotest.Guest
						log *virtio.DirtyLog
					}{{r.rx, lrx}, {r.tx, ltx}} {
						for _, p := range takePages(t, side.log) {
							dest[i][p] = pageOf(side.g, p)
						}
					}
				}
				go func() {
					defer close(copied)
					for {
						select {
						case <-stop:
							return
						default:
							pass()
						}
					}
				}()
				r.mod = func(c *Config) { c.RXLog, c.TXLog = ringLog(lrx, r.rx), ringLog(ltx, r.tx) }
				rxq, err := r.rx.NewQueue()
				if err != nil {
					t.Fatal(err)
				}
				txq, err := r.tx.NewQueue()
				if err != nil {
					t.Fatal(err)
				}
				r.run(rxq, txq)
				// Every tenth frame spans three mergeable buffers, or is
				// too big for a buffer and dropped after the read.
				for i := range 150 {
					n := 60 + 19*i
					if i%10 == 9 {
						n = 6000
					}
					f := make([]byte, n)
					f[0] = byte(round)
					r.writePeer(f)
				}
				r.readN(200)
				deadline := time.Now().Add(5 * time.Second)
				for {
					s := r.qp.Counters().Snapshot()
					if s[RXPackets]+s[RXDropTruncated] == 150 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("round %d: counters %s, want 150 frames received or dropped", round, s)
					}
					time.Sleep(time.Millisecond)
				}
				r.stop()
				close(stop)
				<-copied
				pass()
				for i, g := range []*virtiotest.Guest{r.rx, r.tx} {
					if p := changed(dest[i], snapshot(g)); len(p) != 0 {
						t.Fatalf("round %d: %s pages %v differ from the migrated copy", round, []string{"RX", "TX"}[i], p)
					}
				}
			}
		})
	}
}
