package vhostuser

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// fdSlack is how many descriptors beyond MaxFDs the control buffer has room for, so that a
// front-end sending a few too many is told so by name instead of by a truncated message.
const fdSlack = 8

// conn reads requests and writes replies on one connection. Its buffers are allocated
// once; a message's payload is valid until the next read.
type conn struct {
	uc  *net.UnixConn
	rc  syscall.RawConn
	hdr [HeaderSize]byte
	buf [MaxPayloadSize]byte
	oob []byte
	out []byte
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

func newConn(uc *net.UnixConn) (*conn, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("get raw connection: %w", err)
	}
	return &conn{
		uc:  uc,
		rc:  rc,
		oob: make([]byte, unix.CmsgSpace(4*(MaxFDs+fdSlack))),
		out: make([]byte, 0, HeaderSize+MaxPayloadSize),
	}, nil
}

// read reads one request and the descriptors that came with it. On error every descriptor
// received is closed. io.EOF means the front-end closed the connection between messages.
func (c *conn) read() (message, error) {
	m := message{fds: make([]int, 0, MaxFDs)}
	if err := c.readFull(c.hdr[:], &m.fds); err != nil {
		m.closeFDs()
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return m, fmt.Errorf("read message header: %w", err)
		}
		return m, err
	}
	h, err := DecodeHeader(c.hdr[:])
	if err != nil {
		m.closeFDs()
		return m, err
	}
	m.Header = h
	m.payload = c.buf[:h.Size]
	if err := c.readFull(m.payload, &m.fds); err != nil {
		m.closeFDs()
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return m, fmt.Errorf("read %s payload of %d bytes: %w", h.Request, h.Size, err)
	}
	return m, nil
}

// readFull fills p, appending every descriptor received meanwhile to *fds. It returns
// io.EOF if the peer closed before the first byte, io.ErrUnexpectedEOF after it.
func (c *conn) readFull(p []byte, fds *[]int) error {
	got := 0
	for got < len(p) {
		n, err := c.recv(p[got:], fds)
		if err != nil {
			return err
		}
		if n == 0 {
			if got == 0 {
				return io.EOF
			}
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
		return 0, malformed("more than %d file descriptors in one message", MaxFDs+fdSlack)
	}
	if len(*fds) > MaxFDs {
		return 0, malformed("%d file descriptors in one message, limit %d", len(*fds), MaxFDs)
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
// the caller's.
func (c *conn) reply(req Request, p Payload, fds ...int) error {
	c.out = AppendMessage(c.out[:0], req, Version|FlagReply, p)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.uc.WriteMsgUnix(c.out, oob, nil)
	for err == nil && n < len(c.out) {
		var m int
		m, err = c.uc.Write(c.out[n:])
		n += m
	}
	if err != nil {
		return fmt.Errorf("write %s reply: %w", req, err)
	}
	return nil
}

func (c *conn) close() error { return c.uc.Close() }
