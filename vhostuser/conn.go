package vhostuser

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fdSlack is how many descriptors beyond MaxFDs the control buffer has room for, so that a
// front-end sending a few too many is told so by name instead of by a truncated message.
const fdSlack = 8

// conn reads requests and writes replies on one connection. Its buffers are allocated
// once; a message's payload is valid until the next read.
//
// It holds the front-end to the time limits: the first message must start within
// timeouts.firstMessage of the connection, every message must be complete within
// timeouts.message of its first byte, and every reply must be written within
// timeouts.reply. Between messages, after the first, the front-end may be silent for as
// long as it likes.
type conn struct {
	uc       *net.UnixConn
	rc       syscall.RawConn
	timeouts timeouts
	hdr      [HeaderSize]byte
	buf      [MaxPayloadSize]byte
	oob      []byte
	out      []byte
}

// message is one received request. Its fds belong to whoever holds the message: a handler
// that keeps one sets its slot to -1, and closeFDs closes the rest.
type message struct {
	Header
	payload []byte
	fds     []int
}

func (m *message) closeFDs() {
	for i, fd := range m.fds {
		if fd >= 0 {
			unix.Close(fd)
			m.fds[i] = -1
		}
	}
}

// takeFD hands over the descriptor in slot i; the message no longer closes it.
func (m *message) takeFD(i int) int {
	fd := m.fds[i]
	m.fds[i] = -1
	return fd
}

// newConn starts serving uc, which stays the caller's to close; the first message's clock
// starts now.
func newConn(uc *net.UnixConn, t timeouts) (*conn, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("get raw connection: %w", err)
	}
	if err := uc.SetReadDeadline(time.Now().Add(t.firstMessage)); err != nil {
		return nil, fmt.Errorf("set first message deadline: %w", err)
	}
	return &conn{
		uc:       uc,
		rc:       rc,
		timeouts: t,
		oob:      make([]byte, unix.CmsgSpace(4*(MaxFDs+fdSlack))),
		out:      make([]byte, 0, HeaderSize+MaxPayloadSize),
	}, nil
}

// read reads one request and the descriptors that came with it. On error every descriptor
// received is closed. io.EOF means the front-end closed the connection between messages.
// A time limit struck is a *LimitError.
func (c *conn) read() (message, error) {
	m := message{fds: make([]int, 0, MaxFDs)}
	if err := c.readMessage(&m); err != nil {
		m.closeFDs()
		return m, err
	}
	return m, nil
}

func (c *conn) readMessage(m *message) error {
	// Wait for a message: with the first message's deadline, or none once it has come.
	n, err := c.recv(c.hdr[:], &m.fds)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return timeLimit(LimitFirstMessage, 0, c.timeouts.firstMessage)
	case err != nil:
		return err
	case n == 0:
		return io.EOF
	}
	// The message has started: all of it must come within the message timeout.
	if err := c.uc.SetReadDeadline(time.Now().Add(c.timeouts.message)); err != nil {
		return fmt.Errorf("set message deadline: %w", err)
	}
	if err := c.readFull(c.hdr[n:], &m.fds); err != nil {
		return c.readErr(err, "read message header", 0)
	}
	h, err := DecodeHeader(c.hdr[:])
	if err != nil {
		return err
	}
	m.Header = h
	m.payload = c.buf[:h.Size]
	if err := c.readFull(m.payload, &m.fds); err != nil {
		return c.readErr(err, fmt.Sprintf("read %s payload of %d bytes", h.Request, h.Size), h.Request)
	}
	if err := c.uc.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear message deadline: %w", err)
	}
	return nil
}

// readErr is the error of a message cut short: by the peer, by the message timeout, or by
// a broken connection.
func (c *conn) readErr(err error, what string, req Request) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = timeLimit(LimitMessageTime, req, c.timeouts.message)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// readFull fills p, appending every descriptor received meanwhile to *fds. A peer that
// closes before p is full is io.ErrUnexpectedEOF.
func (c *conn) readFull(p []byte, fds *[]int) error {
	got := 0
	for got < len(p) {
		n, err := c.recv(p[got:], fds)
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		got += n
	}
	return nil
}

func (c *conn) recv(p []byte, fds *[]int) (int, error) {
	var n, oobn, flags int
	var rerr error
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), p, c.oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
			if rerr != unix.EINTR {
				break
			}
		}
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, fmt.Errorf("receive message: %w", err)
	}
	if oobn > 0 {
		if err := appendRights(c.oob[:oobn], fds); err != nil {
			return 0, err
		}
	}
	if flags&unix.MSG_CTRUNC != 0 {
		// The kernel closed what did not fit; what did fit is in *fds and closed by the caller.
		return 0, overLimit(LimitFDs, 0, MaxFDs+fdSlack+1, MaxFDs)
	}
	if len(*fds) > MaxFDs {
		return 0, overLimit(LimitFDs, 0, uint64(len(*fds)), MaxFDs)
	}
	return n, nil
}

// appendRights appends the descriptors of every SCM_RIGHTS message in oob.
func appendRights(oob []byte, fds *[]int) error {
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fmt.Errorf("parse control messages: %w", err)
	}
	for i := range cmsgs {
		if cmsgs[i].Header.Level != unix.SOL_SOCKET || cmsgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&cmsgs[i])
		if err != nil {
			return fmt.Errorf("parse SCM_RIGHTS: %w", err)
		}
		*fds = append(*fds, got...)
	}
	return nil
}

// reply sends a reply to req: version and reply flags, the payload p, and fds, which stay
// the caller's. A front-end that leaves it unread for the reply timeout is a *LimitError.
func (c *conn) reply(req Request, p Payload, fds ...int) error {
	c.out = AppendMessage(c.out[:0], req, Version|FlagReply, p)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := c.uc.SetWriteDeadline(time.Now().Add(c.timeouts.reply)); err != nil {
		return fmt.Errorf("set %s reply deadline: %w", req, err)
	}
	n, _, err := c.uc.WriteMsgUnix(c.out, oob, nil)
	for err == nil && n < len(c.out) {
		var m int
		m, err = c.uc.Write(c.out[n:])
		n += m
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = timeLimit(LimitReplyTime, req, c.timeouts.reply)
	}
	if err != nil {
		return fmt.Errorf("write %s reply (%d of %d bytes written): %w", req, n, len(c.out), err)
	}
	return nil
}

func (c *conn) close() error { return c.uc.Close() }
