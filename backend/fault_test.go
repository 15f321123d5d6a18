package backend

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
)

// A ring started on guest memory the front-end already shrank away
// (SIGBUS on the used index a new split ring reads) is refused with
// ErrMemoryFault, and the process goes on.
func TestStartQueueOnShrunkMemory(t *testing.T) {
	d, _, _ := newTestDevice(t, 1, Options{})
	m, shrink := testutil.SharedMemory(t, 1<<16)
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
	shrink()
	err = d.VhostUser().StartQueue(0, vhostuser.QueueSetup{Memory: mem, Size: 256, DescAddr: 0, AvailAddr: 4096,
		UsedAddr: 8192, Kick: kf})
	if !errors.Is(err, engine.ErrMemoryFault) {
		t.Fatalf("StartQueue on shrunk memory: got %v, want ErrMemoryFault", err)
	}
}
