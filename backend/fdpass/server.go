package fdpass

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/virtio"
)

// Handler decides a request from peer and, when it grants it, makes the
// TAP. A returned error is a refusal: its text is sent to the client, so
// it should say why without saying more than the client may know.
type Handler func(ctx context.Context, peer Peer, req Request) (Grant, error)

// Grant is a TAP a Handler made for a client: one file per requested
// queue, in order. ServeConn sends the files and then closes them, sent
// or not.
type Grant struct {
	Name    string
	VnetHdr int
	Files   []*os.File
}

func (g Grant) close() {
	for _, f := range g.Files {
		f.Close()
	}
}

// ServerOptions tune Serve and ServeConn. The zero value gives each
// connection 10 seconds and serves 16 at a time without logging.
type ServerOptions struct {
	// Timeout bounds one connection, from accept to the reply; 0 means 10s.
	// A client that connects and says nothing cannot hold a slot longer.
	Timeout time.Duration
	// MaxConns is how many connections are served at once; 0 means 16.
	// Further clients wait in the listen backlog.
	MaxConns int
	// Logger receives one line per request; nil means no logging.
	Logger hclog.Logger
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 16
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	return o
}

// Serve accepts connections on l until ctx is done, answering each with
// ServeConn in its own goroutine, then closes l, waits for the
// connections in flight, and returns nil. An accept error other than a
// transient one is returned.
func Serve(ctx context.Context, l *net.UnixListener, h Handler, opts ServerOptions) error {
	opts = opts.withDefaults()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, opts.MaxConns)
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		c, err := l.AcceptUnix()
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTransient(err) {
				// Out of descriptors or memory: wait, do not spin.
				opts.Logger.Warn("accept failed, retrying", "error", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept serve-fds connection: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			_ = ServeConn(ctx, c, h, opts)
		}()
	}
}

// ServeConn answers one request on c and closes c. It reads the peer's
// credentials, reads one request (a request carrying descriptors is
// refused and they are closed), calls h, and sends the reply with the
// granted files. It returns why the client was refused or the reply could
// not be sent, for the caller's log; the client has been told already.
func ServeConn(ctx context.Context, c *net.UnixConn, h Handler, opts ServerOptions) error {
	opts = opts.withDefaults()
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	_ = c.SetDeadline(time.Now().Add(opts.Timeout))
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	log := opts.Logger
	refuse := func(err error) error {
		if serr := send(c, Reply{Err: err.Error()}, nil); serr != nil {
			log.Debug("cannot send refusal", "error", serr)
		}
		return err
	}
	peer, err := PeerOf(c)
	if err != nil {
		log.Warn("refused", "error", err)
		return refuse(err)
	}
	log = log.With("uid", peer.UID, "gid", peer.GID, "pid", peer.PID)
	buf := make([]byte, MaxMessage+1)
	n, files, err := Recv(c, buf, 0)
	if err != nil {
		log.Warn("refused", "error", err)
		return refuse(fmt.Errorf("read request: %w", err))
	}
	if len(files) > 0 { // unreachable with a limit of 0; kept for the invariant
		for _, f := range files {
			f.Close()
		}
	}
	if n == 0 {
		log.Debug("client left without a request")
		return nil
	}
	req, err := ParseRequest(buf[:n])
	if err != nil {
		log.Warn("refused", "error", err)
		return refuse(err)
	}
	log = log.With("tap", req.Name, "queues", req.Queues, "bridge", req.Bridge)
	g, err := h(ctx, peer, req)
	if err != nil {
		g.close()
		log.Warn("refused", "error", err)
		return refuse(err)
	}
	defer g.close()
	if err := checkGrant(req, g); err != nil {
		log.Error("handler returned a bad grant", "error", err)
		return refuse(errors.New("internal error: the server made a TAP that does not match the request"))
	}
	reply := Reply{Name: g.Name, Queues: len(g.Files), VnetHdr: g.VnetHdr}
	if err := send(c, reply, g.Files); err != nil {
		log.Warn("cannot send reply", "error", err)
		return err
	}
	log.Info("granted", "tap", g.Name)
	return nil
}

// checkGrant makes sure a handler's grant is what the client asked for,
// so a buggy handler cannot hand out the wrong number of files.
func checkGrant(req Request, g Grant) error {
	if len(g.Files) != req.Queues {
		return fmt.Errorf("%d files for %d queues", len(g.Files), req.Queues)
	}
	if err := tap.ValidateName(g.Name, false); err != nil {
		return err
	}
	if !tap.IsTemplate(req.Name) && g.Name != req.Name {
		return fmt.Errorf("TAP %q for a request for %q", g.Name, req.Name)
	}
	want := req.VnetHdr
	if want == 0 {
		want = virtio.HdrLenV1
	}
	if g.VnetHdr != want {
		return fmt.Errorf("vnet header size %d, asked for %d", g.VnetHdr, want)
	}
	return nil
}

func send(c *net.UnixConn, r Reply, files []*os.File) error {
	return Send(c, r.Encode(), files)
}
