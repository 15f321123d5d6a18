package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// KickFromFile and EventFDFromFile take a plain eventfd and nothing else:
// what they refuse matches ErrNotEventFD and names the file and what it
// is, and stays the caller's. A semaphore eventfd is told by fdinfo where
// the kernel shows EFD_SEMAPHORE; where it does not (Linux 6.1), by
// KickFromFile's read, which leaves a plain eventfd's count as it found
// it.
func TestKickFromFile(t *testing.T) {
	eventfd := func(count uint64, flags int) func(t *testing.T) *os.File {
		return func(t *testing.T) *os.File {
			fd, err := unix.Eventfd(0, flags|unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
			if err != nil {
				t.Fatal(err)
			}
			if count > 0 {
				if err := writeCount(fd, count); err != nil {
					t.Fatal(err)
				}
			}
			return os.NewFile(uintptr(fd), "kick")
		}
	}
	cases := []struct {
		name  string
		file  func(t *testing.T) *os.File
		count uint64 // a plain eventfd's, as it must be after the check
		want  string // in the error; empty: accepted
		call  string // what EventFDFromFile says where fdinfo hides EFD_SEMAPHORE, if not want
	}{
		{"plain eventfd", eventfd(0, 0), 0, "", ""},
		{"plain eventfd with a kick pending", eventfd(1, 0), 1, "", ""},
		{"plain eventfd with 5 pending", eventfd(5, 0), 5, "", ""},
		{"semaphore eventfd", eventfd(0, unix.EFD_SEMAPHORE), 0, "kick is an eventfd made with EFD_SEMAPHORE", "-"},
		{"semaphore eventfd at 1", eventfd(1, unix.EFD_SEMAPHORE), 0, "EFD_SEMAPHORE", "-"},
		{"semaphore eventfd at 2^63", eventfd(1<<63, unix.EFD_SEMAPHORE), 0, "EFD_SEMAPHORE", "-"},
		{"regular file", func(t *testing.T) *os.File {
			f, err := os.CreateTemp(t.TempDir(), "kick")
			if err != nil {
				t.Fatal(err)
			}
			return f
		}, 0, "is a regular file, not an eventfd", ""},
		{"pipe", func(t *testing.T) *os.File {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			w.Close()
			return r
		}, 0, "is a pipe (pipe:[", ""},
		{"socket", func(t *testing.T) *os.File {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(fds[1])
			return os.NewFile(uintptr(fds[0]), "kick")
		}, 0, "kick is a socket (socket:[", ""},
		{"/dev/null", func(t *testing.T) *os.File {
			f, err := os.OpenFile("/dev/null", os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}, 0, "/dev/null is a character device, not an eventfd", ""},
		{"timerfd", func(t *testing.T) *os.File {
			fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			return os.NewFile(uintptr(fd), "kick")
		}, 0, "kick is anon_inode:[timerfd], not an eventfd", ""},
	}
	for _, hide := range []bool{false, true} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/fdinfo without eventfd-semaphore=%v", tc.name, hide), func(t *testing.T) {
				hideSemaphoreLine = hide
				defer func() { hideSemaphoreLine = false }()
				for _, fn := range []struct {
					name string
					from func(*os.File) (*EventFD, error)
				}{{"KickFromFile", KickFromFile}, {"EventFDFromFile", EventFDFromFile}} {
					f := tc.file(t)
					want := tc.want
					if fn.name == "EventFDFromFile" && hide && tc.call == "-" {
						want = "" // told only by a read: accepted
					}
					e, err := fn.from(f)
					switch {
					case want == "" && err != nil:
						t.Errorf("%s: %v, want it taken", fn.name, err)
					case want != "" && (!errors.Is(err, ErrNotEventFD) || !strings.Contains(err.Error(), want)):
						t.Errorf("%s: got %v, want an error matching ErrNotEventFD saying %q", fn.name, err, want)
					}
					if err != nil {
						// Still the caller's, and open.
						if _, serr := f.Stat(); serr != nil {
							t.Errorf("%s: the refused file: %v", fn.name, serr)
						}
						f.Close()
						continue
					}
					if strings.HasPrefix(tc.name, "plain") {
						if n, err := e.Take(); n != tc.count || err != nil {
							t.Errorf("%s: count %d (%v) after the check, want %d as before", fn.name, n, err, tc.count)
						}
					}
					e.Close()
				}
			})
		}
	}
}

// The read KickFromFile checks with costs the worker nothing: Take and
// Notify allocate nothing and make one system call each.
func TestEventFDAllocs(t *testing.T) {
	e, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if a := testing.AllocsPerRun(1000, func() {
		e.Notify()
		e.Take()
	}); a != 0 && !raceEnabled {
		t.Errorf("Notify and Take: %v allocations, want 0", a)
	}
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 3)
	unix.Write(e.Fd(), b[:])
	if n, err := e.Take(); n != 3 || err != nil {
		t.Errorf("Take: %d, %v; want 3", n, err)
	}
	if n, err := e.Take(); n != 0 || err != nil {
		t.Errorf("Take of an empty eventfd: %d, %v; want 0, nil", n, err)
	}
}
