package hostile_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// replyWait is how long the front-end waits for a reply the back-end owes
// it, or for the connection to close: generous, for a loaded machine and
// the race detector, under which a thousand ring restarts take seconds.
// Only a case that fails waits this long.
const replyWait = 30 * time.Second

// frontEnd is one vhost-user connection, front-end side. Its methods
// return errors instead of failing the test: an attack expects the
// back-end to hang up on it.
type frontEnd struct {
	c *net.UnixConn
}

func dial(path string) (*frontEnd, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", path, err)
	}
	return &frontEnd{c: c}, nil
}

func (f *frontEnd) close() { f.c.Close() }

// sendRaw writes b in one sendmsg, with fds as SCM_RIGHTS.
func (f *frontEnd) sendRaw(b []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	f.c.SetWriteDeadline(time.Now().Add(replyWait))
	if _, _, err := f.c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("send %d bytes with %d fds: %w", len(b), len(fds), err)
	}
	return nil
}

// send writes one request, version 1 and flags, its size taken from p.
func (f *frontEnd) send(req vhostuser.Request, flags vhostuser.Flags, p vhostuser.Payload, fds ...int) error {
	return f.sendRaw(vhostuser.AppendMessage(nil, req, vhostuser.Version|flags, p), fds...)
}

// errClosed is the back-end hanging up.
var errClosed = errors.New("connection closed by the back-end")

// readReply reads one reply and checks that it answers req.
func (f *frontEnd) readReply(req vhostuser.Request) ([]byte, error) {
	f.c.SetReadDeadline(time.Now().Add(replyWait))
	var hdr [vhostuser.HeaderSize]byte
	if _, err := io.ReadFull(f.c, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET) {
			return nil, errClosed
		}
		return nil, fmt.Errorf("read %s reply header: %w", req, err)
	}
	got := vhostuser.Request(binary.NativeEndian.Uint32(hdr[0:]))
	flags := vhostuser.Flags(binary.NativeEndian.Uint32(hdr[4:]))
	size := binary.NativeEndian.Uint32(hdr[8:])
	if got != req || flags != vhostuser.Version|vhostuser.FlagReply || size > vhostuser.MaxPayloadSize {
		return nil, fmt.Errorf("reply header: got %s flags %#x size %d, want %s flags %#x", got, uint32(flags), size,
			req, uint32(vhostuser.Version|vhostuser.FlagReply))
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(f.c, b); err != nil {
		return nil, fmt.Errorf("read %s reply payload: %w", req, err)
	}
	return b, nil
}

// call sends req and reads its reply.
func (f *frontEnd) call(req vhostuser.Request, p vhostuser.Payload, fds ...int) ([]byte, error) {
	if err := f.send(req, 0, p, fds...); err != nil {
		return nil, err
	}
	return f.readReply(req)
}

func u64Of(req vhostuser.Request, b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("%s reply is %d bytes, want 8", req, len(b))
	}
	return binary.NativeEndian.Uint64(b), nil
}

// callU64 sends req and returns the u64 of its reply.
func (f *frontEnd) callU64(req vhostuser.Request, p vhostuser.Payload) (uint64, error) {
	b, err := f.call(req, p)
	if err != nil {
		return 0, err
	}
	return u64Of(req, b)
}

// ack sends req with NEED_REPLY and returns the ack: 0 for success.
func (f *frontEnd) ack(req vhostuser.Request, p vhostuser.Payload, fds ...int) (uint64, error) {
	if err := f.send(req, vhostuser.FlagNeedReply, p, fds...); err != nil {
		return 0, err
	}
	b, err := f.readReply(req)
	if err != nil {
		return 0, err
	}
	return u64Of(req, b)
}

// mustAck is ack where anything but success is an error.
func (f *frontEnd) mustAck(req vhostuser.Request, p vhostuser.Payload, fds ...int) error {
	v, err := f.ack(req, p, fds...)
	if err != nil {
		return fmt.Errorf("%s: %w", req, err)
	}
	if v != 0 {
		return fmt.Errorf("%s: ack %d, want 0", req, v)
	}
	return nil
}

// waitClosed reads and drops whatever the back-end still sends until it
// hangs up, or d passes; it reports whether it hung up.
func (f *frontEnd) waitClosed(d time.Duration) bool {
	f.c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for {
		_, err := f.c.Read(buf)
		if err != nil {
			return errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET)
		}
	}
}

// Where the front-end's guest memory is, in guest physical and front-end
// virtual addresses, and how its rings are laid out.
const (
	guestBase = 1 << 20
	userBase  = 0x7f00_0000_0000
	ringSize  = 256
	slotSize  = 2048
	numRings  = 4 // two queue pairs, as the TAP has
)

// guestMem is a guest's RAM in a memfd, shared with the back-end, holding
// every ring of the device as a Go driver (virtiotest) lays them out.
type guestMem struct {
	fd     int
	mapped []byte // the whole memfd, as the front-end mapped it
	buf    []byte // guest memory, from guestBase on
	offset int    // where buf starts in the file
	vm     *virtiotest.Machine
}

// memOptions say how a guest's memory is laid out.
type memOptions struct {
	packed, eventIdx bool
	// offset starts guest memory this many bytes into the memfd, and the
	// memory table's mmap offset says so.
	offset int
	// seals are added to the memfd once the rings are laid out.
	seals int
}

// newGuestMem lays out numRings rings, split or packed, in a fresh memfd.
func newGuestMem(o memOptions) (*guestMem, error) {
	g := &guestMem{fd: -1, offset: o.offset}
	specs := make([]virtiotest.QueueSpec, numRings)
	for i := range specs {
		specs[i] = virtiotest.QueueSpec{Size: ringSize, SlotSize: slotSize, Packed: o.packed, EventIdx: o.eventIdx}
	}
	alloc := func(n int) ([]byte, error) {
		page := unix.Getpagesize()
		size := (o.offset + n + page - 1) &^ (page - 1)
		fd, err := memfd(size)
		if err != nil {
			return nil, err
		}
		b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("mmap guest memfd: %w", err)
		}
		g.fd, g.mapped, g.buf = fd, b, b[o.offset:]
		return g.buf, nil
	}
	var err error
	if g.vm, err = virtiotest.NewMachine(virtiotest.MachineOptions{Alloc: alloc}, specs...); err != nil {
		g.close()
		return nil, err
	}
	if o.seals != 0 {
		if _, err := unix.FcntlInt(uintptr(g.fd), unix.F_ADD_SEALS, o.seals); err != nil {
			g.close()
			return nil, fmt.Errorf("seal guest memfd with %#x: %w", o.seals, err)
		}
	}
	return g, nil
}

// memfd makes a memfd of n bytes.
func memfd(n int) (int, error) {
	fd, err := unix.MemfdCreate("vmnet-hostile-guest", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(n)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("size memfd to %d bytes: %w", n, err)
	}
	return fd, nil
}

func (g *guestMem) close() {
	if g.mapped != nil {
		unix.Munmap(g.mapped)
		g.mapped, g.buf = nil, nil
	}
	if g.fd >= 0 {
		unix.Close(g.fd)
		g.fd = -1
	}
}

// region is the memory table entry of the whole memfd.
func (g *guestMem) region() vhostuser.MemoryRegion {
	return vhostuser.MemoryRegion{GuestAddr: guestBase, Size: uint64(len(g.buf)), UserAddr: userBase,
		MmapOffset: uint64(g.offset)}
}

// table is the SET_MEM_TABLE payload of the whole memfd.
func (g *guestMem) table() vhostuser.MemoryTable {
	return vhostuser.MemoryTable{Regions: []vhostuser.MemoryRegion{g.region()}}
}

// user is the front-end virtual address of guest address gpa.
func user(gpa uint64) uint64 { return gpa - guestBase + userBase }

// vringAddr is SET_VRING_ADDR of ring i as the driver laid it out.
func (g *guestMem) vringAddr(i int) vhostuser.VringAddr {
	a := g.vm.Queue(i).Areas()
	return vhostuser.VringAddr{Index: uint32(i), DescUser: user(a.Desc), AvailUser: user(a.Driver), UsedUser: user(a.Device)}
}

// newEventFD makes the kind of eventfd a front-end hands over.
func newEventFD() (*os.File, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return os.NewFile(uintptr(fd), "eventfd"), nil
}

// kick writes 1 to a kick eventfd.
func kick(f *os.File) error {
	_, err := f.Write(binary.NativeEndian.AppendUint64(nil, 1))
	return err
}

// Features a front-end acks: what a Linux guest with a vhost-user NIC
// takes of the data path's, indirect descriptors included for the chain
// cases.
const baseFeatures = virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.FEventIdx | virtio.FIndirectDesc

// hdrLen is the vnet header of baseFeatures.
var hdrLen = virtio.HdrLenFor(baseFeatures)

// negotiate is a front-end's opening, as QEMU sends it: features,
// protocol features (every one offered, REPLY_ACK and
// CONFIGURE_MEM_SLOTS among them), owner, then the acked features.
func (f *frontEnd) negotiate(acked virtio.Features) error {
	offered, err := f.callU64(vhostuser.ReqGetFeatures, vhostuser.Empty{})
	if err != nil {
		return fmt.Errorf("GET_FEATURES: %w", err)
	}
	if offered&vhostuser.FProtocolFeatures == 0 || virtio.Features(offered)&acked != acked {
		return fmt.Errorf("GET_FEATURES: offered %#x, want %#x and PROTOCOL_FEATURES", offered, uint64(acked))
	}
	proto, err := f.callU64(vhostuser.ReqGetProtocolFeatures, vhostuser.Empty{})
	if err != nil {
		return fmt.Errorf("GET_PROTOCOL_FEATURES: %w", err)
	}
	if err := f.send(vhostuser.ReqSetProtocolFeatures, 0, vhostuser.U64(proto)); err != nil {
		return err
	}
	if err := f.mustAck(vhostuser.ReqSetOwner, vhostuser.Empty{}); err != nil {
		return err
	}
	return f.mustAck(vhostuser.ReqSetFeatures, vhostuser.U64(uint64(acked)|vhostuser.FProtocolFeatures))
}

// ringFiles are a ring's kick and call eventfds, the front-end's.
type ringFiles struct{ kick, call *os.File }

// setUpRing sends what QEMU sends per ring, each with NEED_REPLY, and
// enables the ring.
func (f *frontEnd) setUpRing(i int, addr vhostuser.VringAddr, base uint32, files ringFiles) error {
	steps := []struct {
		req vhostuser.Request
		p   vhostuser.Payload
		fds []int
	}{
		{vhostuser.ReqSetVringNum, vhostuser.VringState{Index: uint32(i), Num: ringSize}, nil},
		{vhostuser.ReqSetVringBase, vhostuser.VringState{Index: uint32(i), Num: base}, nil},
		{vhostuser.ReqSetVringAddr, addr, nil},
		{vhostuser.ReqSetVringKick, vhostuser.VringFile{Index: uint8(i)}, []int{int(files.kick.Fd())}},
		{vhostuser.ReqSetVringCall, vhostuser.VringFile{Index: uint8(i)}, []int{int(files.call.Fd())}},
		{vhostuser.ReqSetVringEnable, vhostuser.VringState{Index: uint32(i), Num: 1}, nil},
	}
	for _, s := range steps {
		if err := f.mustAck(s.req, s.p, s.fds...); err != nil {
			return fmt.Errorf("ring %d: %w", i, err)
		}
	}
	return nil
}
