package stats

import (
	"fmt"
	"iter"
	"strings"
)

// Kind says how a value moves, which is what a metrics collector needs
// to know to export it.
type Kind uint8

const (
	// Counter only grows, from zero when its owner is made. It is the
	// zero Kind.
	Counter Kind = iota
	// Gauge is a level that goes up and down.
	Gauge
)

func (k Kind) String() string {
	switch k {
	case Counter:
		return "counter"
	case Gauge:
		return "gauge"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Desc declares one value of a table.
type Desc struct {
	// Name is snake_case, unique in its table: the key in text and JSON,
	// and the stem of an exported metric's name (a collector adds its
	// prefix, and "_total" to a counter).
	Name string
	// Help says in one line what is counted.
	Help string
	Kind Kind
	// Drop marks a count of frames, chains or commands lost or refused,
	// or of failures that lose them: clean traffic leaves it at zero.
	Drop bool
}

// Table declares a set of values; an entry's position is its index into
// the values (one uint64 per entry, in the same order).
type Table []Desc

// Check reports the first rule t breaks: a name that is not snake_case
// (a lowercase letter, then lowercase letters, digits and single
// underscores), ends in "_total" (a collector adds that to counters) or
// is taken twice; help that is empty or more than one line; an unknown
// Kind. Every table's tests call it.
func (t Table) Check() error {
	seen := make(map[string]int, len(t))
	for i, d := range t {
		if !snakeCase(d.Name) {
			return fmt.Errorf("entry %d: name %q is not snake_case", i, d.Name)
		}
		if strings.HasSuffix(d.Name, "_total") {
			return fmt.Errorf("entry %d: name %q ends in _total, which a collector adds", i, d.Name)
		}
		if j, ok := seen[d.Name]; ok {
			return fmt.Errorf("entry %d: name %q is entry %d's too", i, d.Name, j)
		}
		seen[d.Name] = i
		if strings.TrimSpace(d.Help) == "" || strings.ContainsAny(d.Help, "\r\n") {
			return fmt.Errorf("entry %d (%s): help %q is not one line", i, d.Name, d.Help)
		}
		if d.Kind > Gauge {
			return fmt.Errorf("entry %d (%s): unknown %v", i, d.Name, d.Kind)
		}
	}
	return nil
}

func snakeCase(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' || s[len(s)-1] == '_' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '_' && s[i-1] != '_':
		default:
			return false
		}
	}
	return true
}

// Index returns the position of the entry called name.
func (t Table) Index(name string) (int, bool) {
	for i, d := range t {
		if d.Name == name {
			return i, true
		}
	}
	return 0, false
}

// All yields each entry of t with its value in v, in table order.
func (t Table) All(v []uint64) iter.Seq2[Desc, uint64] {
	return func(yield func(Desc, uint64) bool) {
		for i, d := range t {
			if !yield(d, v[i]) {
				return
			}
		}
	}
}
