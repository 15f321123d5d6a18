package virtio_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
)

// The fuzz targets map their input onto guest memory in which the rings
// sit at fixed places and everything else (descriptors, indices, indirect
// tables, buffer addresses) is the fuzzer's. Each pop is checked against a
// plain reference reading of the spec, written separately from the queue
// code: same verdict (empty, chain, malformed chain, broken ring), and for a
// chain the exact buffers, every one inside a region's Host.
//
// Memory: [0x1000, 0x2000) in one host buffer, optionally split at 0x1800
// into two adjacent regions, and [0x3000, 0x3100) apart from it.

const (
	fzBase    = 0x1000
	fzSplitAt = 0x1800
	fzFar     = 0x3000
	fzRing    = 0x1000 // descriptor table or ring
	fzAvail   = 0x1100 // split: avail ring (+2 when 2-aligned)
	fzUsed    = 0x1140 // split: used ring
	fzDriver  = 0x1100 // packed: driver event suppression
	fzDevice  = 0x1104 // packed: device event suppression
	fzHeader  = 4      // input bytes before the memory image
)

type fzMemory struct {
	mem     *virtio.Memory
	regions []virtio.Region
	near    []byte // [0x1000, 0x2000)
}

func newFzMemory(t *testing.T, image []byte, split bool) *fzMemory {
	near := make([]byte, 0x1000)
	copy(near, image)
	far := make([]byte, 0x100)
	if len(image) > 0x1000 {
		copy(far, image[0x1000:])
	}
	rs := []virtio.Region{{GuestAddr: fzBase, Host: near}, {GuestAddr: fzFar, Host: far}}
	if split {
		rs = []virtio.Region{
			{GuestAddr: fzBase, Host: near[: fzSplitAt-fzBase : fzSplitAt-fzBase]},
			{GuestAddr: fzSplitAt, Host: near[fzSplitAt-fzBase:]},
			{GuestAddr: fzFar, Host: far},
		}
	}
	m, err := virtio.NewMemory(rs)
	if err != nil {
		t.Fatal(err)
	}
	return &fzMemory{mem: m, regions: rs, near: near}
}

// piece is where the reference expects one buffer slice: region and offset.
type piece struct {
	region, off, n int
	write          bool
}

// locate splits [gpa, gpa+n) at region borders; false if any byte is
// outside memory.
func (f *fzMemory) locate(gpa uint64, n uint32, write bool, out []piece) ([]piece, bool) {
	for left := uint64(n); left > 0; {
		found := false
		for i, r := range f.regions {
			end := r.GuestAddr + uint64(len(r.Host))
			if gpa >= r.GuestAddr && gpa < end {
				take := min(left, end-gpa)
				out = append(out, piece{i, int(gpa - r.GuestAddr), int(take), write})
				gpa += take
				left -= take
				found = true
				break
			}
		}
		if !found {
			return out, false
		}
	}
	return out, true
}

// bytesAt returns n bytes at gpa if they lie in one region.
func (f *fzMemory) bytesAt(gpa uint64, n uint64) ([]byte, bool) {
	for _, r := range f.regions {
		if gpa >= r.GuestAddr && gpa-r.GuestAddr < uint64(len(r.Host)) && n <= uint64(len(r.Host))-(gpa-r.GuestAddr) {
			return r.Host[gpa-r.GuestAddr : gpa-r.GuestAddr+n], true
		}
	}
	return nil, false
}

type verdict int

const (
	vEmpty verdict = iota
	vChain
	vBadChain
	vBroken
)

type refDesc struct {
	addr       uint64
	n          uint32
	flags, nxt uint16
}

// refResult is what a pop should give.
type refResult struct {
	v      verdict
	head   uint16
	pieces []piece
	descs  int
	read   uint64
	write  uint64
}

// finish applies the per-buffer rules to a chain's buffer descriptors.
func (f *fzMemory) finish(r refResult, list []refDesc, size int) refResult {
	r.descs = len(list)
	if len(list) > size {
		r.v = vBadChain
		return r
	}
	seenWrite := false
	for _, d := range list {
		w := d.flags&2 != 0
		if !w && seenWrite {
			r.v = vBadChain
			return r
		}
		seenWrite = seenWrite || w
		if w {
			r.write += uint64(d.n)
		} else {
			r.read += uint64(d.n)
		}
		if r.read+r.write > math.MaxUint32 {
			r.v = vBadChain
			return r
		}
		var ok bool
		if r.pieces, ok = f.locate(d.addr, d.n, w, r.pieces); !ok {
			r.v = vBadChain
			return r
		}
	}
	r.v = vChain
	return r
}

func readRefDesc(b []byte, packed bool) refDesc {
	d := refDesc{addr: binary.LittleEndian.Uint64(b), n: binary.LittleEndian.Uint32(b[8:])}
	if packed {
		d.nxt, d.flags = binary.LittleEndian.Uint16(b[12:]), binary.LittleEndian.Uint16(b[14:])
	} else {
		d.flags, d.nxt = binary.LittleEndian.Uint16(b[12:]), binary.LittleEndian.Uint16(b[14:])
	}
	return d
}

// refSplit reads the next chain of a split ring the way virtio 1.2 §2.7
// describes it.
func (f *fzMemory) refSplit(size, last uint16, availAddr uint64) refResult {
	avail, _ := f.bytesAt(availAddr, 4+2*uint64(size))
	idx := binary.LittleEndian.Uint16(avail[2:])
	if idx-last > size {
		return refResult{v: vBroken}
	}
	if idx == last {
		return refResult{v: vEmpty}
	}
	head := binary.LittleEndian.Uint16(avail[4+2*(last%size):])
	if head >= size {
		return refResult{v: vBroken}
	}
	r := refResult{head: head}
	table, _ := f.bytesAt(fzRing, 16*uint64(size))
	entries := int(size)
	indirect := false
	var list []refDesc
	visited := 0
	for i := int(head); ; {
		d := readRefDesc(table[16*i:], false)
		if d.flags&4 != 0 {
			if indirect || d.flags&1 != 0 || d.n == 0 || d.n%16 != 0 {
				r.v = vBadChain
				return r
			}
			t, ok := f.bytesAt(d.addr, uint64(d.n))
			if !ok {
				r.v = vBadChain
				return r
			}
			table, entries, indirect, i, visited = t, int(d.n/16), true, 0, 0
			continue
		}
		list = append(list, d)
		visited++
		if len(list) > int(size) || visited > entries {
			r.v = vBadChain
			return r
		}
		if d.flags&1 == 0 {
			break
		}
		if int(d.nxt) >= entries {
			r.v = vBadChain
			return r
		}
		i = int(d.nxt)
	}
	return f.finish(r, list, int(size))
}

// refPacked reads the next list of a packed ring the way virtio 1.2 §2.8
// describes it, returning also the ring descriptors it spans.
func (f *fzMemory) refPacked(size, pos, wrap uint16) (refResult, int) {
	ring, _ := f.bytesAt(fzRing, 16*uint64(size))
	avail := func(flags, w uint16) bool {
		return (flags>>7&1 == w) && (flags>>15&1 != w)
	}
	var ringList []refDesc
	for n := 1; ; n++ {
		d := readRefDesc(ring[16*int(pos):], true)
		if !avail(d.flags, wrap) {
			if n == 1 {
				return refResult{v: vEmpty}, 0
			}
			return refResult{v: vBroken}, 0
		}
		ringList = append(ringList, d)
		if d.flags&1 == 0 {
			break
		}
		if n == int(size) {
			return refResult{v: vBroken}, 0
		}
		if pos++; pos == size {
			pos, wrap = 0, wrap^1
		}
	}
	last := ringList[len(ringList)-1]
	r := refResult{head: last.nxt}
	var list []refDesc
	for j, d := range ringList {
		if d.flags&4 == 0 {
			list = append(list, d)
			continue
		}
		if d.flags&1 != 0 || j > 0 || d.n == 0 || d.n%16 != 0 || d.n/16 > uint32(size) {
			r.v = vBadChain
			return r, len(ringList)
		}
		t, ok := f.bytesAt(d.addr, uint64(d.n))
		if !ok {
			r.v = vBadChain
			return r, len(ringList)
		}
		for k := 0; k < len(t); k += 16 {
			e := readRefDesc(t[k:], true)
			list = append(list, refDesc{addr: e.addr, n: e.n, flags: e.flags & 2})
		}
	}
	return f.finish(r, list, int(size)), len(ringList)
}

// checkPop compares a pop with the reference.
func (f *fzMemory) checkPop(t *testing.T, step int, ok bool, err error, c *virtio.Chain, want refResult) {
	t.Helper()
	var got verdict
	switch ce, isCE := err.(*virtio.ChainError); {
	case err == nil && ok:
		got = vChain
	case err == nil:
		got = vEmpty
	case !isCE:
		t.Fatalf("pop %d: error %v is not a *ChainError", step, err)
	case ce.HeadKnown:
		got = vBadChain
	default:
		got = vBroken
	}
	if got != want.v {
		t.Fatalf("pop %d: verdict %d (err %v); reference says %d", step, got, err, want.v)
	}
	if got == vBadChain {
		if c.Head != want.head || c.ReadLen != 0 || c.WriteLen != 0 || len(c.Readable)+len(c.Writable) != 0 {
			t.Fatalf("pop %d: malformed chain left head %d with %d+%d bytes; want head %d, no buffers", step, c.Head, c.ReadLen, c.WriteLen, want.head)
		}
	}
	if got != vChain {
		return
	}
	if c.Head != want.head {
		t.Fatalf("pop %d: head %d; want %d", step, c.Head, want.head)
	}
	var read, write uint64
	ri, wi := 0, 0
	for _, p := range want.pieces {
		var s []byte
		if p.write {
			if wi == len(c.Writable) {
				t.Fatalf("pop %d: %d writable slices; want more", step, wi)
			}
			s = c.Writable[wi]
			wi++
			write += uint64(len(s))
		} else {
			if ri == len(c.Readable) {
				t.Fatalf("pop %d: %d readable slices; want more", step, ri)
			}
			s = c.Readable[ri]
			ri++
			read += uint64(len(s))
		}
		h := f.regions[p.region].Host
		if len(s) != p.n || cap(s) != len(s) || &s[0] != &h[p.off] {
			t.Fatalf("pop %d: slice of %d bytes (cap %d) not at region %d offset %#x length %d", step, len(s), cap(s), p.region, p.off, p.n)
		}
	}
	if ri != len(c.Readable) || wi != len(c.Writable) {
		t.Fatalf("pop %d: %d+%d slices; want %d+%d", step, len(c.Readable), len(c.Writable), ri, wi)
	}
	if uint64(c.ReadLen) != read || uint64(c.WriteLen) != write || read != want.read || write != want.write {
		t.Fatalf("pop %d: ReadLen %d WriteLen %d, slices hold %d+%d; want %d+%d", step, c.ReadLen, c.WriteLen, read, write, want.read, want.write)
	}
}

func FuzzSplitChain(f *testing.F) {
	for _, s := range splitSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < fzHeader {
			return
		}
		size := uint16(1) << (data[0] % 5)
		eventIdx, align2, split := data[1]&1 != 0, data[1]&2 != 0, data[1]&4 != 0
		start := binary.LittleEndian.Uint16(data[2:])
		fm := newFzMemory(t, data[fzHeader:], split)
		availAddr := uint64(fzAvail)
		if align2 {
			availAddr += 2
		}
		// NextUsed 0 takes the used idx in the ring, which is the fuzzer's.
		nextUsed := start
		if start == 0 {
			nextUsed = binary.LittleEndian.Uint16(fm.near[fzUsed-fzBase+2:])
		}
		q, err := virtio.NewSplitQueue(fm.mem, virtio.SplitConfig{
			Size: size, DescAddr: fzRing, AvailAddr: availAddr, UsedAddr: fzUsed,
			EventIdx: eventIdx, NextAvail: start, NextUsed: start,
		})
		if tooFar := start-nextUsed > size; tooFar != (err != nil) {
			t.Fatalf("NewSplitQueue with next avail %d, used idx %d = %v; want error %v", start, nextUsed, err, tooFar)
		}
		if err != nil {
			return
		}
		var c virtio.Chain
		last := start
		for step := 0; step < 2*int(size)+2; step++ {
			want := fm.refSplit(size, last, availAddr)
			ok, err := q.Pop(&c)
			fm.checkPop(t, step, ok, err, &c, want)
			if want.v == vEmpty || want.v == vBroken {
				return
			}
			last++
			if q.NextAvail() != last {
				t.Fatalf("pop %d: NextAvail %d; want %d", step, q.NextAvail(), last)
			}
			if err := q.Push(&c, c.WriteLen); err != nil {
				t.Fatalf("pop %d: Push: %v", step, err)
			}
			q.Flush()
			nextUsed++
			used, _ := fm.bytesAt(fzUsed, 4+8*uint64(size))
			e := used[4+8*((nextUsed-1)%size):]
			if idx := binary.LittleEndian.Uint16(used[2:]); idx != nextUsed {
				t.Fatalf("pop %d: used idx %d; want %d", step, idx, nextUsed)
			}
			if id, n := binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:]); id != uint32(want.head) || uint64(n) != want.write && want.v == vChain {
				t.Fatalf("pop %d: used elem id %d len %d; want %d, %d", step, id, n, want.head, want.write)
			}
		}
	})
}

func FuzzPackedChain(f *testing.F) {
	for _, s := range packedSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < fzHeader {
			return
		}
		size := 1 + uint16(data[0]%16)
		eventIdx, split := data[1]&1 != 0, data[1]&4 != 0
		wrap := uint16(data[1] >> 3 & 1)
		pos := uint16(data[2]) % size
		fm := newFzMemory(t, data[fzHeader:], split)
		start := pos | wrap<<15
		q, err := virtio.NewPackedQueue(fm.mem, virtio.PackedConfig{
			Size: size, DescAddr: fzRing, DriverAddr: fzDriver, DeviceAddr: fzDevice,
			EventIdx: eventIdx, NextAvail: start, NextUsed: start,
		})
		if err != nil {
			t.Fatal(err)
		}
		var c virtio.Chain
		for step := 0; step < 2*int(size)+2; step++ {
			want, spans := fm.refPacked(size, pos, wrap)
			ok, err := q.Pop(&c)
			fm.checkPop(t, step, ok, err, &c, want)
			if want.v == vEmpty || want.v == vBroken {
				return
			}
			usedAt, usedWrap := pos, wrap
			if pos += uint16(spans); pos >= size {
				pos, wrap = pos-size, wrap^1
			}
			if got := q.NextAvail(); got != pos|wrap<<15 {
				t.Fatalf("pop %d: NextAvail %#x; want %#x", step, got, pos|wrap<<15)
			}
			if err := q.Push(&c, c.WriteLen); err != nil {
				t.Fatalf("pop %d: Push: %v", step, err)
			}
			q.Flush()
			ring, _ := fm.bytesAt(fzRing, 16*uint64(size))
			d := readRefDesc(ring[16*int(usedAt):], true)
			flags := uint16(0)
			if usedWrap == 1 {
				flags = 1<<7 | 1<<15
			}
			if c.WriteLen > 0 {
				flags |= 2
			}
			if d.nxt != want.head || d.flags != flags || uint64(d.n) != uint64(c.WriteLen) {
				t.Fatalf("pop %d: used descriptor id %d flags %#x len %d; want id %d flags %#x len %d",
					step, d.nxt, d.flags, d.n, want.head, flags, c.WriteLen)
			}
		}
	})
}

// Seed builders: small valid and invalid rings.

type seedDesc struct {
	addr  uint64
	n     uint32
	flags uint16
	next  uint16 // split: next; packed: Buffer ID
}

func putSeedDesc(img []byte, gpa uint64, d seedDesc, packed bool) {
	b := img[gpa-fzBase:]
	binary.LittleEndian.PutUint64(b, d.addr)
	binary.LittleEndian.PutUint32(b[8:], d.n)
	if packed {
		binary.LittleEndian.PutUint16(b[12:], d.next)
		binary.LittleEndian.PutUint16(b[14:], d.flags)
	} else {
		binary.LittleEndian.PutUint16(b[12:], d.flags)
		binary.LittleEndian.PutUint16(b[14:], d.next)
	}
}

// splitSeed lays out a split ring of 1<<log2 entries with the given heads
// in its avail ring, starting at index start.
func splitSeed(log2 byte, flags byte, start uint16, descs map[uint16]seedDesc, heads []uint16, tables map[uint64][]seedDesc) []byte {
	img := make([]byte, 0x400)
	size := uint16(1) << log2
	for i, d := range descs {
		putSeedDesc(img, fzRing+16*uint64(i), d, false)
	}
	for a, tab := range tables {
		if need := int(a-fzBase) + 16*len(tab); need > len(img) {
			img = append(img, make([]byte, need-len(img))...)
		}
		for j, d := range tab {
			putSeedDesc(img, a+16*uint64(j), d, false)
		}
	}
	avail := fzAvail - fzBase
	if flags&2 != 0 {
		avail += 2
	}
	for k, h := range heads {
		binary.LittleEndian.PutUint16(img[avail+4+2*int((start+uint16(k))%size):], h)
	}
	binary.LittleEndian.PutUint16(img[avail+2:], start+uint16(len(heads)))
	return append([]byte{log2, flags, byte(start), byte(start >> 8)}, img...)
}

func splitSeeds() [][]byte {
	const N, W, I = 1, 2, 4
	return [][]byte{
		// TX and RX chains.
		splitSeed(3, 0, 0, map[uint16]seedDesc{
			0: {0x1200, 12, N, 1}, 1: {0x1300, 100, 0, 0},
			2: {0x1200, 12, N, 5}, 5: {0x1400, 0x100, W, 0},
		}, []uint16{0, 2}, nil),
		// A buffer across the region border, near index wraparound.
		splitSeed(2, 4|1, 65534, map[uint16]seedDesc{3: {0x17f0, 0x20, W, 0}, 1: {0x3000, 0x10, 0, 0}}, []uint16{3, 1, 3}, nil),
		// Indirect, after two direct descriptors, 2-aligned avail ring.
		splitSeed(4, 2, 7, map[uint16]seedDesc{
			4: {0x1200, 8, N, 9}, 9: {0x1208, 8, N, 15}, 15: {0x1400, 48, I | W, 0},
		}, []uint16{4}, map[uint64][]seedDesc{0x1400: {{0x1500, 10, N, 2}, {}, {0x1600, 100, W, 0}}}),
		// A loop, a bad next, a readable after writable.
		splitSeed(3, 0, 0, map[uint16]seedDesc{
			0: {0x1200, 1, N, 1}, 1: {0x1200, 1, N, 0}, 2: {0x1200, 1, N, 8}, 3: {0x1200, 1, W | N, 4}, 4: {0x1200, 1, 0, 0},
		}, []uint16{0, 2, 3}, nil),
		// Avail idx too far ahead.
		splitSeed(0, 0, 100, nil, []uint16{0, 0}, nil),
	}
}

// packedSeed lays out a packed ring of size entries starting at pos with
// the given wrap counter; descs are made available in order, lists as
// given by NEXT flags.
func packedSeed(size byte, flags byte, pos byte, descs []seedDesc, tables map[uint64][]seedDesc) []byte {
	img := make([]byte, 0x400)
	wrap := uint16(flags >> 3 & 1)
	p := uint16(pos) % uint16(size)
	for _, d := range descs {
		if wrap == 1 {
			d.flags |= 1 << 7
		} else {
			d.flags |= 1 << 15
		}
		putSeedDesc(img, fzRing+16*uint64(p), d, true)
		if p++; p == uint16(size) {
			p, wrap = 0, wrap^1
		}
	}
	for a, tab := range tables {
		if need := int(a-fzBase) + 16*len(tab); need > len(img) {
			img = append(img, make([]byte, need-len(img))...)
		}
		for j, d := range tab {
			putSeedDesc(img, a+16*uint64(j), d, true)
		}
	}
	return append([]byte{size - 1, flags, pos, 0}, img...)
}

func packedSeeds() [][]byte {
	const N, W, I = 1, 2, 4
	return [][]byte{
		packedSeed(8, 8, 0, []seedDesc{{0x1200, 12, N, 0}, {0x1300, 100, 0, 3}, {0x1400, 0x100, W, 1}}, nil),
		// Wrapping list across the region border, wrap counter 0.
		packedSeed(5, 4, 3, []seedDesc{{0x17f0, 0x20, N, 0}, {0x3000, 8, N, 0}, {0x1200, 64, W, 4}}, nil),
		// Indirect table.
		packedSeed(16, 8|1, 15, []seedDesc{{0x1400, 48, I, 7}}, map[uint64][]seedDesc{
			0x1400: {{0x1500, 10, 0, 0}, {0x1600, 0, W, 0}, {0x1700, 300, W | N, 0}},
		}),
		// Malformed: writable then readable; list longer than the ring.
		packedSeed(3, 8, 0, []seedDesc{{0x1200, 1, W | N, 0}, {0x1200, 1, 0, 1}, {0x1200, 1, N, 0}}, nil),
	}
}

// TestFuzzSeedsCheckedIn checks that testdata/fuzz holds the seeds the
// builders above make, and rewrites them when VMNET_WRITE_FUZZ_SEEDS is set.
func TestFuzzSeedsCheckedIn(t *testing.T) {
	write := os.Getenv("VMNET_WRITE_FUZZ_SEEDS") != ""
	for name, seeds := range map[string][][]byte{"FuzzSplitChain": splitSeeds(), "FuzzPackedChain": packedSeeds()} {
		dir := filepath.Join("testdata", "fuzz", name)
		if write {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for i, s := range seeds {
			path := filepath.Join(dir, fmt.Sprintf("seed-%02d", i))
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if write {
				if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != body {
				t.Errorf("%s is missing or stale (%v): run with VMNET_WRITE_FUZZ_SEEDS=1", path, err)
			}
		}
	}
}
