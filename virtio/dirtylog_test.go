package virtio_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// marked lists the pages marked in l, taking them.
func marked(t testing.TB, l *virtio.DirtyLog) []uint64 {
	t.Helper()
	dst := make([]uint64, l.Pages()/64)
	n, err := l.Take(dst)
	if err != nil {
		t.Fatal(err)
	}
	var pages []uint64
	for w, v := range dst {
		for b := range 64 {
			if v&(1<<b) != 0 {
				pages = append(pages, uint64(w)*64+uint64(b))
			}
		}
	}
	if n != uint64(len(pages)) {
		t.Fatalf("Take counted %d pages, the bitmap holds %d", n, len(pages))
	}
	return pages
}

func pageRange(first, last uint64) []uint64 {
	var p []uint64
	for i := first; i <= last; i++ {
		p = append(p, i)
	}
	return p
}

// TestDirtyLogLayout checks the bits against vhost-user.rst "Migration":
// page = addr / VHOST_LOG_PAGE; log[page / 8] |= 1 << page % 8.
func TestDirtyLogLayout(t *testing.T) {
	b := make([]byte, 256)
	l, err := virtio.DirtyLogOver(b)
	if err != nil {
		t.Fatal(err)
	}
	if l.Pages() != 2048 {
		t.Fatalf("Pages() = %d, want 2048", l.Pages())
	}
	pages := []uint64{0, 1, 7, 8, 9, 63, 64, 65, 700, 2047}
	for _, p := range pages {
		l.Mark(p*virtio.LogPageSize+123, 1)
	}
	for i, v := range b {
		var want byte
		for _, p := range pages {
			if p/8 == uint64(i) {
				want |= 1 << (p % 8)
			}
		}
		if v != want {
			t.Errorf("log byte %d = %#08b, want %#08b", i, v, want)
		}
	}
	for _, p := range pages {
		if !l.Dirty(p) {
			t.Errorf("Dirty(%d) = false after marking it", p)
		}
	}
	if l.Dirty(2) || l.Dirty(5000) {
		t.Errorf("Dirty of a page never marked, or past the log, is true")
	}
}

func TestDirtyLogOverRefuses(t *testing.T) {
	b := make([]byte, 64)
	for _, tt := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"not a multiple of 8", b[:12]},
		{"unaligned", b[1:9]},
	} {
		if _, err := virtio.DirtyLogOver(tt.b); err == nil {
			t.Errorf("%s: DirtyLogOver succeeded, want an error", tt.name)
		}
	}
}

func TestDirtyLogMark(t *testing.T) {
	const pg = virtio.LogPageSize
	tests := []struct {
		name   string
		gpa, n uint64
		want   []uint64
	}{
		{"nothing", 0x5000, 0, nil},
		{"one byte", 0x5000, 1, []uint64{5}},
		{"last byte of a page", 0x5fff, 1, []uint64{5}},
		{"two bytes across pages", 0x5fff, 2, []uint64{5, 6}},
		{"whole page", 0x5000, pg, []uint64{5}},
		{"page and a byte", 0x5000, pg + 1, []uint64{5, 6}},
		{"64 KiB frame off a page", 0x1800, 65536, pageRange(1, 17)},
		{"across a word", 63 * pg, 2 * pg, []uint64{63, 64}},
		{"three words", 10 * pg, 150 * pg, pageRange(10, 159)},
		{"last page", 1023 * pg, 2 * pg, []uint64{1023}},
		{"past the log", 1024 * pg, pg, nil},
		{"to the top of the address space", math.MaxUint64 - 10, 100, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := virtio.NewDirtyLog(1024 * pg)
			l.Mark(tt.gpa, tt.n)
			if got := marked(t, l); !slices.Equal(got, tt.want) {
				t.Errorf("Mark(%#x, %d): pages %v, want %v", tt.gpa, tt.n, got, tt.want)
			}
		})
	}
}

func TestNewDirtyLogSize(t *testing.T) {
	for _, tt := range []struct{ size, pages uint64 }{
		{0, 0}, {1, 64}, {4096, 64}, {64 * 4096, 64}, {64*4096 + 1, 128},
		// QEMU's RAM of 512 MiB + 8 KiB: not a whole number of words.
		{512<<20 + 8<<10, 131136},
	} {
		if got := virtio.NewDirtyLog(tt.size).Pages(); got != tt.pages {
			t.Errorf("NewDirtyLog(%d).Pages() = %d, want %d", tt.size, got, tt.pages)
		}
	}
}

// TestDirtyLogCovers: a log smaller than guest memory is refused, one that
// ends with its last region's last page is enough.
func TestDirtyLogCovers(t *testing.T) {
	const pg = virtio.LogPageSize
	mem := func(regions ...[2]uint64) *virtio.Memory {
		var rs []virtio.Region
		for _, r := range regions {
			rs = append(rs, virtio.Region{GuestAddr: r[0], Host: make([]byte, r[1])})
		}
		m, err := virtio.NewMemory(rs)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	l := virtio.NewDirtyLog(128 * pg) // pages 0 to 127
	for _, tt := range []struct {
		name string
		mem  *virtio.Memory
		ok   bool
	}{
		{"no memory", nil, true},
		{"exactly", mem([2]uint64{0, 128 * pg}), true},
		{"high region ends on the last page", mem([2]uint64{0, pg}, [2]uint64{127 * pg, pg}), true},
		{"one byte past", mem([2]uint64{0, 128*pg + 1}), false},
		{"high region past", mem([2]uint64{0, pg}, [2]uint64{127 * pg, pg + 1}), false},
		{"region far above", mem([2]uint64{1 << 32, pg}), false},
	} {
		err := l.Covers(tt.mem)
		if tt.ok && err != nil {
			t.Errorf("%s: Covers = %v, want nil", tt.name, err)
		}
		if !tt.ok && !errors.Is(err, virtio.ErrLogTooSmall) {
			t.Errorf("%s: Covers = %v, want ErrLogTooSmall", tt.name, err)
		}
	}
	if err := l.CoversRange(127*pg, pg); err != nil {
		t.Errorf("CoversRange of the last page: %v", err)
	}
	for _, r := range [][2]uint64{{127 * pg, pg + 1}, {math.MaxUint64 - 1, 4}} {
		if err := l.CoversRange(r[0], r[1]); !errors.Is(err, virtio.ErrLogTooSmall) {
			t.Errorf("CoversRange(%#x, %d) = %v, want ErrLogTooSmall", r[0], r[1], err)
		}
	}
}

func TestDirtyLogTake(t *testing.T) {
	l := virtio.NewDirtyLog(200 * virtio.LogPageSize)
	if _, err := l.Take(make([]uint64, 3)); err == nil {
		t.Fatal("Take into 3 words of a 256-page log succeeded")
	}
	l.Mark(5*virtio.LogPageSize, 1)
	l.Mark(130*virtio.LogPageSize, 1)
	dst := make([]uint64, 4)
	dst[0] = 1 << 9 // kept: Take ORs
	n, err := l.Take(dst)
	if err != nil || n != 2 {
		t.Fatalf("Take = %d, %v; want 2 pages", n, err)
	}
	if dst[0] != 1<<5|1<<9 || dst[2] != 1<<2 {
		t.Errorf("dst = %#x, want page 5 and 9 in word 0, 130 in word 2", dst)
	}
	if n, _ := l.Take(make([]uint64, 4)); n != 0 {
		t.Errorf("second Take got %d pages, want 0: Take clears", n)
	}
}

// TestDirtyLogConcurrent marks from several goroutines, as the queues of a
// device do, while another takes the log, as QEMU does on each pass of a
// migration: every page marked is taken exactly as a union.
func TestDirtyLogConcurrent(t *testing.T) {
	const pages = 4096
	l := virtio.NewDirtyLog(pages * virtio.LogPageSize)
	var want [pages / 64]uint64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			var mine [pages / 64]uint64
			for range 20000 {
				gpa := r.Uint64N(pages * virtio.LogPageSize)
				n := 1 + r.Uint64N(3*virtio.LogPageSize)
				l.Mark(gpa, n)
				for p := gpa / virtio.LogPageSize; p <= (gpa+n-1)/virtio.LogPageSize && p < pages; p++ {
					mine[p/64] |= 1 << (p % 64)
				}
			}
			mu.Lock()
			for i := range want {
				want[i] |= mine[i]
			}
			mu.Unlock()
		}()
	}
	got := make([]uint64, pages/64)
	stop := make(chan struct{})
	taken := make(chan struct{})
	go func() {
		defer close(taken)
		for {
			select {
			case <-stop:
				return
			default:
				if _, err := l.Take(got); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-taken
	if _, err := l.Take(got); err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("word %d: taken %#x, marked %#x", i, got[i], want[i])
		}
	}
}

func TestMemoryGuestAddr(t *testing.T) {
	host := make([]byte, 0x3000)
	m, err := virtio.NewMemory([]virtio.Region{
		{GuestAddr: 0x10000, Host: host[:0x1000]},
		{GuestAddr: 0x40000, Host: host[0x1000:0x3000]},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		b   []byte
		gpa uint64
		ok  bool
	}{
		{host[:1], 0x10000, true},
		{host[0xfff:0x1001], 0x10fff, true},
		{host[0x1000:], 0x40000, true},
		{host[0x2fff:], 0x41fff, true},
		{host[:0], 0, false},
		{make([]byte, 8), 0, false},
	} {
		gpa, ok := m.GuestAddr(tt.b)
		if gpa != tt.gpa || ok != tt.ok {
			t.Errorf("GuestAddr(host[%d:]) = %#x, %t; want %#x, %t", len(host)-cap(tt.b), gpa, ok, tt.gpa, tt.ok)
		}
	}
}

// TestQueueDirtyLog runs a ring in two regions, its buffers across their
// border, and checks what a queue logs: the buffer bytes it is told of at
// their guest addresses, and its ring writes, those of the used area at
// the ring's log address (here away from the area itself, as vhost-user's
// log_guest_addr may be).
func TestQueueDirtyLog(t *testing.T) {
	const pg = virtio.LogPageSize
	for _, packed := range []bool{false, true} {
		for _, eventIdx := range []bool{false, true} {
			t.Run(fmt.Sprintf("packed=%t event_idx=%t", packed, eventIdx), func(t *testing.T) {
				g, err := virtiotest.NewGuest(8, packed, virtiotest.Options{Regions: 2, EventIdx: eventIdx, SlotSize: 3 * pg})
				if err != nil {
					t.Fatal(err)
				}
				q, err := g.NewQueue()
				if err != nil {
					t.Fatal(err)
				}
				a := g.Areas()
				l := virtio.NewDirtyLog(64 << 20)
				const usedLog = 32 << 20 // where the used area is logged
				areas := virtio.RingAreas(a.Size, packed, eventIdx)

				// Nothing is logged before SetDirtyLog.
				var c virtio.Chain
				if _, err := g.PostRX(3 * pg); err != nil {
					t.Fatal(err)
				}
				if ok, err := q.Pop(&c); !ok || err != nil {
					t.Fatalf("Pop = %t, %v", ok, err)
				}
				q.MarkWritten(c.Writable, uint64(c.WriteLen))
				if err := q.Push(&c, 10); err != nil {
					t.Fatal(err)
				}
				q.Flush()
				q.EnableNotify()
				if p := marked(t, l); len(p) != 0 {
					t.Fatalf("pages %v marked without a log", p)
				}
				g.Reap()

				q.SetDirtyLog(virtio.RingLog{Log: l, UsedAddr: usedLog})
				var want []uint64
				// Eight chains, one per buffer slot: the border of the
				// regions cuts slot 4.
				for range 8 {
					if _, err := g.PostRX(3 * pg); err != nil {
						t.Fatal(err)
					}
				}
				seen := false
				for i := range 8 {
					if ok, err := q.Pop(&c); !ok || err != nil {
						t.Fatalf("Pop %d = %t, %v", i, ok, err)
					}
					seen = seen || len(c.Writable) == 2
					// 5000 bytes from the start: the buffer's first two
					// pages, whichever regions they are in.
					q.MarkWritten(c.Writable, 5000)
					gpa, _ := g.Memory().GuestAddr(c.Writable[0])
					want = append(want, pageRange(gpa/pg, (gpa+4999)/pg)...)
					if err := q.Push(&c, 5000); err != nil {
						t.Fatal(err)
					}
					q.Flush()
				}
				g.Reap()
				if !seen {
					t.Fatal("no chain across the regions' border")
				}
				q.DisableNotify()
				q.EnableNotify()
				if packed {
					// Write-backs into the descriptor ring, where it is;
					// the event suppression area at the log address.
					want = append(want, pageRange(a.Desc/pg, (a.Desc+areas[0].Len-1)/pg)...)
					want = append(want, usedLog/pg)
				} else {
					// The used ring, at the log address.
					want = append(want, pageRange(usedLog/pg, (usedLog+areas[2].Len-1)/pg)...)
				}
				slices.Sort(want)
				want = slices.Compact(want)
				if got := marked(t, l); !slices.Equal(got, want) {
					t.Errorf("marked pages %v, want %v (ring at %+v)", got, want, a)
				}

				q.SetDirtyLog(virtio.RingLog{})
				if _, err := g.PostRX(3 * pg); err != nil {
					t.Fatal(err)
				}
				if ok, err := q.Pop(&c); !ok || err != nil {
					t.Fatalf("Pop = %t, %v", ok, err)
				}
				q.MarkWritten(c.Writable, 100)
				q.Push(&c, 100)
				q.Flush()
				if p := marked(t, l); len(p) != 0 {
					t.Errorf("pages %v marked after the log was taken away", p)
				}
			})
		}
	}
}
