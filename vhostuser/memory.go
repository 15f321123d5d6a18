package vhostuser

import (
	"fmt"
	"math"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// mapping is one region of the front-end's memory table mapped into this process.
type mapping struct {
	desc MemoryRegion // as the front-end described it
	data []byte       // the whole mmap, page aligned, for munmap
	host []byte       // the region itself, within data
}

// mapRegion maps r from fd, which stays the caller's, for req. The file must be a regular
// file (memfd, tmpfs, hugetlbfs) at least as long as the region reaches: a shorter one would
// raise SIGBUS on first touch rather than an error here. used is how many bytes of guest
// memory the connection has mapped already, and the mapping may not take that past limit
// (a *LimitError), counted as what it costs, address space: whole pages, or huge pages.
func mapRegion(fd int, r MemoryRegion, req Request, used, limit uint64) (*mapping, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat fd %d of region at guest %#x: %w", fd, r.GuestAddr, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("map region at guest %#x: fd %d is not a regular file (mode %#o)", r.GuestAddr, fd, st.Mode)
	}
	end := r.MmapOffset + r.Size // MemoryRegion.check ruled out overflow
	if st.Size < 0 || uint64(st.Size) < end {
		return nil, fmt.Errorf("map region at guest %#x: file is %d bytes, region ends at %d", r.GuestAddr, st.Size, end)
	}
	// mmap wants a page-aligned offset, and a huge page aligned one on hugetlbfs, whose
	// st_blksize is the huge page size.
	align := uint64(unix.Getpagesize())
	if bs := uint64(st.Blksize); bs > align && bs&(bs-1) == 0 {
		align = bs
	}
	off := r.MmapOffset &^ (align - 1)
	delta := r.MmapOffset - off
	length := delta + r.Size
	if length > math.MaxInt-align {
		return nil, fmt.Errorf("map region at guest %#x: size %#x too large", r.GuestAddr, r.Size)
	}
	length = (length + align - 1) &^ (align - 1)
	if length > limit || used > limit-length {
		return nil, fmt.Errorf("map region at guest %#x, %d bytes: %w", r.GuestAddr, length, &LimitError{Limit: LimitMemBytes, Request: req, Got: used + length, Max: limit})
	}
	data, err := unix.Mmap(fd, int64(off), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes at offset %#x of fd %d for region at guest %#x: %w", length, off, fd, r.GuestAddr, err)
	}
	return &mapping{desc: r, data: data, host: data[delta : delta+r.Size : delta+r.Size]}, nil
}

func (m *mapping) unmap() error {
	if m.data == nil {
		return nil
	}
	err := unix.Munmap(m.data)
	m.data, m.host = nil, nil
	if err != nil {
		return fmt.Errorf("unmap region at guest %#x: %w", m.desc.GuestAddr, err)
	}
	return nil
}

// newMemory builds the guest memory of a set of mappings; none is no memory.
func newMemory(maps []*mapping) (*virtio.Memory, error) {
	if len(maps) == 0 {
		return nil, nil
	}
	regions := make([]virtio.Region, len(maps))
	for i, m := range maps {
		regions[i] = virtio.Region{GuestAddr: m.desc.GuestAddr, UserAddr: m.desc.UserAddr, Host: m.host}
	}
	mem, err := virtio.NewMemory(regions)
	if err != nil {
		return nil, fmt.Errorf("build guest memory of %d regions: %w", len(regions), err)
	}
	return mem, nil
}
