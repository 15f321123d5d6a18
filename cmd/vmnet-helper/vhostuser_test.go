package main

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// Bad vhost-user command lines fail before anything is made.
func TestVhostUserBadArguments(t *testing.T) {
	sock := t.TempDir() + "/vu.sock"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no socket", []string{"vhost-user"}, "--socket is required"},
		{"socket dir", []string{"vhost-user", "--socket", "/no/such/dir/vu.sock"}, "does not exist"},
		{"zero queues", []string{"vhost-user", "--socket", sock, "--queues", "0"}, "--queues 0"},
		{"too many queues", []string{"vhost-user", "--socket", sock, "--queues", "256"}, "--queues 256"},
		{"mtu", []string{"vhost-user", "--socket", sock, "--mtu", "67"}, "--mtu 67"},
		{"busy poll", []string{"vhost-user", "--socket", sock, "--busy-poll", "2s"}, "--busy-poll"},
		{"tap name", []string{"vhost-user", "--socket", sock, "--tap", "a b"}, "--tap"},
		{"multicast mac", []string{"vhost-user", "--socket", sock, "--mac", "01:00:5e:00:00:01"}, "--mac"},
		{"offloads", []string{"vhost-user", "--socket", sock, "--offloads", "warp"}, "--offloads"},
		{"steering", []string{"vhost-user", "--socket", sock, "--steering", "rss"}, "want auto, kernel, hash or queue:N"},
		{"netns", []string{"vhost-user", "--socket", sock, "--netns", "no-such-netns-here"}, "--netns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runHelper(tc.args...)
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want a usage error containing %q", err, tc.want)
			}
		})
	}
}

// --io-uring defaults to on and turns off with --io-uring=false; what is
// not a boolean is a usage error.
func TestVhostUserIOURingFlag(t *testing.T) {
	sock := t.TempDir() + "/vu.sock"
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--io-uring=false"}, false},
		{[]string{"--io-uring"}, true},
	} {
		c, err := parseVhostUser(append([]string{"--socket", sock}, tc.args...), io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if c.ioURing != tc.want {
			t.Errorf("%v: io-uring %v, want %v", tc.args, c.ioURing, tc.want)
		}
	}
	if _, err := parseVhostUser([]string{"--socket", sock, "--io-uring=maybe"}, io.Discard); err == nil {
		t.Error("--io-uring=maybe: got no error")
	}
}
