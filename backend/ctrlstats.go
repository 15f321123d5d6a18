package backend

import (
	"fmt"
	"iter"
	"sync/atomic"

	"github.com/vmnet-dev/vmnet/internal/droplog"
	"github.com/vmnet-dev/vmnet/internal/stats"
)

// CtrlCounter names one of the control queue's counters: it indexes
// CtrlStats, and ctrlTable says what it counts.
type CtrlCounter int

// The control queue's counters.
const (
	CtrlCommands CtrlCounter = iota
	CtrlErrors
	CtrlBadChains
	CtrlKicks
	CtrlMemoryFaults
	CtrlBrokenRings
	CtrlInterruptErrors

	numCtrlCounters
)

// ctrlTable declares the control queue's counters once, as
// engine.Counter's table does a queue pair's.
var ctrlTable = stats.Table{
	CtrlCommands:        {Name: "commands", Help: "control commands answered VIRTIO_NET_OK"},
	CtrlErrors:          {Name: "errors", Help: "control commands answered VIRTIO_NET_ERR: unknown, not negotiated, malformed or failed", Drop: true},
	CtrlBadChains:       {Name: "bad_chains", Help: "control chains returned unanswered: malformed, or no byte for the ack", Drop: true},
	CtrlKicks:           {Name: "kicks", Help: "control queue kicks received"},
	CtrlMemoryFaults:    {Name: "memory_faults", Help: "guest memory faults that stopped the control queue until the device is reset", Drop: true},
	CtrlBrokenRings:     {Name: "broken_rings", Help: "times the control queue stopped until the device is reset: its ring broke, or its kick eventfd hung up or failed", Drop: true},
	CtrlInterruptErrors: {Name: "interrupt_errors", Help: "control queue interrupts not sent: the call eventfd failed", Drop: true},
}

func (k CtrlCounter) String() string { return ctrlTable[k].Name }

// ctrlCounters are the control queue's counters, for the life of the
// Device, and the droplog.Warners of the faults they count that the guest
// can repeat: like the counts, they outlive restarts of the queue (a
// driver reset), so each fault is logged at most once a minute.
type ctrlCounters struct {
	v    [numCtrlCounters]atomic.Uint64
	warn [numCtrlCounters]droplog.Warner // by the counter of the fault
}

func (c *ctrlCounters) add(k CtrlCounter) { c.v[k].Add(1) }

func (c *ctrlCounters) snapshot() CtrlStats {
	var s CtrlStats
	for k := range c.v {
		s[k] = c.v[k].Load()
	}
	return s
}

// CtrlStats are the control queue's counters at one moment, indexed by
// CtrlCounter.
type CtrlStats [numCtrlCounters]uint64

// String prints the counters as name=value pairs.
func (s CtrlStats) String() string { return string(ctrlTable.AppendText(nil, s[:], nil)) }

// MarshalJSON writes every counter as one object of name to value.
func (s CtrlStats) MarshalJSON() ([]byte, error) { return ctrlTable.AppendJSON(nil, s[:]), nil }

// UnmarshalJSON reads what MarshalJSON wrote; counters it leaves out are
// zero, a name the table does not declare is an error.
func (s *CtrlStats) UnmarshalJSON(b []byte) error {
	var t CtrlStats
	if err := ctrlTable.ParseJSON(b, t[:]); err != nil {
		return fmt.Errorf("parse control queue counters: %w", err)
	}
	*s = t
	return nil
}

// All yields each counter's declaration with its value, in CtrlCounter
// order: what a metrics collector exports.
func (s CtrlStats) All() iter.Seq2[stats.Desc, uint64] { return ctrlTable.All(s[:]) }
