package virtio

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

func TestNewMemory(t *testing.T) {
	b := func(n int) []byte { return make([]byte, n) }
	tests := []struct {
		name    string
		regions []Region
		want    string // substring of the error; "" for success
	}{
		{"none", nil, ""},
		{"one", []Region{{GuestAddr: 0, Host: b(10)}}, ""},
		{"unsorted adjacent", []Region{{GuestAddr: 0x2000, Host: b(0x1000)}, {GuestAddr: 0x1000, Host: b(0x1000)}}, ""},
		{"top of address space", []Region{{GuestAddr: math.MaxUint64 - 9, Host: b(10)}}, ""},
		{"empty", []Region{{GuestAddr: 0x1000, Host: nil}}, "add region at guest 0x1000: empty"},
		{"guest overflow", []Region{{GuestAddr: math.MaxUint64 - 8, Host: b(10)}}, "overflows 64 bits"},
		{"user overflow", []Region{{GuestAddr: 0, UserAddr: math.MaxUint64 - 8, Host: b(10)}}, "user range"},
		{"overlap", []Region{{GuestAddr: 0x1000, Host: b(0x1000)}, {GuestAddr: 0x1fff, Host: b(1)}}, "overlaps region at guest [0x1000, 0x1fff]"},
		{"same start", []Region{{GuestAddr: 0x1000, Host: b(1)}, {GuestAddr: 0x1000, Host: b(1)}}, "overlaps"},
		{"user overlap", []Region{{GuestAddr: 0, UserAddr: 0x5000, Host: b(0x1000)}, {GuestAddr: 0x1000, UserAddr: 0x5800, Host: b(0x1000)}}, "user range [0x5800, 0x67ff] overlaps"},
		{"user zero ignored", []Region{{GuestAddr: 0, Host: b(0x1000)}, {GuestAddr: 0x1000, Host: b(0x1000)}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMemory(tt.regions)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("NewMemory = %v; want nil", err)
				}
				rs := m.Regions()
				if len(rs) != len(tt.regions) {
					t.Fatalf("Regions() has %d; want %d", len(rs), len(tt.regions))
				}
				for i := 1; i < len(rs); i++ {
					if rs[i-1].GuestAddr >= rs[i].GuestAddr {
						t.Fatalf("Regions() not sorted: %#x before %#x", rs[i-1].GuestAddr, rs[i].GuestAddr)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewMemory = %v; want error containing %q", err, tt.want)
			}
		})
	}
}

func TestRegionsIsACopy(t *testing.T) {
	m, err := NewMemory([]Region{{GuestAddr: 0x1000, Host: make([]byte, 16)}})
	if err != nil {
		t.Fatal(err)
	}
	m.Regions()[0].GuestAddr = 0
	if got := m.Regions()[0].GuestAddr; got != 0x1000 {
		t.Fatalf("Regions()[0].GuestAddr = %#x after caller edit; want 0x1000", got)
	}
}

// testRegions: [0x1000, 0x2000) and [0x2000, 0x3000) adjacent, a gap, then
// [0x4000, 0x4100), and a region ending at 2^64.
func testRegions(t *testing.T) (*Memory, [][]byte) {
	hosts := [][]byte{make([]byte, 0x1000), make([]byte, 0x1000), make([]byte, 0x100), make([]byte, 0x10)}
	for i, h := range hosts {
		for j := range h {
			h[j] = byte(i*16 + j)
		}
	}
	m, err := NewMemory([]Region{
		{GuestAddr: 0x4000, UserAddr: 0x7000_0000, Host: hosts[2]},
		{GuestAddr: 0x1000, UserAddr: 0x9000_0000, Host: hosts[0]},
		{GuestAddr: 0x2000, Host: hosts[1]},
		{GuestAddr: math.MaxUint64 - 0xf, Host: hosts[3]},
	})
	if err != nil {
		t.Fatal(err)
	}
	return m, hosts
}

func TestSlice(t *testing.T) {
	m, hosts := testRegions(t)
	tests := []struct {
		gpa, n  uint64
		region  int // -1: error
		off     int
		wantErr string
	}{
		{0x1000, 1, 0, 0, ""},
		{0x1000, 0x1000, 0, 0, ""},
		{0x1ff0, 0x10, 0, 0xff0, ""},
		{0x2000, 0x800, 1, 0, ""},
		{0x40ff, 1, 2, 0xff, ""},
		{math.MaxUint64 - 0xf, 0x10, 3, 0, ""},
		{math.MaxUint64, 1, 3, 0xf, ""},
		{0x1ff0, 0x11, -1, 0, "guest range [0x1ff0, 0x2001) outside guest memory"},
		{0x3000, 1, -1, 0, "guest range [0x3000, 0x3001)"},
		{0x0, 1, -1, 0, "outside"},
		{0x40ff, 2, -1, 0, "outside"},
		{math.MaxUint64, 2, -1, 0, "overflows 64 bits"},
		{0x1000, math.MaxUint64, -1, 0, "overflows 64 bits"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%#x+%#x", tt.gpa, tt.n), func(t *testing.T) {
			got, err := m.Slice(tt.gpa, tt.n)
			if tt.region < 0 {
				var ae *AddressError
				if !errors.As(err, &ae) || !errors.Is(err, ErrOutOfRange) || ae.Addr != tt.gpa || ae.Len != tt.n || ae.User {
					t.Fatalf("Slice = %v; want *AddressError{%#x, %#x} matching ErrOutOfRange", err, tt.gpa, tt.n)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Slice error %q; want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Slice = %v", err)
			}
			if uint64(len(got)) != tt.n || cap(got) != len(got) || &got[0] != &hosts[tt.region][tt.off] {
				t.Fatalf("Slice = len %d cap %d; want len %d = cap, at region %d offset %#x", len(got), cap(got), tt.n, tt.region, tt.off)
			}
		})
	}
	if got, err := m.Slice(0x3000, 0); got != nil || err != nil {
		t.Fatalf("Slice of 0 bytes = %v, %v; want nil, nil", got, err)
	}
}

func TestAppendSlices(t *testing.T) {
	m, hosts := testRegions(t)
	type piece struct{ region, off, n int }
	tests := []struct {
		gpa  uint64
		n    uint32
		want []piece // nil: error
	}{
		{0x1000, 0x10, []piece{{0, 0, 0x10}}},
		{0x1ff0, 0x20, []piece{{0, 0xff0, 0x10}, {1, 0, 0x10}}},
		{0x1000, 0x2000, []piece{{0, 0, 0x1000}, {1, 0, 0x1000}}},
		{0x1fff, 0x1001, []piece{{0, 0xfff, 1}, {1, 0, 0x1000}}},
		{0x2ff0, 0x20, nil},   // runs into the gap
		{0x1ff0, 0x1011, nil}, // through region 1 into the gap
		{0x3000, 1, nil},      // in the gap
		{math.MaxUint64 - 1, 2, []piece{{3, 0xe, 2}}},
		{math.MaxUint64 - 1, 3, nil}, // past 2^64
		{0x5000, 0, []piece{}},       // nothing to append
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%#x+%#x", tt.gpa, tt.n), func(t *testing.T) {
			pre := []byte("keep")
			dst := [][]byte{pre}
			got, err := m.AppendSlices(dst, tt.gpa, tt.n)
			if tt.want == nil {
				if !errors.Is(err, ErrOutOfRange) || len(got) != 1 || &got[0][0] != &pre[0] {
					t.Fatalf("AppendSlices = %d slices, %v; want dst unchanged and ErrOutOfRange", len(got), err)
				}
				return
			}
			if err != nil {
				t.Fatalf("AppendSlices = %v", err)
			}
			if len(got) != 1+len(tt.want) || &got[0][0] != &pre[0] {
				t.Fatalf("AppendSlices = %d slices; want 1+%d", len(got), len(tt.want))
			}
			for i, p := range tt.want {
				s := got[1+i]
				if len(s) != p.n || cap(s) != p.n || &s[0] != &hosts[p.region][p.off] {
					t.Fatalf("slice %d = len %d cap %d; want %d bytes at region %d offset %#x", i, len(s), cap(s), p.n, p.region, p.off)
				}
			}
		})
	}
}

func TestAppendSlicesAllocs(t *testing.T) {
	m, _ := testRegions(t)
	dst := make([][]byte, 0, 4)
	allocs := testing.AllocsPerRun(100, func() {
		dst, _ = m.AppendSlices(dst[:0], 0x1ff0, 0x20)
	})
	if allocs != 0 {
		t.Fatalf("AppendSlices with room allocates %v times; want 0", allocs)
	}
}

func TestUserToGuest(t *testing.T) {
	m, _ := testRegions(t)
	tests := []struct {
		ua, want uint64
		ok       bool
	}{
		{0x9000_0000, 0x1000, true},
		{0x9000_0fff, 0x1fff, true},
		{0x9000_1000, 0, false},
		{0x7000_0080, 0x4080, true},
		{0, 0, false}, // regions without a user address never match
		{0x6fff_ffff, 0, false},
	}
	for _, tt := range tests {
		got, err := m.UserToGuest(tt.ua)
		if tt.ok && (err != nil || got != tt.want) {
			t.Errorf("UserToGuest(%#x) = %#x, %v; want %#x", tt.ua, got, err, tt.want)
		}
		if !tt.ok {
			var ae *AddressError
			if !errors.As(err, &ae) || !ae.User || ae.Addr != tt.ua || !strings.Contains(err.Error(), "user range") {
				t.Errorf("UserToGuest(%#x) = %#x, %v; want a user *AddressError", tt.ua, got, err)
			}
		}
	}
}

// manyRegions builds n regions of 4 KiB with 4 KiB gaps.
func manyRegions(tb testing.TB, n int) *Memory {
	var rs []Region
	for i := range n {
		rs = append(rs, Region{GuestAddr: uint64(i) * 0x2000, Host: make([]byte, 0x1000)})
	}
	m, err := NewMemory(rs)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

func TestFindManyRegions(t *testing.T) {
	for _, n := range []int{1, 2, 7, 8, 9, 64, 509} {
		m := manyRegions(t, n)
		for gpa := uint64(0); gpa < uint64(n)*0x2000+0x3000; gpa += 0x7ff {
			want := -1
			if i := int(gpa / 0x2000); i < n && gpa%0x2000 < 0x1000 {
				want = i
			}
			if got := m.find(gpa); got != want {
				t.Fatalf("%d regions: find(%#x) = %d; want %d", n, gpa, got, want)
			}
		}
	}
}

// BenchmarkMemoryAppendSlices looks up one buffer per op in memories of
// several region counts; linear and binary compare the two searches that
// linearScanMax chooses between.
func BenchmarkMemoryAppendSlices(b *testing.B) {
	for _, n := range []int{1, 2, 4, 8, 16, 64} {
		m := manyRegions(b, n)
		dst := make([][]byte, 0, 4)
		b.Run(fmt.Sprintf("regions=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				gpa := uint64(i%n)*0x2000 + 0x100
				dst, _ = m.AppendSlices(dst[:0], gpa, 1500)
			}
		})
		for _, search := range []string{"linear", "binary"} {
			b.Run(fmt.Sprintf("regions=%d/%s", n, search), func(b *testing.B) {
				var sink int
				for i := 0; b.Loop(); i++ {
					gpa := uint64(i%n)*0x2000 + 0x100
					if search == "linear" {
						sink += m.findLinear(gpa)
					} else {
						sink += m.findBinary(gpa)
					}
				}
				_ = sink
			})
		}
	}
}
