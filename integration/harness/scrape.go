package harness

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape is one /metrics of a helper (Helper.Scrape), read back: each
// series by metric name.
type Scrape map[string][]Series

// Series is one labelled value of a metric.
type Series struct {
	Labels map[string]string
	Value  float64
}

// ParseScrape reads the text exposition format.
func ParseScrape(b []byte) (Scrape, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parse scrape: %w", err)
	}
	s := Scrape{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			se := Series{Labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				se.Labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.Counter != nil:
				se.Value = m.GetCounter().GetValue()
			case m.Gauge != nil:
				se.Value = m.GetGauge().GetValue()
			case m.Untyped != nil:
				se.Value = m.GetUntyped().GetValue()
			default:
				continue // summaries and histograms: the Go collector's
			}
			s[name] = append(s[name], se)
		}
	}
	return s, nil
}

// Sum adds the values of the series of name whose labels include every
// name=value pair of match ("tap", "vu0"); it reports whether any did.
func (s Scrape) Sum(name string, match ...string) (float64, bool) {
	var sum float64
	found := false
	for _, se := range s[name] {
		ok := true
		for i := 0; i+1 < len(match); i += 2 {
			if se.Labels[match[i]] != match[i+1] {
				ok = false
			}
		}
		if ok {
			sum += se.Value
			found = true
		}
	}
	return sum, found
}

// SeriesNames lists every series of the vmnet_ metrics as
// name{label=value,...}, sorted: what a scrape exports, whatever the
// values.
func (s Scrape) SeriesNames() []string {
	var out []string
	for name, ss := range s {
		if !strings.HasPrefix(name, "vmnet_") {
			continue
		}
		for _, se := range ss {
			var l []string
			for _, k := range slices.Sorted(maps.Keys(se.Labels)) {
				l = append(l, k+"="+se.Labels[k])
			}
			out = append(out, name+"{"+strings.Join(l, ",")+"}")
		}
	}
	slices.Sort(out)
	return out
}
