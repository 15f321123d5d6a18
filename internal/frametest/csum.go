package frametest

import "net/netip"

// Sum adds b to the one's complement sum acc the slow way (RFC 1071):
// big-endian 16-bit words one at a time, an odd last byte as the high
// byte of a word. It is the reference offload's Checksum is tested
// against; keep it simple.
func Sum(b []byte, acc uint64) uint64 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint64(b[i])<<8 | uint64(b[i+1])
	}
	if len(b)%2 == 1 {
		acc += uint64(b[len(b)-1]) << 8
	}
	return acc
}

// Fold folds a sum to 16 bits, adding the carries back in.
func Fold(acc uint64) uint16 {
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return uint16(acc)
}

// Checksum is the Internet checksum of b, starting from initial: the
// complement of the folded sum.
func Checksum(b []byte, initial uint16) uint16 {
	return ^Fold(Sum(b, uint64(initial)))
}

// Pseudo is the folded sum of the pseudo-header of a transport segment of
// n bytes of protocol proto between src and dst (RFC 768, RFC 793,
// RFC 8200 §8.1): what a NEEDS_CSUM frame carries in its checksum field.
func Pseudo(src, dst netip.Addr, proto uint8, n int) uint16 {
	s, d := src.Unmap().AsSlice(), dst.Unmap().AsSlice()
	return Fold(Sum(s, Sum(d, 0)) + uint64(proto) + uint64(n))
}
