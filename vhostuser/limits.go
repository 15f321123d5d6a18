package vhostuser

import (
	"errors"
	"fmt"
	"iter"
	"sync/atomic"
	"time"

	istats "github.com/vmnet-dev/vmnet/internal/stats"
)

// Defaults of the Options limits. A helper often runs with more privilege than the
// front-end that connects to it and serves one front-end after another, so each bounds what
// one front-end can make it hold or wait for; a real front-end stays far inside every one.
const (
	// DefaultMaxMemBytes bounds the guest memory mapped at once: 1 TiB holds a 512 GiB guest
	// with room for hot-plugged memory. Mapping a memfd costs address space, not RAM, and a
	// sparse memfd of any size costs its sender nothing, so this is what keeps a front-end
	// from taking the helper's address space (x86-64 user space is 128 TiB; a new table is
	// mapped before the old one is unmapped, so the peak is twice this).
	DefaultMaxMemBytes = 1 << 40
	// DefaultFirstMessageTimeout is how long a new connection may say nothing. Front-ends
	// send GET_FEATURES as soon as they connect; after the first message a front-end may be
	// silent as long as it likes (a running guest's needs no message for hours).
	DefaultFirstMessageTimeout = 10 * time.Second
	// DefaultMessageTimeout is how long a message may take to arrive once its first byte
	// has. Front-ends write a whole message with one sendmsg.
	DefaultMessageTimeout = 5 * time.Second
	// DefaultReplyTimeout is how long a reply may wait for room in the socket. Replies are
	// at most a few hundred bytes and front-ends wait for them, so only a front-end that
	// stopped reading, with hundreds of replies unread, waits this long.
	DefaultReplyTimeout = 5 * time.Second
)

// ErrLimit is wrapped by every error of a front-end going past one of the limits (see
// LimitError).
var ErrLimit = errors.New("front-end over a per-connection limit")

// Limit names one bound on what a front-end can make the server hold or wait for. It
// indexes LimitStats; limitTable says what each counts.
type Limit int

// The limits. The time limits and the framing limits (payload, descriptors) end the
// connection; the memory limits refuse the request, as any failed request is (with a
// failed ack when the front-end asked for one, by closing the connection otherwise).
const (
	// LimitFirstMessage is Options.FirstMessageTimeout.
	LimitFirstMessage Limit = iota
	// LimitMessageTime is Options.MessageTimeout.
	LimitMessageTime
	// LimitReplyTime is Options.ReplyTimeout.
	LimitReplyTime
	// LimitPayload is MaxPayloadSize, the wire format's bound (the largest payload the
	// package acts on); the connection ends, as its framing cannot be trusted.
	LimitPayload
	// LimitFDs is MaxFDs descriptors on one message (SET_MEM_TABLE's eight); the
	// connection ends and the descriptors are closed.
	LimitFDs
	// LimitMemBytes is Options.MaxMemBytes.
	LimitMemBytes
	// LimitMemSlots is Options.MaxMemSlots.
	LimitMemSlots

	numLimits
)

// limitTable declares the counters of refusals by limit once.
var limitTable = istats.Table{
	LimitFirstMessage: {Name: "first_message_time", Help: "connections closed for saying nothing within the first-message timeout", Drop: true},
	LimitMessageTime:  {Name: "message_time", Help: "connections closed for a message not complete within the message timeout", Drop: true},
	LimitReplyTime:    {Name: "reply_time", Help: "connections closed for a reply the front-end did not read within the reply timeout", Drop: true},
	LimitPayload:      {Name: "payload_bytes", Help: "connections closed for a message whose payload is over the wire format's bound", Drop: true},
	LimitFDs:          {Name: "message_fds", Help: "connections closed for a message carrying more file descriptors than any request takes", Drop: true},
	LimitMemBytes:     {Name: "mem_bytes", Help: "memory tables and regions refused for mapping more guest memory than the limit", Drop: true},
	LimitMemSlots:     {Name: "mem_slots", Help: "memory regions refused for having every memory slot in use", Drop: true},
}

// String returns the limit's counter name, e.g. "mem_bytes".
func (l Limit) String() string {
	if l >= 0 && l < numLimits {
		return limitTable[l].Name
	}
	return fmt.Sprintf("Limit(%d)", int(l))
}

// LimitError is a front-end going past a limit. It wraps ErrLimit; the framing limits
// (LimitPayload, LimitFDs) are wrapped in an ErrMalformed error too.
type LimitError struct {
	Limit Limit
	// Request is the request being read, answered or acted on; 0 when a timeout struck
	// before its header was complete.
	Request Request
	// Got and Max are in the limit's unit: bytes, descriptors or regions; for the time
	// limits Max is the timeout in nanoseconds and Got is 0.
	Got, Max uint64
}

func (e *LimitError) Error() string {
	req := "message"
	if e.Request != 0 {
		req = e.Request.String()
	}
	switch e.Limit {
	case LimitFirstMessage:
		return fmt.Sprintf("no message within %v of connecting", time.Duration(e.Max))
	case LimitMessageTime:
		return fmt.Sprintf("%s not complete %v after its first byte", req, time.Duration(e.Max))
	case LimitReplyTime:
		return fmt.Sprintf("%s reply not taken by the front-end within %v", req, time.Duration(e.Max))
	case LimitPayload:
		return fmt.Sprintf("%s payload is %d bytes, limit %d", req, e.Got, e.Max)
	case LimitFDs:
		return fmt.Sprintf("%s carries at least %d file descriptors, limit %d", req, e.Got, e.Max)
	case LimitMemBytes:
		return fmt.Sprintf("%s would map %d bytes of guest memory, limit %d", req, e.Got, e.Max)
	case LimitMemSlots:
		return fmt.Sprintf("%s would make %d memory regions, limit %d", req, e.Got, e.Max)
	}
	return fmt.Sprintf("%s over %v: %d, limit %d", req, e.Limit, e.Got, e.Max)
}

// Is reports whether target is ErrLimit.
func (e *LimitError) Is(target error) bool { return target == ErrLimit }

// overLimit returns the error of a framing limit: malformed, and a LimitError.
func overLimit(l Limit, req Request, got, limit uint64) error {
	return fmt.Errorf("%w: %w", ErrMalformed, &LimitError{Limit: l, Request: req, Got: got, Max: limit})
}

// timeLimit returns the LimitError of a timeout.
func timeLimit(l Limit, req Request, d time.Duration) *LimitError {
	return &LimitError{Limit: l, Request: req, Max: uint64(d)}
}

// LimitStats counts, by Limit, the connections closed and the requests refused for going
// past each limit.
type LimitStats [numLimits]uint64

// String prints the counters as name=value pairs.
func (s LimitStats) String() string { return string(limitTable.AppendText(nil, s[:], nil)) }

// MarshalJSON writes every counter as one object of name to value.
func (s LimitStats) MarshalJSON() ([]byte, error) { return limitTable.AppendJSON(nil, s[:]), nil }

// UnmarshalJSON reads what MarshalJSON wrote; counters it leaves out are
// zero, a name the table does not declare is an error.
func (s *LimitStats) UnmarshalJSON(b []byte) error {
	var t LimitStats
	if err := limitTable.ParseJSON(b, t[:]); err != nil {
		return fmt.Errorf("parse limit counters: %w", err)
	}
	*s = t
	return nil
}

// All yields each counter's declaration with its value, in Limit order: what a metrics
// collector exports.
func (s LimitStats) All() iter.Seq2[istats.Desc, uint64] { return limitTable.All(s[:]) }

type limitCounters [numLimits]atomic.Uint64

func (c *limitCounters) snapshot() LimitStats {
	var s LimitStats
	for l := range c {
		s[l] = c[l].Load()
	}
	return s
}
