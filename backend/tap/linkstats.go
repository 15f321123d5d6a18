package tap

import (
	"fmt"
	"iter"

	"github.com/vishvananda/netlink"

	"github.com/vmnet-dev/vmnet/internal/stats"
)

// LinkCounter names one of the TAP's kernel counters that say what the
// kernel lost on its way to or from the queue files: it indexes LinkStats,
// and linkTable says what each counts.
//
// They are named from the side of the queue files, as the engine's
// counters are: tx is what is written to them (the guest's frames), rx
// what is read from them. The link's own names (ip -s link,
// /sys/class/net/TAP/statistics) are the host stack's, the other way round.
type LinkCounter int

// The TAP's kernel counters.
const (
	TXDropped LinkCounter = iota
	RXDropped

	numLinkCounters
)

// linkTable declares the TAP's kernel counters once, as engine.Counter's
// table does a queue pair's.
var linkTable = stats.Table{
	TXDropped: {Name: "tx_dropped", Help: "frames written to the TAP's queue files that the kernel dropped (the link's rx_dropped)", Drop: true},
	RXDropped: {Name: "rx_dropped", Help: "frames for the queue files the kernel dropped: the queue was full or detached (the link's tx_dropped, tun.c tun_net_xmit)", Drop: true},
}

func (k LinkCounter) String() string {
	if k < 0 || k >= numLinkCounters {
		return fmt.Sprintf("LinkCounter(%d)", int(k))
	}
	return linkTable[k].Name
}

// LinkStats are the TAP's kernel counters at one moment, indexed by
// LinkCounter: Info.Stats, read with the link's attributes (RTM_GETLINK,
// IFLA_STATS64).
type LinkStats [numLinkCounters]uint64

// linkStatsOf reads the counters from a link's attributes; a link that
// reports none reads as zero.
func linkStatsOf(a *netlink.LinkAttrs) LinkStats {
	var s LinkStats
	if st := a.Statistics; st != nil {
		s[TXDropped] = st.RxDropped
		s[RXDropped] = st.TxDropped
	}
	return s
}

// String prints the counters as name=value pairs.
func (s LinkStats) String() string { return string(linkTable.AppendText(nil, s[:], nil)) }

// MarshalJSON writes every counter as one object of name to value.
func (s LinkStats) MarshalJSON() ([]byte, error) { return linkTable.AppendJSON(nil, s[:]), nil }

// UnmarshalJSON reads what MarshalJSON wrote; counters it leaves out are
// zero, a name the table does not declare is an error.
func (s *LinkStats) UnmarshalJSON(b []byte) error {
	var t LinkStats
	if err := linkTable.ParseJSON(b, t[:]); err != nil {
		return fmt.Errorf("parse TAP counters: %w", err)
	}
	*s = t
	return nil
}

// All yields each counter's declaration with its value, in LinkCounter
// order: what a metrics collector exports.
func (s LinkStats) All() iter.Seq2[stats.Desc, uint64] { return linkTable.All(s[:]) }
