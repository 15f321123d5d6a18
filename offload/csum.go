package offload

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/vmnet-dev/vmnet/virtio"
)

// The sums here run on words loaded little-endian, 8 bytes at a time: the
// ones' complement sum is the same in either byte order up to a final byte
// swap (RFC 1071 §2 (B)), and on the machines vmnet runs on a little-endian
// load is one instruction. Values named "sum" are in that swapped domain;
// Checksum and the stores into headers swap them back.

// sum adds the 16-bit words of b, an odd last byte padded with zero, to
// acc with end-around carry. The carry out of each add chain is added back
// at its end; that add cannot overflow, since a chain that starts without a
// carry never ends at all ones with one.
func sum(b []byte, acc uint64) uint64 {
	var c uint64
	for len(b) >= 64 {
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[0:8]), 0)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[8:16]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[16:24]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[24:32]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[32:40]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[40:48]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[48:56]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[56:64]), c)
		acc += c
		b = b[64:]
	}
	for len(b) >= 8 {
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[:8]), 0)
		acc += c
		b = b[8:]
	}
	var tail uint64
	switch len(b) {
	case 7:
		tail = uint64(binary.LittleEndian.Uint32(b)) | uint64(binary.LittleEndian.Uint16(b[4:]))<<32 | uint64(b[6])<<48
	case 6:
		tail = uint64(binary.LittleEndian.Uint32(b)) | uint64(binary.LittleEndian.Uint16(b[4:]))<<32
	case 5:
		tail = uint64(binary.LittleEndian.Uint32(b)) | uint64(b[4])<<32
	case 4:
		tail = uint64(binary.LittleEndian.Uint32(b))
	case 3:
		tail = uint64(binary.LittleEndian.Uint16(b)) | uint64(b[2])<<16
	case 2:
		tail = uint64(binary.LittleEndian.Uint16(b))
	case 1:
		tail = uint64(b[0])
	}
	acc, c = bits.Add64(acc, tail, 0)
	return acc + c
}

// fold reduces a sum to 16 bits with end-around carry.
func fold(acc uint64) uint16 {
	hi, lo := acc>>32, acc&0xffffffff
	acc = hi + lo // at most 33 bits
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	return uint16(acc)
}

// addBE adds a big-endian 16-bit value to a sum.
func addBE(acc uint64, v uint16) uint64 {
	acc, c := bits.Add64(acc, uint64(bits.ReverseBytes16(v)), 0)
	return acc + c
}

// finish turns a sum into the checksum to store big-endian: the ones'
// complement of the folded sum, 0 sent as 0xffff (CSUM_MANGLED_0, as Linux
// skb_checksum_help stores it). Both are zero in ones' complement, and UDP
// reads a 0 as "no checksum" (RFC 768).
func finish(acc uint64) uint16 {
	c := ^bits.ReverseBytes16(fold(acc))
	if c == 0 {
		return 0xffff
	}
	return c
}

// Checksum returns the Internet checksum of b (RFC 1071): the ones'
// complement of the ones' complement sum of its big-endian 16-bit words, an
// odd last byte padded with zero, with initial (a partial sum, such as a
// pseudo-header's, not complemented) added in. Unlike what PartialCsum
// stores, a zero result is returned as 0.
func Checksum(b []byte, initial uint16) uint16 {
	return ^bits.ReverseBytes16(fold(sum(b, uint64(bits.ReverseBytes16(initial)))))
}

// csumField checks that h asks for a checksum and that its field lies in a
// frame of n bytes, and returns where the field is.
func csumField(h *virtio.NetHdr, n int) (int, error) {
	if h.Flags&virtio.NeedsCsum == 0 {
		return 0, fmt.Errorf("flags %s ask for no checksum: %w", h.Flags, ErrBadHeader)
	}
	off := int(h.CsumStart) + int(h.CsumOffset)
	if off+2 > n {
		return 0, fmt.Errorf("checksum at csum_start %d + csum_offset %d ends past the end of a %d-byte frame: %w",
			h.CsumStart, h.CsumOffset, n, ErrMalformed)
	}
	return off, nil
}

// PartialCsum computes the checksum a NEEDS_CSUM header asks for without
// writing it, for a frame in guest memory the device must not write to
// (virtio 1.2 §2.7.4.1): it returns the offset of the checksum field,
// csum_start + csum_offset, and the value to store there big-endian; the
// caller splices the two bytes into its write. The driver left the
// pseudo-header's sum in that field, and the checksum runs over it from
// csum_start to the end of the frame (virtio 1.2 §5.1.6.2). A result of 0
// is given as 0xffff (see Checksum).
func PartialCsum(frame []byte, h *virtio.NetHdr) (off int, csum uint16, err error) {
	off, err = csumField(h, len(frame))
	if err != nil {
		return 0, 0, err
	}
	return off, finish(sum(frame[h.CsumStart:], 0)), nil
}

// PartialCsumVec is PartialCsum for a frame in pieces, such as the buffers
// of a descriptor chain after the net header; a piece may have any length.
func PartialCsumVec(frame [][]byte, h *virtio.NetHdr) (off int, csum uint16, err error) {
	n := 0
	for _, b := range frame {
		n += len(b)
	}
	off, err = csumField(h, n)
	if err != nil {
		return 0, 0, err
	}
	var acc uint64
	skip, odd := int(h.CsumStart), false
	for _, b := range frame {
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		b, skip = b[skip:], 0
		s := fold(sum(b, 0))
		if odd {
			// The piece starts on the second byte of a word.
			s = bits.ReverseBytes16(s)
		}
		acc += uint64(s)
		odd = odd != (len(b)%2 == 1)
	}
	return off, finish(acc), nil
}

// CompleteCsum stores the checksum PartialCsum computes into frame, which
// must be memory vmnet owns: never a guest's transmit buffer.
func CompleteCsum(frame []byte, h *virtio.NetHdr) error {
	off, c, err := PartialCsum(frame, h)
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint16(frame[off:], c)
	return nil
}
