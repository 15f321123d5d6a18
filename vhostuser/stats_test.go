package vhostuser

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
)

func TestServerTable(t *testing.T) {
	if len(serverTable) != int(numServerCounters) {
		t.Fatalf("serverTable has %d entries, want %d", len(serverTable), numServerCounters)
	}
	for _, tb := range []struct {
		name string
		err  error
	}{{"serverTable", serverTable.Check()}, {"limitTable", limitTable.Check()}} {
		if tb.err != nil {
			t.Errorf("%s: %v", tb.name, tb.err)
		}
	}
	var s Stats
	for i, p := range s.counters() {
		*p = uint64(10 + i)
	}
	var names []string
	for d, v := range s.All() {
		names = append(names, d.Name)
		if i, _ := serverTable.Index(d.Name); v != uint64(10+i) {
			t.Errorf("All: %s=%d, want %d", d.Name, v, 10+i)
		}
	}
	if got := strings.Join(names, " "); got != "sessions closed_sessions rejected unknown" {
		t.Errorf("All: got %s, want sessions closed_sessions rejected unknown", got)
	}
	if s.Sessions != 10 || s.Closed != 11 || s.Rejected != 12 || s.Unknown != 13 {
		t.Errorf("counters() points at the wrong fields: %+v", s)
	}
}

func TestStatsTextAndJSON(t *testing.T) {
	s := Stats{Sessions: 2, Closed: 1, Rejected: 1, Unknown: 0,
		Messages: map[Request]uint64{ReqGetFeatures: 4, ReqSetMemTable: 1, Request(99): 2}}
	s.Limited[LimitMemSlots] = 3
	want := "sessions=2 closed_sessions=1 rejected=1 unknown=0 messages: [GET_FEATURES=4 REQUEST_99=2 SET_MEM_TABLE=1] limited: [mem_slots=3]"
	if got := s.String(); got != want {
		t.Errorf("String: got %q, want %q", got, want)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"sessions":2,`) || !strings.Contains(string(b), `"GET_FEATURES":4`) || !strings.Contains(string(b), `"mem_slots":3`) {
		t.Errorf("JSON: got %s, want names from the tables and requests by name", b)
	}
	var back Stats
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("read back %s: %v", b, err)
	}
	if back.Sessions != s.Sessions || back.Closed != s.Closed || back.Rejected != s.Rejected || back.Unknown != s.Unknown ||
		back.Limited != s.Limited || !maps.Equal(back.Messages, s.Messages) {
		t.Errorf("read back %s: got %+v, want %+v", b, back, s)
	}
	for _, bad := range []string{`{"session":1}`, `{"messages":{"GET_FEATURE":1}}`, `{"limited":{"mem":1}}`, `{"sessions":-1}`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("UnmarshalJSON(%s): got no error", bad)
		}
	}
	if s := (Stats{}).String(); s != "sessions=0 closed_sessions=0 rejected=0 unknown=0 messages: []" {
		t.Errorf("String of nothing: got %q", s)
	}
}

// A front-end that hangs up is a session; one the server hangs up on, for
// a malformed message, is a closed session too.
func TestClosedSessions(t *testing.T) {
	srv := NewServer(newFakeDevice(), Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	fe.sync()
	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("front-end hung up: ServeConn returned %v", err)
	}
	c, fe = socketPair(t)
	wait = serve(t, srv, c)
	fe.sendRaw([]byte{1, 2, 3}) // a header cut short, then EOF
	fe.c.CloseWrite()
	if err := wait(); err == nil {
		t.Fatal("a message cut short: ServeConn returned nil")
	}
	fe.close()
	if st := srv.Stats(); st.Sessions != 2 || st.Closed != 1 {
		t.Errorf("stats: got %d sessions, %d closed; want 2, 1", st.Sessions, st.Closed)
	}
}
