package engine

import (
	"errors"
	"fmt"

	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// The software fallbacks of the transmit path, for a TAP that cannot take
// what the guest was offered (Config.NoVnetHdr, Config.NoUSO): the guest
// still gets the offloads, and what reaches the wire is always complete.
// Guest transmit buffers are device-readable and never written (virtio 1.2
// §2.7.4.1): a completed checksum is spliced into the write from a copy,
// and a GSO frame is gathered into queue-owned scratch and cut there.

// Scratch sizes, allocated once per queue pair that may need them.
const (
	// maxSoftFrame is the largest GSO frame the engine segments: a 64 KiB
	// IP packet behind an Ethernet header with two VLAN tags.
	maxSoftFrame = 65535 + 14 + 8

	// segArena holds the segments of one frame. Every segment gets a slot
	// of gso_size plus segHdrRoom bytes for the headers it repeats, so a
	// 64 KiB frame fits for any gso_size from about 300 bytes up; a
	// frame that needs more room is dropped (tx_drop_software).
	segArena   = 256 << 10
	segHdrRoom = 256
	maxSegs    = 1024
)

// softTX is one queue pair's scratch for the fallbacks.
type softTX struct {
	caps  offload.TXCaps
	bufs  [][]byte // the chain's frame without the header (checksum fallback)
	frame []byte   // the gathered GSO frame
	arena []byte   // the segments
	segs  [][]byte // slots of arena, as Segment's out
	sizes []int
	zero  [virtio.HdrLenHash]byte // the header in front of each segment
	csum  [2]byte                 // a completed checksum, spliced into the write
}

func (s *softTX) init(cfg *Config) {
	s.caps = offload.TXCaps{VnetHdr: !cfg.NoVnetHdr, USO: !cfg.NoVnetHdr && !cfg.NoUSO}
	if !s.caps.VnetHdr {
		s.bufs = make([][]byte, 0, 64)
	}
	// Without a vnet header every GSO frame needs the fallback; with one,
	// only USO frames on a kernel that lacks it. Either way, only if the
	// guest can send such frames at all.
	gso := offload.HostFeatures &^ virtio.NetFCsum
	if s.caps.VnetHdr {
		gso = virtio.NetFHostUSO
		if s.caps.USO {
			gso = 0
		}
	}
	if cfg.Features&gso == 0 {
		return
	}
	s.frame = make([]byte, maxSoftFrame)
	s.arena = make([]byte, segArena)
	s.segs = make([][]byte, maxSegs)
	s.sizes = make([]int, maxSegs)
}

// errNoScratch is a GSO frame on a queue pair that expected none: only a
// bug in the engine gets here, since ValidateTX refuses GSO types the
// guest did not negotiate.
var errNoScratch = errors.New("no segmentation scratch")

// writeCsum writes the frame of chain, behind the header, with the
// checksum its header (t.h) asks for completed, and without the header.
func (t *txState) writeCsum(chain *virtio.Chain, frameLen int) error {
	hdrLen := t.qp.cfg.HdrLen
	s := &t.soft
	s.bufs = appendAfter(s.bufs[:0], chain.Readable, hdrLen)
	off, c, err := offload.PartialCsumVec(s.bufs, &t.h)
	if err != nil {
		return err
	}
	s.csum = [2]byte{byte(c >> 8), byte(c)}
	t.iov.reset()
	t.iov.addSpan(s.bufs, 0, off)
	t.iov.addOne(s.csum[:])
	t.iov.addSpan(s.bufs, off+2, frameLen-off-2)
	_, err = t.iov.writev(t.qp.tapFd)
	return err
}

// writeSegments cuts the GSO frame of chain (header t.h) into segments
// with complete checksums and writes each, behind a zero header if the
// TAP has one. It returns how many it wrote.
func (t *txState) writeSegments(chain *virtio.Chain, frameLen int) (int, error) {
	s := &t.soft
	if s.frame == nil {
		return 0, errNoScratch
	}
	if frameLen > len(s.frame) {
		return 0, fmt.Errorf("gso frame of %d bytes, more than the %d the fallback segments: %w",
			frameLen, len(s.frame), offload.ErrUnsupported)
	}
	frame := s.frame[:frameLen]
	gatherFrom(frame, chain.Readable, t.qp.cfg.HdrLen)
	slot := min(frameLen+8, int(t.h.GSOSize)+segHdrRoom)
	n := min(len(s.segs), len(s.arena)/slot)
	for i := range n {
		s.segs[i] = s.arena[i*slot : (i+1)*slot]
	}
	n, err := offload.Segment(frame, &t.h, s.segs[:n], s.sizes[:n])
	if err != nil {
		return 0, err
	}
	hdr := 0
	if s.caps.VnetHdr {
		hdr = t.qp.cfg.HdrLen
	}
	for i := range n {
		t.iov.reset()
		t.iov.addOne(s.zero[:hdr])
		t.iov.addOne(s.segs[i][:s.sizes[i]])
		if _, err := t.iov.writev(t.qp.tapFd); err != nil {
			return i, err
		}
	}
	return n, nil
}

// appendAfter appends bufs without their first skip bytes to dst.
func appendAfter(dst, bufs [][]byte, skip int) [][]byte {
	for _, b := range bufs {
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		dst = append(dst, b[skip:])
		skip = 0
	}
	return dst
}

// gatherFrom copies len(dst) bytes of bufs, from byte skip on, into dst.
func gatherFrom(dst []byte, bufs [][]byte, skip int) {
	n := 0
	for _, b := range bufs {
		if n == len(dst) {
			return
		}
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		n += copy(dst[n:], b[skip:])
		skip = 0
	}
}

// addSpan appends the n bytes of bufs that start at byte off.
func (io *iovecs) addSpan(bufs [][]byte, off, n int) {
	for _, b := range bufs {
		if n == 0 {
			return
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		if len(b) > n {
			b = b[:n]
		}
		io.addOne(b)
		n -= len(b)
	}
}
