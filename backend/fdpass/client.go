package fdpass

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/vmnet-dev/vmnet/backend/tap"
)

// TAP is what a serve-fds server handed over: one file per queue pair,
// in queue order. The caller owns Files and closes them; the device
// disappears with the last of them unless the server made it persistent.
type TAP struct {
	Name    string // as the kernel picked it
	VnetHdr int    // virtio-net header size of every file
	Files   []*os.File
}

// Close closes every file of the TAP.
func (t *TAP) Close() error {
	var first error
	for _, f := range t.Files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	t.Files = nil
	return first
}

// Get connects to the serve-fds server listening on the unix socket path
// (SOCK_SEQPACKET), asks for req and returns the TAP it granted. A
// refusal is a *RefusedError (errors.Is(err, ErrRefused)) carrying the
// server's reason. ctx bounds the whole exchange. On any error no file is
// left open.
func Get(ctx context.Context, path string, req Request) (*TAP, error) {
	msg, err := req.Encode()
	if err != nil {
		return nil, fmt.Errorf("serve-fds request: %w", err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("connect to serve-fds socket %s: %w", path, err)
	}
	c := conn.(*net.UnixConn)
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	// Cancellation wakes a blocked read or write.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := c.Write(msg); err != nil {
		return nil, fmt.Errorf("send serve-fds request to %s: %w", path, ctxErr(ctx, err))
	}
	buf := make([]byte, MaxMessage+1)
	n, files, err := Recv(c, buf, req.Queues)
	if err != nil {
		return nil, fmt.Errorf("read serve-fds reply from %s: %w", path, ctxErr(ctx, err))
	}
	t := &TAP{Files: files}
	fail := func(err error) (*TAP, error) {
		t.Close()
		return nil, err
	}
	if n == 0 {
		return fail(fmt.Errorf("read serve-fds reply from %s: server closed the connection without a reply", path))
	}
	reply, err := ParseReply(buf[:n])
	if err != nil {
		return fail(fmt.Errorf("read serve-fds reply from %s: %w", path, err))
	}
	if reply.Err != "" {
		return fail(&RefusedError{Reason: reply.Err})
	}
	if reply.Queues != req.Queues || len(files) != req.Queues {
		return fail(fmt.Errorf("read serve-fds reply from %s: %d queues announced and %d files attached, asked for %d: %w",
			path, reply.Queues, len(files), req.Queues, ErrMalformed))
	}
	if !tap.IsTemplate(req.Name) && reply.Name != req.Name {
		return fail(fmt.Errorf("read serve-fds reply from %s: got TAP %q, asked for %q: %w", path, reply.Name, req.Name, ErrMalformed))
	}
	if want := req.VnetHdr; want != 0 && reply.VnetHdr != want {
		return fail(fmt.Errorf("read serve-fds reply from %s: got vnet header size %d, asked for %d: %w", path, reply.VnetHdr, want, ErrMalformed))
	}
	t.Name, t.VnetHdr = reply.Name, reply.VnetHdr
	return t, nil
}

// ctxErr prefers the context's error to the deadline error it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}
