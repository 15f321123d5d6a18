package engine

import (
	"fmt"
	"strings"
	"sync/atomic"
)

// Counters are one queue pair's statistics. The worker adds to them once
// per batch, never per packet under a lock; any goroutine may read them
// while it runs.
type Counters struct {
	TXPackets atomic.Uint64 // frames written to the TAP
	TXBytes   atomic.Uint64 // their bytes, without the vnet header
	RXPackets atomic.Uint64 // frames delivered to the guest
	RXBytes   atomic.Uint64 // their bytes, without the vnet header

	TXDropBadHeader     atomic.Uint64 // the guest's vnet header broke the negotiated rules
	TXDropBadDescriptor atomic.Uint64 // a malformed TX chain (returned with length 0)
	TXDropKernel        atomic.Uint64 // the kernel refused the write
	RXDropBadDescriptor atomic.Uint64 // a malformed RX chain (returned with length 0)
	RXDropTruncated     atomic.Uint64 // a frame larger than the guest's buffers
	RXDropKernel        atomic.Uint64 // a read error other than "no frame"
	RXDropNoBuffers     atomic.Uint64 // a frame read in a batch that then found too few guest buffers for it
	MemoryFaults        atomic.Uint64 // the worker faulted on guest memory and stopped (ErrMemoryFault)

	TXSoftCsum     atomic.Uint64 // frames whose partial checksum the engine completed (Config.NoVnetHdr)
	TXSoftGSO      atomic.Uint64 // GSO frames the engine segmented (Config.NoVnetHdr, Config.NoUSO)
	TXSoftSegments atomic.Uint64 // the segments it wrote for them
	TXDropSoftware atomic.Uint64 // frames the software fallbacks could not handle

	RXWaitBuffers atomic.Uint64 // times the worker stopped reading the TAP for want of guest buffers
	TXKicks       atomic.Uint64 // TX kicks received
	RXKicks       atomic.Uint64 // RX kicks received
	TXInterrupts  atomic.Uint64 // TX used-ring interrupts sent
	RXInterrupts  atomic.Uint64 // RX used-ring interrupts sent
	TXBatches     atomic.Uint64 // TX passes that moved at least one frame
	RXBatches     atomic.Uint64 // RX passes that moved at least one frame
	BrokenRings   atomic.Uint64 // rings abandoned as unusable until reset
	Wakeups       atomic.Uint64 // returns from epoll_wait, busy polls included: an idle worker adds none
}

// Snapshot is a copy of Counters at one moment, for printing and tests.
type Snapshot struct {
	TXPackets, TXBytes, RXPackets, RXBytes                      uint64
	TXDropBadHeader, TXDropBadDescriptor, TXDropKernel          uint64
	RXDropBadDescriptor, RXDropTruncated, RXDropKernel          uint64
	RXDropNoBuffers, MemoryFaults                               uint64
	TXSoftCsum, TXSoftGSO, TXSoftSegments, TXDropSoftware       uint64
	RXWaitBuffers, TXKicks, RXKicks, TXInterrupts, RXInterrupts uint64
	TXBatches, RXBatches, BrokenRings, Wakeups                  uint64
}

// Snapshot reads every counter.
func (c *Counters) Snapshot() Snapshot {
	return Snapshot{
		TXPackets: c.TXPackets.Load(), TXBytes: c.TXBytes.Load(),
		RXPackets: c.RXPackets.Load(), RXBytes: c.RXBytes.Load(),
		TXDropBadHeader: c.TXDropBadHeader.Load(), TXDropBadDescriptor: c.TXDropBadDescriptor.Load(),
		TXDropKernel: c.TXDropKernel.Load(), RXDropBadDescriptor: c.RXDropBadDescriptor.Load(),
		RXDropTruncated: c.RXDropTruncated.Load(), RXDropKernel: c.RXDropKernel.Load(),
		RXDropNoBuffers: c.RXDropNoBuffers.Load(), MemoryFaults: c.MemoryFaults.Load(),
		TXSoftCsum: c.TXSoftCsum.Load(), TXSoftGSO: c.TXSoftGSO.Load(),
		TXSoftSegments: c.TXSoftSegments.Load(), TXDropSoftware: c.TXDropSoftware.Load(),
		RXWaitBuffers: c.RXWaitBuffers.Load(), TXKicks: c.TXKicks.Load(), RXKicks: c.RXKicks.Load(),
		TXInterrupts: c.TXInterrupts.Load(), RXInterrupts: c.RXInterrupts.Load(),
		TXBatches: c.TXBatches.Load(), RXBatches: c.RXBatches.Load(), BrokenRings: c.BrokenRings.Load(),
		Wakeups: c.Wakeups.Load(),
	}
}

// String prints the non-zero counters as key=value pairs.
func (s Snapshot) String() string {
	var b strings.Builder
	for _, kv := range []struct {
		k string
		v uint64
	}{
		{"tx_packets", s.TXPackets}, {"tx_bytes", s.TXBytes}, {"rx_packets", s.RXPackets}, {"rx_bytes", s.RXBytes},
		{"tx_drop_bad_header", s.TXDropBadHeader}, {"tx_drop_bad_descriptor", s.TXDropBadDescriptor},
		{"tx_drop_kernel", s.TXDropKernel}, {"rx_drop_bad_descriptor", s.RXDropBadDescriptor},
		{"rx_drop_truncated", s.RXDropTruncated}, {"rx_drop_kernel", s.RXDropKernel},
		{"rx_drop_no_buffers", s.RXDropNoBuffers}, {"memory_faults", s.MemoryFaults},
		{"tx_soft_csum", s.TXSoftCsum}, {"tx_soft_gso", s.TXSoftGSO},
		{"tx_soft_segments", s.TXSoftSegments}, {"tx_drop_software", s.TXDropSoftware},
		{"rx_wait_buffers", s.RXWaitBuffers}, {"tx_kicks", s.TXKicks}, {"rx_kicks", s.RXKicks},
		{"tx_interrupts", s.TXInterrupts}, {"rx_interrupts", s.RXInterrupts},
		{"tx_batches", s.TXBatches}, {"rx_batches", s.RXBatches}, {"broken_rings", s.BrokenRings},
		{"wakeups", s.Wakeups},
	} {
		if kv.v == 0 && !strings.HasSuffix(kv.k, "packets") {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", kv.k, kv.v)
	}
	return b.String()
}
