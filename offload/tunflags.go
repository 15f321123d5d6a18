package offload

import (
	"fmt"
	"strings"
)

// TunFlags is a set of TUNSETOFFLOAD flags: the offloads the kernel may hand
// to vmnet in frames read from a queue (and, conversely, the partial
// checksums and GSO frames vmnet may write). Bits mirror TUN_F_* in if_tun.h.
type TunFlags uint32

const (
	TunCsum             TunFlags = 0x01  // TUN_F_CSUM: partial checksums
	TunTSO4             TunFlags = 0x02  // TUN_F_TSO4: TSO for IPv4
	TunTSO6             TunFlags = 0x04  // TUN_F_TSO6: TSO for IPv6
	TunTSOECN           TunFlags = 0x08  // TUN_F_TSO_ECN: TSO with ECN bits
	TunUFO              TunFlags = 0x10  // TUN_F_UFO: UDP fragmentation offload
	TunUSO4             TunFlags = 0x20  // TUN_F_USO4: USO for IPv4 (Linux 6.2)
	TunUSO6             TunFlags = 0x40  // TUN_F_USO6: USO for IPv6 (Linux 6.2)
	TunUDPTunnelGSO     TunFlags = 0x080 // TUN_F_UDP_TUNNEL_GSO (Linux 6.17)
	TunUDPTunnelGSOCsum TunFlags = 0x100 // TUN_F_UDP_TUNNEL_GSO_CSUM (Linux 6.17)
)

var offloadNames = []struct {
	bit  TunFlags
	name string
}{
	{TunCsum, "csum"},
	{TunTSO4, "tso4"},
	{TunTSO6, "tso6"},
	{TunTSOECN, "tso_ecn"},
	{TunUFO, "ufo"},
	{TunUSO4, "uso4"},
	{TunUSO6, "uso6"},
	{TunUDPTunnelGSO, "udp_tunnel_gso"},
	{TunUDPTunnelGSOCsum, "udp_tunnel_gso_csum"},
}

// String lists the set flags, comma-separated, by their lower-case TUN_F_
// names ("csum,tso4"); "none" for the empty set.
func (o TunFlags) String() string {
	if o == 0 {
		return "none"
	}
	var names []string
	for _, n := range offloadNames {
		if o&n.bit != 0 {
			names = append(names, n.name)
			o &^= n.bit
		}
	}
	if o != 0 {
		names = append(names, fmt.Sprintf("unknown(%#x)", uint32(o)))
	}
	return strings.Join(names, ",")
}

// ParseTunFlags is the inverse of String. It accepts "none" and the empty
// string for no offloads.
func ParseTunFlags(s string) (TunFlags, error) {
	var o TunFlags
	if s == "" || s == "none" {
		return 0, nil
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		found := false
		for _, n := range offloadNames {
			if n.name == f {
				o |= n.bit
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("TUN offload %q: not a TUN_F flag (want csum, tso4, tso6, tso_ecn, ufo, uso4, uso6, udp_tunnel_gso, udp_tunnel_gso_csum)", f)
		}
	}
	return o, nil
}

// Valid reports whether the kernel could accept o as a whole, by the rules
// of tun.c set_offload: every offload needs csum, USO4 and USO6 go
// together, ECN needs TSO.
func (o TunFlags) Valid() bool {
	if o == 0 {
		return true
	}
	if o&TunCsum == 0 {
		return false
	}
	if (o&TunUSO4 != 0) != (o&TunUSO6 != 0) {
		return false
	}
	if o&TunTSOECN != 0 && o&(TunTSO4|TunTSO6) == 0 {
		return false
	}
	if o&TunUDPTunnelGSOCsum != 0 && o&TunUDPTunnelGSO == 0 {
		return false
	}
	return true
}
