package harness

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Iperf is the summary of one iperf3 TCP test.
type Iperf struct {
	Seconds     float64 // how long data flowed
	SentBytes   uint64
	SentBPS     float64 // bits per second, as the sender counted
	RecvBytes   uint64
	RecvBPS     float64 // bits per second, as the receiver counted
	Retransmits int     // TCP retransmissions of the sender
	Streams     int
}

// Gbps is the receiver's throughput in Gbit/s.
func (r Iperf) Gbps() float64 { return r.RecvBPS / 1e9 }

func (r Iperf) String() string {
	return fmt.Sprintf("%.3f Gbit/s received (%.3f sent) over %.1fs, %d streams, %d retransmits",
		r.RecvBPS/1e9, r.SentBPS/1e9, r.Seconds, r.Streams, r.Retransmits)
}

// ParseIperfJSON reads the output of iperf3 -J.
func ParseIperfJSON(out string) (Iperf, error) {
	var v struct {
		Start struct {
			TestStart struct {
				NumStreams int `json:"num_streams"`
			} `json:"test_start"`
		} `json:"start"`
		End struct {
			SumSent struct {
				Seconds     float64 `json:"seconds"`
				Bytes       uint64  `json:"bytes"`
				BPS         float64 `json:"bits_per_second"`
				Retransmits int     `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bytes uint64  `json:"bytes"`
				BPS   float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	// The JSON document is all iperf3 -J prints, but the guest's console may
	// carry a kernel line or two around it.
	i, j := strings.Index(out, "{"), strings.LastIndex(out, "}")
	if i < 0 || j < i {
		return Iperf{}, fmt.Errorf("parse iperf3 output: no JSON in %q", Tail(out, 500))
	}
	if err := json.Unmarshal([]byte(out[i:j+1]), &v); err != nil {
		return Iperf{}, fmt.Errorf("parse iperf3 output: %w", err)
	}
	if v.Error != "" {
		return Iperf{}, fmt.Errorf("iperf3: %s", v.Error)
	}
	s, r := v.End.SumSent, v.End.SumReceived
	if s.Seconds == 0 || r.Bytes == 0 {
		return Iperf{}, fmt.Errorf("parse iperf3 output: no data moved: %s", Tail(out, 500))
	}
	return Iperf{Seconds: s.Seconds, SentBytes: s.Bytes, SentBPS: s.BPS, RecvBytes: r.Bytes,
		RecvBPS: r.BPS, Retransmits: s.Retransmits, Streams: v.Start.TestStart.NumStreams}, nil
}

// IperfStream is an iperf3 -J client's own count of its TCP stream: what
// it sent, or with -R received, in total and per interval (-i). Unlike
// ParseIperfJSON's summary it is there also when the client was
// interrupted (SIGINT), which is then its only error.
type IperfStream struct {
	Bytes       uint64  // sent, or received with -R
	Seconds     float64 // from the start to the last interval's end
	Intervals   []IperfInterval
	Interrupted bool // the client was interrupted, not done
}

// IperfInterval is one report interval of a stream, in seconds from its
// start as the client's clock counted.
type IperfInterval struct {
	Start, End float64
	Bytes      uint64
}

// ParseIperfStream reads the output of an iperf3 -J client, interrupted or
// not.
func ParseIperfStream(out string) (IperfStream, error) {
	type sum struct {
		End   float64 `json:"end"`
		Bytes uint64  `json:"bytes"`
	}
	var v struct {
		Start struct {
			TestStart struct {
				Reverse int `json:"reverse"`
			} `json:"test_start"`
		} `json:"start"`
		Intervals []struct {
			Sum struct {
				Start float64 `json:"start"`
				End   float64 `json:"end"`
				Bytes uint64  `json:"bytes"`
			} `json:"sum"`
		} `json:"intervals"`
		End struct {
			SumSent     sum `json:"sum_sent"`
			SumReceived sum `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	i, j := strings.Index(out, "{"), strings.LastIndex(out, "}")
	if i < 0 || j < i {
		return IperfStream{}, fmt.Errorf("parse iperf3 output: no JSON in %q", Tail(out, 500))
	}
	if err := json.Unmarshal([]byte(out[i:j+1]), &v); err != nil {
		return IperfStream{}, fmt.Errorf("parse iperf3 output: %w", err)
	}
	var st IperfStream
	switch {
	case strings.HasPrefix(v.Error, "interrupt"):
		st.Interrupted = true
	case v.Error != "":
		return IperfStream{}, fmt.Errorf("iperf3: %s", v.Error)
	}
	for _, iv := range v.Intervals {
		st.Intervals = append(st.Intervals, IperfInterval{Start: iv.Sum.Start, End: iv.Sum.End, Bytes: iv.Sum.Bytes})
		st.Seconds = iv.Sum.End
	}
	// The client's own side: what it sent, or received in reverse mode.
	own := v.End.SumSent
	if v.Start.TestStart.Reverse != 0 {
		own = v.End.SumReceived
	}
	st.Bytes = own.Bytes
	if st.Bytes == 0 {
		for _, iv := range st.Intervals {
			st.Bytes += iv.Bytes
		}
	}
	if st.Bytes == 0 {
		return st, fmt.Errorf("parse iperf3 output: no data moved: %s", Tail(out, 500))
	}
	return st, nil
}

// PingReply is one echo reply ping -D printed, with its timestamp.
type PingReply struct {
	Seq int
	At  time.Time
}

var pingReply = regexp.MustCompile(`^\[(\d+)\.(\d+)\] \d+ bytes from .*icmp_seq=(\d+)`)

// ParsePingReplies reads the replies iputils' ping -D prints, in order.
func ParsePingReplies(out string) []PingReply {
	var r []PingReply
	for _, l := range strings.Split(out, "\n") {
		m := pingReply.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		sec, _ := strconv.ParseInt(m[1], 10, 64)
		frac := (m[2] + "000000000")[:9]
		ns, _ := strconv.ParseInt(frac, 10, 64)
		seq, _ := strconv.Atoi(m[3])
		r = append(r, PingReply{Seq: seq, At: time.Unix(sec, ns)})
	}
	return r
}

// LongestSilence is the longest time between two replies in a row, and
// when it began.
func LongestSilence(r []PingReply) (gap time.Duration, from time.Time) {
	for i := 1; i < len(r); i++ {
		if d := r[i].At.Sub(r[i-1].At); d > gap {
			gap, from = d, r[i-1].At
		}
	}
	return gap, from
}

// Ping is the summary of a ping run.
type Ping struct {
	Sent, Received int
	Min, Avg, Max  float64 // milliseconds
}

var (
	pingCounts = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingRTT    = regexp.MustCompile(`(?:rtt|round-trip) min/avg/max(?:/mdev)? = ([\d.]+)/([\d.]+)/([\d.]+)`)
)

// ParsePing reads the summary of iputils' or busybox's ping.
func ParsePing(out string) (Ping, error) {
	c := pingCounts.FindStringSubmatch(out)
	if c == nil {
		return Ping{}, fmt.Errorf("parse ping output: no packet counts in %q", Tail(out, 500))
	}
	var p Ping
	p.Sent, _ = strconv.Atoi(c[1])
	p.Received, _ = strconv.Atoi(c[2])
	if r := pingRTT.FindStringSubmatch(out); r != nil {
		p.Min, _ = strconv.ParseFloat(r[1], 64)
		p.Avg, _ = strconv.ParseFloat(r[2], 64)
		p.Max, _ = strconv.ParseFloat(r[3], 64)
	}
	return p, nil
}

// ParseEthtoolFeatures reads ethtool -k: feature name to on or off; a
// "[fixed]" suffix is dropped.
func ParseEthtoolFeatures(out string) map[string]bool {
	m := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), ": ")
		if !ok {
			continue
		}
		v, _, _ = strings.Cut(v, " ")
		switch v {
		case "on":
			m[k] = true
		case "off":
			m[k] = false
		}
	}
	return m
}

// ParseEthtoolStats reads ethtool -S: counter name to value.
func ParseEthtoolStats(out string) map[string]uint64 {
	m := map[string]uint64{}
	for _, l := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), ": ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			m[k] = n
		}
	}
	return m
}

// Testpmd is what dpdk-testpmd reported for one port when it stopped.
type Testpmd struct {
	RXPackets, RXDropped, TXPackets, TXDropped uint64
}

var testpmdStats = regexp.MustCompile(`(?s)Forward statistics for port (\d+)\s*-+\s*` +
	`RX-packets:\s*(\d+)\s+RX-dropped:\s*(\d+)\s+RX-total:\s*\d+\s+` +
	`TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)`)

// ParseTestpmd reads the forward statistics of port 0 that dpdk-testpmd
// prints when forwarding stops.
func ParseTestpmd(out string) (Testpmd, error) {
	for _, m := range testpmdStats.FindAllStringSubmatch(out, -1) {
		if m[1] != "0" {
			continue
		}
		var v [4]uint64
		for i := range v {
			v[i], _ = strconv.ParseUint(m[i+2], 10, 64)
		}
		return Testpmd{RXPackets: v[0], RXDropped: v[1], TXPackets: v[2], TXDropped: v[3]}, nil
	}
	return Testpmd{}, fmt.Errorf("parse testpmd output: no forward statistics for port 0 in:\n%s", Tail(out, 3000))
}
