package vhostuser

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FuzzConnRead sends a byte stream to conn.read over a socket pair, cut into writes of
// chunk bytes (all at once for 0) with nfds descriptors on every every+1'th of the first
// writes, and holds the read path to its rules: a message it returns is the stream's next
// one, with a payload within MaxPayloadSize and at most MaxFDs open descriptors; it stops
// with io.EOF only between messages, and otherwise with a cut message or a malformed one;
// when the connection ends, every descriptor sent is closed.
func FuzzConnRead(f *testing.F) {
	for _, s := range seedMessages() {
		f.Add(s.msg, uint8(0), uint8(s.fds), uint8(255))
	}
	stream := append(AppendMessage(nil, ReqGetFeatures, Version, Empty{}),
		AppendMessage(nil, ReqSetVringKick, Version, VringFile{Index: 1})...)
	f.Add(stream, uint8(3), uint8(1), uint8(1))
	f.Add(stream, uint8(1), uint8(3), uint8(0))
	f.Add(stream, uint8(0), uint8(MaxFDs+fdSlack+1), uint8(0))
	f.Add(Header{Request: ReqSetMemTable, Flags: Version, Size: MaxPayloadSize + 1}.Append(nil), uint8(0), uint8(0), uint8(0))
	f.Add(stream[:HeaderSize+3], uint8(5), uint8(0), uint8(0))

	f.Fuzz(func(t *testing.T, data []byte, chunk, nfds, every uint8) {
		if len(data) > 64<<10 {
			return
		}
		before := len(openFDs(t))
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("socketpair: %v", err)
		}
		back := unixConn(t, sp[0])
		c, err := newConn(back, timeouts{firstMessage: time.Minute, message: time.Minute, reply: time.Minute})
		if err != nil {
			t.Fatalf("newConn: %v", err)
		}
		perWrite := int(nfds) % (MaxFDs + fdSlack + 5)
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer unix.Close(sp[1])
			size := len(data)
			if chunk > 0 {
				size = int(chunk)
			}
			for i, off := 0, 0; off < len(data); i, off = i+1, off+size {
				var oob []byte
				var fds []int
				if i < 8 && i%(int(every)+1) == 0 {
					for range perWrite {
						fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
						if err != nil {
							return
						}
						fds = append(fds, fd)
					}
					if len(fds) > 0 {
						oob = unix.UnixRights(fds...)
					}
				}
				_, err := unix.SendmsgN(sp[1], data[off:min(off+size, len(data))], oob, nil, unix.MSG_NOSIGNAL)
				closeAll(fds...)
				if err != nil {
					return // the reader gave up
				}
			}
		}()

		off := 0
		for {
			m, err := c.read()
			if err != nil {
				switch {
				case errors.Is(err, io.EOF):
					if off != len(data) {
						t.Fatalf("io.EOF at byte %d of %d", off, len(data))
					}
				case errors.Is(err, io.ErrUnexpectedEOF):
					if off == len(data) {
						t.Fatalf("unexpected EOF at the stream's end: %v", err)
					}
				case errors.Is(err, ErrMalformed):
				default:
					t.Fatalf("read at byte %d: %v", off, err)
				}
				break
			}
			end := off + HeaderSize + len(m.payload)
			if m.Size > MaxPayloadSize || int(m.Size) != len(m.payload) || end > len(data) {
				t.Fatalf("message at byte %d: header %+v with %d payload bytes, stream of %d", off, m.Header, len(m.payload), len(data))
			}
			h, err := DecodeHeader(data[off:])
			if err != nil || h != m.Header || !bytes.Equal(m.payload, data[off+HeaderSize:end]) {
				t.Fatalf("message at byte %d: got %+v %x, want %+v %x (%v)", off, m.Header, m.payload, h, data[off+HeaderSize:end], err)
			}
			if len(m.fds) > MaxFDs {
				t.Fatalf("message at byte %d carries %d descriptors, limit %d", off, len(m.fds), MaxFDs)
			}
			for _, fd := range m.fds {
				if !isOpen(fd) {
					t.Fatalf("message at byte %d: descriptor %d is not open", off, fd)
				}
			}
			m.closeFDs()
			off = end
		}
		c.close()
		<-done
		if after := len(openFDs(t)); after != before {
			t.Fatalf("open descriptors: got %d, want %d", after, before)
		}
	})
}
