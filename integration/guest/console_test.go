package guest

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
)

// frame renders what init.sh prints for one command, wrapped like
// busybox base64 (76 columns) with tty line endings.
func frame(id uint64, rc int, out string) string {
	enc := base64.StdEncoding.EncodeToString([]byte(out))
	var b strings.Builder
	fmt.Fprintf(&b, "__VMNET_BEGIN__ %d\r\n", id)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	if enc != "" {
		b.WriteString(enc + "\r\n")
	}
	fmt.Fprintf(&b, "__VMNET_DONE__ %d %d %d\r\n", id, rc, len(out))
	return b.String()
}

func TestConsoleStarted(t *testing.T) {
	c := newConsole()
	c.feed(strings.NewReader("__VMNET_START__ 3\r\n[ 1.0] noise __VMNET_START__ 4\r\n"))
	for _, id := range []uint64{3, 4} {
		if _, ok := c.startedAt(id); !ok {
			t.Errorf("startedAt(%d): got false, want true", id)
		}
	}
	if _, ok := c.startedAt(5); ok {
		t.Errorf("startedAt(5): got true for a command the guest never started")
	}
	c.feed(strings.NewReader(frame(4, 0, "x")))
	if _, ok := c.take(4); !ok {
		t.Fatal("take(4): no result")
	}
	for _, id := range []uint64{3, 4} {
		if _, ok := c.startedAt(id); ok {
			t.Errorf("startedAt(%d) after take(4): got true, want it forgotten", id)
		}
	}
}

func TestConsole(t *testing.T) {
	long := strings.Repeat("0123456789abcdef\n", 40)
	cases := []struct {
		name    string
		stream  string
		id      uint64
		wantOK  bool
		wantRC  int
		wantOut string
		wantErr string
	}{
		{name: "plain", stream: frame(1, 0, "hello\n"), id: 1, wantOK: true, wantOut: "hello\n"},
		{name: "empty output, failing", stream: frame(2, 3, ""), id: 2, wantOK: true, wantRC: 3},
		{name: "multi-line output", stream: frame(3, 0, long), id: 3, wantOK: true, wantOut: long},
		{
			name:   "kernel message between base64 lines is dropped",
			stream: strings.Replace(frame(4, 0, long), "\r\n", "\r\n[   12.345678] random: crng init done\r\n", 2),
			id:     4, wantOK: true, wantOut: long,
		},
		{
			name:   "marker after text without newline",
			stream: "[  1.0] partial line" + frame(5, 1, "x"),
			id:     5, wantOK: true, wantRC: 1, wantOut: "x",
		},
		{
			name: "a lost line is caught by the length",
			stream: func() string {
				f := strings.Split(frame(6, 0, long), "\r\n")
				return strings.Join(append(f[:2], f[3:]...), "\r\n")
			}(),
			id: 6, wantOK: true, wantErr: "want 680",
		},
		{name: "done of another frame is ignored", stream: "__VMNET_BEGIN__ 7\r\naGk=\r\n__VMNET_DONE__ 8 0 2\r\n", id: 7},
		{name: "unterminated frame", stream: "__VMNET_BEGIN__ 9\r\naGk=\r\n", id: 9},
		{
			name:   "restarted frame keeps the last",
			stream: "__VMNET_BEGIN__ 10\r\nAAAA\r\n" + frame(10, 0, "ok"),
			id:     10, wantOK: true, wantOut: "ok",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newConsole()
			c.feed(strings.NewReader(tc.stream))
			r, ok := c.take(tc.id)
			if ok != tc.wantOK {
				t.Fatalf("take(%d): got ok %v, want %v", tc.id, ok, tc.wantOK)
			}
			if !ok {
				return
			}
			if tc.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) {
					t.Fatalf("result error: got %v, want one containing %q", r.err, tc.wantErr)
				}
				return
			}
			if r.err != nil || r.rc != tc.wantRC || string(r.output) != tc.wantOut {
				t.Errorf("result: got rc %d output %q err %v, want rc %d output %q", r.rc, r.output, r.err, tc.wantRC, tc.wantOut)
			}
		})
	}
}

func TestConsoleBoot(t *testing.T) {
	c := newConsole()
	c.feed(strings.NewReader("[    0.000000] Linux version 6.1.0\r\n" +
		"__VMNET_INIT_ERROR__ insmod virtio_net\r\n" +
		"__VMNET_READY__ 4.21\r\n" +
		"__VMNET_READY__ 9.99\r\n"))
	select {
	case <-c.ready:
	default:
		t.Fatal("ready: not signalled")
	}
	_, uptime, errs := c.bootInfo()
	if uptime != "4.21" {
		t.Errorf("uptime: got %q, want the first READY's %q", uptime, "4.21")
	}
	if len(errs) != 1 || errs[0] != "insmod virtio_net" {
		t.Errorf("init errors: got %q, want [insmod virtio_net]", errs)
	}
}

func TestConsoleTakeDropsStaleResults(t *testing.T) {
	c := newConsole()
	c.feed(strings.NewReader(frame(1, 0, "old") + frame(2, 0, "new")))
	if r, ok := c.take(2); !ok || string(r.output) != "new" {
		t.Fatalf("take(2): got %q %v, want \"new\" true", r.output, ok)
	}
	if _, ok := c.take(1); ok {
		t.Errorf("take(1) after take(2): got a result, want it dropped")
	}
}

func TestCommandLine(t *testing.T) {
	script := "echo 'a b' \"$HOME\"\nexit 3"
	got := commandLine(42, 7, script)
	f := strings.Fields(got)
	if !strings.HasSuffix(got, "\n") || strings.Count(got, "\n") != 1 || len(f) != 4 {
		t.Fatalf("commandLine: got %q, want one line of 4 fields", got)
	}
	if f[0] != markCmd || f[1] != "42" || f[2] != "7" {
		t.Errorf("commandLine fields: got %q, want %s 42 7 ...", f[:3], markCmd)
	}
	if dec, err := base64.StdEncoding.DecodeString(f[3]); err != nil || string(dec) != script {
		t.Errorf("commandLine script: got %q (%v), want %q", dec, err, script)
	}
}

func TestPrefixWriter(t *testing.T) {
	var b strings.Builder
	p := &prefixWriter{prefix: "[qemu] ", w: &b}
	for _, s := range []string{"one\ntw", "o\n", "", "three"} {
		if _, err := p.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if want := "[qemu] one\n[qemu] two\n[qemu] three"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

func TestLogWriterKeepsTail(t *testing.T) {
	l := &logWriter{max: 8}
	for _, s := range []string{"abcdef", "ghijkl"} {
		if _, err := l.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if got := l.last(100); got != "efghijkl" {
		t.Errorf("last(100): got %q, want %q", got, "efghijkl")
	}
	if got := l.last(3); got != "jkl" {
		t.Errorf("last(3): got %q, want %q", got, "jkl")
	}
}
