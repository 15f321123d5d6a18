package fdpass

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want Request
	}{
		{"vmnet-fds/1 name=vm0 queues=1", Request{Name: "vm0", Queues: 1}},
		{"vmnet-fds/1 name=vm%d queues=4 bridge=br0\n", Request{Name: "vm%d", Queues: 4, Bridge: "br0"}},
		{"vmnet-fds/1 queues=253 vnet-hdr=20 name=a", Request{Name: "a", Queues: 253, VnetHdr: 20}},
		{"vmnet-fds/1 vnet-hdr=10 bridge=virbr0 name=tap%d queues=2", Request{Name: "tap%d", Queues: 2, Bridge: "virbr0", VnetHdr: 10}},
	} {
		got, err := ParseRequest([]byte(tc.msg))
		if err != nil {
			t.Errorf("%q: %v", tc.msg, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%q: got %+v, want %+v", tc.msg, got, tc.want)
		}
	}
}

func TestParseRequestErrors(t *testing.T) {
	for _, tc := range []struct {
		msg, want string
	}{
		{"", "empty"},
		{"\n", "empty"},
		{"vmnet-fds/2 name=a queues=1", "version"},
		{"VMNET-FDS/1 name=a queues=1", "version"},
		{"vmnet-fds/1 queues=1", "no name"},
		{"vmnet-fds/1 name=a", "no queues"},
		{"vmnet-fds/1 name=a queues=0", "queues 0"},
		{"vmnet-fds/1 name=a queues=254", "queues 254"},
		{"vmnet-fds/1 name=a queues=-1", "not a decimal"},
		{"vmnet-fds/1 name=a queues=+1", "not a decimal"},
		{"vmnet-fds/1 name=a queues=01", "leading zeros"},
		{"vmnet-fds/1 name=a queues=999999999999", "leading zeros"},
		{"vmnet-fds/1 name=a queues=1 queues=2", "twice"},
		{"vmnet-fds/1 name=a queues=1 color=red", "unknown field"},
		{"vmnet-fds/1 name=a queues=1 bridge", "key=value"},
		{"vmnet-fds/1 name= queues=1", "key=value"},
		{"vmnet-fds/1  name=a queues=1", "empty word"},
		{"vmnet-fds/1 name=a queues=1 ", "empty word"},
		{"vmnet-fds/1 name=a\tb queues=1", "printable"},
		{"vmnet-fds/1 name=a\x00 queues=1", "printable"},
		{"vmnet-fds/1 name=a\n queues=1", "printable"},
		{"vmnet-fds/1 name=\xff queues=1", "printable"},
		{"vmnet-fds/1 name=abcdefghijklmnop queues=1", "15 bytes"},
		{"vmnet-fds/1 name=../x queues=1", "'/'"},
		{"vmnet-fds/1 name=a:b queues=1", "':'"},
		{"vmnet-fds/1 name=%d%d queues=1", "exactly one %d"},
		{"vmnet-fds/1 name=a queues=1 bridge=br%d", "'%'"},
		{"vmnet-fds/1 name=a queues=1 vnet-hdr=16", "vnet-hdr 16"},
		{"vmnet-fds/1 name=a queues=1 " + strings.Repeat("x", MaxMessage), "more than"},
	} {
		_, err := ParseRequest([]byte(tc.msg))
		if err == nil {
			t.Errorf("%q: got nil error, want one containing %q", tc.msg, tc.want)
			continue
		}
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: error %v does not match ErrMalformed", tc.msg, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %q, want it to contain %q", tc.msg, err, tc.want)
		}
	}
}

func TestRequestEncodeRoundTrip(t *testing.T) {
	for _, r := range []Request{
		{Name: "vm0", Queues: 1},
		{Name: "vm%d", Queues: 253, Bridge: "br-lan", VnetHdr: 12},
	} {
		b, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseRequest(b)
		if err != nil {
			t.Fatalf("%q: %v", b, err)
		}
		if got != r {
			t.Errorf("round trip of %+v: got %+v", r, got)
		}
	}
	if _, err := (Request{Name: "a b", Queues: 1}).Encode(); err == nil {
		t.Error("encoding a name with a space: got nil error")
	}
}

func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want Reply
	}{
		{"ok name=vm0 queues=2 vnet-hdr=12", Reply{Name: "vm0", Queues: 2, VnetHdr: 12}},
		{"ok vnet-hdr=10 queues=1 name=t\n", Reply{Name: "t", Queues: 1, VnetHdr: 10}},
		{"error access denied: uid 1000 may not use \"x\"", Reply{Err: "access denied: uid 1000 may not use \"x\""}},
	} {
		got, err := ParseReply([]byte(tc.msg))
		if err != nil {
			t.Errorf("%q: %v", tc.msg, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%q: got %+v, want %+v", tc.msg, got, tc.want)
		}
	}
	for _, msg := range []string{
		"", "ok", "error ", "error \x1b[31mred", "ok name=vm%d queues=1 vnet-hdr=12",
		"ok name=a queues=0 vnet-hdr=12", "ok name=a queues=1", "ok name=a queues=1 vnet-hdr=11",
		"granted name=a queues=1 vnet-hdr=12", "ok name=a queues=1 vnet-hdr=12 extra=1",
	} {
		if _, err := ParseReply([]byte(msg)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: got %v, want ErrMalformed", msg, err)
		}
	}
}

func TestReplyEncodeSanitizes(t *testing.T) {
	r := Reply{Err: "bad \x1b[31m\nname " + strings.Repeat("y", 2*MaxMessage)}
	b := r.Encode()
	if len(b) > MaxMessage {
		t.Errorf("encoded refusal: %d bytes, want at most %d", len(b), MaxMessage)
	}
	got, err := ParseReply(b)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got.Err, "bad ?[31m?name yyy") {
		t.Errorf("refusal: got %.40q, want control characters replaced by '?'", got.Err)
	}
}
