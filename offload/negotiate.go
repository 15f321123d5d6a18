package offload

import (
	"fmt"

	"github.com/vmnet-dev/vmnet/virtio"
)

// The offload feature bits, by direction. Host (transmit) offloads are
// frames the guest hands vmnet to write to the TAP; guest (receive)
// offloads are frames vmnet reads from the TAP and hands the guest.
const (
	HostFeatures = virtio.NetFCsum | virtio.NetFHostTSO4 | virtio.NetFHostTSO6 | virtio.NetFHostECN |
		virtio.NetFHostUFO | virtio.NetFHostUSO
	GuestFeatures = virtio.GuestOffloads
	AllFeatures   = HostFeatures | GuestFeatures
)

// OfferOptions say what Offer cannot learn from TUNSETOFFLOAD. The zero
// value describes a TAP fd with a vnet header, lets the engine fall back to
// software for what the kernel cannot take, and allows every offload.
type OfferOptions struct {
	// NoVnetHdr says the TAP fd carries no virtio-net header (IFF_VNET_HDR
	// unset, as on an fd a hypervisor hands over without one). The kernel
	// then can neither hand vmnet partial checksums or GSO frames nor take
	// them: no receive offload is offered, and transmit offloads only with
	// the software fallbacks.
	NoVnetHdr bool

	// NoSoftware offers only what the kernel does itself: nothing that
	// would make the engine complete checksums or segment frames.
	NoSoftware bool

	// List is the user's choice (--offloads); its zero value is "auto".
	List OfferList
}

// Offer returns the offload feature bits vmnet may offer the guest, for a
// TAP whose TUNSETOFFLOAD accepted tun (tap.DriverFeatures.Offloads; probed
// false means nobody could ask, so no receive offload is offered). The
// result is closed under the dependency rules of virtio 1.2 §5.1.3.1: an
// offload whose prerequisite was filtered out is dropped with it.
//
// Receive: TUNSETOFFLOAD says what the reader of the fd can take, so each
// GUEST_ bit is offered only where its TUN_F_ flag was accepted: CSUM ↔
// GUEST_CSUM, TSO4/TSO6 ↔ GUEST_TSO4/6, TSO_ECN ↔ GUEST_ECN, UFO ↔
// GUEST_UFO, and USO4 with USO6 ↔ GUEST_USO4 with GUEST_USO6 (tun.c
// set_offload takes the USO flags only together, and every flag only with
// CSUM).
//
// Transmit: what vmnet writes goes through tun.c tun_get_user to
// virtio_net_hdr_to_skb, which takes every GSO type regardless of
// TUNSETOFFLOAD once the fd has a vnet header; GSO_UDP_L4 only since the
// kernel that also accepts TUN_F_USO4|TUN_F_USO6 (Linux 6.2). What the
// kernel cannot take is offered only with the software fallbacks (see
// TXCaps).
func Offer(tun TunFlags, probed bool, opts OfferOptions) virtio.Features {
	var f virtio.Features
	if probed && !opts.NoVnetHdr {
		f |= guestFor(tun)
	}
	if opts.NoSoftware {
		f |= TXCapsFor(tun, probed, opts).native()
	} else {
		f |= HostFeatures
	}
	return consistent(f & opts.List.Features())
}

// guestFor maps accepted TUN_F_ flags to the receive offloads they carry.
func guestFor(tun TunFlags) virtio.Features {
	if tun&TunCsum == 0 {
		return 0
	}
	f := virtio.NetFGuestCsum
	if tun&TunTSO4 != 0 {
		f |= virtio.NetFGuestTSO4
	}
	if tun&TunTSO6 != 0 {
		f |= virtio.NetFGuestTSO6
	}
	if tun&TunTSOECN != 0 {
		f |= virtio.NetFGuestECN
	}
	if tun&TunUFO != 0 {
		f |= virtio.NetFGuestUFO
	}
	if tun&(TunUSO4|TunUSO6) == TunUSO4|TunUSO6 {
		f |= virtio.NetFGuestUSO4 | virtio.NetFGuestUSO6
	}
	return f
}

// offloadNeeds are the rules of virtio 1.2 §5.1.3.1 (and virtio 1.3 for the
// guest USO bits) among offload bits: bit needs at least one of any.
var offloadNeeds = []struct {
	bit, any virtio.Features
}{
	{virtio.NetFGuestTSO4, virtio.NetFGuestCsum},
	{virtio.NetFGuestTSO6, virtio.NetFGuestCsum},
	{virtio.NetFGuestECN, virtio.NetFGuestTSO4 | virtio.NetFGuestTSO6},
	{virtio.NetFGuestUFO, virtio.NetFGuestCsum},
	{virtio.NetFGuestUSO4, virtio.NetFGuestCsum},
	{virtio.NetFGuestUSO6, virtio.NetFGuestCsum},
	{virtio.NetFHostTSO4, virtio.NetFCsum},
	{virtio.NetFHostTSO6, virtio.NetFCsum},
	{virtio.NetFHostECN, virtio.NetFHostTSO4 | virtio.NetFHostTSO6},
	{virtio.NetFHostUFO, virtio.NetFCsum},
	{virtio.NetFHostUSO, virtio.NetFCsum},
}

// consistent drops the offload bits whose prerequisites are missing, and a
// guest USO bit without its sibling: TunFlags could not pass either one
// alone to the kernel. The table is in dependency order, so one pass
// settles chains such as ECN → TSO4 → CSUM.
func consistent(f virtio.Features) virtio.Features {
	for _, n := range offloadNeeds {
		if f&n.bit != 0 && f&n.any == 0 {
			f &^= n.bit
		}
	}
	if !f.Has(virtio.NetFGuestUSO4 | virtio.NetFGuestUSO6) {
		f &^= virtio.NetFGuestUSO4 | virtio.NetFGuestUSO6
	}
	return f
}

// TunFlagsFor returns the TUNSETOFFLOAD set for the receive offloads in acked:
// what the kernel may then hand vmnet, and through it the guest.
//
// GUEST_USO4 without GUEST_USO6 (or the reverse) asks for no USO at all:
// tun.c set_offload turns on NETIF_F_GSO_UDP_L4 only for TUN_F_USO4 and
// TUN_F_USO6 together and refuses either alone, and with both the kernel
// may hand over UDP GSO frames of the family the guest did not accept,
// which the device must not deliver (virtio 1.3 §5.1.6.4.1). Without the
// flags the kernel segments UDP GSO itself before the frame reaches the fd.
// Likewise nothing is asked without GUEST_CSUM (set_offload refuses any
// flag without TUN_F_CSUM), and TSO_ECN only beside TSO4 or TSO6.
func TunFlagsFor(acked virtio.Features) TunFlags {
	if !acked.Has(virtio.NetFGuestCsum) {
		return 0
	}
	o := TunCsum
	if acked.Has(virtio.NetFGuestTSO4) {
		o |= TunTSO4
	}
	if acked.Has(virtio.NetFGuestTSO6) {
		o |= TunTSO6
	}
	if acked.Has(virtio.NetFGuestECN) && o&(TunTSO4|TunTSO6) != 0 {
		o |= TunTSOECN
	}
	if acked.Has(virtio.NetFGuestUFO) {
		o |= TunUFO
	}
	if acked.Has(virtio.NetFGuestUSO4 | virtio.NetFGuestUSO6) {
		o |= TunUSO4 | TunUSO6
	}
	return o
}

// GuestOffloads returns the TUNSETOFFLOAD set for a
// VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET command whose le64 is ctrl. The bits
// are GUEST_ feature bit numbers, and "a driver MUST NOT enable an offload
// for which the appropriate feature has not been negotiated" (virtio 1.2
// §5.1.6.5.8.1 and .2, "Setting Offloads State"; §5.1.6.5.6.1 in virtio
// 1.0): a bit not negotiated, or one that is no guest offload at all, is an
// ErrNotNegotiated error. A set that breaks a dependency (TSO without
// GUEST_CSUM) is mapped as TunFlags maps it, to fewer offloads, never to a
// set the kernel would refuse.
func GuestOffloads(ctrl uint64, acked virtio.Features) (TunFlags, error) {
	set := virtio.Features(ctrl)
	if !acked.Has(virtio.NetFCtrlGuestOffloads) {
		return 0, fmt.Errorf("guest offloads %s: NET_F_CTRL_GUEST_OFFLOADS: %w", set, ErrNotNegotiated)
	}
	if extra := set &^ GuestFeatures; extra != 0 {
		return 0, fmt.Errorf("guest offloads %s: %s are not guest offloads: %w", set, extra, ErrNotNegotiated)
	}
	if extra := set &^ acked; extra != 0 {
		return 0, fmt.Errorf("guest offloads %s: %s: %w", set, extra, ErrNotNegotiated)
	}
	return TunFlagsFor(set), nil
}
