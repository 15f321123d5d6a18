package fdpass

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/virtio"
)

// The serve-fds protocol, version 1. The client sends one request, the
// server one reply, each a single line of printable ASCII in one
// SOCK_SEQPACKET message:
//
//	request:  vmnet-fds/1 name=NAME queues=N [bridge=BRIDGE] [vnet-hdr=10|12|20]
//	reply:    ok name=NAME queues=N vnet-hdr=SIZE        (N queue files attached)
//	          error REASON                               (no files)
//
// Fields are key=value, separated by one space, each key at most once, in
// any order; an unknown key is an error, so a newer client gets a clear
// refusal from an older server instead of a device without what it asked
// for. NAME may be a template with one "%d" (the reply names what the
// kernel picked). A trailing newline is allowed.

// Version is the first word of every request.
const Version = "vmnet-fds/1"

// MaxMessage is the longest request or reply, in bytes.
const MaxMessage = 1024

// ErrMalformed is matched by every error about a request or reply that
// does not follow the protocol.
var ErrMalformed = errors.New("malformed message")

// ErrRefused is matched by the error Get returns when the server answered
// with a refusal.
var ErrRefused = errors.New("refused by server")

// Request is what a client asks the server for.
type Request struct {
	// Name is the TAP's name, or a template with one "%d". Required.
	Name string
	// Queues is the number of queue pairs, one file each: 1 to MaxFiles.
	Queues int
	// Bridge, if set, names the bridge the server attaches the TAP to.
	Bridge string
	// VnetHdr is the virtio-net header size, one virtio.CheckHdrLen takes
	// (10, 12 or 20); 0 means 12.
	VnetHdr int
}

// Validate checks r the way the server does before it looks at anything
// else: names as the kernel's dev_valid_name would, counts in range.
func (r Request) Validate() error {
	if err := tap.ValidateName(r.Name, true); err != nil {
		return &protoError{msg: "name", err: err}
	}
	if r.Queues < 1 || r.Queues > MaxFiles {
		return malformed("queues %d: want 1 to %d", r.Queues, MaxFiles)
	}
	if r.Bridge != "" {
		if err := tap.ValidateName(r.Bridge, false); err != nil {
			return &protoError{msg: "bridge", err: err}
		}
	}
	if r.VnetHdr != 0 {
		if err := virtio.CheckHdrLen(r.VnetHdr); err != nil {
			return &protoError{msg: fmt.Sprintf("vnet-hdr %d", r.VnetHdr), err: err}
		}
	}
	return nil
}

// Encode renders a valid request as its line, without the newline.
func (r Request) Encode() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s name=%s queues=%d", Version, r.Name, r.Queues)
	if r.Bridge != "" {
		fmt.Fprintf(&b, " bridge=%s", r.Bridge)
	}
	if r.VnetHdr != 0 {
		fmt.Fprintf(&b, " vnet-hdr=%d", r.VnetHdr)
	}
	return []byte(b.String()), nil
}

// ParseRequest parses and validates one request message. It never
// panics; every error matches ErrMalformed and says what was wrong.
func ParseRequest(msg []byte) (Request, error) {
	words, err := splitLine(msg)
	if err != nil {
		return Request{}, err
	}
	if words[0] != Version {
		return Request{}, malformed("version %q: want %q", clip(words[0]), Version)
	}
	fields, err := parseFields(words[1:], "name", "queues", "bridge", "vnet-hdr")
	if err != nil {
		return Request{}, err
	}
	var r Request
	var ok bool
	if r.Name, ok = fields["name"]; !ok {
		return Request{}, malformed("no name")
	}
	q, ok := fields["queues"]
	if !ok {
		return Request{}, malformed("no queues")
	}
	if r.Queues, err = parseCount("queues", q); err != nil {
		return Request{}, err
	}
	r.Bridge = fields["bridge"]
	if v, ok := fields["vnet-hdr"]; ok {
		if r.VnetHdr, err = parseCount("vnet-hdr", v); err != nil {
			return Request{}, err
		}
	}
	return r, r.Validate()
}

// Reply is the server's answer. Err is empty for a grant.
type Reply struct {
	Name    string // the TAP's name as the kernel picked it
	Queues  int    // files attached
	VnetHdr int    // header size of every file
	Err     string // the refusal, for "error" replies
}

// Encode renders the reply line. Refusal text is cut to fit MaxMessage
// and anything but printable ASCII becomes '?', so a reason can neither
// break the framing nor carry terminal escapes to the client.
func (r Reply) Encode() []byte {
	if r.Err != "" {
		reason := []byte(r.Err)
		if max := MaxMessage - len("error "); len(reason) > max {
			reason = reason[:max]
		}
		for i, c := range reason {
			if c < ' ' || c > '~' {
				reason[i] = '?'
			}
		}
		return append([]byte("error "), reason...)
	}
	return fmt.Appendf(nil, "ok name=%s queues=%d vnet-hdr=%d", r.Name, r.Queues, r.VnetHdr)
}

// ParseReply parses one reply message. A refusal is returned as a Reply
// with Err set and a nil error; a malformed reply is an error matching
// ErrMalformed.
func ParseReply(msg []byte) (Reply, error) {
	if len(msg) > MaxMessage {
		return Reply{}, malformed("%d bytes, more than %d", len(msg), MaxMessage)
	}
	if rest, ok := strings.CutPrefix(string(msg), "error "); ok {
		rest = strings.TrimSuffix(rest, "\n")
		if rest == "" || !printable(rest, true) {
			return Reply{}, malformed("refusal without a printable reason")
		}
		return Reply{Err: rest}, nil
	}
	words, err := splitLine(msg)
	if err != nil {
		return Reply{}, err
	}
	if words[0] != "ok" {
		return Reply{}, malformed("reply %q: want ok or error", clip(words[0]))
	}
	fields, err := parseFields(words[1:], "name", "queues", "vnet-hdr")
	if err != nil {
		return Reply{}, err
	}
	var r Reply
	for _, k := range []string{"name", "queues", "vnet-hdr"} {
		if _, ok := fields[k]; !ok {
			return Reply{}, malformed("reply without %s", k)
		}
	}
	r.Name = fields["name"]
	if err := tap.ValidateName(r.Name, false); err != nil {
		return Reply{}, &protoError{msg: "name", err: err}
	}
	if r.Queues, err = parseCount("queues", fields["queues"]); err != nil {
		return Reply{}, err
	}
	if r.Queues < 1 || r.Queues > MaxFiles {
		return Reply{}, malformed("queues %d: want 1 to %d", r.Queues, MaxFiles)
	}
	if r.VnetHdr, err = parseCount("vnet-hdr", fields["vnet-hdr"]); err != nil {
		return Reply{}, err
	}
	if err := virtio.CheckHdrLen(r.VnetHdr); err != nil {
		return Reply{}, &protoError{msg: fmt.Sprintf("vnet-hdr %d", r.VnetHdr), err: err}
	}
	return r, nil
}

// splitLine checks the framing shared by requests and replies and splits
// the line into words.
func splitLine(msg []byte) ([]string, error) {
	if len(msg) > MaxMessage {
		return nil, malformed("%d bytes, more than %d", len(msg), MaxMessage)
	}
	line := strings.TrimSuffix(string(msg), "\n")
	if line == "" {
		return nil, malformed("empty")
	}
	if !printable(line, true) {
		return nil, malformed("not a line of printable ASCII")
	}
	words := strings.Split(line, " ")
	for i, w := range words {
		if w == "" {
			return nil, malformed("empty word %d (words are separated by exactly one space)", i)
		}
	}
	return words, nil
}

// parseFields reads key=value words with keys from known, each at most once.
func parseFields(words []string, known ...string) (map[string]string, error) {
	fields := make(map[string]string, len(words))
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k == "" || v == "" {
			return nil, malformed("field %q: want key=value", clip(w))
		}
		found := false
		for _, kk := range known {
			if k == kk {
				found = true
				break
			}
		}
		if !found {
			return nil, malformed("unknown field %q (want %s)", clip(k), strings.Join(known, ", "))
		}
		if _, dup := fields[k]; dup {
			return nil, malformed("field %q given twice", k)
		}
		fields[k] = v
	}
	return fields, nil
}

// parseCount reads a small decimal number: digits only, no sign, no
// leading zeros, at most 5 digits.
func parseCount(what, s string) (int, error) {
	if len(s) > 5 || (len(s) > 1 && s[0] == '0') {
		return 0, malformed("%s %q: want a number from 1 to 99999 without leading zeros", what, clip(s))
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, malformed("%s %q: not a decimal number", what, clip(s))
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, &protoError{msg: fmt.Sprintf("%s %q", what, clip(s)), err: err}
	}
	return n, nil
}

func printable(s string, spaces bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == ' ' && spaces {
			continue
		}
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// clip keeps quoted input short in error messages.
func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

func malformed(format string, args ...any) error {
	return &protoError{msg: fmt.Sprintf(format, args...)}
}

// protoError is a malformed message: what was wrong, and the cause if
// another check found it.
type protoError struct {
	msg string
	err error
}

func (e *protoError) Error() string {
	if e.err != nil {
		return "serve-fds protocol: " + e.msg + ": " + e.err.Error()
	}
	return "serve-fds protocol: " + e.msg
}

func (e *protoError) Is(target error) bool { return target == ErrMalformed }
func (e *protoError) Unwrap() error        { return e.err }

// RefusedError is the server's refusal, as Get returns it. It matches
// ErrRefused.
type RefusedError struct {
	Reason string
}

func (e *RefusedError) Error() string        { return "serve-fds server refused: " + e.Reason }
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }
