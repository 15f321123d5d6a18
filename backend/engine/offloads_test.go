package engine

import (
	"fmt"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// negotiable are the TUNSETOFFLOAD flags a guest's GUEST_ features map to
// (offload.TunFlags); the UDP tunnel flags have no virtio-net feature
// vmnet offers.
const negotiable = offload.TunCsum | offload.TunTSO4 | offload.TunTSO6 | offload.TunTSOECN |
	offload.TunUFO | offload.TunUSO4 | offload.TunUSO6

// offloadSubsets returns every subset of have the kernel could accept as a
// whole (Offload.Valid), the empty set first.
func offloadSubsets(have offload.TunFlags) []offload.TunFlags {
	var bits []offload.TunFlags
	for b := offload.TunFlags(1); b != 0 && b <= have; b <<= 1 {
		if have&b != 0 {
			bits = append(bits, b)
		}
	}
	var out []offload.TunFlags
	for m := 0; m < 1<<len(bits); m++ {
		var o offload.TunFlags
		for i, b := range bits {
			if m&(1<<i) != 0 {
				o |= b
			}
		}
		if o.Valid() {
			out = append(out, o)
		}
	}
	return out
}

// For every offload set the kernel takes, a guest that acked exactly the
// receive offloads Offer derives from it gets frames with right headers,
// the GSO frames it accepted and no other, and sends GSO frames that the
// peer's stack takes.
func TestTAPOffloadCombinations(t *testing.T) {
	r := newRig(t, rigOptions{net: true})
	f := r.dev.DriverFeatures()
	if !f.OffloadsProbed {
		t.Fatalf("offloads not probed as root: %s", f)
	}
	have := f.Offloads & negotiable
	if have&(offload.TunUSO4|offload.TunUSO6) == 0 {
		// USO came with Linux 6.2; older kernels get fewer combinations.
		t.Logf("kernel without USO (%s): USO combinations not tested", f)
	}
	// The guest may send USO frames whatever the kernel takes: before
	// Linux 6.2 the engine cuts them (offload.TXCapsFor).
	kernelUSO := f.Supports(offload.TunUSO4 | offload.TunUSO6)
	r.mod = func(c *Config) { c.NoUSO = !kernelUSO }
	subsets := offloadSubsets(have)
	t.Logf("kernel offloads %s: %d valid combinations", have, len(subsets))
	for _, set := range subsets {
		t.Run(set.String(), func(t *testing.T) {
			r.use(t)
			acked := virtio.FVersion1 | virtio.NetFMrgRxbuf | offload.Offer(set, true, offload.OfferOptions{})
			if got := offload.TunFlagsFor(acked); got != set {
				t.Fatalf("TunFlags(Offer(%s)) = %s", set, got)
			}
			if err := r.dev.SetOffload(offload.TunFlagsFor(acked)); err != nil {
				t.Fatal(err)
			}
			r.start(acked)
			for _, v6 := range []bool{false, true} {
				uso, tso, tcpGSO := virtio.NetFGuestUSO4, virtio.NetFGuestTSO4, virtio.GSOTCPv4
				if v6 {
					uso, tso, tcpGSO = virtio.NetFGuestUSO6, virtio.NetFGuestTSO6, virtio.GSOTCPv6
				}
				if gso := rxUDP(t, r, v6); (gso > 0) != acked.Has(uso) {
					t.Errorf("v6=%v: %d GSO_UDP_L4 frames with %s acked", v6, gso, acked)
				}
				seen := rxTCP(t, r, v6, 5003, 256<<10)
				if (seen[tcpGSO]+seen[tcpGSO|virtio.GSOECN] > 0) != acked.Has(tso) {
					t.Errorf("v6=%v: frames by gso_type %v with %s acked", v6, seen, acked)
				}
			}
			txTCP(r, false)
			txUSO(r, true)
			s := r.qp.Counters().Snapshot()
			if s[TXDropBadHeader]+s[TXDropKernel]+s[RXDropKernel]+s[RXDropTruncated]+s[RXDropBadDescriptor] != 0 {
				t.Errorf("counters %s: want no drops", s)
			}
		})
	}
}

// GUEST_ECN: a segment with CWR reaches the guest as a GSO frame of type
// TCP|ECN only when TUN_F_TSO_ECN is on; without it the kernel cuts that
// frame before the TAP. (Linux stacks stopped making UFO frames in 4.14,
// so GUEST_UFO can be acked but never sees one.)
func TestTAPReceiveECN(t *testing.T) {
	r := newRig(t, rigOptions{net: true})
	if f := r.dev.DriverFeatures(); !f.Supports(offload.TunCsum | offload.TunTSO4 | offload.TunTSOECN) {
		testutil.Skip(t, "kernel without TUN_F_TSO_ECN: %s", f)
	}
	r.ecn = true
	for _, ecn := range []bool{true, false} {
		t.Run(fmt.Sprintf("guest_ecn=%v", ecn), func(t *testing.T) { rxECN(r.use(t), ecn) })
	}
}

func rxECN(r *rig, ecn bool) {
	t := r.t
	acked := allTX | virtio.NetFGuestCsum | virtio.NetFGuestTSO4
	if ecn {
		acked |= virtio.NetFGuestECN
	}
	if err := r.dev.SetOffload(offload.TunFlagsFor(acked)); err != nil {
		t.Fatal(err)
	}
	r.start(acked)
	// rxTCP's checks refuse an ECN frame the guest did not accept. A
	// CWR segment goes alone when the peer had no more to send at
	// once: try a few connections for one sent as GSO.
	var all []virtio.GSOType
	found := false
	for try := 0; try < 5 && !found; try++ {
		cwr := rxTCPECN(t, r, 256<<10)
		all = append(all, cwr...)
		for _, g := range cwr {
			switch {
			case g == virtio.GSOTCPv4|virtio.GSOECN:
				found = true
			case !ecn && g != virtio.GSONone:
				t.Errorf("GUEST_ECN off: the segment with CWR came with gso_type %s", g)
			}
		}
		if !ecn && len(all) > 0 {
			break
		}
	}
	switch {
	case len(all) == 0:
		t.Errorf("GUEST_ECN %v: the peer never sent CWR", ecn)
	case ecn && !found:
		t.Errorf("GUEST_ECN on: CWR only in frames of gso_type %v, want a TCPV4|ECN one", all)
	}
	t.Logf("GUEST_ECN %v: CWR in frames of gso_type %v", ecn, all)
}

// rxTCPECN is rxTCP for an ECN connection; it returns the gso_type of the
// frames with CWR.
func rxTCPECN(t testing.TB, r *rig, n int) []virtio.GSOType {
	t.Helper()
	var cwr []virtio.GSOType
	r.onConn = func(g *guestTCP) { cwr = g.cwr }
	defer func() { r.onConn = nil }()
	rxTCP(t, r, false, 5004, n)
	return cwr
}
