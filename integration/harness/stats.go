package harness

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// The lines vmnet-helper prints on SIGUSR1 and on exit (cmd/vmnet-helper
// printStats):
//
//	vmnet-helper: tap vu0 queue 0: tx_packets=13 tx_bytes=1146 rx_packets=10 ...
//	vmnet-helper: vhost-user sessions=1 rejected=0 unknown=0 messages: [ADD_MEM_REG=1 ...]
const (
	statsQueue = "vmnet-helper: tap "
	statsEnd   = "vmnet-helper: vhost-user sessions="
)

// Counters are one queue pair's counters by the helper's names
// (tx_packets, rx_bytes, ...); a name the helper left out is zero.
type Counters map[string]uint64

// Sub returns c minus an earlier snapshot, counter by counter.
func (c Counters) Sub(earlier Counters) Counters {
	d := Counters{}
	for k, v := range c {
		d[k] = v - earlier[k]
	}
	return d
}

// Drops is the sum of the counters that say a frame was lost or refused
// (the *_drop_* family, broken_rings and memory_faults), with their names.
func (c Counters) Drops() (uint64, string) {
	var n uint64
	var names []string
	for k, v := range c {
		if v != 0 && (strings.Contains(k, "_drop_") || k == "broken_rings" || k == "memory_faults") {
			n += v
			names = append(names, fmt.Sprintf("%s=%d", k, v))
		}
	}
	sort.Strings(names)
	return n, strings.Join(names, " ")
}

// Stats is one printout of the helper's counters.
type Stats struct {
	// Text is the printout itself, as the helper wrote it.
	Text   string
	TAP    string
	Queues []Counters // by queue pair
	// Sessions, Rejected and Unknown are the vhost-user server's counts of
	// connections, refused requests and requests of unknown types.
	Sessions, Rejected, Unknown uint64
	// Messages counts the vhost-user requests received, by name.
	Messages map[string]uint64
}

// Total adds a counter over all queue pairs.
func (s Stats) Total(name string) uint64 {
	var n uint64
	for _, q := range s.Queues {
		n += q[name]
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
		c, err := parseKV(kvs)
		if err != nil {
			return Stats{}, fmt.Errorf("parse helper counters of queue %d: %w", q, err)
		}
		st.Queues = append(st.Queues, c)
	}
	if len(st.Queues) == 0 {
		return Stats{}, fmt.Errorf("parse helper counters: no queue lines before %q", statsEnd)
	}
	summary, msgs, ok := strings.Cut(strings.TrimPrefix(line, "vmnet-helper: vhost-user "), " messages: ")
	if !ok {
		return Stats{}, fmt.Errorf("parse helper counters: line %q: no messages", line)
	}
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
func parseKV(s string) (Counters, error) {
	c := Counters{}
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
	return fmt.Sprintf("tx_packets=%d tx_bytes=%d rx_packets=%d rx_bytes=%d",
		c["tx_packets"], c["tx_bytes"], c["rx_packets"], c["rx_bytes"])
}
