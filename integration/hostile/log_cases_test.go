package hostile_test

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/engine"
	vu "github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
)

// logSize is the bytes of a dirty log that covers s's guest memory, in
// QEMU's unsigned longs.
func logSize(s *session) uint64 {
	pages := (guestBase + uint64(len(s.mem.buf)) + virtio.LogPageSize - 1) / virtio.LogPageSize
	return (pages + 63) / 64 * 8
}

// logOn gives the session a log of n bytes in a memfd, and has every ring
// log into it, as QEMU does when a migration starts; it returns the
// memfd.
func (a *attack) logOn(s *session, n uint64) int {
	a.t.Helper()
	fd := a.memfdOf(int(n))
	a.ack("SET_LOG_BASE", "ack 0", vu.ReqSetLogBase, vu.Log{Size: n}, fd)
	a.ack("SET_FEATURES with VHOST_F_LOG_ALL", "ack 0", vu.ReqSetFeatures, vu.U64(uint64(baseFeatures)|vu.FProtocolFeatures|vu.FLogAll))
	for i := range numRings {
		addr := s.mem.vringAddr(i)
		addr.Flags, addr.LogGuest = vu.VringFlagLog, s.mem.vm.Queue(i).Areas().Device
		a.ack(fmt.Sprintf("SET_VRING_ADDR %d with VHOST_VRING_F_LOG", i), "ack 0", vu.ReqSetVringAddr, addr)
	}
	return fd
}

// logCases attack the dirty log of a live migration (SET_LOG_BASE with
// LOG_SHMFD): logs the back-end cannot use, and one taken away while the
// rings write to it.
var logCases = []hostileCase{
	{"log/logs refused: empty, odd size, past the file, smaller than memory, a pipe, 1 TiB sparse", func(a *attack) {
		s := a.open(sessionOptions{})
		n := logSize(s)
		a.ack("size 0", "ack 1", vu.ReqSetLogBase, vu.Log{}, a.memfdOf(int(n)))
		a.ack("size not a multiple of 8", "ack 1", vu.ReqSetLogBase, vu.Log{Size: n - 3}, a.memfdOf(int(n)))
		a.ack("past its file", "ack 1", vu.ReqSetLogBase, vu.Log{Size: n, Offset: 4096}, a.memfdOf(int(n)))
		a.ack("smaller than guest memory", "ack 1", vu.ReqSetLogBase, vu.Log{Size: 8}, a.memfdOf(int(n)))
		r, _ := a.pipe()
		a.ack("a pipe", "ack 1", vu.ReqSetLogBase, vu.Log{Size: n}, int(r.Fd()))
		a.ack("no descriptor", "ack 1", vu.ReqSetLogBase, vu.Log{Size: n})
		a.ack("1 TiB", "ack 1", vu.ReqSetLogBase, vu.Log{Size: 1 << 40}, a.memfdOf(1<<40))
		a.ack("a log that covers guest memory", "ack 0", vu.ReqSetLogBase, vu.Log{Size: n}, a.memfdOf(int(n)))
		a.ack("SET_FEATURES with VHOST_F_LOG_ALL", "ack 0", vu.ReqSetFeatures, vu.U64(uint64(baseFeatures)|vu.FProtocolFeatures|vu.FLogAll))
		addr := s.mem.vringAddr(0)
		addr.Flags, addr.LogGuest = vu.VringFlagLog, 1<<40
		a.ack("SET_VRING_ADDR logged at 1 TiB", "ack 1", vu.ReqSetVringAddr, addr)
		a.probe("kept")
		a.frames(s)
	}},
	{"log/frames pass while logging, then the log file shrinks to nothing", func(a *attack) {
		s := a.open(sessionOptions{})
		fd := a.logOn(s, logSize(s))
		a.frames(s)
		tx := s.mem.vm.Queue(1)
		if _, err := tx.PostTX(arpFrame()); err != nil {
			a.t.Fatal(err)
		}
		faults := a.r.dev.Counters(0).Load(engine.MemoryFaults)
		if err := unix.Ftruncate(fd, 0); err != nil {
			a.t.Fatal(err)
		}
		kick(s.files[1].kick)
		a.waitCounter(0, engine.MemoryFaults, faults, 1, 5*time.Second)
		a.probe("kept")
		a.idle()
	}},
}
