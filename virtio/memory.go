package virtio

import (
	"errors"
	"fmt"
	"math"
	"sort"
)

// ErrOutOfRange is matched by every *AddressError: an access that does not
// lie inside guest memory, or whose end does not fit in 64 bits.
var ErrOutOfRange = errors.New("outside guest memory")

// AddressError reports an access to guest memory that no region backs.
type AddressError struct {
	Addr uint64 // first byte of the access
	Len  uint64 // bytes accessed
	User bool   // Addr is a front-end virtual address (vhost-user), not a guest physical one
}

func (e *AddressError) Error() string {
	space := "guest"
	if e.User {
		space = "user"
	}
	if e.Len > 0 && e.Addr+(e.Len-1) < e.Addr {
		return fmt.Sprintf("%s range %#x+%#x overflows 64 bits", space, e.Addr, e.Len)
	}
	return fmt.Sprintf("%s range [%#x, %#x) %s", space, e.Addr, e.Addr+e.Len, ErrOutOfRange)
}

// Is makes errors.Is(err, ErrOutOfRange) hold.
func (e *AddressError) Is(target error) bool { return target == ErrOutOfRange }

// Region is one contiguous piece of guest physical memory and its mapping in
// this process.
type Region struct {
	GuestAddr uint64 // guest physical address of Host[0]
	UserAddr  uint64 // the front-end's virtual address of Host[0] (vhost-user); 0 when unused
	Host      []byte // the mapping; len(Host) is the region size
}

// span is a Region with its inclusive last address precomputed, so that a
// region ending at 2^64 needs no special case.
type span struct {
	first, last uint64
	host        []byte
	hostStart   uintptr // where host starts in this process, for GuestAddr
}

// linearScanMax is the region count up to which a linear scan beats binary
// search (see BenchmarkMemoryAppendSlices): an embedding VMM has one to
// three regions, a vhost-user front-end usually fewer than eight.
const linearScanMax = 8

// Memory translates guest physical addresses to host memory. It is immutable
// after NewMemory and safe for concurrent use.
type Memory struct {
	spans   []span   // sorted by first, non-overlapping
	regions []Region // the same, as given
}

// NewMemory builds the guest memory map from regions given in any order. It
// rejects empty regions, regions whose guest or user range does not fit in 64
// bits, and regions that overlap in guest or (when set) user address space.
// The Host slices are used in place: the caller keeps them mapped for as long
// as the Memory and any queue built on it are in use.
func NewMemory(regions []Region) (*Memory, error) {
	rs := append([]Region(nil), regions...)
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].GuestAddr < rs[j].GuestAddr })
	m := &Memory{spans: make([]span, len(rs)), regions: rs}
	for i, r := range rs {
		n := uint64(len(r.Host))
		if n == 0 {
			return nil, fmt.Errorf("add region at guest %#x: empty", r.GuestAddr)
		}
		if r.GuestAddr > math.MaxUint64-(n-1) {
			return nil, fmt.Errorf("add region at guest %#x: %w", r.GuestAddr, &AddressError{Addr: r.GuestAddr, Len: n})
		}
		if r.UserAddr != 0 && r.UserAddr > math.MaxUint64-(n-1) {
			return nil, fmt.Errorf("add region at guest %#x: %w", r.GuestAddr, &AddressError{Addr: r.UserAddr, Len: n, User: true})
		}
		m.spans[i] = span{first: r.GuestAddr, last: r.GuestAddr + (n - 1), host: r.Host[:n:n], hostStart: hostAddr(r.Host)}
		if i > 0 && m.spans[i-1].last >= r.GuestAddr {
			return nil, fmt.Errorf("add region at guest [%#x, %#x]: overlaps region at guest [%#x, %#x]",
				r.GuestAddr, m.spans[i].last, m.spans[i-1].first, m.spans[i-1].last)
		}
	}
	for i, a := range rs {
		for _, b := range rs[i+1:] {
			if a.UserAddr == 0 || b.UserAddr == 0 {
				continue
			}
			aLast := a.UserAddr + uint64(len(a.Host)-1)
			bLast := b.UserAddr + uint64(len(b.Host)-1)
			if a.UserAddr <= bLast && b.UserAddr <= aLast {
				return nil, fmt.Errorf("add region at guest %#x: user range [%#x, %#x] overlaps that of region at guest %#x",
					b.GuestAddr, b.UserAddr, bLast, a.GuestAddr)
			}
		}
	}
	return m, nil
}

// Regions returns a copy of the regions, sorted by guest address.
func (m *Memory) Regions() []Region {
	return append([]Region(nil), m.regions...)
}

// find returns the index of the region that holds gpa, or -1.
func (m *Memory) find(gpa uint64) int {
	if len(m.spans) <= linearScanMax {
		return m.findLinear(gpa)
	}
	return m.findBinary(gpa)
}

func (m *Memory) findLinear(gpa uint64) int {
	for i := range m.spans {
		if gpa >= m.spans[i].first && gpa <= m.spans[i].last {
			return i
		}
	}
	return -1
}

func (m *Memory) findBinary(gpa uint64) int {
	s := m.spans
	lo, hi := 0, len(s)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if s[mid].last < gpa {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < len(s) && s[lo].first <= gpa {
		return lo
	}
	return -1
}

// Slice returns the n bytes of guest memory at gpa. They must lie in one
// region; the result's capacity ends with them, so appending to it never
// writes guest memory. Slice of zero bytes returns nil.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	i := m.find(gpa)
	if i < 0 || n-1 > m.spans[i].last-gpa {
		return nil, &AddressError{Addr: gpa, Len: n}
	}
	off := gpa - m.spans[i].first
	return m.spans[i].host[off : off+n : off+n], nil
}

// AppendSlices appends to dst the host slices that back the n bytes of guest
// memory at gpa, one per region crossed (regions must then be adjacent in
// guest address space). It allocates only when dst runs out of capacity. On
// error dst is returned unchanged.
func (m *Memory) AppendSlices(dst [][]byte, gpa uint64, n uint32) ([][]byte, error) {
	if n == 0 {
		return dst, nil
	}
	i := m.find(gpa)
	if i < 0 {
		return dst, &AddressError{Addr: gpa, Len: uint64(n)}
	}
	orig := len(dst)
	addr, left := gpa, uint64(n)
	for {
		s := &m.spans[i]
		off := addr - s.first
		take := s.last - addr + 1 // no region is 2^64 bytes long
		if take > left {
			take = left
		}
		dst = append(dst, s.host[off:off+take:off+take])
		left -= take
		if left == 0 {
			return dst, nil
		}
		addr += take // wraps to 0 only past the last region: caught below
		i++
		if i == len(m.spans) || m.spans[i].first != addr {
			clear(dst[orig:])
			return dst[:orig], &AddressError{Addr: gpa, Len: uint64(n)}
		}
	}
}

// UserToGuest translates a front-end virtual address to a guest physical
// one, as a vhost-user back-end must for the ring addresses of
// VHOST_USER_SET_VRING_ADDR.
func (m *Memory) UserToGuest(ua uint64) (uint64, error) {
	for _, r := range m.regions {
		if r.UserAddr != 0 && ua >= r.UserAddr && ua-r.UserAddr < uint64(len(r.Host)) {
			return r.GuestAddr + (ua - r.UserAddr), nil
		}
	}
	return 0, &AddressError{Addr: ua, Len: 1, User: true}
}

// GuestAddr returns the guest physical address of b[0], where b is a
// slice of a region's mapping (a buffer of a chain popped from a queue on
// m); ok is false for an empty b or one outside every region. The device
// logs its writes by it (Queue.MarkWritten). Regions are searched one by
// one: a memory map has few.
func (m *Memory) GuestAddr(b []byte) (gpa uint64, ok bool) {
	if len(b) == 0 {
		return 0, false
	}
	p := hostAddr(b)
	for i := range m.spans {
		s := &m.spans[i]
		if off := p - s.hostStart; p >= s.hostStart && off < uintptr(len(s.host)) {
			return s.first + uint64(off), true
		}
	}
	return 0, false
}

// region returns the host mapping of the region holding gpa and gpa's
// offset in it, for the ring accessors that need to look past a field.
func (m *Memory) region(gpa uint64) ([]byte, uint64, bool) {
	i := m.find(gpa)
	if i < 0 {
		return nil, 0, false
	}
	return m.spans[i].host, gpa - m.spans[i].first, true
}
