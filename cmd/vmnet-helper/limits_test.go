package main

import (
	"errors"
	"testing"
)

// usageText is a usage error's message, "" for nil; anything else fails t.
func usageText(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	var ue *usageError
	if !errors.As(err, &ue) {
		t.Errorf("got %v (%T), want a usage error", err, err)
	}
	return err.Error()
}

func TestFlagLimits(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"mtu unset", checkMTUFlag("tap create", 0), ""},
		{"smallest mtu", checkMTUFlag("tap create", 68), ""},
		{"largest TAP mtu", checkMTUFlag("tap create", 65521), ""},
		{"mtu below", checkMTUFlag("exec", 67), "exec: --mtu 67: want 68 to 65521"},
		{"mtu the TAP cannot take", checkMTUFlag("vhost-user", 65535), "vhost-user: --mtu 65535: want 68 to 65521"},
		{"legacy header", checkVnetHdrFlag("exec", 10), ""},
		{"hash header", checkVnetHdrFlag("exec", 20), ""},
		{"header 0", checkVnetHdrFlag("tap create", 0), "tap create: --vnet-hdr 0: want 10, 12 or 20"},
		{"header 14", checkVnetHdrFlag("tap create", 14), "tap create: --vnet-hdr 14: want 10, 12 or 20"},
	} {
		if got := usageText(t, tt.err); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestParseMACFlag(t *testing.T) {
	for _, tt := range []struct {
		in, want, err string
	}{
		{"52:54:00:12:34:56", "52:54:00:12:34:56", ""},
		{"02-00-00-00-00-01", "02:00:00:00:00:01", ""},
		{"01:00:5e:00:00:01", "", `exec: --mac "01:00:5e:00:00:01": want a unicast Ethernet address such as 52:54:00:12:34:56`},
		{"00:00:00:00:00:00", "", `exec: --mac "00:00:00:00:00:00": want a unicast Ethernet address such as 52:54:00:12:34:56`},
		{"02:00:00:00:00:00:00:01", "", `exec: --mac "02:00:00:00:00:00:00:01": want a unicast Ethernet address such as 52:54:00:12:34:56`},
		{"52:54:00", "", `exec: --mac "52:54:00": want a unicast Ethernet address such as 52:54:00:12:34:56`},
	} {
		mac, err := parseMACFlag("exec", tt.in)
		if got := usageText(t, err); got != tt.err {
			t.Errorf("parseMACFlag(%q): got error %q, want %q", tt.in, got, tt.err)
		}
		if got := mac.String(); got != tt.want {
			t.Errorf("parseMACFlag(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
