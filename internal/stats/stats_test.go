package stats

import (
	"slices"
	"strings"
	"testing"
)

var testTable = Table{
	{Name: "tx_packets", Help: "frames sent"},
	{Name: "rx_drop_kernel", Help: "failed reads", Drop: true},
	{Name: "sessions", Help: "sessions open", Kind: Gauge},
}

func TestCheck(t *testing.T) {
	if err := testTable.Check(); err != nil {
		t.Fatalf("Check of a good table: %v", err)
	}
	for _, tc := range []struct {
		name string
		t    Table
		want string
	}{
		{"empty name", Table{{Help: "h"}}, "not snake_case"},
		{"upper case", Table{{Name: "TXPackets", Help: "h"}}, "not snake_case"},
		{"leading digit", Table{{Name: "1x", Help: "h"}}, "not snake_case"},
		{"double underscore", Table{{Name: "tx__packets", Help: "h"}}, "not snake_case"},
		{"trailing underscore", Table{{Name: "tx_", Help: "h"}}, "not snake_case"},
		{"dash", Table{{Name: "tx-packets", Help: "h"}}, "not snake_case"},
		{"_total", Table{{Name: "tx_packets_total", Help: "h"}}, "_total"},
		{"twice", Table{{Name: "a", Help: "h"}, {Name: "a", Help: "h"}}, "entry 0's too"},
		{"no help", Table{{Name: "a", Help: " "}}, "not one line"},
		{"two lines", Table{{Name: "a", Help: "h\nh"}}, "not one line"},
		{"kind", Table{{Name: "a", Help: "h", Kind: 7}}, "Kind(7)"},
	} {
		err := tc.t.Check()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Check: got %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}

func TestText(t *testing.T) {
	v := []uint64{13, 0, 2}
	if got, want := string(testTable.AppendText(nil, v, nil)), "tx_packets=13 rx_drop_kernel=0 sessions=2"; got != want {
		t.Errorf("AppendText: got %q, want %q", got, want)
	}
	nonZero := func(i int) bool { return v[i] != 0 }
	text := string(testTable.AppendText([]byte("q0: "), v, nonZero))
	if want := "q0: tx_packets=13 sessions=2"; text != want {
		t.Errorf("AppendText of the non-zero values: got %q, want %q", text, want)
	}
	got := make([]uint64, 3)
	if err := testTable.ParseText(strings.TrimPrefix(text, "q0: "), got); err != nil || !slices.Equal(got, v) {
		t.Errorf("ParseText(%q): got %v, %v; want %v", text, got, err, v)
	}
	for _, bad := range []string{"tx_packets", "tx_packets=x", "tx_packets=-1", "tx_bytes=1", "sessions=1 sessions=2"} {
		if err := testTable.ParseText(bad, got); err == nil {
			t.Errorf("ParseText(%q): got no error", bad)
		}
	}
}

func TestJSON(t *testing.T) {
	v := []uint64{13, 0, 1<<64 - 1}
	b := testTable.AppendJSON(nil, v)
	if want := `{"tx_packets":13,"rx_drop_kernel":0,"sessions":18446744073709551615}`; string(b) != want {
		t.Errorf("AppendJSON: got %s, want %s", b, want)
	}
	got := make([]uint64, 3)
	if err := testTable.ParseJSON(b, got); err != nil || !slices.Equal(got, v) {
		t.Errorf("ParseJSON(%s): got %v, %v; want %v", b, got, err, v)
	}
	for _, bad := range []string{`{"tx_bytes":1}`, `{"tx_packets":-1}`, `[1]`, `{`} {
		if err := testTable.ParseJSON([]byte(bad), got); err == nil {
			t.Errorf("ParseJSON(%s): got no error", bad)
		}
	}
}

func TestAll(t *testing.T) {
	var names []string
	var sum uint64
	for d, v := range testTable.All([]uint64{1, 2, 3}) {
		names = append(names, d.Name)
		sum += v
	}
	if want := []string{"tx_packets", "rx_drop_kernel", "sessions"}; !slices.Equal(names, want) || sum != 6 {
		t.Errorf("All: got %v summing to %d, want %v summing to 6", names, sum, want)
	}
	for d := range testTable.All([]uint64{1, 2, 3}) {
		if d.Name != "tx_packets" {
			t.Errorf("All went on after yield returned false, to %s", d.Name)
		}
		break
	}
}
