package vhostuser

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"net"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	istats "github.com/vmnet-dev/vmnet/internal/stats"
)

// DefaultMaxMemSlots is the GET_MAX_MEM_SLOTS answer when Options.MaxMemSlots is zero.
const DefaultMaxMemSlots = 32

// ErrBusy is returned when a Server is asked to serve while it already serves.
var ErrBusy = errors.New("server already serving a front-end")

// Options configure a Server. The zero value is usable.
type Options struct {
	// Logger receives the server's logs under the name "vhostuser"; nil discards them.
	Logger hclog.Logger
	// MaxMemSlots is how many memory regions the front-end may add with ADD_MEM_REG, and the
	// answer to GET_MAX_MEM_SLOTS. Zero means DefaultMaxMemSlots.
	MaxMemSlots int
	// MaxMemBytes bounds the guest memory a front-end can have mapped at once, the sum of
	// its regions' mappings (each rounded to whole pages, huge pages on hugetlbfs). A
	// memory table or region that would go past it is refused. Zero means
	// DefaultMaxMemBytes.
	MaxMemBytes uint64
	// FirstMessageTimeout closes a connection that sends nothing for this long after it is
	// served. Zero means DefaultFirstMessageTimeout.
	FirstMessageTimeout time.Duration
	// MessageTimeout closes a connection whose message is not complete this long after its
	// first byte arrived. Zero means DefaultMessageTimeout.
	MessageTimeout time.Duration
	// ReplyTimeout closes a connection whose reply cannot be written for this long: the
	// front-end stopped reading. Zero means DefaultReplyTimeout.
	ReplyTimeout time.Duration
	// RetryMin and RetryMax bound the delay between Dial's connection attempts, which doubles
	// from RetryMin up to RetryMax. Zero means 50ms and 2s.
	RetryMin, RetryMax time.Duration
}

// Server speaks the back-end side of vhost-user for one Device, to one front-end at a
// time.
type Server struct {
	backend     Device
	log         hclog.Logger
	maxMemSlots int
	maxMemBytes uint64
	timeouts    timeouts
	retryMin    time.Duration
	retryMax    time.Duration
	active      atomic.Bool
	stats       stats
}

// timeouts are the time limits of a connection.
type timeouts struct {
	firstMessage, message, reply time.Duration
}

// NewServer returns a server for b.
func NewServer(b Device, opts Options) *Server {
	s := &Server{
		backend:     b,
		log:         opts.Logger,
		maxMemSlots: opts.MaxMemSlots,
		maxMemBytes: opts.MaxMemBytes,
		timeouts:    timeouts{firstMessage: opts.FirstMessageTimeout, message: opts.MessageTimeout, reply: opts.ReplyTimeout},
		retryMin:    opts.RetryMin,
		retryMax:    opts.RetryMax,
	}
	if s.log == nil {
		s.log = hclog.NewNullLogger()
	}
	s.log = s.log.Named("vhostuser")
	if s.maxMemSlots <= 0 {
		s.maxMemSlots = DefaultMaxMemSlots
	}
	if s.maxMemBytes == 0 {
		s.maxMemBytes = DefaultMaxMemBytes
	}
	for _, d := range []struct {
		t   *time.Duration
		def time.Duration
	}{
		{&s.timeouts.firstMessage, DefaultFirstMessageTimeout},
		{&s.timeouts.message, DefaultMessageTimeout},
		{&s.timeouts.reply, DefaultReplyTimeout},
	} {
		if *d.t <= 0 {
			*d.t = d.def
		}
	}
	if s.retryMin <= 0 {
		s.retryMin = 50 * time.Millisecond
	}
	if s.retryMax < s.retryMin {
		s.retryMax = max(2*time.Second, s.retryMin)
	}
	return s
}

// Serve listens on the unix socket path and serves the front-ends that connect, one after
// the other: when one goes away its device state is torn down and the next is accepted. A
// socket file left at path by a dead process is replaced; any other file is an error. The
// socket file is removed when Serve returns, which is when ctx is done (nil) or listening
// fails.
func (s *Server) Serve(ctx context.Context, path string) error {
	if !s.active.CompareAndSwap(false, true) {
		return fmt.Errorf("serve on %s: %w", path, ErrBusy)
	}
	defer s.active.Store(false)
	l, err := listen(path)
	if err != nil {
		return err
	}
	defer l.Close()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	s.log.Info("listening", "path", path)
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on %s: %w", path, err)
			}
			// Out of descriptors and the like: the next attempt may succeed.
			s.log.Error("accept front-end", "path", path, "error", err)
			if !sleep(ctx, s.retryMin) {
				return nil
			}
			continue
		}
		s.serveConn(ctx, c)
		if ctx.Err() != nil {
			return nil
		}
	}
}

// listen listens on path, first removing a socket file nobody listens on.
func listen(path string) (*net.UnixListener, error) {
	addr := &net.UnixAddr{Name: path, Net: "unix"}
	l, err := net.ListenUnix("unix", addr)
	if err == nil || !errors.Is(err, unix.EADDRINUSE) {
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", path, err)
		}
		return l, nil
	}
	fi, serr := os.Lstat(path)
	if serr != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return nil, fmt.Errorf("listen on %s: exists and is not a socket (mode %s): %w", path, fi.Mode(), err)
	}
	if c, derr := net.DialTimeout("unix", path, time.Second); derr == nil {
		c.Close()
		return nil, fmt.Errorf("listen on %s: another process listens there: %w", path, err)
	}
	if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, rerr)
	}
	l, err = net.ListenUnix("unix", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}

// Dial connects to a front-end listening on the unix socket path (QEMU's server=on) and
// serves it; when it goes away, or cannot be reached, Dial tries again, the delay doubling
// from RetryMin to RetryMax, until ctx is done. It returns nil then.
func (s *Server) Dial(ctx context.Context, path string) error {
	if !s.active.CompareAndSwap(false, true) {
		return fmt.Errorf("dial %s: %w", path, ErrBusy)
	}
	defer s.active.Store(false)
	delay := s.retryMin
	quiet := false
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// The first failure of a series says so; the rest would only repeat it.
			if quiet {
				s.log.Debug("connect to front-end", "path", path, "error", err, "retry_in", delay)
			} else {
				s.log.Info("connect to front-end, will retry", "path", path, "error", err, "retry_in", delay)
				quiet = true
			}
			if !sleep(ctx, delay) {
				return nil
			}
			delay = min(2*delay, s.retryMax)
			continue
		}
		delay, quiet = s.retryMin, false
		s.serveConn(ctx, c.(*net.UnixConn))
		if !sleep(ctx, s.retryMin) {
			return nil
		}
	}
}

// ServeConn serves one front-end on c, which it closes before it returns. It returns nil
// when the front-end disconnects or ctx is done, and the reason otherwise: a malformed
// message, a failure the front-end could not be told of, or a broken connection. In every
// case the rings are stopped, the device is reset, and every descriptor and mapping of the
// connection is released.
func (s *Server) ServeConn(ctx context.Context, c *net.UnixConn) error {
	if !s.active.CompareAndSwap(false, true) {
		c.Close()
		return fmt.Errorf("serve connection: %w", ErrBusy)
	}
	defer s.active.Store(false)
	return s.serveConn(ctx, c)
}

func (s *Server) serveConn(ctx context.Context, uc *net.UnixConn) error {
	s.stats.sessions.Add(1)
	stop := context.AfterFunc(ctx, func() { uc.Close() })
	defer stop()
	c, err := newConn(uc, s.timeouts)
	if err != nil {
		uc.Close()
		s.stats.closed.Add(1)
		s.log.Error("front-end connection closed", "error", err)
		return err
	}
	defer c.close()
	sess, err := newSession(s, c)
	if err != nil {
		s.stats.closed.Add(1)
		s.log.Error("front-end connection closed", "error", err)
		return err
	}
	s.log.Info("front-end connected")
	err = sess.run()
	sess.teardown()
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		s.stats.closed.Add(1)
		s.log.Error("front-end connection closed", "error", err)
		return fmt.Errorf("serve front-end: %w", err)
	}
	s.log.Info("front-end disconnected")
	return nil
}

// sleep waits d or until ctx is done; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// serverCounter names one of a Server's own counters, kept as fields of
// Stats; serverTable says what each counts.
type serverCounter int

const (
	ctrSessions serverCounter = iota
	ctrClosed
	ctrRejected
	ctrUnknown

	numServerCounters
)

// serverTable declares the server's own counters once: their names in
// Stats' text and JSON and in a metrics collector. Requests by type and
// refusals by limit have tables of their own (requestNames, limitTable).
var serverTable = istats.Table{
	ctrSessions: {Name: "sessions", Help: "front-end connections served"},
	ctrClosed:   {Name: "closed_sessions", Help: "front-end connections the server closed: a malformed message, a limit, a failure the front-end could not be told of, a broken connection", Drop: true},
	ctrRejected: {Name: "rejected", Help: "vhost-user requests refused: malformed, not supported, over a limit, or failed", Drop: true},
	ctrUnknown:  {Name: "unknown", Help: "vhost-user requests of a type the server does not know", Drop: true},
}

// Stats counts what a Server has seen since it was made.
type Stats struct {
	// Sessions is the number of front-end connections served, and Closed
	// those of them the server closed for an error (the front-end hanging
	// up, or the server stopping, is none).
	Sessions, Closed uint64
	// Messages counts received requests by type; requests of unknown types are in Unknown.
	Messages map[Request]uint64
	Unknown  uint64
	// Rejected counts requests that were malformed, not supported, or failed.
	Rejected uint64
	// Limited counts, by Limit, the connections closed and the requests refused for going
	// past a per-connection limit. A refused request is in Rejected too.
	Limited LimitStats
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Sessions: s.stats.sessions.Load(),
		Closed:   s.stats.closed.Load(),
		Messages: make(map[Request]uint64),
		Unknown:  s.stats.unknown.Load(),
		Rejected: s.stats.rejected.Load(),
		Limited:  s.stats.limited.snapshot(),
	}
	for i := range s.stats.messages {
		if n := s.stats.messages[i].Load(); n > 0 {
			st.Messages[Request(i)] = n
		}
	}
	return st
}

// counters are the fields serverTable declares, in its order.
func (s *Stats) counters() [numServerCounters]*uint64 {
	return [...]*uint64{ctrSessions: &s.Sessions, ctrClosed: &s.Closed, ctrRejected: &s.Rejected, ctrUnknown: &s.Unknown}
}

// All yields the server's own counters (sessions, closed_sessions,
// rejected, unknown) with their declarations, in table order; Messages
// and Limited are counted by request and by limit.
func (s Stats) All() iter.Seq2[istats.Desc, uint64] {
	var v [numServerCounters]uint64
	for i, p := range s.counters() {
		v[i] = *p
	}
	return serverTable.All(v[:])
}

// String prints the counters as name=value pairs, then the requests by
// name and the refusals by limit that are not zero: "sessions=1
// rejected=0 unknown=0 messages: [GET_FEATURES=1 ...] limited: [...]".
func (s Stats) String() string {
	var v [numServerCounters]uint64
	for i, p := range s.counters() {
		v[i] = *p
	}
	b := serverTable.AppendText(nil, v[:], nil)
	reqs := make([]string, 0, len(s.Messages))
	for r, n := range s.Messages {
		reqs = append(reqs, fmt.Sprintf("%v=%d", r, n))
	}
	slices.Sort(reqs)
	b = fmt.Appendf(b, " messages: %v", reqs)
	if s.Limited != (LimitStats{}) {
		b = append(b, " limited: ["...)
		b = limitTable.AppendText(b, s.Limited[:], func(i int) bool { return s.Limited[i] != 0 })
		b = append(b, ']')
	}
	return string(b)
}

// MarshalJSON writes the counters as one object: the server's own by
// name, then "messages" (request name to count, the requests received)
// and "limited" (LimitStats).
func (s Stats) MarshalJSON() ([]byte, error) {
	var v [numServerCounters]uint64
	for i, p := range s.counters() {
		v[i] = *p
	}
	b := serverTable.AppendJSON(nil, v[:])
	msgs, err := json.Marshal(s.Messages) // names by Request.MarshalText, sorted
	if err != nil {
		return nil, err
	}
	b = append(b[:len(b)-1], `,"messages":`...)
	b = append(b, msgs...)
	b = append(b, `,"limited":`...)
	b = limitTable.AppendJSON(b, s.Limited[:])
	return append(b, '}'), nil
}

// UnmarshalJSON reads what MarshalJSON wrote; a name no table declares is
// an error.
func (s *Stats) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("parse vhost-user counters: %w", err)
	}
	var t Stats
	fields := t.counters()
	for name, raw := range m {
		var err error
		switch name {
		case "messages":
			err = json.Unmarshal(raw, &t.Messages)
		case "limited":
			err = json.Unmarshal(raw, &t.Limited)
		default:
			i, ok := serverTable.Index(name)
			if !ok {
				return fmt.Errorf("parse vhost-user counters: unknown name %q", name)
			}
			err = json.Unmarshal(raw, fields[i])
		}
		if err != nil {
			return fmt.Errorf("parse vhost-user counters: %s: %w", name, err)
		}
	}
	if t.Messages == nil {
		t.Messages = make(map[Request]uint64)
	}
	*s = t
	return nil
}

type stats struct {
	sessions atomic.Uint64
	closed   atomic.Uint64
	messages [maxRequest + 1]atomic.Uint64
	unknown  atomic.Uint64
	rejected atomic.Uint64
	limited  limitCounters
	// logged has a bit per request type whose refusal was logged; types past 63 share bit 63.
	logged atomic.Uint64
}

func (st *stats) count(r Request) {
	if r <= maxRequest && requestNames[r] != "" {
		st.messages[r].Add(1)
	} else {
		st.unknown.Add(1)
	}
}

// logUnsupported logs a refused request once per request type, so a front-end that probes
// or repeats cannot flood the log.
func (s *Server) logUnsupported(r Request, err error) {
	bit := uint64(1) << min(uint32(r), 63)
	if s.stats.logged.Or(bit)&bit != 0 {
		s.log.Debug("request not supported", "request", r, "error", err)
		return
	}
	s.log.Warn("request not supported (logged once per request type)", "request", r, "error", err)
}
