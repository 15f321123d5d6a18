package engine

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// The worker's reads and writes never give up their thread, so New puts
// a blocking TAP file in non-blocking mode.
func TestNewMakesTAPNonBlocking(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	tap := os.NewFile(uintptr(fds[0]), "blocking tap")
	defer tap.Close()
	var e [4]*EventFD
	for i := range e {
		if e[i], err = NewEventFD(); err != nil {
			t.Fatal(err)
		}
		defer e[i].Close()
	}
	r := newRig(t, rigOptions{})
	if _, err := New(Config{RX: r.qp.cfg.RX, TX: r.qp.cfg.TX, RXKick: e[0], TXKick: e[1], RXCall: e[2], TXCall: e[3],
		TAP: tap, HdrLen: r.hdrLen, Features: r.features}); err != nil {
		t.Fatal(err)
	}
	fl, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.O_NONBLOCK == 0 {
		t.Errorf("TAP file flags %#x: want O_NONBLOCK", fl)
	}
}
