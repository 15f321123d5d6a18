package virtio

// RSSKeySize is the length of a Toeplitz key that covers the longest hash
// input the spec defines (two IPv6 addresses and two ports, 36 bytes: the
// hash of each input bit takes the 32 key bits from that bit on): what a
// device offers as rss_max_key_size, the minimum virtio 1.2 §5.1.4.1
// allows, and Linux's VIRTIO_NET_RSS_MAX_KEY_SIZE.
const RSSKeySize = 40

// RSSInputMax is the longest input of the hash: an IPv6 source and
// destination address, a source and a destination port.
const RSSInputMax = 16 + 16 + 2 + 2

// Toeplitz is the Toeplitz hash of input under key, bit by bit, as
// Microsoft's RSS specification ("RSS hashing functions") and virtio 1.2
// §5.1.6.4.3 define it: for each input bit, from the most significant bit
// of input[0] on, a set bit XORs into the result the 32 key bits that
// start at that bit's position. Key bits past the end of key are zero.
//
// It is the reference ToeplitzTable is checked against; it allocates
// nothing, but costs 8 steps per input bit. A device hashes with the
// table.
func Toeplitz(key, input []byte) uint32 {
	var h uint32
	for i, b := range input {
		for bit := range 8 {
			if b&(0x80>>bit) != 0 {
				h ^= keyWindow(key, 8*i+bit)
			}
		}
	}
	return h
}

// keyWindow is the 32 bits of key from bit k on (bit 0 is the most
// significant bit of key[0]), zeros past its end.
func keyWindow(key []byte, k int) uint32 {
	var w uint64 // 40 bits: the window and the 8 bits it may shift in
	for j := k / 8; j < k/8+5; j++ {
		w <<= 8
		if j < len(key) {
			w |= uint64(key[j])
		}
	}
	return uint32(w >> (8 - k%8))
}

// ToeplitzTable is the Toeplitz hash under one key as lookup tables: byte
// i of an input holding value v contributes t[i][v], the XOR of the key
// windows of v's set bits at that position, so a hash costs one lookup
// per input byte. A zero byte contributes nothing: hashing an input with
// zeros appended gives the same value, which lets a fixed-size buffer
// hold inputs of every length. It is 36 KiB, built once per key
// (NewToeplitzTable); the steering program reads the same table from its
// map (ebpf.RSSProgram).
type ToeplitzTable [RSSInputMax][256]uint32

// NewToeplitzTable builds the table of key; key bytes past RSSKeySize
// change no hash of an input of at most RSSInputMax bytes, and missing
// ones are zeros.
func NewToeplitzTable(key []byte) *ToeplitzTable {
	t := new(ToeplitzTable)
	for i := range t {
		var w [8]uint32 // the window of each bit of byte i, most significant first
		for bit := range w {
			w[bit] = keyWindow(key, 8*i+bit)
		}
		// Each value is a smaller one with its lowest set bit added.
		for v := 1; v < 256; v++ {
			low := v & -v
			t[i][v] = t[i][v&^low] ^ w[7-log2(low)]
		}
	}
	return t
}

// log2 of a power of two below 256.
func log2(p int) int {
	n := 0
	for p > 1 {
		p >>= 1
		n++
	}
	return n
}

// Hash returns the Toeplitz hash of input, at most RSSInputMax bytes
// (bytes past that are ignored); it allocates nothing.
func (t *ToeplitzTable) Hash(input []byte) uint32 {
	var h uint32
	for i, b := range input[:min(len(input), RSSInputMax)] {
		h ^= t[i][b]
	}
	return h
}
