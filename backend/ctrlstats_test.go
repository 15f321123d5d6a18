package backend

import (
	"encoding/json"
	"testing"
)

func TestCtrlTable(t *testing.T) {
	if err := ctrlTable.Check(); err != nil {
		t.Fatal(err)
	}
	if len(ctrlTable) != int(numCtrlCounters) {
		t.Fatalf("ctrlTable has %d entries, want one per CtrlCounter (%d)", len(ctrlTable), numCtrlCounters)
	}
	var s CtrlStats
	s[CtrlCommands], s[CtrlBadChains] = 3, 1
	if got, want := s.String(), "commands=3 errors=0 bad_chains=1 kicks=0 memory_faults=0 broken_rings=0 interrupt_errors=0"; got != want {
		t.Errorf("String: got %q, want %q", got, want)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]uint64
	if err := json.Unmarshal(b, &m); err != nil || m["commands"] != 3 || m["bad_chains"] != 1 || len(m) != int(numCtrlCounters) {
		t.Errorf("JSON %s: got %v, %v", b, m, err)
	}
	var back CtrlStats
	if err := json.Unmarshal(b, &back); err != nil || back != s {
		t.Errorf("JSON %s read back: got %v, %v; want %v", b, back, err, s)
	}
	if err := json.Unmarshal([]byte(`{"commandz":1}`), &back); err == nil {
		t.Error("UnmarshalJSON of a name the table does not declare: got no error")
	}
}
