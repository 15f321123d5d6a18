package harness

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/internal/metrics"
)

// The lines vmnet-helper prints on SIGUSR1 and on exit (cmd/vmnet-helper
// printStats), which ParseStats reads; Helper.Stats reads /stats instead:
//
//	vmnet-helper: tap vu0 queue 0: tx_packets=13 tx_bytes=1146 rx_packets=10 ...
//	vmnet-helper: vhost-user sessions=1 rejected=0 unknown=0 messages: [ADD_MEM_REG=1 ...]
const (
	statsQueue = "vmnet-helper: tap "
	statsEnd   = "vmnet-helper: vhost-user sessions="
)

// Counters are one queue pair's counters, indexed by engine.Counter
// (c[engine.TXPackets]); one the helper left out is zero.
type Counters engine.Snapshot

// Sub returns c minus an earlier snapshot, counter by counter.
func (c Counters) Sub(earlier Counters) Counters {
	for k := range c {
		c[k] -= earlier[k]
	}
	return c
}

// Drops is the sum of the counters the engine's table marks as drops
// (frames lost or refused, broken rings, memory faults), with their names
// in table order.
func (c Counters) Drops() (uint64, string) {
	var n uint64
	var names []string
	for d, v := range engine.Snapshot(c).All() {
		if d.Drop && v != 0 {
			n += v
			names = append(names, fmt.Sprintf("%s=%d", d.Name, v))
		}
	}
	return n, strings.Join(names, " ")
}

// String prints c as the helper does.
func (c Counters) String() string { return engine.Snapshot(c).String() }

// Stats is one reading of the helper's counters: its /stats (Helper.Stats)
// or a SIGUSR1 printout (Helper.SignalStats).
type Stats struct {
	// Text is what the helper served or printed.
	Text   string
	TAP    string
	Queues []Counters // by queue pair
	// Sessions, Rejected and Unknown are the vhost-user server's counts of
	// connections, refused requests and requests of unknown types.
	Sessions, Rejected, Unknown uint64
	// Messages counts the vhost-user requests received, by name.
	Messages map[string]uint64
	// Snapshot is all of /stats; the zero value for a printout.
	Snapshot metrics.Snapshot
}

// StatsOf reads the first device and vhost-user server of a helper's
// /stats: a helper serves one of each.
func StatsOf(s metrics.Snapshot, text string) (Stats, error) {
	if len(s.Devices) == 0 || len(s.VhostUser) == 0 {
		return Stats{}, fmt.Errorf("helper counters: want a device and a vhost-user server in:\n%s", Tail(text, 2000))
	}
	d, srv := s.Devices[0], s.VhostUser[0].Stats
	st := Stats{Text: text, TAP: d.TAP, Snapshot: s,
		Sessions: srv.Sessions, Rejected: srv.Rejected, Unknown: srv.Unknown, Messages: map[string]uint64{}}
	for _, q := range d.Queues {
		st.Queues = append(st.Queues, Counters(q))
	}
	for r, n := range srv.Messages {
		st.Messages[r.String()] = n
	}
	return st, nil
}

// Total adds counter k over all queue pairs.
func (s Stats) Total(k engine.Counter) uint64 {
	var n uint64
	for _, q := range s.Queues {
		n += q[k]
	}
	return n
}

// MessageList is Messages as "NAME=N" in name order.
func (s Stats) MessageList() string {
	l := make([]string, 0, len(s.Messages))
	for k, v := range s.Messages {
		l = append(l, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(l)
	return strings.Join(l, " ")
}

// ParseStats reads the last complete printout of counters in s.
func ParseStats(s string) (Stats, error) {
	end := strings.LastIndex(s, statsEnd)
	if end < 0 {
		return Stats{}, fmt.Errorf("parse helper counters: no %q line in:\n%s", statsEnd, Tail(s, 2000))
	}
	// The queue lines come before the sessions line, from queue 0 up; a
	// log line of another goroutine may have come between them.
	var queueLines []string
	lines := strings.Split(s[:end], "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !strings.HasPrefix(l, statsQueue) {
			continue
		}
		queueLines = append([]string{l}, queueLines...)
		if strings.Contains(l, " queue 0: ") {
			break
		}
	}
	line, _, _ := strings.Cut(s[end:], "\n")
	st := Stats{Text: strings.Join(append(queueLines, line), "\n") + "\n"}
	for i, l := range queueLines {
		// tap NAME queue N: k=v ...
		head, kvs, ok := strings.Cut(strings.TrimPrefix(l, statsQueue), ": ")
		var name string
		var q int
		if !ok {
			return Stats{}, fmt.Errorf("parse helper counters: line %q: no colon", l)
		}
		if _, err := fmt.Sscanf(head, "%s queue %d", &name, &q); err != nil || q != i {
			return Stats{}, fmt.Errorf("parse helper counters: line %q: got queue %d, want %d (%v)", l, q, i, err)
		}
		st.TAP = name
		c, err := engine.ParseSnapshot(kvs)
		if err != nil {
			return Stats{}, fmt.Errorf("parse helper counters of queue %d: %w", q, err)
		}
		st.Queues = append(st.Queues, Counters(c))
	}
	if len(st.Queues) == 0 {
		return Stats{}, fmt.Errorf("parse helper counters: no queue lines before %q", statsEnd)
	}
	summary, msgs, ok := strings.Cut(strings.TrimPrefix(line, "vmnet-helper: vhost-user "), " messages: ")
	if !ok {
		return Stats{}, fmt.Errorf("parse helper counters: line %q: no messages", line)
	}
	// Refusals by limit follow when there are any (vhostuser.Stats.String).
	msgs, _, _ = strings.Cut(msgs, " limited: ")
	sum, err := parseKV(summary)
	if err != nil {
		return Stats{}, fmt.Errorf("parse helper counters: %w", err)
	}
	st.Sessions, st.Rejected, st.Unknown = sum["sessions"], sum["rejected"], sum["unknown"]
	m, err := parseKV(strings.Trim(msgs, "[]"))
	if err != nil {
		return Stats{}, fmt.Errorf("parse helper counters: messages: %w", err)
	}
	st.Messages = m
	return st, nil
}

// parseKV reads space-separated key=value pairs with unsigned values.
func parseKV(s string) (map[string]uint64, error) {
	c := map[string]uint64{}
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not key=value", f)
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", f, err)
		}
		c[k] = n
	}
	return c, nil
}

// Tail is the last n bytes of s, marked as cut when it is.
func Tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Brief prints the frame and byte counts of c.
func (c Counters) Brief() string {
	var b strings.Builder
	for _, k := range []engine.Counter{engine.TXPackets, engine.TXBytes, engine.RXPackets, engine.RXBytes} {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, c[k])
	}
	return b.String()
}
