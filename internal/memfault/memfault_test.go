package memfault

import (
	"errors"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/testutil"
	"golang.org/x/sys/unix"
)

// A load from a mapping whose file shrank (SIGBUS) and one from memory
// that is gone (SIGSEGV) come back as ErrFault; the goroutine's own
// setting is as before; other panics still panic.
func TestGuard(t *testing.T) {
	m, shrink := testutil.SharedMemory(t, 4096)
	m[0] = 7
	if err := Guard(func() error { m[1] = m[0]; return nil }); err != nil || m[1] != 7 {
		t.Fatalf("Guard of good memory: %v, byte %d", err, m[1])
	}
	want := errors.New("fn's own error")
	if err := Guard(func() error { return want }); err != want {
		t.Errorf("Guard passes fn's error on: got %v", err)
	}
	shrink()
	var got byte
	err := Guard(func() error { got = m[100]; return nil })
	if !errors.Is(err, ErrFault) {
		t.Fatalf("load from a shrunk file: got %v (byte %d), want ErrFault", err, got)
	}
	if err := unix.Mprotect(m, unix.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	if err := Guard(func() error { got = m[0]; return nil }); !errors.Is(err, ErrFault) {
		t.Fatalf("load from PROT_NONE: got %v, want ErrFault", err)
	}
	func() {
		defer func() {
			if r := recover(); r != "a bug" {
				t.Errorf("a panic that is no fault: recovered %v, want it passed on", r)
			}
		}()
		Guard(func() error { panic("a bug") })
	}()
}
