package offload

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/vmnet-dev/vmnet/virtio"
)

// Reason says which rule a transmit header broke. Its values are small and
// dense, so an array of NumReasons counters can be indexed by it; String
// names each one for a counter key.
type Reason uint8

const (
	ReasonNone                 Reason = iota
	ReasonFrameTooShort               // frame shorter than an Ethernet header
	ReasonHdrLenTooShort              // hdr_len set but shorter than an Ethernet header
	ReasonHdrLenOutOfFrame            // hdr_len past the end of the frame
	ReasonCsumNotNegotiated           // NEEDS_CSUM without NET_F_CSUM
	ReasonCsumOutOfFrame              // csum_start + csum_offset + 2 past the end of the frame
	ReasonCsumStartTooLow             // csum_start inside the smallest network header
	ReasonCsumOffset                  // csum_offset not the TCP or UDP checksum field the GSO type implies
	ReasonGSOTypeUnknown              // gso_type no GSO type
	ReasonGSOTypeNotNegotiated        // gso_type whose HOST_ feature was not negotiated
	ReasonECNNotNegotiated            // the ECN bit without NET_F_HOST_ECN
	ReasonECNInvalid                  // the ECN bit with no segmentation, or with UDP_L4
	ReasonGSOSizeZero                 // GSO with gso_size 0
	ReasonGSOSizeInvalid              // gso_size GSO_BY_FRAGS
	ReasonGSONeedsCsum                // UDP_L4 without NEEDS_CSUM
	ReasonGSOHeadersOutOfFrame        // the transport header of a GSO frame past its end
	ReasonGSOTooManySegments          // UDP_L4 of more than UDPMaxSegments segments

	// NumReasons is one more than the largest Reason.
	NumReasons
)

var reasonNames = [NumReasons]string{
	ReasonNone:                 "none",
	ReasonFrameTooShort:        "frame_too_short",
	ReasonHdrLenTooShort:       "hdr_len_too_short",
	ReasonHdrLenOutOfFrame:     "hdr_len_out_of_frame",
	ReasonCsumNotNegotiated:    "csum_not_negotiated",
	ReasonCsumOutOfFrame:       "csum_out_of_frame",
	ReasonCsumStartTooLow:      "csum_start_too_low",
	ReasonCsumOffset:           "csum_offset",
	ReasonGSOTypeUnknown:       "gso_type_unknown",
	ReasonGSOTypeNotNegotiated: "gso_type_not_negotiated",
	ReasonECNNotNegotiated:     "ecn_not_negotiated",
	ReasonECNInvalid:           "ecn_invalid",
	ReasonGSOSizeZero:          "gso_size_zero",
	ReasonGSOSizeInvalid:       "gso_size_invalid",
	ReasonGSONeedsCsum:         "gso_needs_csum",
	ReasonGSOHeadersOutOfFrame: "gso_headers_out_of_frame",
	ReasonGSOTooManySegments:   "gso_too_many_segments",
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// Sizes and offsets the rules are made of.
const (
	ethHdrLen  = 14 // ETH_HLEN
	ipv4MinLen = 20 // sizeof(struct iphdr)
	ipv6HdrLen = 40 // sizeof(struct ipv6hdr)
	tcpMinLen  = 20 // sizeof(struct tcphdr)
	udpHdrLen  = 8  // sizeof(struct udphdr)
	tcpCsumOff = 16 // offsetof(struct tcphdr, check)
	udpCsumOff = 6  // offsetof(struct udphdr, check)

	// gsoByFrags is GSO_BY_FRAGS (include/linux/netdevice.h), a gso_size
	// with a meaning of its own inside the kernel.
	gsoByFrags = 0xffff

	// UDPMaxSegments is UDP_MAX_SEGMENTS (include/linux/udp.h, raised from
	// 64 to 128): the most segments virtio_net_hdr_to_skb lets one UDP_L4
	// frame become.
	UDPMaxSegments = 128
)

// ErrBadHeader is matched (errors.Is) by every *TXError.
var ErrBadHeader = errors.New("invalid tx net header")

// TXError is a transmit header that broke a rule: which one, and the
// numbers involved.
type TXError struct {
	Reason   Reason
	Hdr      virtio.NetHdr // the header as validated
	FrameLen int           // the frame behind it, without the header
	Limit    int           // the bound or value the rule wanted, where it has one
}

// gsoFeature is the feature each GSO type needs (virtio 1.2 §5.1.6.2.1).
var gsoFeature = map[virtio.GSOType]virtio.Features{
	virtio.GSOTCPv4: virtio.NetFHostTSO4,
	virtio.GSOTCPv6: virtio.NetFHostTSO6,
	virtio.GSOUDP:   virtio.NetFHostUFO,
	virtio.GSOUDPL4: virtio.NetFHostUSO,
}

func (e *TXError) Error() string {
	h := &e.Hdr
	switch e.Reason {
	case ReasonFrameTooShort:
		return fmt.Sprintf("tx frame of %d bytes, want at least %d", e.FrameLen, e.Limit)
	case ReasonHdrLenTooShort:
		return fmt.Sprintf("hdr_len %d, want 0 or at least %d", e.Limit, ethHdrLen)
	case ReasonHdrLenOutOfFrame:
		return fmt.Sprintf("hdr_len %d past the end of a %d-byte frame", e.Limit, e.FrameLen)
	case ReasonCsumNotNegotiated:
		return fmt.Sprintf("flags %s without NET_F_CSUM", h.Flags)
	case ReasonCsumOutOfFrame:
		return fmt.Sprintf("checksum at csum_start %d + csum_offset %d ends past the end of a %d-byte frame",
			h.CsumStart, h.CsumOffset, e.FrameLen)
	case ReasonCsumStartTooLow:
		return fmt.Sprintf("csum_start %d, want at least %d", h.CsumStart, e.Limit)
	case ReasonCsumOffset:
		return fmt.Sprintf("csum_offset %d for gso_type %s, want %d", h.CsumOffset, h.GSOType, e.Limit)
	case ReasonGSOTypeUnknown:
		return fmt.Sprintf("gso_type %#x is no GSO type", uint8(h.GSOType))
	case ReasonGSOTypeNotNegotiated:
		return fmt.Sprintf("gso_type %s without %s", h.GSOType, gsoFeature[h.GSOType&^virtio.GSOECN])
	case ReasonECNNotNegotiated:
		return fmt.Sprintf("gso_type %s without NET_F_HOST_ECN", h.GSOType)
	case ReasonECNInvalid:
		return fmt.Sprintf("gso_type %s: ECN applies to TCP segmentation only", h.GSOType)
	case ReasonGSOSizeZero:
		return fmt.Sprintf("gso_type %s with gso_size 0", h.GSOType)
	case ReasonGSOSizeInvalid:
		return fmt.Sprintf("gso_size %#x is GSO_BY_FRAGS", h.GSOSize)
	case ReasonGSONeedsCsum:
		return fmt.Sprintf("gso_type %s without NEEDS_CSUM", h.GSOType)
	case ReasonGSOHeadersOutOfFrame:
		return fmt.Sprintf("gso_type %s: headers end at byte %d, past the end of a %d-byte frame",
			h.GSOType, e.Limit, e.FrameLen)
	case ReasonGSOTooManySegments:
		return fmt.Sprintf("gso_type %s: gso_size %d cuts a %d-byte frame into more than %d segments",
			h.GSOType, h.GSOSize, e.FrameLen, e.Limit)
	}
	return fmt.Sprintf("net header %s: %s", h, e.Reason)
}

// Is makes every TXError match ErrBadHeader.
func (e *TXError) Is(target error) bool { return target == ErrBadHeader }

// ReasonOf returns the Reason of a *TXError in err's chain, ReasonNone if
// there is none.
func ReasonOf(err error) Reason {
	var e *TXError
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonNone
}

// ValidateTX checks a header the guest wrote for a transmitted frame of
// frameLen bytes (already copied out of guest memory) against the features
// acked. It looks at the header and the frame's length only; what the
// frame's bytes hold is for the kernel, or Segment, to find out.
//
// The rules are what virtio 1.2 §5.1.6.2.1 asks of the driver where vmnet
// depends on it (no GSO type or NEEDS_CSUM without its feature), and
// otherwise the header checks Linux makes on a TAP write, so that what
// passes here the kernel does not refuse for its header: tun.c
// tun_get_user (an Ethernet header at least, hdr_len within the frame
// after it is raised to cover the checksum) and __virtio_net_hdr_to_skb in
// include/linux/virtio_net.h.
// Like Linux, and unlike the spec's MUST, TCP and UFO segmentation do not
// require NEEDS_CSUM (the software fallbacks find the transport header
// themselves); USO does. A GSO frame no longer than gso_size is valid, and
// the kernel sends it as one packet ("too small packets are not really GSO
// ones"). Flags other than NEEDS_CSUM are ignored, as the device must
// (virtio 1.2 §5.1.6.2.2).
func ValidateTX(h *virtio.NetHdr, frameLen int, acked virtio.Features) error {
	if frameLen < ethHdrLen {
		return txError(ReasonFrameTooShort, h, frameLen, ethHdrLen)
	}
	gso := h.GSOType &^ virtio.GSOECN
	nhMin, thLen := ipv4MinLen, 0
	if h.GSOType != virtio.GSONone {
		var need virtio.Features
		switch gso {
		case virtio.GSOTCPv4:
			need, thLen = virtio.NetFHostTSO4, tcpMinLen
		case virtio.GSOTCPv6:
			need, thLen, nhMin = virtio.NetFHostTSO6, tcpMinLen, ipv6HdrLen
		case virtio.GSOUDP:
			need, thLen = virtio.NetFHostUFO, udpHdrLen
		case virtio.GSOUDPL4:
			need, thLen = virtio.NetFHostUSO, udpHdrLen
		case virtio.GSONone:
			return txError(ReasonECNInvalid, h, frameLen, 0)
		default:
			return txError(ReasonGSOTypeUnknown, h, frameLen, 0)
		}
		if !acked.Has(need) {
			return txError(ReasonGSOTypeNotNegotiated, h, frameLen, 0)
		}
		if h.GSOType&virtio.GSOECN != 0 {
			if gso == virtio.GSOUDPL4 {
				return txError(ReasonECNInvalid, h, frameLen, 0)
			}
			if !acked.Has(virtio.NetFHostECN) {
				return txError(ReasonECNNotNegotiated, h, frameLen, 0)
			}
		}
		switch h.GSOSize {
		case 0:
			return txError(ReasonGSOSizeZero, h, frameLen, 0)
		case gsoByFrags:
			return txError(ReasonGSOSizeInvalid, h, frameLen, 0)
		}
	}

	// pOff is where the payload starts by __virtio_net_hdr_to_skb's count:
	// past the transport header at csum_start, or past the smallest
	// network header when the kernel has to find the transport header.
	hdrLen := int(h.HdrLen)
	pOff := 0
	if h.Flags&virtio.NeedsCsum != 0 {
		if !acked.Has(virtio.NetFCsum) {
			return txError(ReasonCsumNotNegotiated, h, frameLen, 0)
		}
		start, end := int(h.CsumStart), int(h.CsumStart)+int(h.CsumOffset)+2
		if end > frameLen {
			return txError(ReasonCsumOutOfFrame, h, frameLen, end)
		}
		if start < nhMin {
			return txError(ReasonCsumStartTooLow, h, frameLen, nhMin)
		}
		pOff = start + thLen
		switch gso {
		case virtio.GSOTCPv4, virtio.GSOTCPv6:
			if h.CsumOffset != tcpCsumOff {
				return txError(ReasonCsumOffset, h, frameLen, tcpCsumOff)
			}
		case virtio.GSOUDPL4:
			if h.CsumOffset != udpCsumOff {
				return txError(ReasonCsumOffset, h, frameLen, udpCsumOff)
			}
		}
		hdrLen = max(hdrLen, end)
	} else if h.GSOType != virtio.GSONone {
		if gso == virtio.GSOUDPL4 {
			return txError(ReasonGSONeedsCsum, h, frameLen, 0)
		}
		pOff = nhMin + thLen
	}
	if pOff > frameLen {
		return txError(ReasonGSOHeadersOutOfFrame, h, frameLen, pOff)
	}
	if gso == virtio.GSOUDPL4 && frameLen-pOff > int(h.GSOSize)*UDPMaxSegments {
		return txError(ReasonGSOTooManySegments, h, frameLen, UDPMaxSegments)
	}
	if hdrLen > frameLen {
		return txError(ReasonHdrLenOutOfFrame, h, frameLen, hdrLen)
	}
	if hdrLen != 0 && hdrLen < ethHdrLen {
		return txError(ReasonHdrLenTooShort, h, frameLen, hdrLen)
	}
	return nil
}

func txError(r Reason, h *virtio.NetHdr, frameLen, limit int) error {
	return &TXError{Reason: r, Hdr: *h, FrameLen: frameLen, Limit: limit}
}
