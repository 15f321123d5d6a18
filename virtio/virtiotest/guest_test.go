package virtiotest_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

func TestNewGuest(t *testing.T) {
	tests := []struct {
		size   uint16
		packed bool
		opts   virtiotest.Options
		want   string
	}{
		{256, false, virtiotest.Options{}, ""},
		{250, true, virtiotest.Options{Regions: 4, Indirect: true}, ""},
		{2, false, virtiotest.Options{Regions: 5}, ""}, // capped at the queue size
		{0, false, virtiotest.Options{}, "bad queue size 0"},
		{250, false, virtiotest.Options{}, "bad queue size 250"},
		{32769, true, virtiotest.Options{}, "bad queue size 32769"},
	}
	for _, tt := range tests {
		g, err := virtiotest.NewGuest(tt.size, tt.packed, tt.opts)
		if tt.want != "" {
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewGuest(%d, %v) = %v; want error containing %q", tt.size, tt.packed, err, tt.want)
			}
			continue
		}
		if err != nil {
			t.Fatalf("NewGuest(%d, %v) = %v", tt.size, tt.packed, err)
		}
		want := max(1, min(tt.opts.Regions, int(tt.size)))
		if n := len(g.Memory().Regions()); n != want {
			t.Errorf("NewGuest(%d, %v): %d regions; want %d", tt.size, tt.packed, n, want)
		}
		if _, err := g.NewQueue(); err != nil {
			t.Errorf("NewGuest(%d, %v): NewQueue = %v", tt.size, tt.packed, err)
		}
		if g.Size() != tt.size || g.Packed() != tt.packed {
			t.Errorf("Size, Packed = %d, %v; want %d, %v", g.Size(), g.Packed(), tt.size, tt.packed)
		}
	}
}

func TestGuestAddresses(t *testing.T) {
	g, err := virtiotest.NewGuest(8, false, virtiotest.Options{GuestBase: 1 << 32, UserBase: 0x5555_0000_0000, Regions: 2})
	if err != nil {
		t.Fatal(err)
	}
	rs := g.Memory().Regions()
	if rs[0].GuestAddr != 1<<32 || rs[0].UserAddr != 0x5555_0000_0000 || rs[1].GuestAddr != rs[0].GuestAddr+uint64(len(rs[0].Host)) {
		t.Fatalf("regions = %#x/%#x, %#x; want 1<<32, 0x5555_0000_0000 and adjacent", rs[0].GuestAddr, rs[0].UserAddr, rs[1].GuestAddr)
	}
	cfg := g.SplitConfig()
	if gpa, err := g.Memory().UserToGuest(0x5555_0000_0000 + cfg.UsedAddr - 1<<32); err != nil || gpa != cfg.UsedAddr {
		t.Fatalf("UserToGuest(used ring) = %#x, %v; want %#x", gpa, err, cfg.UsedAddr)
	}
	a := g.Alloc(100)
	if a%16 != 0 || len(g.Bytes(a, 100)) != 100 {
		t.Fatalf("Alloc = %#x; want 16-byte aligned and addressable", a)
	}
}

func TestPostLimits(t *testing.T) {
	for _, packed := range []bool{false, true} {
		g, err := virtiotest.NewGuest(4, packed, virtiotest.Options{SlotSize: 100})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.PostRX(101); err == nil {
			t.Errorf("packed=%v: PostRX(101) into 100-byte slots = nil; want error", packed)
		}
		if _, err := g.Post(nil, nil); err == nil {
			t.Errorf("packed=%v: Post of nothing = nil; want error", packed)
		}
		for i := range 2 {
			if _, err := g.Post([][]byte{{1}}, []int{10}); err != nil {
				t.Fatalf("packed=%v: Post %d = %v", packed, i, err)
			}
		}
		if _, err := g.PostTX([]byte{1}); !errors.Is(err, virtiotest.ErrFull) {
			t.Errorf("packed=%v: Post into a full ring = %v; want ErrFull", packed, err)
		}
		if g.InFlight() != 2 {
			t.Errorf("packed=%v: InFlight = %d; want 2", packed, g.InFlight())
		}
	}
}

// TestReapChecksDevice feeds Reap used entries a broken device would write.
func TestReapChecksDevice(t *testing.T) {
	g, err := virtiotest.NewGuest(4, false, virtiotest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	q, err := virtio.NewSplitQueue(g.Memory(), g.SplitConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.PostRX(10); err != nil {
		t.Fatal(err)
	}
	var c virtio.Chain
	if ok, err := q.Pop(&c); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if err := q.Push(&c, 10); err != nil {
		t.Fatal(err)
	}
	q.Flush()
	if u := g.Reap(); len(u) != 1 || g.Err() != nil {
		t.Fatalf("Reap = %v, Err %v; want one used buffer", u, g.Err())
	}
	// A device publishing the same chain again.
	cfg := g.SplitConfig()
	used := g.Bytes(cfg.UsedAddr, 4)
	used[2] = 2
	if u := g.Reap(); len(u) != 0 || g.Err() == nil {
		t.Fatalf("Reap of a used idx past what is in flight = %v, Err %v; want an error", u, g.Err())
	}
}
