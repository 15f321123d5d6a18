package vhostuser

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// Guest layout the fake front-end uses: one region of guestSize bytes at guest physical
// address guestBase, which the front-end has mapped at userBase.
const (
	guestBase = 0x100000
	userBase  = 0x7f0000000000
	guestSize = 1 << 20
)

// fakeDevice is a Device that records every call.
type fakeDevice struct {
	mu        sync.Mutex
	features  virtio.Features
	proto     ProtocolFeatures
	queues    int
	config    []byte
	acked     virtio.Features
	running   map[int]QueueSetup
	events    []string
	stopState QueueState
	kickFDs   map[int]int // ring -> descriptor number of its kick file while started
	startErr  error
	mtu       uint16
	rarp      net.HardwareAddr
}

func newFakeDevice() *fakeDevice {
	return &fakeDevice{
		features: virtio.FVersion1 | virtio.NetFMAC | virtio.NetFMrgRxbuf | virtio.FEventIdx,
		queues:   2,
		config:   []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0xdc, 0x05},
		running:  make(map[int]QueueSetup),
		kickFDs:  make(map[int]int),
	}
}

func (d *fakeDevice) record(format string, args ...any) {
	d.events = append(d.events, fmt.Sprintf(format, args...))
}

func (d *fakeDevice) Features() virtio.Features          { return d.features }
func (d *fakeDevice) ProtocolFeatures() ProtocolFeatures { return d.proto }
func (d *fakeDevice) NumQueues() int                     { return d.queues }

func (d *fakeDevice) SetFeatures(acked virtio.Features) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.acked = acked
	d.record("features %#x", uint64(acked))
	return nil
}

func (d *fakeDevice) GetConfig(offset, size uint32) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if int(offset)+int(size) > len(d.config) {
		return nil, fmt.Errorf("config read [%d, %d) past %d bytes", offset, offset+size, len(d.config))
	}
	return append([]byte(nil), d.config[offset:offset+size]...), nil
}

func (d *fakeDevice) SetConfig(offset uint32, data []byte, migration bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.record("setconfig %d %x %t", offset, data, migration)
	return nil
}

func (d *fakeDevice) StartQueue(index int, q QueueSetup) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.startErr != nil {
		return d.startErr
	}
	if _, ok := d.running[index]; ok {
		return fmt.Errorf("queue %d started twice", index)
	}
	d.running[index] = q
	d.kickFDs[index] = int(q.Kick.Fd())
	d.record("start %d", index)
	return nil
}

func (d *fakeDevice) StopQueue(index int) (QueueState, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.running[index]; !ok {
		return QueueState{}, fmt.Errorf("queue %d stopped but not running", index)
	}
	delete(d.running, index)
	d.record("stop %d", index)
	return d.stopState, nil
}

func (d *fakeDevice) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.running) != 0 {
		d.record("reset with %d queues running", len(d.running))
		return
	}
	d.acked = 0
	d.record("reset")
}

func (d *fakeDevice) SetMTU(mtu uint16) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mtu = mtu
	return nil
}

func (d *fakeDevice) SendRARP(mac net.HardwareAddr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rarp = append(net.HardwareAddr(nil), mac...)
	return nil
}

func (d *fakeDevice) setStopState(st QueueState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopState = st
}

func (d *fakeDevice) kickFD(i int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.kickFDs[i]
}

func (d *fakeDevice) ackedFeatures() virtio.Features {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.acked
}

func (d *fakeDevice) relayed() (uint16, net.HardwareAddr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mtu, d.rarp
}

func (d *fakeDevice) eventList() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.events...)
}

func (d *fakeDevice) queue(i int) (QueueSetup, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	q, ok := d.running[i]
	return q, ok
}

// waitEvent polls until the device recorded want.
func (d *fakeDevice) waitEvent(t testing.TB, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range d.eventList() {
			if e == want {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("device events %q: want %q among them", d.eventList(), want)
}

// frontEnd is a fake vhost-user front-end.
type frontEnd struct {
	t     testing.TB
	c     *net.UnixConn
	owned []int // descriptors sent inline, closed with the front-end
}

// own keeps fd until the front-end closes, for descriptors sent inline.
func (f *frontEnd) own(fd int) int {
	f.owned = append(f.owned, fd)
	return fd
}

func unixConn(t testing.TB, fd int) *net.UnixConn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "socketpair")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatalf("FileConn: %v", err)
	}
	return c.(*net.UnixConn)
}

// socketPair returns the back-end's end of a fresh connection and a front-end on the other.
func socketPair(t testing.TB) (*net.UnixConn, *frontEnd) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	return unixConn(t, fds[0]), &frontEnd{t: t, c: unixConn(t, fds[1])}
}

func (f *frontEnd) close() {
	f.c.Close()
	closeAll(f.owned...)
	f.owned = nil
}

func (f *frontEnd) sendRaw(b []byte, fds ...int) {
	f.t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := f.c.WriteMsgUnix(b, oob, nil); err != nil {
		f.t.Fatalf("send %d bytes with %d fds: %v", len(b), len(fds), err)
	}
}

func (f *frontEnd) send(req Request, flags Flags, p Payload, fds ...int) {
	f.t.Helper()
	f.sendRaw(AppendMessage(nil, req, Version|flags, p), fds...)
}

// readReply reads one reply to req and returns its payload.
func (f *frontEnd) readReply(req Request) []byte {
	f.t.Helper()
	f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(f.c, hdr[:]); err != nil {
		f.t.Fatalf("read %s reply header: %v", req, err)
	}
	gotReq := Request(binary.NativeEndian.Uint32(hdr[0:]))
	flags := Flags(binary.NativeEndian.Uint32(hdr[4:]))
	size := binary.NativeEndian.Uint32(hdr[8:])
	if gotReq != req || flags != Version|FlagReply {
		f.t.Fatalf("reply header: got request %s flags %#x, want %s flags %#x", gotReq, flags, req, Version|FlagReply)
	}
	if size > MaxPayloadSize {
		f.t.Fatalf("reply to %s: payload %d bytes", req, size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(f.c, b); err != nil {
		f.t.Fatalf("read %s reply payload: %v", req, err)
	}
	return b
}

func (f *frontEnd) call(req Request, p Payload, fds ...int) []byte {
	f.t.Helper()
	f.send(req, 0, p, fds...)
	return f.readReply(req)
}

func (f *frontEnd) callU64(req Request, p Payload) uint64 {
	f.t.Helper()
	b := f.call(req, p)
	if len(b) != 8 {
		f.t.Fatalf("%s reply is %d bytes, want 8", req, len(b))
	}
	return binary.NativeEndian.Uint64(b)
}

// ack sends req with NEED_REPLY and returns the ack's u64.
func (f *frontEnd) ack(req Request, p Payload, fds ...int) uint64 {
	f.t.Helper()
	f.send(req, FlagNeedReply, p, fds...)
	b := f.readReply(req)
	if len(b) != 8 {
		f.t.Fatalf("%s ack is %d bytes, want 8", req, len(b))
	}
	return binary.NativeEndian.Uint64(b)
}

// mustAck sends req with NEED_REPLY and fails unless it succeeds.
func (f *frontEnd) mustAck(req Request, p Payload, fds ...int) {
	f.t.Helper()
	if got := f.ack(req, p, fds...); got != 0 {
		f.t.Fatalf("%s ack: got %d, want 0", req, got)
	}
}

// isOpen reports whether descriptor fd is open in this process.
func isOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// sync waits until every earlier message has been handled.
func (f *frontEnd) sync() { f.t.Helper(); f.callU64(ReqGetQueueNum, Empty{}) }

// expectClosed fails unless the back-end closed the connection.
func (f *frontEnd) expectClosed() {
	f.t.Helper()
	f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [64]byte
	n, err := f.c.Read(b[:])
	if err != io.EOF && !errors.Is(err, unix.ECONNRESET) {
		f.t.Fatalf("read after bad message: got %d bytes, %v; want the connection closed", n, err)
	}
}

func memfd(t testing.TB, size int) int {
	t.Helper()
	fd, err := unix.MemfdCreate("vhostuser-test-guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatalf("ftruncate memfd: %v", err)
	}
	return fd
}

func eventfd(t testing.TB) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatalf("eventfd: %v", err)
	}
	return fd
}

func closeAll(fds ...int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// guestRegion is the one region of the fake front-end's memory.
func guestRegion() MemoryRegion {
	return MemoryRegion{GuestAddr: guestBase, Size: guestSize, UserAddr: userBase}
}

// ringAddr places ring i in the guest region, 64 KiB apart.
func ringAddr(i uint32) VringAddr {
	base := uint64(userBase) + 0x10000*uint64(i+1)
	return VringAddr{Index: i, DescUser: base, AvailUser: base + 0x4000, UsedUser: base + 0x8000}
}

// setUpRing sends what QEMU sends per ring before enabling it.
func (f *frontEnd) setUpRing(i uint32, size uint32) (kick, call int) {
	f.t.Helper()
	kick, call = eventfd(f.t), eventfd(f.t)
	f.send(ReqSetVringNum, 0, VringState{Index: i, Num: size})
	f.send(ReqSetVringBase, 0, VringState{Index: i})
	f.send(ReqSetVringAddr, 0, ringAddr(i))
	f.send(ReqSetVringKick, 0, VringFile{Index: uint8(i)}, kick)
	f.send(ReqSetVringCall, 0, VringFile{Index: uint8(i)}, call)
	closeAll(kick, call)
	return kick, call
}

// serve runs ServeConn on c in the background; the returned function waits for it.
func serve(t testing.TB, srv *Server, c *net.UnixConn) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(ctx, c) }()
	var once sync.Once
	var err error
	wait := func() error {
		once.Do(func() {
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				cancel()
				t.Fatalf("ServeConn did not return")
			}
			cancel()
		})
		return err
	}
	t.Cleanup(func() { cancel(); wait() })
	return wait
}

// logBuffer collects a server's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testLogger(w io.Writer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: w, Level: hclog.Trace})
}

var warmOnce sync.Once

// openFDs lists the process's open descriptors with what they point to. The first call
// warms up the runtime's poller, whose descriptors are created on first use.
func openFDs(t testing.TB) map[string]string {
	t.Helper()
	warmOnce.Do(func() {
		a, b := socketPair(t)
		a.Close()
		b.close()
	})
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("list /proc/self/fd: %v", err)
	}
	fds := make(map[string]string, len(ents))
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fds[e.Name()] = target
	}
	return fds
}

// checkNoFDLeak fails if descriptors are open that were not in before. The descriptor
// that listed /proc/self/fd itself is closed by the time the listing returns.
func checkNoFDLeak(t testing.TB, before map[string]string) {
	t.Helper()
	var leaked []string
	deadline := time.Now().Add(2 * time.Second)
	for {
		leaked = leaked[:0]
		for fd, target := range openFDs(t) {
			if _, ok := before[fd]; !ok {
				leaked = append(leaked, fd+" -> "+target)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(leaked) > 0 {
		sort.Strings(leaked)
		t.Fatalf("open descriptors: got %d more than before (%s), want none", len(leaked), strings.Join(leaked, ", "))
	}
}
