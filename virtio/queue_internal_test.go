package virtio

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestNeedEvent(t *testing.T) {
	// vring_need_event against its meaning: event is one of the indices
	// old, old+1, ..., new-1 (virtio 1.2 §2.7.7.2).
	check := func(event, new, old uint16) {
		want := false
		for i := old; i != new; i++ {
			if i == event {
				want = true
				break
			}
		}
		if got := needEvent(event, new, old); got != want {
			t.Fatalf("needEvent(event %d, new %d, old %d) = %v; want %v", event, new, old, got, want)
		}
	}
	edges := []uint16{0, 1, 2, 0x7fff, 0x8000, 0xfffe, 0xffff}
	for _, e := range edges {
		for _, n := range edges {
			for _, o := range edges {
				check(e, n, o)
			}
		}
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 2000 {
		old := uint16(rng.Uint32())
		new := old + uint16(rng.IntN(300))
		check(old+uint16(rng.IntN(600))-150, new, old)
	}
}

func TestRuleString(t *testing.T) {
	for r := RuleAvailIdx; r <= RuleOverrun; r++ {
		if s := r.String(); s == "" || strings.HasPrefix(s, "Rule(") {
			t.Errorf("Rule %d has no name", r)
		}
	}
	if got := Rule(200).String(); got != "Rule(200)" {
		t.Errorf("Rule(200).String() = %q", got)
	}
}

func TestChainErrorMessages(t *testing.T) {
	addrErr := &AddressError{Addr: 0x1000, Len: 16}
	tests := []struct {
		err  ChainError
		want string
	}{
		{ChainError{Rule: RuleAvailIdx, Desc: 300, Got: 290, Limit: 8}, "read avail ring: idx 300 is 290 entries ahead, more than queue size 8"},
		{ChainError{Rule: RuleHeadRange, Desc: 3, Got: 9, Limit: 8}, "read avail ring: entry 3: head 9 out of range for queue size 8"},
		{ChainError{Rule: RuleNextRange, Head: 1, HeadKnown: true, Desc: 2, Got: 8, Limit: 8}, "pop chain 1: descriptor 2: next 8 out of range for table of 8"},
		{ChainError{Rule: RuleChainLen, Head: 1, HeadKnown: true, Desc: 2, Indirect: true, Got: 9, Limit: 8}, "pop chain 1: indirect descriptor 2: chain longer than 8 descriptors"},
		{ChainError{Rule: RuleChainBytes, HeadKnown: true, Got: 1 << 32, Limit: 1<<32 - 1}, "pop chain 0: descriptor 0: chain of 4294967296 bytes exceeds 4294967295"},
		{ChainError{Rule: RuleOrder, Head: 4, HeadKnown: true, Desc: 1}, "pop chain 4: descriptor 1: device-readable after device-writable"},
		{ChainError{Rule: RuleIndirectNext, HeadKnown: true}, "pop chain 0: descriptor 0: INDIRECT with NEXT"},
		{ChainError{Rule: RuleIndirectNested, HeadKnown: true, Indirect: true}, "pop chain 0: indirect descriptor 0: INDIRECT inside an indirect table"},
		{ChainError{Rule: RuleIndirectLen, HeadKnown: true, Got: 20}, "indirect table of 20 bytes, want a non-zero multiple of 16"},
		{ChainError{Rule: RuleIndirectInList, HeadKnown: true, Desc: 5}, "descriptor 5: INDIRECT after other descriptors of its list"},
		{ChainError{Rule: RuleAddress, HeadKnown: true, Err: addrErr}, "descriptor 0: guest range [0x1000, 0x1010) outside guest memory"},
		{ChainError{Rule: RuleNotAvail, Desc: 3, Got: 0x8001, Limit: 1}, "pop chain: descriptor 3: flags 0x8001 not available for wrap counter 1"},
		{ChainError{Rule: RuleOverrun, Desc: 0, Got: 9, Limit: 8}, "pop chain: descriptor 0: 9 in flight, more than the ring holds (8)"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); !strings.Contains(got, tt.want) {
			t.Errorf("Error() = %q; want it to contain %q", got, tt.want)
		}
	}
	e := &ChainError{Rule: RuleAddress, HeadKnown: true, Err: addrErr}
	if !errors.Is(e, ErrOutOfRange) || !errors.Is(e, ErrBadChain) || errors.Is(e, ErrBrokenRing) {
		t.Errorf("errors.Is on %v: want ErrOutOfRange and ErrBadChain, not ErrBrokenRing", e)
	}
}

// TestRingFieldFallback places 16-bit ring fields where the aligned word
// around them leaves the region, so they take the fenced plain path.
func TestRingFieldFallback(t *testing.T) {
	const size = 2
	// The avail ring and the used ring each fill their region exactly, so
	// used_event and avail_event, 4-byte aligned, are a region's last two
	// bytes.
	// Allocations of 64 bytes are 8-aligned; smaller ones may not be.
	availHost := make([]byte, 64)[: 4+2*size+2 : 4+2*size+2]
	usedHost := make([]byte, 64)[: 4+8*size+2 : 4+8*size+2]
	desc := make([]byte, 16*size)
	mem, err := NewMemory([]Region{
		{GuestAddr: 0x1000, Host: desc},
		{GuestAddr: 0x2000, Host: availHost},
		{GuestAddr: 0x3000, Host: usedHost},
	})
	if err != nil {
		t.Fatal(err)
	}
	q, err := NewSplitQueue(mem, SplitConfig{Size: size, DescAddr: 0x1000, AvailAddr: 0x2000, UsedAddr: 0x3000, EventIdx: true})
	if err != nil {
		t.Fatal(err)
	}
	if q.usedEvent.word != nil || q.availEvt.word != nil || q.availIdx.word == nil {
		t.Fatalf("used_event, avail_event, avail idx on the atomic path = %v, %v, %v; want false, false, true",
			q.usedEvent.word != nil, q.availEvt.word != nil, q.availIdx.word != nil)
	}
	if q.EnableNotify() {
		t.Fatalf("EnableNotify on an empty ring = true")
	}
	if got := binary.LittleEndian.Uint16(usedHost[4+8*size:]); got != 0 {
		t.Fatalf("avail_event = %d; want 0", got)
	}
	// Post two chains by hand, pop and return them.
	for i := range size {
		binary.LittleEndian.PutUint64(desc[16*i:], 0x1000)
		binary.LittleEndian.PutUint32(desc[16*i+8:], 16)
		binary.LittleEndian.PutUint16(availHost[4+2*i:], uint16(i))
	}
	binary.LittleEndian.PutUint16(availHost[2:], size)
	binary.LittleEndian.PutUint16(availHost[4+2*size:], 1) // used_event: the second
	var c Chain
	// The first publication always notifies, the second crosses used_event,
	// the third does not.
	for i, want := range []bool{true, true, false} {
		if i == size {
			binary.LittleEndian.PutUint16(availHost[2:], size+1) // chain 0 again
		}
		if ok, err := q.Pop(&c); !ok || err != nil {
			t.Fatalf("Pop %d = %v, %v", i, ok, err)
		}
		if err := q.Push(&c, 0); err != nil {
			t.Fatal(err)
		}
		q.Flush()
		if got := q.NeedsInterrupt(); got != want {
			t.Fatalf("NeedsInterrupt after %d = %v; want %v", i+1, got, want)
		}
	}
	if q.EnableNotify() {
		t.Fatalf("EnableNotify on a drained ring = true")
	}
	if got := binary.LittleEndian.Uint16(usedHost[4+8*size:]); got != size+1 {
		t.Fatalf("avail_event = %d; want %d", got, size+1)
	}

	// Avail flags at a 2-mod-4 host address at the start of a region.
	buf := make([]byte, 64)
	host := buf[2 : 2+4+2*size]
	mem2, err := NewMemory([]Region{{GuestAddr: 0x1000, Host: desc}, {GuestAddr: 0x2002, Host: host}, {GuestAddr: 0x3000, Host: make([]byte, 64)}})
	if err != nil {
		t.Fatal(err)
	}
	q2, err := NewSplitQueue(mem2, SplitConfig{Size: size, DescAddr: 0x1000, AvailAddr: 0x2002, UsedAddr: 0x3000})
	if err != nil {
		t.Fatal(err)
	}
	if q2.availFlag.word != nil || q2.availIdx.word == nil {
		t.Fatalf("avail flags, idx on the atomic path = %v, %v; want false, true", q2.availFlag.word != nil, q2.availIdx.word != nil)
	}
	binary.LittleEndian.PutUint16(host[2:], 1)
	binary.LittleEndian.PutUint16(host, availFNoInterrupt)
	if ok, err := q2.Pop(&c); !ok || err != nil {
		t.Fatalf("Pop = %v, %v", ok, err)
	}
	if err := q2.Push(&c, 0); err != nil {
		t.Fatal(err)
	}
	q2.Flush()
	if q2.NeedsInterrupt() {
		t.Fatalf("NeedsInterrupt with NO_INTERRUPT = true")
	}
}
