package tap

import (
	"fmt"
	"strings"
)

// Offload is a set of TUNSETOFFLOAD flags: the offloads the kernel may hand
// to vmnet in frames read from a queue (and, conversely, the partial
// checksums and GSO frames vmnet may write). Bits mirror TUN_F_* in if_tun.h.
type Offload uint32

const (
	OffloadCsum             Offload = tunFCsum
	OffloadTSO4             Offload = tunFTSO4
	OffloadTSO6             Offload = tunFTSO6
	OffloadTSOECN           Offload = tunFTSOECN
	OffloadUFO              Offload = tunFUFO
	OffloadUSO4             Offload = tunFUSO4
	OffloadUSO6             Offload = tunFUSO6
	OffloadUDPTunnelGSO     Offload = tunFUDPTunnelGSO
	OffloadUDPTunnelGSOCsum Offload = tunFUDPTunnelGSOCsum
)

var offloadNames = []struct {
	bit  Offload
	name string
}{
	{OffloadCsum, "csum"},
	{OffloadTSO4, "tso4"},
	{OffloadTSO6, "tso6"},
	{OffloadTSOECN, "tso_ecn"},
	{OffloadUFO, "ufo"},
	{OffloadUSO4, "uso4"},
	{OffloadUSO6, "uso6"},
	{OffloadUDPTunnelGSO, "udp_tunnel_gso"},
	{OffloadUDPTunnelGSOCsum, "udp_tunnel_gso_csum"},
}

// String lists the set flags, comma-separated, by their lower-case TUN_F_
// names ("csum,tso4"); "none" for the empty set.
func (o Offload) String() string {
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

// ParseOffload is the inverse of String. It accepts "none" and the empty
// string for no offloads.
func ParseOffload(s string) (Offload, error) {
	var o Offload
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
			return 0, &OptionError{Option: "offload", Value: f, Reason: "not a TUN_F flag (want csum, tso4, tso6, tso_ecn, ufo, uso4, uso6, udp_tunnel_gso, udp_tunnel_gso_csum)"}
		}
	}
	return o, nil
}

// Valid reports whether the kernel could accept o as a whole, by the rules
// of tun.c set_offload: every offload needs csum, USO4 and USO6 go
// together, ECN needs TSO.
func (o Offload) Valid() bool {
	if o == 0 {
		return true
	}
	if o&OffloadCsum == 0 {
		return false
	}
	if (o&OffloadUSO4 != 0) != (o&OffloadUSO6 != 0) {
		return false
	}
	if o&OffloadTSOECN != 0 && o&(OffloadTSO4|OffloadTSO6) == 0 {
		return false
	}
	if o&OffloadUDPTunnelGSOCsum != 0 && o&OffloadUDPTunnelGSO == 0 {
		return false
	}
	return true
}
