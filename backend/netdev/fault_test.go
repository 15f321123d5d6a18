package netdev

import (
	"errors"
	"os"
	"testing"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
	"golang.org/x/sys/unix"
)

// A ring started on guest memory the front-end already shrank away
// (SIGBUS on the used index a new split ring reads) is refused with
// ErrMemoryFault, and the process goes on.
func TestStartQueueOnShrunkMemory(t *testing.T) {
	d, _, _ := newTestDevice(t, 1, Options{})
	fd, err := unix.MemfdCreate("vmnet-test-guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	const size = 1 << 16
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	mem, err := virtio.NewMemory([]virtio.Region{{GuestAddr: 0, Host: m}})
	if err != nil {
		t.Fatal(err)
	}
	kick, err := engine.NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer kick.Close()
	kfd, err := unix.Dup(kick.Fd())
	if err != nil {
		t.Fatal(err)
	}
	kf := os.NewFile(uintptr(kfd), "kick")
	defer kf.Close()
	if err := unix.Ftruncate(fd, 0); err != nil {
		t.Fatal(err)
	}
	err = d.VhostUser().StartQueue(0, vhostuser.QueueSetup{Memory: mem, Size: 256, DescAddr: 0, AvailAddr: 4096,
		UsedAddr: 8192, Kick: kf})
	if !errors.Is(err, engine.ErrMemoryFault) {
		t.Fatalf("StartQueue on shrunk memory: got %v, want ErrMemoryFault", err)
	}
}
