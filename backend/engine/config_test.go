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

// New takes the MTU and header sizes virtio allows (virtio.CheckMTU,
// virtio.CheckHdrLen) and refuses the others before it touches anything.
func TestNewChecksLimits(t *testing.T) {
	r := newRig(t, rigOptions{})
	var e [4]*EventFD
	for i := range e {
		var err error
		if e[i], err = NewEventFD(); err != nil {
			t.Fatal(err)
		}
		defer e[i].Close()
	}
	for _, tt := range []struct {
		name    string
		mtu     int
		hdrLen  int
		wantErr string // "" when New succeeds
	}{
		{"default mtu", 0, r.hdrLen, ""},
		{"smallest mtu", 68, r.hdrLen, ""},
		{"largest mtu", 65535, r.hdrLen, ""},
		{"mtu below", 67, r.hdrLen, "new queue pair: mtu 67, want 68 to 65535"},
		{"mtu above", 65536, r.hdrLen, "new queue pair: mtu 65536, want 68 to 65535"},
		{"odd header", 1500, 11, "new queue pair: net header of 11 bytes, want 10, 12 or 20: bad net header size"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fds[1])
			tap := os.NewFile(uintptr(fds[0]), "tap")
			defer tap.Close()
			_, err = New(Config{RX: r.qp.cfg.RX, TX: r.qp.cfg.TX, RXKick: e[0], TXKick: e[1], RXCall: e[2], TXCall: e[3],
				TAP: tap, HdrLen: tt.hdrLen, Features: r.features, MTU: tt.mtu})
			var got string
			if err != nil {
				got = err.Error()
			}
			if got != tt.wantErr {
				t.Errorf("New with MTU %d, header %d: got error %q, want %q", tt.mtu, tt.hdrLen, got, tt.wantErr)
			}
		})
	}
}
