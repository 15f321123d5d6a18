package fdpass

import (
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// socketPair returns both ends of a connected SOCK_SEQPACKET pair, closed
// when the test ends.
func socketPair(t testing.TB) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatalf("FileConn: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// pipes returns n files (read ends of pipes whose write ends are closed),
// closed when the test ends unless the caller closes them first.
func pipes(t testing.TB, n int) []*os.File {
	t.Helper()
	var files []*os.File
	for i := 0; i < n; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatalf("pipe: %v", err)
		}
		w.Close()
		files = append(files, r)
		t.Cleanup(func() { r.Close() })
	}
	return files
}

// sameFile reports whether a and b are the same open file.
func sameFile(t testing.TB, a, b *os.File) bool {
	t.Helper()
	sa, err := a.Stat()
	if err != nil {
		t.Fatalf("stat %s: %v", a.Name(), err)
	}
	sb, err := b.Stat()
	if err != nil {
		t.Fatalf("stat %s: %v", b.Name(), err)
	}
	return os.SameFile(sa, sb)
}
