package engine

import (
	"encoding/json"
	"strings"
	"testing"
)

// The table declares every counter once, by the rules of internal/stats.
func TestCounterTable(t *testing.T) {
	if len(counterTable) != int(numCounters) {
		t.Fatalf("counterTable has %d entries, want one per Counter (%d)", len(counterTable), numCounters)
	}
	if err := counterTable.Check(); err != nil {
		t.Fatal(err)
	}
	for k := range numCounters {
		if k.String() != counterTable[k].Name {
			t.Errorf("Counter %d: String %q, want the table's %q", int(k), k, counterTable[k].Name)
		}
		// The drop counters are named so that a reader of the printout
		// can tell them too.
		d := counterTable[k]
		if named := strings.Contains(d.Name, "_drop_"); named && !d.Drop {
			t.Errorf("%s: named a drop, not marked as one", d.Name)
		}
	}
	if got := Counter(-1).String(); got != "Counter(-1)" {
		t.Errorf("String of an unknown counter: got %q, want Counter(-1)", got)
	}
}

func TestSnapshotString(t *testing.T) {
	var s Snapshot
	if got, want := s.String(), "tx_packets=0 rx_packets=0"; got != want {
		t.Errorf("String of no traffic: got %q, want %q", got, want)
	}
	s[TXPackets], s[TXBytes], s[RXPackets], s[TXDropKernel], s[Wakeups] = 13, 1146, 0, 5, 1<<64-1
	want := "tx_packets=13 tx_bytes=1146 rx_packets=0 tx_drop_kernel=5 wakeups=18446744073709551615"
	if got := s.String(); got != want {
		t.Errorf("String: got %q, want %q", got, want)
	}
	got, err := ParseSnapshot(s.String())
	if err != nil || got != s {
		t.Errorf("ParseSnapshot(%q): got %v, %v; want %v", want, got, err, s)
	}
	if _, err := ParseSnapshot("tx_packets=1 tx_frames=2"); err == nil || !strings.Contains(err.Error(), "tx_frames") {
		t.Errorf("ParseSnapshot of an unknown counter: got %v, want an error naming it", err)
	}
}

func TestSnapshotJSON(t *testing.T) {
	var s Snapshot
	for k := range s {
		s[k] = uint64(k) * 1000
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]uint64
	if err := json.Unmarshal(b, &m); err != nil || len(m) != int(numCounters) {
		t.Fatalf("%s: got %d names (%v), want every counter's", b, len(m), err)
	}
	if m["tx_packets"] != 0 || m["rx_bytes"] != 3000 || m["wakeups"] != s[Wakeups] {
		t.Errorf("%s: wrong values", b)
	}
	var got Snapshot
	if err := json.Unmarshal(b, &got); err != nil || got != s {
		t.Errorf("json round trip: got %v, %v; want %v", got, err, s)
	}
	if err := json.Unmarshal([]byte(`{"tx_frames":1}`), &got); err == nil {
		t.Errorf("Unmarshal of an unknown counter: got no error")
	}
}

func TestSnapshotAll(t *testing.T) {
	s := Snapshot{TXPackets: 1, RXDropKernel: 2, BrokenRings: 3}
	var n, drops int
	var sum uint64
	for d, v := range s.All() {
		if d.Name != Counter(n).String() || d.Help == "" {
			t.Errorf("All: entry %d is %+v", n, d)
		}
		if d.Drop {
			drops++
			sum += v
		}
		n++
	}
	// The drops are the *_drop_* counters, memory_faults,
	// broken_rings and interrupt_errors.
	if n != int(numCounters) || drops != 11 || sum != 5 {
		t.Errorf("All: %d counters, %d drop counters holding %d; want %d, 11 holding 5", n, drops, sum, numCounters)
	}
}

// Counting costs no allocation: the worker adds per pass.
func TestCountersAllocs(t *testing.T) {
	var c Counters
	var tl tally
	tl[TXPackets], tl[TXBytes] = 3, 180
	if a := testing.AllocsPerRun(100, func() {
		c.Add(TXKicks, 1)
		c.addTally(&tl)
	}); a != 0 {
		t.Errorf("Add and addTally: %v allocations, want 0", a)
	}
	if got := c.Snapshot(); got[TXKicks] != 101 || got[TXBytes] != 101*180 || c.Load(TXPackets) != 303 {
		t.Errorf("after 101 runs: %v", got)
	}
}
