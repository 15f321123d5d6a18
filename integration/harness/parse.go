package harness

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
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
