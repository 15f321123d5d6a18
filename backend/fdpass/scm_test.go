package fdpass

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/testutil"
)

func TestSendRecvFiles(t *testing.T) {
	a, b := socketPair(t)
	files := pipes(t, 3)
	if err := Send(a, []byte("x"), files); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, got, err := Recv(b, buf, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range got {
			f.Close()
		}
	}()
	if n != 1 || buf[0] != 'x' {
		t.Errorf("payload: got %q, want %q", buf[:n], "x")
	}
	if len(got) != 3 {
		t.Fatalf("files: got %d, want 3", len(got))
	}
	for i := range got {
		if !sameFile(t, got[i], files[i]) {
			t.Errorf("file %d: received a different file than was sent", i)
		}
		flags, err := unix.FcntlInt(got[i].Fd(), unix.F_GETFD, 0)
		if err != nil {
			t.Fatal(err)
		}
		if flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("file %d: received without close-on-exec", i)
		}
	}
}

func TestRecvRefusesAndClosesExtraFiles(t *testing.T) {
	for _, tc := range []struct {
		name        string
		send, limit int
	}{
		{"one when none allowed", 1, 0},
		{"three when two allowed", 3, 2},
		{"many when one allowed", 40, 1},
		{"the most when none allowed", MaxFiles, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := socketPair(t)
			files := pipes(t, tc.send)
			before := testutil.OpenFds(t)
			if err := Send(a, []byte("x"), files); err != nil {
				t.Fatal(err)
			}
			n, got, err := Recv(b, make([]byte, 16), tc.limit)
			if !errors.Is(err, ErrTruncated) {
				t.Errorf("got n=%d, %d files, error %v; want ErrTruncated", n, len(got), err)
			}
			if got != nil {
				t.Errorf("got %d files with the error, want none", len(got))
			}
			if after := testutil.OpenFds(t); after != before {
				t.Errorf("open fds: got %d after the refused message, want %d as before", after, before)
			}
		})
	}
}

func TestRecvLongMessage(t *testing.T) {
	a, b := socketPair(t)
	files := pipes(t, 2)
	before := testutil.OpenFds(t)
	if err := Send(a, make([]byte, 100), files); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Recv(b, make([]byte, 10), 2); !errors.Is(err, ErrTruncated) {
		t.Errorf("got %v, want ErrTruncated for a 100-byte message in a 10-byte buffer", err)
	}
	if after := testutil.OpenFds(t); after != before {
		t.Errorf("open fds: got %d, want %d", after, before)
	}
}

func TestSendLimits(t *testing.T) {
	a, _ := socketPair(t)
	if err := Send(a, nil, nil); err == nil {
		t.Error("empty payload: got nil error")
	}
	if err := Send(a, []byte("x"), make([]*os.File, MaxFiles+1)); err == nil {
		t.Errorf("%d files: got nil error", MaxFiles+1)
	}
	if _, _, err := Recv(a, make([]byte, 1), MaxFiles+1); err == nil {
		t.Errorf("Recv limit %d: got nil error", MaxFiles+1)
	}
}

func TestPeerOf(t *testing.T) {
	a, _ := socketPair(t)
	p, err := PeerOf(a)
	if err != nil {
		t.Fatal(err)
	}
	if p.PID != int32(os.Getpid()) || p.UID != uint32(os.Getuid()) || p.GID != uint32(os.Getgid()) {
		t.Errorf("peer: got pid %d uid %d gid %d, want %d %d %d", p.PID, p.UID, p.GID, os.Getpid(), os.Getuid(), os.Getgid())
	}
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		if !p.InGroup(uint32(g)) {
			t.Errorf("peer groups %v lack our group %d", p.Groups, g)
		}
	}
	if p.InGroup(4000000000) {
		t.Error("InGroup(4000000000): got true")
	}
}
