package offload

import (
	"strconv"

	"github.com/vmnet-dev/vmnet/virtio"
)

// TXCaps is what a TAP fd takes in the frames vmnet writes to it, and so
// which transmitted frames need a software fallback first.
type TXCaps struct {
	// VnetHdr says the fd carries a virtio-net header: tun.c tun_get_user
	// hands it to virtio_net_hdr_to_skb, and the kernel completes partial
	// checksums and segments GSO frames itself.
	VnetHdr bool

	// USO says that kernel knows VIRTIO_NET_HDR_GSO_UDP_L4. It came with
	// TUN_F_USO4 and TUN_F_USO6 (Linux 6.2), so a TUNSETOFFLOAD that
	// accepted those vouches for it; older kernels fail the write with
	// EINVAL.
	USO bool
}

// TXCapsFor returns the capabilities Offer assumed for the same arguments.
func TXCapsFor(tun TunFlags, probed bool, opts OfferOptions) TXCaps {
	uso := TunUSO4 | TunUSO6
	return TXCaps{
		VnetHdr: !opts.NoVnetHdr,
		USO:     !opts.NoVnetHdr && probed && tun&uso == uso,
	}
}

// native returns the transmit offloads the kernel handles without help.
func (c TXCaps) native() virtio.Features {
	if !c.VnetHdr {
		return 0
	}
	f := HostFeatures
	if !c.USO {
		f &^= virtio.NetFHostUSO
	}
	return f
}

// Fallback is what the engine must do to a transmitted frame before the
// TAP can take it.
type Fallback uint8

const (
	// FallbackNone: write the frame and its header as they are.
	FallbackNone Fallback = iota
	// FallbackCsum: complete the partial checksum (PartialCsum) and write
	// the frame with no offload in its header, or none at all.
	FallbackCsum
	// FallbackSegment: Segment the frame and write each segment with no
	// offload in its header, or none at all.
	FallbackSegment
)

var fallbackNames = [...]string{"none", "csum", "segment"}

func (f Fallback) String() string {
	if int(f) < len(fallbackNames) {
		return fallbackNames[f]
	}
	return "fallback(" + strconv.Itoa(int(f)) + ")"
}

// Fallback says what h, a header ValidateTX accepted, needs on this TAP.
func (c TXCaps) Fallback(h *virtio.NetHdr) Fallback {
	if h.GSOType != virtio.GSONone {
		if !c.VnetHdr || (h.GSOType&^virtio.GSOECN == virtio.GSOUDPL4 && !c.USO) {
			return FallbackSegment
		}
		return FallbackNone
	}
	if h.Flags&virtio.NeedsCsum != 0 && !c.VnetHdr {
		return FallbackCsum
	}
	return FallbackNone
}
