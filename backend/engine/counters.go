package engine

import (
	"fmt"
	"iter"
	"sync/atomic"

	"github.com/vmnet-dev/vmnet/internal/droplog"
	"github.com/vmnet-dev/vmnet/internal/stats"
)

// Counter names one of a queue pair's counters: it indexes Counters,
// Snapshot and counterTable, which says what each one counts.
type Counter int

// The counters, in the order String prints them.
const (
	TXPackets Counter = iota
	TXBytes
	RXPackets
	RXBytes

	TXDropBadHeader
	TXDropBadDescriptor
	TXDropKernel
	RXDropBadDescriptor
	RXDropTruncated
	RXDropKernel
	RXDropNoBuffers
	MemoryFaults

	TXSoftCsum
	TXSoftGSO
	TXSoftSegments
	TXDropSoftware

	RXWaitBuffers
	TXKicks
	RXKicks
	TXInterrupts
	RXInterrupts
	TXBatches
	RXBatches
	BrokenRings
	InterruptErrors
	Wakeups
	Sleeps

	numCounters
)

// counterTable declares each counter once: every name, help line and
// drop mark anywhere (the helper's printout, its JSON, the integration
// harness, a metrics collector) comes from here.
var counterTable = stats.Table{
	TXPackets: {Name: "tx_packets", Help: "frames written to the TAP"},
	TXBytes:   {Name: "tx_bytes", Help: "bytes of the frames written to the TAP, without the vnet header"},
	RXPackets: {Name: "rx_packets", Help: "frames delivered to the guest"},
	RXBytes:   {Name: "rx_bytes", Help: "bytes of the frames delivered to the guest, without the vnet header"},

	TXDropBadHeader:     {Name: "tx_drop_bad_header", Help: "TX frames dropped because the guest's vnet header broke the negotiated rules", Drop: true},
	TXDropBadDescriptor: {Name: "tx_drop_bad_descriptor", Help: "malformed TX chains, returned with length 0", Drop: true},
	TXDropKernel:        {Name: "tx_drop_kernel", Help: "TX frames whose write the kernel refused", Drop: true},
	RXDropBadDescriptor: {Name: "rx_drop_bad_descriptor", Help: "malformed RX chains, returned with length 0", Drop: true},
	RXDropTruncated:     {Name: "rx_drop_truncated", Help: "frames dropped for being larger than the guest's buffers", Drop: true},
	RXDropKernel:        {Name: "rx_drop_kernel", Help: "TAP reads that failed other than for want of a frame", Drop: true},
	RXDropNoBuffers:     {Name: "rx_drop_no_buffers", Help: "frames read in a batch that then found too few guest buffers for them", Drop: true},
	MemoryFaults:        {Name: "memory_faults", Help: "times the worker faulted on guest memory and stopped (ErrMemoryFault)", Drop: true},

	TXSoftCsum:     {Name: "tx_soft_csum", Help: "TX frames whose partial checksum the engine completed (Config.NoVnetHdr)"},
	TXSoftGSO:      {Name: "tx_soft_gso", Help: "TX GSO frames the engine segmented (Config.NoVnetHdr, Config.NoUSO)"},
	TXSoftSegments: {Name: "tx_soft_segments", Help: "segments the engine wrote for the GSO frames it segmented"},
	TXDropSoftware: {Name: "tx_drop_software", Help: "TX frames the software fallbacks could not handle", Drop: true},

	RXWaitBuffers:   {Name: "rx_wait_buffers", Help: "times the worker stopped reading the TAP for want of guest buffers"},
	TXKicks:         {Name: "tx_kicks", Help: "TX kicks received"},
	RXKicks:         {Name: "rx_kicks", Help: "RX kicks received"},
	TXInterrupts:    {Name: "tx_interrupts", Help: "TX used-ring interrupts sent"},
	RXInterrupts:    {Name: "rx_interrupts", Help: "RX used-ring interrupts sent"},
	TXBatches:       {Name: "tx_batches", Help: "TX passes that moved at least one frame"},
	RXBatches:       {Name: "rx_batches", Help: "RX passes that moved at least one frame"},
	BrokenRings:     {Name: "broken_rings", Help: "rings abandoned as unusable until the device is reset: a broken ring, or a kick eventfd that hung up or failed", Drop: true},
	InterruptErrors: {Name: "interrupt_errors", Help: "used-ring interrupts (TX or RX) not sent: the call notifier failed", Drop: true},
	Wakeups:         {Name: "wakeups", Help: "returns from epoll_wait, busy polls included: an idle worker adds none"},
	Sleeps:          {Name: "sleeps", Help: "returns from an epoll_wait that slept: each cost whoever woke the worker a wake-up (a kick, the TAP's epoll callback)"},
}

// String is the counter's name, as Snapshot.String and MarshalJSON print
// it.
func (k Counter) String() string {
	if k < 0 || k >= numCounters {
		return fmt.Sprintf("Counter(%d)", int(k))
	}
	return counterTable[k].Name
}

// Counters are one queue pair's statistics, indexed by Counter. The
// worker adds to them once per pass, never per packet under a lock; any
// goroutine may read them while it runs. The zero value is ready.
//
// They also thin out the log lines of the faults they count that a guest
// or front-end can repeat (warning): like the counts, that outlives
// restarts of the queue pair on the same Counters, which a front-end can
// ask for with every other message.
type Counters struct {
	v    [numCounters]atomic.Uint64
	warn [numWarnings]droplog.Warner
}

// warning names a log line of a fault a guest or front-end can make the
// worker repeat; each has a droplog.Warner of its own in Counters, so
// that one fault's lines do not hide another's.
type warning int

const (
	warnInterrupt   warning = iota // a call notifier failed (interrupt_errors)
	warnTXBroken                   // the TX ring or its kick broke (broken_rings)
	warnRXBroken                   // the RX ring or its kick broke (broken_rings)
	warnMemoryFault                // the worker faulted on guest memory (memory_faults)
	warnTAPGone                    // the TAP file will never read again
	warnGiveBack                   // an RX chain could not be given back unused

	numWarnings
)

// Add adds n to counter k.
func (c *Counters) Add(k Counter, n uint64) { c.v[k].Add(n) }

// Load reads counter k.
func (c *Counters) Load(k Counter) uint64 { return c.v[k].Load() }

// Snapshot reads every counter.
func (c *Counters) Snapshot() Snapshot {
	var s Snapshot
	for k := range c.v {
		s[k] = c.v[k].Load()
	}
	return s
}

// tally counts one pass of the worker, added to Counters once at its end:
// an atomic per counter that moved, not per packet.
type tally [numCounters]uint64

func (c *Counters) addTally(t *tally) {
	for k, n := range t {
		if n != 0 {
			c.v[k].Add(n)
		}
	}
}

// Snapshot is a copy of Counters at one moment, indexed by Counter: for
// printing, exporting and tests.
type Snapshot [numCounters]uint64

// String prints the non-zero counters and the frame counts as name=value
// pairs: "tx_packets=13 tx_bytes=1146 rx_packets=10 rx_bytes=880".
// ParseSnapshot reads it back.
func (s Snapshot) String() string {
	return string(counterTable.AppendText(nil, s[:], func(i int) bool {
		return s[i] != 0 || Counter(i) == TXPackets || Counter(i) == RXPackets
	}))
}

// ParseSnapshot reads what Snapshot.String printed; counters it leaves
// out are zero.
func ParseSnapshot(text string) (Snapshot, error) {
	var s Snapshot
	if err := counterTable.ParseText(text, s[:]); err != nil {
		return Snapshot{}, fmt.Errorf("parse queue pair counters: %w", err)
	}
	return s, nil
}

// MarshalJSON writes every counter, zero or not, as one object of name
// to value.
func (s Snapshot) MarshalJSON() ([]byte, error) {
	return counterTable.AppendJSON(nil, s[:]), nil
}

// UnmarshalJSON reads what MarshalJSON wrote; counters it leaves out are
// zero, a name the table does not declare is an error.
func (s *Snapshot) UnmarshalJSON(b []byte) error {
	var t Snapshot
	if err := counterTable.ParseJSON(b, t[:]); err != nil {
		return fmt.Errorf("parse queue pair counters: %w", err)
	}
	*s = t
	return nil
}

// All yields each counter's declaration (name, help, kind, whether it
// counts drops) with its value, in Counter order: what a metrics
// collector exports.
func (s Snapshot) All() iter.Seq2[stats.Desc, uint64] {
	return counterTable.All(s[:])
}
