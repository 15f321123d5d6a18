package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// Sizes of the header that precedes every packet on the receive and transmit
// queues (virtio 1.2 §5.1.6): struct virtio_net_hdr (legacy, without
// MRG_RXBUF), virtio_net_hdr_v1 / virtio_net_hdr_mrg_rxbuf, and
// virtio_net_hdr_v1_hash in Linux include/uapi/linux/virtio_net.h.
const (
	HdrLenLegacy = 10
	HdrLenV1     = 12
	HdrLenHash   = 20
)

// CheckHdrLen refuses a header size that is none of HdrLenLegacy, HdrLenV1
// and HdrLenHash: the three layouts of virtio 1.2 §5.1.6. TUNSETVNETHDRSZ
// would take any size from 10 up (tun.c), but a guest negotiates one of
// these (HdrLenFor), and the TAP's size must equal the guest's.
func CheckHdrLen(n int) error {
	if n == HdrLenLegacy || n == HdrLenV1 || n == HdrLenHash {
		return nil
	}
	return hdrLenError(n) // apart, so that the check inlines in DecodeNetHdr
}

func hdrLenError(n int) error {
	return fmt.Errorf("net header of %d bytes, want %d, %d or %d: %w", n, HdrLenLegacy, HdrLenV1, HdrLenHash, ErrHdrSize)
}

// HdrLenFor returns the header size a negotiated feature set implies: the
// legacy driver only sent num_buffers with MRG_RXBUF (virtio 1.2 §5.1.6.1),
// and the hash fields exist only with HASH_REPORT.
func HdrLenFor(f Features) int {
	switch {
	case f&NetFHashReport != 0:
		return HdrLenHash
	case f&(FVersion1|NetFMrgRxbuf) != 0:
		return HdrLenV1
	default:
		return HdrLenLegacy
	}
}

// Endian is the byte order of the fields Linux virtio_net.h types as
// __virtio16/32/64: little-endian once VERSION_1 is negotiated, the guest's
// native order on the legacy interface (virtio 1.2 §5.1.6.1). The zero value
// is LittleEndian.
type Endian bool

const (
	LittleEndian Endian = false
	BigEndian    Endian = true
)

// EndianFor returns the byte order for a negotiated feature set; guestBig
// matters only to a legacy driver (vhost-user VHOST_USER_SET_VRING_ENDIAN).
func EndianFor(f Features, guestBig bool) Endian {
	return Endian(guestBig && !f.Has(FVersion1))
}

func (e Endian) String() string {
	if e == BigEndian {
		return "big-endian"
	}
	return "little-endian"
}

func (e Endian) uint16(b []byte) uint16 {
	if e == BigEndian {
		return binary.BigEndian.Uint16(b)
	}
	return binary.LittleEndian.Uint16(b)
}

func (e Endian) putUint16(b []byte, v uint16) {
	if e == BigEndian {
		binary.BigEndian.PutUint16(b, v)
		return
	}
	binary.LittleEndian.PutUint16(b, v)
}

func (e Endian) uint32(b []byte) uint32 {
	if e == BigEndian {
		return binary.BigEndian.Uint32(b)
	}
	return binary.LittleEndian.Uint32(b)
}

func (e Endian) uint64(b []byte) uint64 {
	if e == BigEndian {
		return binary.BigEndian.Uint64(b)
	}
	return binary.LittleEndian.Uint64(b)
}

func (e Endian) appendUint16(b []byte, v uint16) []byte {
	if e == BigEndian {
		return binary.BigEndian.AppendUint16(b, v)
	}
	return binary.LittleEndian.AppendUint16(b, v)
}

func (e Endian) appendUint32(b []byte, v uint32) []byte {
	if e == BigEndian {
		return binary.BigEndian.AppendUint32(b, v)
	}
	return binary.LittleEndian.AppendUint32(b, v)
}

func (e Endian) appendUint64(b []byte, v uint64) []byte {
	if e == BigEndian {
		return binary.BigEndian.AppendUint64(b, v)
	}
	return binary.LittleEndian.AppendUint64(b, v)
}

// HdrFlags is the flags byte of the net header.
type HdrFlags uint8

const (
	NeedsCsum HdrFlags = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	DataValid HdrFlags = 2 // VIRTIO_NET_HDR_F_DATA_VALID
	RSCInfo   HdrFlags = 4 // VIRTIO_NET_HDR_F_RSC_INFO
)

func (f HdrFlags) String() string {
	return flagString(uint64(f), []string{"NEEDS_CSUM", "DATA_VALID", "RSC_INFO"})
}

// GSOType is the gso_type byte of the net header: a segmentation type in the
// low bits, optionally or-ed with GSOECN.
type GSOType uint8

const (
	GSONone  GSOType = 0    // VIRTIO_NET_HDR_GSO_NONE
	GSOTCPv4 GSOType = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	GSOUDP   GSOType = 3    // VIRTIO_NET_HDR_GSO_UDP (UFO)
	GSOTCPv6 GSOType = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	GSOUDPL4 GSOType = 5    // VIRTIO_NET_HDR_GSO_UDP_L4 (USO)
	GSOECN   GSOType = 0x80 // VIRTIO_NET_HDR_GSO_ECN
)

func (g GSOType) String() string {
	var s string
	switch g &^ GSOECN {
	case GSONone:
		s = "NONE"
	case GSOTCPv4:
		s = "TCPV4"
	case GSOUDP:
		s = "UDP"
	case GSOTCPv6:
		s = "TCPV6"
	case GSOUDPL4:
		s = "UDP_L4"
	default:
		s = "0x" + strconv.FormatUint(uint64(g&^GSOECN), 16)
	}
	if g&GSOECN != 0 {
		s += "|ECN"
	}
	return s
}

// HashReport is the hash_report field of the 20-byte header: which hash the
// device computed (virtio 1.2 §5.1.6.4.4).
type HashReport uint16

const (
	HashReportNone HashReport = iota
	HashReportIPv4
	HashReportTCPv4
	HashReportUDPv4
	HashReportIPv6
	HashReportTCPv6
	HashReportUDPv6
	HashReportIPv6Ex
	HashReportTCPv6Ex
	HashReportUDPv6Ex
)

var hashReportNames = [...]string{
	"NONE", "IPv4", "TCPv4", "UDPv4", "IPv6", "TCPv6", "UDPv6", "IPv6_EX", "TCPv6_EX", "UDPv6_EX",
}

func (r HashReport) String() string {
	if int(r) < len(hashReportNames) {
		return hashReportNames[r]
	}
	return "HashReport(" + strconv.Itoa(int(r)) + ")"
}

// NetHdr is struct virtio_net_hdr in any of its three sizes. Fields a size
// lacks decode as zero and are not encoded.
type NetHdr struct {
	Flags   HdrFlags
	GSOType GSOType
	HdrLen  uint16
	GSOSize uint16
	// With RSCInfo set on a received packet, CsumStart and CsumOffset carry
	// rsc.segments and rsc.dup_acks (virtio 1.2 §5.1.6.4).
	CsumStart  uint16
	CsumOffset uint16
	NumBuffers uint16 // 12 and 20 bytes
	HashValue  uint32 // 20 bytes
	HashReport HashReport
}

var (
	// ErrHdrSize reports a header size other than HdrLenLegacy, HdrLenV1
	// or HdrLenHash, or a byte order the size has no layout for.
	ErrHdrSize = errors.New("bad net header size")
	// ErrShortBuffer reports a buffer too short for what it must hold.
	ErrShortBuffer = errors.New("buffer too short")
)

func checkHdr(n, size int, e Endian) error {
	if err := CheckHdrLen(size); err != nil {
		return err
	}
	// The hash header exists only with VERSION_1, which is little-endian.
	if size == HdrLenHash && e == BigEndian {
		return fmt.Errorf("net header of %d bytes in big-endian: no such layout: %w", size, ErrHdrSize)
	}
	if n < size {
		return fmt.Errorf("net header of %d bytes in a buffer of %d: %w", size, n, ErrShortBuffer)
	}
	return nil
}

// DecodeNetHdr decodes the size-byte header at the start of b. It reads each
// byte of b once, so a guest rewriting b meanwhile cannot make the result
// disagree with itself; validate the result, not b.
func DecodeNetHdr(b []byte, size int, e Endian) (NetHdr, error) {
	var h NetHdr
	err := h.Decode(b, size, e)
	return h, err
}

// Decode is DecodeNetHdr into h, for callers that keep a header per queue;
// on error h is left as it was.
func (h *NetHdr) Decode(b []byte, size int, e Endian) error {
	if err := checkHdr(len(b), size, e); err != nil {
		return err
	}
	b = b[:size]
	h.Flags = HdrFlags(b[0])
	h.GSOType = GSOType(b[1])
	h.HdrLen = e.uint16(b[2:])
	h.GSOSize = e.uint16(b[4:])
	h.CsumStart = e.uint16(b[6:])
	h.CsumOffset = e.uint16(b[8:])
	h.NumBuffers, h.HashValue, h.HashReport = 0, 0, 0
	if size >= HdrLenV1 {
		h.NumBuffers = e.uint16(b[10:])
	}
	if size == HdrLenHash {
		h.HashValue = binary.LittleEndian.Uint32(b[12:])
		h.HashReport = HashReport(binary.LittleEndian.Uint16(b[16:]))
	}
	return nil
}

// Encode writes h as a size-byte header at the start of b, zeroing the
// padding of the 20-byte header; bytes of b past size are left alone.
func (h *NetHdr) Encode(b []byte, size int, e Endian) error {
	if err := checkHdr(len(b), size, e); err != nil {
		return err
	}
	b = b[:size]
	b[0] = byte(h.Flags)
	b[1] = byte(h.GSOType)
	e.putUint16(b[2:], h.HdrLen)
	e.putUint16(b[4:], h.GSOSize)
	e.putUint16(b[6:], h.CsumStart)
	e.putUint16(b[8:], h.CsumOffset)
	if size >= HdrLenV1 {
		e.putUint16(b[10:], h.NumBuffers)
	}
	if size == HdrLenHash {
		binary.LittleEndian.PutUint32(b[12:], h.HashValue)
		binary.LittleEndian.PutUint16(b[16:], uint16(h.HashReport))
		binary.LittleEndian.PutUint16(b[18:], 0)
	}
	return nil
}

// PutNumBuffers sets num_buffers in the header at the start of b, which the
// device does once it knows how many buffers a merged packet took (virtio
// 1.2 §5.1.6.4). b must hold at least HdrLenV1 bytes.
func PutNumBuffers(b []byte, n uint16, e Endian) error {
	if len(b) < HdrLenV1 {
		return fmt.Errorf("num_buffers ends at byte %d of a %d-byte buffer: %w", HdrLenV1, len(b), ErrShortBuffer)
	}
	e.putUint16(b[10:], n)
	return nil
}

func (h NetHdr) String() string {
	s := fmt.Sprintf("flags=%s gso=%s hdr_len=%d gso_size=%d csum_start=%d csum_offset=%d num_buffers=%d",
		h.Flags, h.GSOType, h.HdrLen, h.GSOSize, h.CsumStart, h.CsumOffset, h.NumBuffers)
	if h.HashValue != 0 || h.HashReport != 0 {
		s += fmt.Sprintf(" hash=%#08x hash_report=%s", h.HashValue, h.HashReport)
	}
	return s
}
