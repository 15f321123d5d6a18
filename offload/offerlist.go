package offload

import (
	"fmt"
	"strings"

	"github.com/vmnet-dev/vmnet/virtio"
)

// OfferList is the set of offloads a user allows vmnet to offer, as given
// to --offloads. The zero value is "auto": every offload the TAP and the
// software fallbacks can do.
type OfferList struct {
	set   bool // false: auto
	allow virtio.Features
}

// AllOffloads is "auto"; NoOffloads is "none".
var (
	AllOffloads = OfferList{}
	NoOffloads  = OfferList{set: true}
)

// Features returns the feature bits the list allows: AllFeatures for auto.
func (l OfferList) Features() virtio.Features {
	if !l.set {
		return AllFeatures
	}
	return l.allow
}

// offloadStems name the offloads in both directions: the bare name is both,
// host_ the transmit bits, guest_ the receive bits (QEMU's virtio-net
// property names). USO is one name: vmnet can pass GUEST_USO4 and
// GUEST_USO6 to the kernel only together (see TunFlags).
var offloadStems = []struct {
	stem        string
	host, guest virtio.Features
}{
	{"csum", virtio.NetFCsum, virtio.NetFGuestCsum},
	{"tso4", virtio.NetFHostTSO4, virtio.NetFGuestTSO4},
	{"tso6", virtio.NetFHostTSO6, virtio.NetFGuestTSO6},
	{"ecn", virtio.NetFHostECN, virtio.NetFGuestECN},
	{"ufo", virtio.NetFHostUFO, virtio.NetFGuestUFO},
	{"uso", virtio.NetFHostUSO, virtio.NetFGuestUSO4 | virtio.NetFGuestUSO6},
}

const (
	bothWays = iota
	hostWay
	guestWay
)

var wayPrefix = [...]string{bothWays: "", hostWay: "host_", guestWay: "guest_"}

// listItem resolves one name of a list.
func listItem(name string) (bits virtio.Features, way int, ok bool) {
	way = bothWays
	stem := name
	if s, found := strings.CutPrefix(name, "host_"); found {
		stem, way = s, hostWay
	} else if s, found := strings.CutPrefix(name, "guest_"); found {
		stem, way = s, guestWay
	}
	for _, o := range offloadStems {
		if o.stem != stem {
			continue
		}
		switch way {
		case hostWay:
			return o.host, way, true
		case guestWay:
			return o.guest, way, true
		}
		return o.host | o.guest, way, true
	}
	return 0, 0, false
}

// stemOf names the offload a feature bit belongs to.
func stemOf(bit virtio.Features) string {
	for _, o := range offloadStems {
		if (o.host|o.guest)&bit != 0 {
			return o.stem
		}
	}
	return bit.String()
}

// ParseOfferList reads an --offloads value: "auto" (everything possible),
// "none", or a comma-separated list of offloads, each in both directions
// (csum, tso4, tso6, ecn, ufo, uso) or in one, with a host_ (guest
// transmit) or guest_ (guest receive) prefix: "csum,tso4,guest_tso6".
// An offload listed without the one it needs (tso4 without csum, ecn
// without tso4 or tso6) is an error rather than a silent no-op.
func ParseOfferList(s string) (OfferList, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "auto":
		return AllOffloads, nil
	case "none":
		return NoOffloads, nil
	case "":
		return OfferList{}, fmt.Errorf("offload list is empty (want auto, none, or names such as csum,tso4): %w", ErrBadList)
	}
	l := OfferList{set: true}
	names := strings.Split(s, ",")
	ways := make([]int, len(names))
	for i, name := range names {
		name = strings.TrimSpace(name)
		names[i] = name
		bits, way, ok := listItem(name)
		switch {
		case name == "auto" || name == "none":
			return OfferList{}, fmt.Errorf("offload list %q: %s stands alone, not in a list: %w", s, name, ErrBadList)
		case name == "":
			return OfferList{}, fmt.Errorf("offload list %q: empty name at position %d: %w", s, i+1, ErrBadList)
		case !ok:
			return OfferList{}, fmt.Errorf("offload list %q: unknown offload %q (want csum, tso4, tso6, ecn, ufo or uso, optionally prefixed host_ or guest_): %w", s, name, ErrBadList)
		}
		l.allow |= bits
		ways[i] = way
	}
	for i, name := range names {
		bits, _, _ := listItem(name)
		for _, n := range offloadNeeds {
			if bits&n.bit == 0 || l.allow&n.any != 0 {
				continue
			}
			var want []string
			for n.any != 0 {
				b := n.any & -n.any
				n.any &^= b
				want = append(want, wayPrefix[ways[i]]+stemOf(b))
			}
			return OfferList{}, fmt.Errorf("offload list %q: %s needs %s: %w", s, name, strings.Join(want, " or "), ErrBadList)
		}
	}
	return l, nil
}

// String is the list in ParseOfferList's syntax, in canonical order.
func (l OfferList) String() string {
	if !l.set {
		return "auto"
	}
	var names []string
	for _, o := range offloadStems {
		switch {
		case l.allow.Has(o.host | o.guest):
			names = append(names, o.stem)
		case l.allow.Has(o.host):
			names = append(names, "host_"+o.stem)
		case l.allow.Has(o.guest):
			names = append(names, "guest_"+o.stem)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}
