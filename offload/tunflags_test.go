package offload

import "testing"

func TestTunFlagsStringParse(t *testing.T) {
	for _, tc := range []struct {
		o TunFlags
		s string
	}{
		{0, "none"},
		{TunCsum, "csum"},
		{TunCsum | TunTSO4 | TunTSO6, "csum,tso4,tso6"},
		{TunCsum | TunUSO4 | TunUSO6, "csum,uso4,uso6"},
	} {
		if got := tc.o.String(); got != tc.s {
			t.Errorf("%#x.String(): got %q, want %q", uint32(tc.o), got, tc.s)
		}
		got, err := ParseTunFlags(tc.s)
		if err != nil || got != tc.o {
			t.Errorf("ParseTunFlags(%q): got %#x, %v; want %#x", tc.s, uint32(got), err, uint32(tc.o))
		}
	}
	if got := TunFlags(0x8000).String(); got != "unknown(0x8000)" {
		t.Errorf("unknown bit: got %q", got)
	}
	if _, err := ParseTunFlags("csum,gro"); err == nil {
		t.Error(`ParseTunFlags("csum,gro"): got nil error`)
	}
}
