package stats

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// AppendText appends the values in v for which show(i) is true as
// name=value pairs, separated by spaces, in table order:
// "tx_packets=13 tx_bytes=1146". A nil show keeps every value.
func (t Table) AppendText(b []byte, v []uint64, show func(i int) bool) []byte {
	first := true
	for i, d := range t {
		if show != nil && !show(i) {
			continue
		}
		if !first {
			b = append(b, ' ')
		}
		first = false
		b = append(b, d.Name...)
		b = append(b, '=')
		b = strconv.AppendUint(b, v[i], 10)
	}
	return b
}

// ParseText reads what AppendText wrote into v; values it does not name
// are left as they are. A name t does not declare, or one given twice, is
// an error: the reader and the writer share the table.
func (t Table) ParseText(s string, v []uint64) error {
	var seen []bool
	for _, f := range strings.Fields(s) {
		name, val, ok := strings.Cut(f, "=")
		if !ok {
			return fmt.Errorf("%q is not name=value", f)
		}
		i, ok := t.Index(name)
		if !ok {
			return fmt.Errorf("%q: unknown name %q", f, name)
		}
		if seen == nil {
			seen = make([]bool, len(t))
		}
		if seen[i] {
			return fmt.Errorf("%q: %s given twice", f, name)
		}
		seen[i] = true
		n, err := strconv.ParseUint(val, 10, 64)
		if err != nil {
			return fmt.Errorf("%q: %w", f, err)
		}
		v[i] = n
	}
	return nil
}

// AppendJSON appends every value in v as one JSON object, name to value,
// in table order: {"tx_packets":13,"tx_bytes":1146,...}.
func (t Table) AppendJSON(b []byte, v []uint64) []byte {
	b = append(b, '{')
	for i, d := range t {
		if i > 0 {
			b = append(b, ',')
		}
		// Check holds names to [a-z0-9_], which JSON takes unescaped.
		b = append(b, '"')
		b = append(b, d.Name...)
		b = append(b, '"', ':')
		b = strconv.AppendUint(b, v[i], 10)
	}
	return append(b, '}')
}

// ParseJSON reads a JSON object of name to value into v; values it does
// not name are left as they are. A name t does not declare is an error, as
// for ParseText.
func (t Table) ParseJSON(data []byte, v []uint64) error {
	var m map[string]uint64
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	for name, n := range m {
		i, ok := t.Index(name)
		if !ok {
			return fmt.Errorf("unknown name %q", name)
		}
		v[i] = n
	}
	return nil
}
