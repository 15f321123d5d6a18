package fdpass

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// FuzzParseRequest: no panic; every error matches ErrMalformed; an
// accepted request is valid and survives Encode and ParseRequest
// unchanged.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"vmnet-fds/1 name=vm0 queues=1",
		"vmnet-fds/1 name=vm%d queues=4 bridge=br0 vnet-hdr=12\n",
		"vmnet-fds/1 name=a queues=01",
		"vmnet-fds/1 name=a queues=1 queues=1",
		"vmnet-fds/1 name=../../etc queues=1",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		r, err := ParseRequest(msg)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%q: error %v does not match ErrMalformed", msg, err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("%q: accepted %+v that does not validate: %v", msg, r, err)
		}
		if r.Queues < 1 || r.Queues > MaxFiles {
			t.Fatalf("%q: accepted queues %d", msg, r.Queues)
		}
		b, err := r.Encode()
		if err != nil {
			t.Fatalf("%q: accepted %+v that does not encode: %v", msg, r, err)
		}
		again, err := ParseRequest(b)
		if err != nil || again != r {
			t.Fatalf("%q: round trip gave %+v, %v; want %+v", msg, again, err, r)
		}
	})
}

// FuzzParseReply: no panic; errors match ErrMalformed; a grant names a
// concrete interface and a sane count, a refusal is printable.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		"ok name=vm0 queues=2 vnet-hdr=12",
		"error access denied",
		"ok name=vm%d queues=2 vnet-hdr=12",
		"error \x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		r, err := ParseReply(msg)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%q: error %v does not match ErrMalformed", msg, err)
			}
			return
		}
		if r.Err != "" {
			if !printable(r.Err, true) {
				t.Fatalf("%q: refusal %q is not printable", msg, r.Err)
			}
			return
		}
		if r.Queues < 1 || r.Queues > MaxFiles || r.Name == "" {
			t.Fatalf("%q: accepted %+v", msg, r)
		}
	})
}

// FuzzServeConn drives the whole server side with arbitrary bytes and a
// number of descriptors attached: whatever arrives, the reply parses,
// files come only with a grant and only as many as asked for, the
// handler sees only valid requests, and no descriptor is left open.
func FuzzServeConn(f *testing.F) {
	for _, s := range []struct {
		msg   string
		files uint8
	}{
		{"vmnet-fds/1 name=vm%d queues=3", 0},
		{"vmnet-fds/1 name=denied queues=1", 0},
		{"vmnet-fds/1 name=wrongcount queues=2", 0},
		{"vmnet-fds/1 name=vm0 queues=1", 2},
		{"", 1},
	} {
		f.Add([]byte(s.msg), s.files)
	}
	var calls atomic.Int32
	h := fakeHandler(f, &calls)
	checked := func(ctx context.Context, p Peer, req Request) (Grant, error) {
		if err := req.Validate(); err != nil {
			panic("handler got an invalid request: " + err.Error())
		}
		return h(ctx, p, req)
	}
	f.Fuzz(func(t *testing.T, msg []byte, nfiles uint8) {
		if len(msg) == 0 {
			// A zero-length message reads as the client leaving.
			msg = []byte{0}
		}
		if len(msg) > 2*MaxMessage {
			msg = msg[:2*MaxMessage]
		}
		a, b := socketPair(t)
		before := testutil.OpenFds(t)
		files := makePipes(int(nfiles % 8))
		err := Send(a, msg, files)
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			t.Skip("message not sendable:", err)
		}
		done := make(chan struct{})
		var serveErr error
		go func() {
			defer close(done)
			serveErr = ServeConn(context.Background(), b, checked, ServerOptions{})
		}()
		buf := make([]byte, MaxMessage+1)
		n, got, err := Recv(a, buf, MaxFiles)
		<-done
		if err != nil {
			t.Fatalf("%q: read reply: %v", msg, err)
		}
		for _, f := range got {
			f.Close()
		}
		r, err := ParseReply(buf[:n])
		if err != nil {
			// Seen once in CI, not reproduced: say what the server
			// thought it did.
			t.Fatalf("%q with %d files: reply %q: %v (ServeConn returned %v)", msg, nfiles%8, buf[:n], err, serveErr)
		}
		if r.Err != "" && len(got) != 0 {
			t.Fatalf("%q: refusal came with %d files", msg, len(got))
		}
		if r.Err == "" {
			req, err := ParseRequest(msg)
			if err != nil || nfiles%8 != 0 {
				t.Fatalf("%q with %d files: granted a request that should be refused", msg, nfiles%8)
			}
			if len(got) != req.Queues {
				t.Fatalf("%q: got %d files for %d queues", msg, len(got), req.Queues)
			}
		}
		a.Close()
		b.Close()
		if after := testutil.OpenFds(t); after != before-2 {
			t.Fatalf("%q: open fds: got %d after, want %d", msg, after, before-2)
		}
	})
}
