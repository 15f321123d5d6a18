package fdpass

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// fakeHandler grants pipes instead of TAP queues, refuses the name
// "denied", and misbehaves on "wrongcount" to exercise checkGrant.
func fakeHandler(t testing.TB, calls *atomic.Int32) Handler {
	return func(ctx context.Context, peer Peer, req Request) (Grant, error) {
		calls.Add(1)
		switch req.Name {
		case "denied":
			return Grant{}, errors.New("access denied: uid " + itoa(peer.UID) + " may not use \"denied\"")
		case "wrongcount":
			return Grant{Name: req.Name, VnetHdr: 12, Files: makePipes(req.Queues + 1)}, nil
		}
		name := strings.Replace(req.Name, "%d", "7", 1)
		hdr := req.VnetHdr
		if hdr == 0 {
			hdr = 12
		}
		return Grant{Name: name, VnetHdr: hdr, Files: makePipes(req.Queues)}, nil
	}
}

func makePipes(n int) []*os.File {
	var files []*os.File
	for i := 0; i < n; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			panic(err)
		}
		w.Close()
		files = append(files, r)
	}
	return files
}

func itoa(u uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			return string(b[i:])
		}
	}
}

// startServer serves h on a socket in a temporary directory until the
// test ends.
func startServer(t *testing.T, h Handler, opts ServerOptions) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fds.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, h, opts) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

func TestGetGrantAndRefusal(t *testing.T) {
	var calls atomic.Int32
	path := startServer(t, fakeHandler(t, &calls), ServerOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	tap, err := Get(ctx, path, Request{Name: "vm%d", Queues: 4})
	if err != nil {
		t.Fatal(err)
	}
	if tap.Name != "vm7" || tap.VnetHdr != 12 || len(tap.Files) != 4 {
		t.Errorf("grant: got name %q vnet-hdr %d %d files, want vm7, 12, 4", tap.Name, tap.VnetHdr, len(tap.Files))
	}
	tap.Close()

	before := testutil.SettledFds(t)
	_, err = Get(ctx, path, Request{Name: "denied", Queues: 2})
	var re *RefusedError
	if !errors.As(err, &re) || !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want a *RefusedError", err)
	}
	if !strings.Contains(re.Reason, "access denied") {
		t.Errorf("refusal reason: got %q, want the handler's text", re.Reason)
	}

	_, err = Get(ctx, path, Request{Name: "wrongcount", Queues: 2})
	if !errors.As(err, &re) || !strings.Contains(re.Reason, "internal error") {
		t.Errorf("bad grant: got %v, want a refusal saying internal error", err)
	}
	testutil.WaitFds(t, before)
}

func TestServeRefusesMalformedAndFiles(t *testing.T) {
	var calls atomic.Int32
	path := startServer(t, fakeHandler(t, &calls), ServerOptions{})
	before := testutil.SettledFds(t)
	for _, tc := range []struct {
		name  string
		msg   string
		files int
		want  string
	}{
		{"garbage", "hello", 0, "version"},
		{"unknown field", "vmnet-fds/1 name=a queues=1 owner=0", 0, "unknown field"},
		{"descriptors attached", "vmnet-fds/1 name=a queues=1", 3, "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			files := makePipes(tc.files)
			if err := Send(c, []byte(tc.msg), files); err != nil {
				t.Fatal(err)
			}
			for _, f := range files {
				f.Close()
			}
			buf := make([]byte, MaxMessage+1)
			n, got, err := Recv(c, buf, MaxFiles)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 0 {
				t.Errorf("refusal came with %d files", len(got))
			}
			r, err := ParseReply(buf[:n])
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(r.Err, tc.want) {
				t.Errorf("reply: got %q, want a refusal containing %q", buf[:n], tc.want)
			}
		})
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("handler called %d times for malformed requests, want 0", n)
	}
	testutil.WaitFds(t, before)
}

func TestServeTimesOutSilentClient(t *testing.T) {
	var calls atomic.Int32
	path := startServer(t, fakeHandler(t, &calls), ServerOptions{Timeout: 200 * time.Millisecond, MaxConns: 1})
	silent, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// With one slot, this request waits until the silent client's time is up.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	tap, err := Get(ctx, path, Request{Name: "vm0", Queues: 1})
	if err != nil {
		t.Fatal(err)
	}
	tap.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second client served after %s, want about the 200ms timeout", d)
	}
}

func TestGetCreateCloseLoopLeaksNothing(t *testing.T) {
	var calls atomic.Int32
	path := startServer(t, fakeHandler(t, &calls), ServerOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The first round trip sets up the runtime's poller.
	tap, err := Get(ctx, path, Request{Name: "vm0", Queues: 1})
	if err != nil {
		t.Fatal(err)
	}
	tap.Close()
	before := testutil.SettledFds(t)
	for i := 0; i < 50; i++ {
		tap, err := Get(ctx, path, Request{Name: "vm%d", Queues: 8})
		if err != nil {
			t.Fatal(err)
		}
		tap.Close()
	}
	testutil.WaitFds(t, before)
}
