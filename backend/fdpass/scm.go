package fdpass

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// MaxFiles is the most descriptors one message can carry: SCM_MAX_FD in
// include/net/scm.h. It bounds the queues one serve-fds request can ask
// for.
const MaxFiles = 253

// ErrTruncated says a message, or the descriptors attached to it, did not
// fit what the reader allowed; every descriptor that did arrive was
// closed.
var ErrTruncated = errors.New("message truncated")

// Send writes payload as one message with files attached (SCM_RIGHTS).
// payload must not be empty: on a stream socket the descriptors ride on
// its first byte. Send does not close files; they must stay open until it
// returns. It reads each descriptor through SyscallConn, never File.Fd,
// so a non-blocking file stays non-blocking for both ends.
func Send(c *net.UnixConn, payload []byte, files []*os.File) error {
	if len(payload) == 0 {
		return errors.New("send descriptors: empty payload")
	}
	if len(files) > MaxFiles {
		return fmt.Errorf("send %d descriptors: more than %d (SCM_MAX_FD)", len(files), MaxFiles)
	}
	fds := make([]int, len(files))
	for i, f := range files {
		rc, err := f.SyscallConn()
		if err != nil {
			return fmt.Errorf("send descriptor %d (%s): %w", i, f.Name(), err)
		}
		if err := rc.Control(func(fd uintptr) { fds[i] = int(fd) }); err != nil {
			return fmt.Errorf("send descriptor %d (%s): %w", i, f.Name(), err)
		}
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(payload, oob, nil)
	if err != nil {
		return fmt.Errorf("send %d bytes with %d descriptors: %w", len(payload), len(fds), err)
	}
	if n != len(payload) || oobn != len(oob) {
		return fmt.Errorf("send %d bytes with %d descriptors: wrote %d bytes and %d of control data: %w",
			len(payload), len(fds), n, oobn, unix.EMSGSIZE)
	}
	return nil
}

// Recv reads one message into buf and returns its length and the files
// attached to it, close-on-exec. It accepts at most maxFiles descriptors:
// a message with more, with truncated control data, or (on a
// SOCK_SEQPACKET socket) longer than buf is an error wrapping
// ErrTruncated, and every descriptor that arrived is closed. A peer that
// closed the connection gives n == 0 and no files, with no error.
func Recv(c *net.UnixConn, buf []byte, maxFiles int) (n int, files []*os.File, err error) {
	if maxFiles < 0 || maxFiles > MaxFiles {
		return 0, nil, fmt.Errorf("receive descriptors: limit %d outside [0, %d]", maxFiles, MaxFiles)
	}
	// Room for one more than allowed, so "too many" is seen as such
	// rather than as a truncation.
	oob := make([]byte, unix.CmsgSpace((maxFiles+1)*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	fds, perr := parseRights(oob[:oobn])
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	switch {
	case errors.Is(err, io.EOF) && n == 0 && len(fds) == 0:
		return 0, nil, nil
	case err != nil:
		closeAll()
		return 0, nil, fmt.Errorf("receive message: %w", err)
	case perr != nil:
		closeAll()
		return 0, nil, fmt.Errorf("receive message: parse control data: %w", perr)
	case flags&unix.MSG_CTRUNC != 0:
		closeAll()
		return 0, nil, fmt.Errorf("receive message: control data truncated (more than %d descriptors): %w", maxFiles, ErrTruncated)
	case flags&unix.MSG_TRUNC != 0:
		closeAll()
		return 0, nil, fmt.Errorf("receive message: longer than %d bytes: %w", len(buf), ErrTruncated)
	case len(fds) > maxFiles:
		closeAll()
		return 0, nil, fmt.Errorf("receive message: %d descriptors, want at most %d: %w", len(fds), maxFiles, ErrTruncated)
	}
	files = make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), fmt.Sprintf("received fd %d", i))
	}
	return n, files, nil
}

// parseRights collects every descriptor in SCM_RIGHTS messages of oob.
// On a parse error it still returns what it found, so the caller can
// close them.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	var errs []error
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			errs = append(errs, fmt.Errorf("unexpected control message level %d type %d", m.Header.Level, m.Header.Type))
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		fds = append(fds, got...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return fds, errors.Join(errs...)
}

// Peer is the process on the other end of a unix socket, as the kernel
// recorded it at connect time (SO_PEERCRED) plus its supplementary groups
// (SO_PEERGROUPS).
type Peer struct {
	PID    int32
	UID    uint32
	GID    uint32
	Groups []uint32
}

// InGroup reports whether gid is the peer's primary or a supplementary
// group.
func (p Peer) InGroup(gid uint32) bool {
	if p.GID == gid {
		return true
	}
	for _, g := range p.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

// PeerOf reads the credentials of the process on the other end of c.
func PeerOf(c *net.UnixConn) (Peer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("read peer credentials: %w", err)
	}
	var p Peer
	var serr error
	err = rc.Control(func(fd uintptr) {
		var cred *unix.Ucred
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if serr != nil {
			serr = fmt.Errorf("SO_PEERCRED: %w", serr)
			return
		}
		p = Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}
		p.Groups, serr = peerGroups(int(fd))
		if serr != nil {
			serr = fmt.Errorf("SO_PEERGROUPS: %w", serr)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return Peer{}, fmt.Errorf("read peer credentials: %w", err)
	}
	return p, nil
}
