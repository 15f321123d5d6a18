package vhostuser

import (
	"fmt"
	"math"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// logMapping is the front-end's dirty log (SET_LOG_BASE with LOG_SHMFD)
// mapped into this process.
type logMapping struct {
	desc Log              // as the front-end described it
	data []byte           // the whole mmap, page aligned, for munmap
	log  *virtio.DirtyLog // over the log itself, within data
}

// mapLog maps the log l describes from fd, which stays the caller's. The
// log must be a regular file (QEMU's is a sealed memfd) at least as long
// as it reaches, at an offset and of a size that are multiples of 8 (QEMU
// logs in unsigned longs, which it swaps out atomically), and at most
// limit bytes: a log of limit bytes covers 8*LogPageSize*limit bytes of
// guest physical address space.
func mapLog(fd int, l Log, limit uint64) (*logMapping, error) {
	switch {
	case l.Size == 0 || l.Size%8 != 0 || l.Offset%8 != 0:
		return nil, fmt.Errorf("map dirty log of %d bytes at offset %d: want a non-zero size and an offset that are multiples of 8", l.Size, l.Offset)
	case l.Size > limit:
		return nil, fmt.Errorf("map dirty log of %d bytes: more than the %d bytes that cover 8 times the guest memory limit", l.Size, limit)
	case l.Offset > math.MaxInt64-l.Size:
		return nil, fmt.Errorf("map dirty log of %d bytes at offset %#x: overflows", l.Size, l.Offset)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat dirty log fd %d: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("map dirty log: fd %d is not a regular file (mode %#o)", fd, st.Mode)
	}
	if st.Size < 0 || uint64(st.Size) < l.Offset+l.Size {
		return nil, fmt.Errorf("map dirty log: file is %d bytes, log ends at %d", st.Size, l.Offset+l.Size)
	}
	page := uint64(unix.Getpagesize())
	off := l.Offset &^ (page - 1)
	delta := l.Offset - off
	length := (delta + l.Size + page - 1) &^ (page - 1)
	data, err := unix.Mmap(fd, int64(off), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes at offset %#x of dirty log fd %d: %w", length, off, fd, err)
	}
	log, err := virtio.DirtyLogOver(data[delta : delta+l.Size])
	if err != nil {
		unix.Munmap(data)
		return nil, fmt.Errorf("map dirty log: %w", err)
	}
	return &logMapping{desc: l, data: data, log: log}, nil
}

func (m *logMapping) unmap() error {
	if m == nil || m.data == nil {
		return nil
	}
	err := unix.Munmap(m.data)
	m.data, m.log = nil, nil
	if err != nil {
		return fmt.Errorf("unmap dirty log: %w", err)
	}
	return nil
}
