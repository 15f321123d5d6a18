package vhostuser

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// logDevice is a fakeDevice that logs (DirtyLogger) and records each log a
// running ring is given.
type logDevice struct {
	*fakeDevice
	logs map[int]virtio.RingLog
}

func newLogDevice() *logDevice {
	return &logDevice{fakeDevice: newFakeDevice(), logs: map[int]virtio.RingLog{}}
}

func (d *logDevice) StartQueue(index int, q QueueSetup) error {
	if err := d.fakeDevice.StartQueue(index, q); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.logs[index] = q.Log
	return nil
}

func (d *logDevice) SetQueueLog(index int, l virtio.RingLog) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.running[index]; !ok {
		return fmt.Errorf("log of queue %d, which is not running", index)
	}
	d.logs[index] = l
	d.record("log %d %t %#x", index, l.Log != nil, l.UsedAddr)
	return nil
}

func (d *logDevice) ringLog(i int) virtio.RingLog {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs[i]
}

// logMemfd is a log of size bytes in a memfd named name, and the test's
// own mapping of it, where the back-end's marks show.
func logMemfd(t *testing.T, name string, size int) (int, []byte) {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatal(err)
	}
	// As QEMU's vhost_log_alloc seals it.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		t.Fatal(err)
	}
	b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return fd, b
}

// mapped counts this process's mappings of the memfd name.
func mapped(t *testing.T, name string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "/memfd:"+name+" ")
}

// readLogReply reads SET_LOG_BASE's reply: the same request type and the
// log description sent (QEMU's vhost_user_set_log_base takes any payload,
// rust-vmm's set_log_base reads a log description).
func (f *frontEnd) readLogReply(sent Log) {
	f.t.Helper()
	f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(f.c, hdr[:]); err != nil {
		f.t.Fatalf("read SET_LOG_BASE reply: %v", err)
	}
	req := Request(binary.NativeEndian.Uint32(hdr[0:]))
	flags := Flags(binary.NativeEndian.Uint32(hdr[4:]))
	size := binary.NativeEndian.Uint32(hdr[8:])
	if req != ReqSetLogBase || flags != Version|FlagReply || size != logSize {
		f.t.Fatalf("SET_LOG_BASE reply: request %s flags %#x size %d, want SET_LOG_BASE, the reply flag, %d bytes", req, flags, size, logSize)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(f.c, b); err != nil {
		f.t.Fatalf("read SET_LOG_BASE reply payload: %v", err)
	}
	if want := sent.Append(nil); string(b) != string(want) {
		f.t.Fatalf("SET_LOG_BASE reply payload %x, want the request's %x", b, want)
	}
}

// TestDirtyLogMigration is QEMU 7.2's side of a live migration with two
// running rings (vhost_migration_log, vhost_dev_set_log, then
// vhost_dev_stop), and what else a front-end may send around it: the
// rings take their logs without stopping, the log is the front-end's
// memory, a new log replaces the old, which is unmapped, and logs that
// would not cover what the rings write are refused.
func TestDirtyLogMigration(t *testing.T) {
	before := openFDs(t)
	dev := newLogDevice()
	srv := NewServer(dev, Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)

	features := fe.callU64(ReqGetFeatures, Empty{})
	if want := uint64(dev.features) | FProtocolFeatures | FLogAll; features != want {
		t.Fatalf("GET_FEATURES: got %#x, want %#x (VHOST_F_LOG_ALL for a device that logs)", features, want)
	}
	offered := ProtocolFeatures(fe.callU64(ReqGetProtocolFeatures, Empty{}))
	if !offered.Has(ProtocolLogShmfd) {
		t.Fatalf("protocol features %s: want LOG_SHMFD for a device that logs", offered)
	}
	fe.send(ReqSetProtocolFeatures, 0, U64(qemuProtocol&offered))
	fe.send(ReqSetOwner, 0, Empty{})
	acked := uint64(virtio.FVersion1|virtio.FEventIdx) | FProtocolFeatures
	fe.send(ReqSetFeatures, 0, U64(acked))
	mfd := memfd(t, guestSize)
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: guestRegion()}, mfd)
	unix.Close(mfd)
	for i := uint32(0); i < 2; i++ {
		fe.setUpRing(i, 256)
		fe.mustAck(ReqSetVringEnable, VringState{Index: i, Num: 1})
	}
	for i := range 2 {
		if l := dev.ringLog(i); l.Log != nil {
			t.Fatalf("ring %d started with a log before migration", i)
		}
	}
	started := len(dev.eventList())

	// The log: one bit per 4 KiB page of the guest's [0, 2 MiB).
	const logSize = (guestBase + guestSize) / virtio.LogPageSize / 8
	small, _ := logMemfd(t, "vu-log-small", logSize/2)
	if got := fe.ack(ReqSetLogBase, Log{Size: logSize / 2}, small); got == 0 {
		t.Error("SET_LOG_BASE of a log smaller than guest memory: acked, want failure")
	}
	unix.Close(small)
	odd, _ := logMemfd(t, "vu-log-odd", logSize)
	if got := fe.ack(ReqSetLogBase, Log{Size: logSize - 4}, odd); got == 0 {
		t.Error("SET_LOG_BASE of a log not a multiple of 8 bytes: acked, want failure")
	}
	if got := fe.ack(ReqSetLogBase, Log{Size: logSize, Offset: 8}, odd); got == 0 {
		t.Error("SET_LOG_BASE of a log reaching past its file: acked, want failure")
	}
	unix.Close(odd)

	lfd, logMem := logMemfd(t, "vu-log-1", logSize)
	fe.send(ReqSetLogBase, 0, Log{Size: logSize}, lfd)
	fe.readLogReply(Log{Size: logSize})
	unix.Close(lfd)
	if n := mapped(t, "vu-log-1"); n != 2 {
		t.Errorf("log 1 mapped %d times in the process, want 2 (the test's and the back-end's)", n)
	}
	// vhost_dev_set_log: features, then each ring's addresses with the
	// log flag, its used ring logged where it is; QEMU waits for each.
	fe.mustAck(ReqSetFeatures, U64(acked|FLogAll))
	for i := uint32(0); i < 2; i++ {
		a := ringAddr(i)
		a.Flags, a.LogGuest = VringFlagLog, a.UsedUser-userBase+guestBase
		fe.mustAck(ReqSetVringAddr, a)
	}
	ev := dev.eventList()[started:]
	if want := []string{"log 0 true 0x118000", "log 1 true 0x128000"}; !slices.Equal(ev, want) {
		t.Fatalf("device events while logging starts: got %q, want %q (no ring stopped)", ev, want)
	}
	// The device's log is the front-end's memory: a page marked shows
	// in the memfd, page p as bit p%8 of byte p/8.
	l := dev.ringLog(0)
	l.Log.Mark(0x118000, 1)
	if p := 0x118000 / virtio.LogPageSize; logMem[p/8]&(1<<(p%8)) == 0 {
		t.Errorf("page %d marked by the device: not set in the front-end's log", p)
	}

	// Refused while logging: a used ring logged past the log's end, and
	// guest memory the log does not cover.
	a := ringAddr(1)
	a.Flags, a.LogGuest = VringFlagLog, 2*(guestBase+guestSize)
	if got := fe.ack(ReqSetVringAddr, a); got == 0 {
		t.Error("SET_VRING_ADDR with the used ring logged past the log: acked, want failure")
	}
	far := MemoryRegion{GuestAddr: 1 << 32, Size: 1 << 16, UserAddr: userBase + 1<<30}
	mfd2 := memfd(t, 1<<16)
	if got := fe.ack(ReqAddMemReg, MemRegionMsg{Region: far}, mfd2); got == 0 {
		t.Error("ADD_MEM_REG of memory past the log while logging: acked, want failure")
	}
	unix.Close(mfd2)

	// A larger log replaces the first; the first is unmapped.
	lfd2, logMem2 := logMemfd(t, "vu-log-2", 2*logSize)
	fe.send(ReqSetLogBase, 0, Log{Size: 2 * logSize}, lfd2)
	fe.readLogReply(Log{Size: 2 * logSize})
	unix.Close(lfd2)
	if n := mapped(t, "vu-log-1"); n != 1 {
		t.Errorf("log 1 mapped %d times after log 2 replaced it, want 1 (the test's)", n)
	}
	dev.ringLog(1).Log.Mark(0x128000, 1)
	if p := 0x128000 / virtio.LogPageSize; logMem2[p/8]&(1<<(p%8)) == 0 {
		t.Errorf("page %d marked by ring 1 after the switch: not in log 2", p)
	}
	// SET_LOG_FD is kept, and closed with the connection.
	fe.mustAck(ReqSetLogFD, Empty{}, fe.own(eventfd(t)))

	// vhost_dev_stop on the source: GET_VRING_BASE stops each ring.
	for i := uint32(0); i < 2; i++ {
		fe.call(ReqGetVringBase, VringState{Index: i})
	}
	// Logging stops (a failed migration): no ring runs, nothing to tell.
	fe.mustAck(ReqSetFeatures, U64(acked))
	ev = dev.eventList()
	if n := len(ev); ev[n-2] != "stop 0" || ev[n-1] != "stop 1" {
		t.Errorf("device events: got %q, want the rings stopped last", ev)
	}

	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	if n := mapped(t, "vu-log-2"); n != 1 {
		t.Errorf("log 2 mapped %d times after the connection ended, want 1 (the test's)", n)
	}
	if st := srv.Stats(); st.Messages[ReqSetLogBase] != 5 || st.Rejected != 5 {
		t.Errorf("stats: %d SET_LOG_BASE, %d rejected; want 5 and 5", st.Messages[ReqSetLogBase], st.Rejected)
	}
	checkNoFDLeak(t, before)
}

// A ring started while logging (a memory change or a restart during a
// migration) starts with its log; logging stops on running rings without
// stopping them; a front-end without LOG_SHMFD gets no log, and a device
// that does not log is offered neither feature.
func TestDirtyLogRestart(t *testing.T) {
	dev := newLogDevice()
	srv := NewServer(dev, Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	fe.send(ReqSetProtocolFeatures, 0, U64(ProtocolReplyAck|ProtocolLogShmfd|ProtocolConfigureMemSlots))
	acked := uint64(virtio.FVersion1) | FProtocolFeatures | FLogAll
	fe.send(ReqSetFeatures, 0, U64(acked))
	const logSize = (guestBase + guestSize) / virtio.LogPageSize / 8
	lfd, _ := logMemfd(t, "vu-log-restart", logSize)
	fe.send(ReqSetLogBase, 0, Log{Size: logSize}, lfd)
	fe.readLogReply(Log{Size: logSize})
	unix.Close(lfd)
	mfd := memfd(t, guestSize)
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: guestRegion()}, mfd)
	unix.Close(mfd)
	fe.setUpRing(0, 256)
	a := ringAddr(0)
	a.Flags, a.LogGuest = VringFlagLog, 0x1f0000
	fe.send(ReqSetVringAddr, 0, a)
	fe.mustAck(ReqSetVringEnable, VringState{Index: 0, Num: 1})
	if l := dev.ringLog(0); l.Log == nil || l.UsedAddr != 0x1f0000 {
		t.Fatalf("ring 0 started while logging with log %+v, want the log and its log address", l)
	}
	fe.mustAck(ReqSetFeatures, U64(acked&^FLogAll))
	if l := dev.ringLog(0); l.Log != nil {
		t.Errorf("ring 0 still logs after VHOST_F_LOG_ALL went")
	}
	if _, ok := dev.queue(0); !ok {
		t.Errorf("ring 0 stopped when logging stopped")
	}
	fe.close()
	if err := wait(); err != nil {
		t.Fatal(err)
	}

	plain := newFakeDevice()
	srv = NewServer(plain, Options{})
	c, fe = socketPair(t)
	wait = serve(t, srv, c)
	if f := fe.callU64(ReqGetFeatures, Empty{}); f&FLogAll != 0 {
		t.Errorf("GET_FEATURES of a device that does not log: %#x has VHOST_F_LOG_ALL", f)
	}
	if p := ProtocolFeatures(fe.callU64(ReqGetProtocolFeatures, Empty{})); p.Has(ProtocolLogShmfd) {
		t.Errorf("protocol features of a device that does not log: %s has LOG_SHMFD", p)
	}
	fe.send(ReqSetProtocolFeatures, 0, U64(ProtocolReplyAck))
	if got := fe.ack(ReqSetFeatures, U64(uint64(virtio.FVersion1)|FLogAll)); got == 0 {
		t.Error("VHOST_F_LOG_ALL acked from a device that does not offer it: got ack 0")
	}
	fe.close()
	wait()
}
