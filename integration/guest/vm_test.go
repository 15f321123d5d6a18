package guest

import "testing"

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"qemu", "-append", "console=ttyS0 vmnet.ip=10.0.2.15/24", "it's", ""})
	want := `qemu -append 'console=ttyS0 vmnet.ip=10.0.2.15/24' 'it'\''s' ''`
	if got != want {
		t.Errorf("shellQuote: got %s, want %s", got, want)
	}
}
