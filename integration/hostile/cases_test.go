package hostile_test

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/internal/frametest"
	vu "github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// hostileCases are the attacks, by what they attack: message framing,
// memory tables, ring setup, descriptors, descriptor chains once a ring
// runs, floods and disconnects, dirty logs.
var hostileCases = concat(framingCases, memoryCases, ringCases, fdCases, chainCases, floodCases, logCases)

func concat(lists ...[]hostileCase) []hostileCase {
	var all []hostileCase
	for _, l := range lists {
		all = append(all, l...)
	}
	return all
}

const v = vu.Version

// header is a message header with any size.
func header(req vu.Request, flags vu.Flags, size uint32) []byte {
	return vu.Header{Request: req, Flags: flags, Size: size}.Append(nil)
}

// rawMsg is a message whose header's size is len(payload).
func rawMsg(req vu.Request, flags vu.Flags, payload []byte) []byte {
	return append(header(req, flags, uint32(len(payload))), payload...)
}

func u64(x uint64) []byte { return binary.NativeEndian.AppendUint64(nil, x) }

// many is n copies of a message, to be written at once.
func many(n int, msgs ...[]byte) []byte {
	var b []byte
	for range n {
		for _, m := range msgs {
			b = append(b, m...)
		}
	}
	return b
}

var framingCases = []hostileCase{
	{"framing/header cut short, then hang-up", func(a *attack) {
		a.sendRaw(header(vu.ReqGetFeatures, v, 0)[:6])
		a.conn().c.CloseWrite()
		a.closed(replyWait)
	}},
	{"framing/payload size one past the limit", func(a *attack) {
		a.sendRaw(header(vu.ReqGetFeatures, v, vu.MaxPayloadSize+1))
		a.closed(replyWait)
	}},
	{"framing/size says more than sent, swallowing the next header", func(a *attack) {
		b := append(header(vu.ReqSetFeatures, v, 8+vu.HeaderSize), u64(uint64(baseFeatures))...)
		a.sendRaw(append(b, header(vu.ReqGetFeatures, v, 0)...))
		a.probe("closed")
	}},
	{"framing/size says less than sent", func(a *attack) {
		b := append(header(vu.ReqSetVringNum, v, 4), vu.VringState{Index: 0, Num: 256}.Append(nil)...)
		a.sendRaw(b)
		a.probe("closed")
	}},
	{"framing/unknown requests: 99 with NEED_REPLY, 2^32-1 with a payload", func(a *attack) {
		a.ack("REQUEST_99", "ack 1", 99, vu.Empty{})
		a.sendRaw(rawMsg(^vu.Request(0), v, make([]byte, 64)))
		a.probe("kept")
	}},
	{"framing/reply flag on a request", func(a *attack) {
		a.sendRaw(rawMsg(vu.ReqGetFeatures, v|vu.FlagReply, nil))
		a.probe("closed")
	}},
	{"framing/message split across writes, then abandoned", func(a *attack) {
		b := rawMsg(vu.ReqSetFeatures, v, u64(uint64(baseFeatures)))
		a.sendRaw(b[:vu.HeaderSize+3])
		time.Sleep(50 * time.Millisecond)
		a.sendRaw(b[vu.HeaderSize+3 : vu.HeaderSize+6])
		a.closed(4 * messageTimeout)
	}},
	{"framing/NEED_REPLY on requests that have a reply: one reply, no ack after it", func(a *attack) {
		a.send(vu.ReqGetFeatures, vu.FlagNeedReply, vu.Empty{})
		b, err := a.conn().readReply(vu.ReqGetFeatures)
		a.want("GET_FEATURES", fmt.Sprintf("%d bytes, %v", len(b), err), "8 bytes, <nil>")
		a.send(vu.ReqGetVringBase, vu.FlagNeedReply, vu.VringState{Index: 2})
		b, err = a.conn().readReply(vu.ReqGetVringBase)
		a.want("GET_VRING_BASE of a ring never set up", fmt.Sprintf("%x, %v", b, err), "0200000000000000, <nil>")
		a.probe("kept")
	}},
	{"framing/before any negotiation: NEED_REPLY, features never offered", func(a *attack) {
		a.ack("SET_OWNER", "ack 0", vu.ReqSetOwner, vu.Empty{})
		a.ack("SET_VRING_ENABLE of ring 9", "ack 1", vu.ReqSetVringEnable, vu.VringState{Index: 9, Num: 1})
		a.ack("SET_FEATURES bit 41", "ack 1", vu.ReqSetFeatures, vu.U64(1<<41|uint64(baseFeatures)|vu.FProtocolFeatures))
		a.ack("SET_PROTOCOL_FEATURES bit 40", "ack 1", vu.ReqSetProtocolFeatures, vu.U64(1<<40))
		a.probe("kept")
	}},
	{"framing/connects and says nothing", func(a *attack) {
		a.conn()
		a.closed(3 * firstMessageTimeout)
	}},
	{"framing/1000 failing requests with NEED_REPLY", func(a *attack) {
		bad := rawMsg(vu.ReqSetVringNum, v|vu.FlagNeedReply, vu.VringState{Index: 200, Num: 256}.Append(nil))
		fe := a.conn()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); fe.sendRaw(many(1000, bad)) }()
		nacks := 0
		for range 1000 {
			b, err := fe.readReply(vu.ReqSetVringNum)
			if err != nil {
				a.note("reply: %v", err)
				break
			}
			if x, _ := u64Of(vu.ReqSetVringNum, b); x != 0 {
				nacks++
			}
		}
		wg.Wait()
		a.want("acks", fmt.Sprintf("%d of 1000 failed", nacks), "1000 of 1000 failed")
		a.probe("kept")
	}},
}

// negotiate is a front-end's opening on the attacker's connection.
func (a *attack) negotiate() {
	a.t.Helper()
	if err := a.conn().negotiate(baseFeatures); err != nil {
		a.t.Fatal(err)
	}
}

// prepared opens a session that has negotiated and shared its memory,
// with no ring set up.
func (a *attack) prepared(o sessionOptions) *session {
	a.t.Helper()
	o.noRings = true
	return a.open(o)
}

// memfdOf makes a memfd of n bytes kept until the case ends.
func (a *attack) memfdOf(n int) int {
	a.t.Helper()
	fd, err := memfd(n)
	if err != nil {
		a.t.Fatal(err)
	}
	return a.fd(fd)
}

// pipe makes a pipe; both ends stay open until the case ends.
func (a *attack) pipe() (r, w *os.File) {
	a.t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		a.t.Fatal(err)
	}
	return a.file(r), a.file(w)
}

// socket makes one end of a socket pair, the other closed.
func (a *attack) socket() *os.File {
	a.t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		a.t.Fatal(err)
	}
	unix.Close(sp[1])
	return a.file(os.NewFile(uintptr(sp[0]), "socket"))
}

// regularFile makes a regular file of 1 MiB.
func (a *attack) regularFile() *os.File {
	a.t.Helper()
	f, err := os.CreateTemp(a.t.TempDir(), "hostile")
	if err != nil {
		a.t.Fatal(err)
	}
	if err := f.Truncate(1 << 20); err != nil {
		a.t.Fatal(err)
	}
	return a.file(f)
}

// semaphore makes an EFD_SEMAPHORE eventfd holding 2^63.
func (a *attack) semaphore() *os.File {
	a.t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_SEMAPHORE|unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		a.t.Fatal(err)
	}
	f := a.file(os.NewFile(uintptr(fd), "semaphore"))
	if _, err := f.Write(u64(1 << 63)); err != nil {
		a.t.Fatal(err)
	}
	return f
}

func (a *attack) eventfd() *os.File {
	a.t.Helper()
	f, err := newEventFD()
	if err != nil {
		a.t.Fatal(err)
	}
	return a.file(f)
}

// Elsewhere in the guest and front-end address spaces, for regions that
// are not the guest's RAM.
const (
	farGuest = 1 << 32
	farUser  = 1 << 44
)

// refusal is a file offered as the memory of a region of size bytes at
// mmap offset off.
type refusal struct {
	what      string
	fd        func(a *attack) int
	size, off uint64
}

// memRefused is a case that offers each file as guest memory and wants
// each refused with a failed ack, the connection kept.
func memRefused(name string, files ...refusal) hostileCase {
	return hostileCase{"memory/" + name, func(a *attack) {
		a.negotiate()
		for _, f := range files {
			t := vu.MemoryTable{Regions: []vu.MemoryRegion{{GuestAddr: guestBase, Size: f.size, UserAddr: userBase, MmapOffset: f.off}}}
			a.ack("SET_MEM_TABLE of "+f.what, "ack 1", vu.ReqSetMemTable, t, f.fd(a))
		}
		a.probe("kept")
	}}
}

// sealed makes a memfd of 1 MiB sealed with seals.
func (a *attack) sealed(seals int) int {
	a.t.Helper()
	fd := a.memfdOf(1 << 20)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		a.t.Fatal(err)
	}
	return fd
}

// frames checks that the session's rings carry frames both ways.
func (a *attack) frames(s *session) {
	a.t.Helper()
	got := "frames pass"
	if err := s.arp(1, 5*time.Second); err != nil {
		got = err.Error()
	}
	a.want("ARP", got, "frames pass")
}

var memoryCases = []hostileCase{
	{"memory/table of zero regions", func(a *attack) {
		a.sendRaw(rawMsg(vu.ReqSetMemTable, v|vu.FlagNeedReply, make([]byte, 8)))
		a.probe("closed")
	}},
	{"memory/regions that overlap", func(a *attack) {
		t := vu.MemoryTable{Regions: []vu.MemoryRegion{
			{GuestAddr: guestBase, Size: 1 << 20, UserAddr: userBase},
			{GuestAddr: guestBase + 4096, Size: 1 << 20, UserAddr: farUser},
		}}
		a.ack("SET_MEM_TABLE", "closed", vu.ReqSetMemTable, t, a.memfdOf(1<<20), a.memfdOf(1<<20))
	}},
	memRefused("region and mmap offset past the end of the file",
		refusal{"region past the end", func(a *attack) int { return a.memfdOf(64 << 10) }, 1 << 20, 0},
		refusal{"mmap offset past the end", func(a *attack) int { return a.memfdOf(64 << 10) }, 4096, 64 << 10}),
	memRefused("memfd sealed against writes, and against future writes",
		refusal{"F_SEAL_WRITE", func(a *attack) int { return a.sealed(unix.F_SEAL_WRITE) }, 1 << 20, 0},
		refusal{"F_SEAL_FUTURE_WRITE", func(a *attack) int { return a.sealed(unix.F_SEAL_FUTURE_WRITE) }, 1 << 20, 0}),
	memRefused("read-only descriptor of a memfd", refusal{"O_RDONLY", func(a *attack) int {
		fd := a.memfdOf(1 << 20)
		ro, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			a.t.Fatal(err)
		}
		return a.fd(ro)
	}, 1 << 20, 0}),
	memRefused("not mappable: a pipe, a socket, /dev/zero",
		refusal{"pipe", func(a *attack) int { r, _ := a.pipe(); return int(r.Fd()) }, 1 << 20, 0},
		refusal{"socket", func(a *attack) int { return int(a.socket().Fd()) }, 1 << 20, 0},
		refusal{"/dev/zero", func(a *attack) int {
			f, err := os.OpenFile("/dev/zero", os.O_RDWR, 0)
			if err != nil {
				a.t.Fatal(err)
			}
			return int(a.file(f).Fd())
		}, 1 << 20, 0}),
	memRefused("2 TiB sparse memfd, over the mapping limit",
		refusal{"2 TiB", func(a *attack) int { return a.memfdOf(2 << 40) }, 2 << 40, 0}),
	{"memory/mmap offset 1: every ring at an odd host address", func(a *attack) {
		// The back-end sees the front-end's memory one byte off, where no
		// ring word can be aligned.
		s := a.prepared(sessionOptions{})
		r := s.mem.region()
		r.MmapOffset, r.Size = 1, r.Size-1
		a.ack("SET_MEM_TABLE", "ack 0", vu.ReqSetMemTable, vu.MemoryTable{Regions: []vu.MemoryRegion{r}}, s.mem.fd)
		a.want("enable", a.ringSteps(1, ringSize, s.mem.vringAddr(1), 0, s.files[1].kick, s.files[1].call, nil), "ack 1")
		a.ack("SET_MEM_TABLE aligned", "ack 0", vu.ReqSetMemTable, s.mem.table(), s.mem.fd)
		a.otherRings(s, 1)
		a.frames(s)
	}},
	{"memory/ADD_MEM_REG one past MaxMemSlots", func(a *attack) {
		a.negotiate()
		acks := map[string]int{}
		for i := range vu.DefaultMaxMemSlots + 1 {
			r := vu.MemoryRegion{GuestAddr: farGuest + uint64(i)<<20, Size: 4096, UserAddr: farUser + uint64(i)<<20}
			fd := a.memfdOf(4096)
			acks[answer(a.conn().ack(vu.ReqAddMemReg, vu.MemRegionMsg{Region: r}, fd))]++
		}
		a.want("ADD_MEM_REG", fmt.Sprint(acks), fmt.Sprintf("map[ack 0:%d ack 1:1]", vu.DefaultMaxMemSlots))
		a.probe("kept")
	}},
	{"memory/file shrinks to nothing under running rings, then a new table", func(a *attack) {
		s := a.open(sessionOptions{})
		// The frame is posted before the shrink: the front-end's own
		// mapping faults after it too.
		tx := s.mem.vm.Queue(1)
		if _, err := tx.PostTX(arpFrame()); err != nil {
			a.t.Fatal(err)
		}
		faults := a.r.dev.Counters(0).Load(engine.MemoryFaults)
		if err := unix.Ftruncate(s.mem.fd, 0); err != nil {
			a.t.Fatal(err)
		}
		kick(s.files[1].kick)
		a.waitCounter(0, engine.MemoryFaults, faults, 1, 5*time.Second)
		for range 100 {
			kick(s.files[1].kick)
			kick(s.files[0].kick)
		}
		a.probe("kept")
		a.idle()
		fresh, err := newGuestMem(memOptions{eventIdx: true})
		if err != nil {
			a.t.Fatal(err)
		}
		a.cleanup(fresh.close)
		// The rings must stop before the old table goes: the pair that
		// faulted stopped already, with the fault as its error.
		a.ack("SET_MEM_TABLE", "", vu.ReqSetMemTable, fresh.table(), fresh.fd)
	}},
	{"memory/file shrinks to nothing while frames flow to the guest", func(a *attack) {
		s := a.open(sessionOptions{})
		for _, i := range []int{0, 2} {
			for {
				if _, err := s.mem.vm.Queue(i).PostRX(slotSize); err != nil {
					break
				}
			}
			kick(s.files[i].kick)
		}
		// The buffers are posted, then their memory goes, then frames
		// come to fill them.
		c0, c1 := a.r.counters()[0], a.r.counters()[1]
		if err := unix.Ftruncate(s.mem.fd, 0); err != nil {
			a.t.Fatal(err)
		}
		stop := a.flood()
		time.Sleep(200 * time.Millisecond)
		stop()
		after := a.r.counters()
		a.note("memory faults %d, frames to the guest %d, reads that failed %d",
			after[0][engine.MemoryFaults]+after[1][engine.MemoryFaults]-c0[engine.MemoryFaults]-c1[engine.MemoryFaults],
			after[0][engine.RXPackets]+after[1][engine.RXPackets]-c0[engine.RXPackets]-c1[engine.RXPackets],
			after[0][engine.RXDropKernel]+after[1][engine.RXDropKernel]-c0[engine.RXDropKernel]-c1[engine.RXDropKernel])
		a.probe("kept")
		a.live = true
	}},
	{"memory/table replaced while one ring holds a kick it refused", func(a *attack) {
		// Ring 1 is enabled with a kick that is no eventfd: its start was
		// refused and it waits for another. A memory change restarts
		// every ring but that one, and fails for that one.
		s := a.prepared(sessionOptions{})
		a.want("ring 1 with a regular file as kick", a.ringSteps(1, ringSize, s.mem.vringAddr(1), 0, a.regularFile(), s.files[1].call, nil), "ack 1")
		for _, i := range []int{0, 2, 3} {
			a.want(fmt.Sprintf("ring %d", i), a.ringSteps(i, ringSize, s.mem.vringAddr(i), 0, s.files[i].kick, s.files[i].call, nil), "ack 0")
		}
		a.ack("SET_MEM_TABLE", "ack 1", vu.ReqSetMemTable, s.mem.table(), s.mem.fd)
		got := "frames pass"
		if err := s.arp(3, 3*time.Second); err != nil {
			got = err.Error()
		}
		a.want("ARP through pair 1", got, "frames pass")
		a.ack("SET_VRING_KICK of ring 1", "ack 0", vu.ReqSetVringKick, vu.VringFile{Index: 1}, int(s.files[1].kick.Fd()))
		a.frames(s)
	}},
	{"memory/frames read from the holes of a sparse memfd", func(a *attack) {
		// The helper's reads of guest memory the front-end never wrote
		// allocate its pages, charged to the helper.
		s := a.open(sessionOptions{addMemReg: true})
		fd := a.memfdOf(1 << 30)
		a.ack("ADD_MEM_REG of 1 GiB, sparse", "ack 0", vu.ReqAddMemReg,
			vu.MemRegionMsg{Region: vu.MemoryRegion{GuestAddr: farGuest, Size: 1 << 30, UserAddr: farUser}}, fd)
		g := s.mem.vm.Queue(1)
		hdr := g.Alloc(hdrLen)
		sent := a.r.dev.Counters(0).Load(engine.TXPackets)
		for i := range uint16(100) {
			g.WriteDesc(2*i, virtiotest.Desc{Addr: hdr, Len: uint32(hdrLen), Flags: virtiotest.FlagNext, Next: 2*i + 1})
			g.WriteDesc(2*i+1, virtiotest.Desc{Addr: farGuest + uint64(i)<<20, Len: 60000})
			g.PublishHead(2 * i)
		}
		kick(s.files[1].kick)
		a.waitCounter(0, engine.TXPackets, sent, 100, 5*time.Second)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			a.t.Fatal(err)
		}
		a.note("%d KiB of the memfd allocated by the helper", st.Blocks/2)
	}},
	{"memory/table replaced while rings run, a region hot-plugged", func(a *attack) {
		s := a.open(sessionOptions{})
		t := vu.MemoryTable{Regions: []vu.MemoryRegion{s.mem.region(), {GuestAddr: farGuest, Size: 64 << 10, UserAddr: farUser}}}
		a.ack("SET_MEM_TABLE", "ack 0", vu.ReqSetMemTable, t, s.mem.fd, a.memfdOf(64<<10))
		a.frames(s)
	}},
	{"memory/table replaced by one that holds no ring, then back", func(a *attack) {
		s := a.open(sessionOptions{})
		other := vu.MemoryTable{Regions: []vu.MemoryRegion{{GuestAddr: farGuest, Size: 1 << 20, UserAddr: farUser}}}
		a.ack("SET_MEM_TABLE elsewhere", "ack 0", vu.ReqSetMemTable, other, a.memfdOf(1<<20))
		tx := a.r.dev.Counters(0).Load(engine.TXPackets)
		s.mem.vm.Queue(1).PostTX(arpFrame())
		kick(s.files[1].kick)
		time.Sleep(50 * time.Millisecond)
		a.want("frames sent meanwhile", fmt.Sprint(a.r.dev.Counters(0).Load(engine.TXPackets)-tx), "0")
		a.ack("SET_MEM_TABLE back", "ack 0", vu.ReqSetMemTable, s.mem.table(), s.mem.fd)
		a.frames(s)
	}},
	{"memory/REM_MEM_REG of the region the rings live in", func(a *attack) {
		s := a.open(sessionOptions{addMemReg: true})
		a.ack("REM_MEM_REG", "ack 0", vu.ReqRemMemReg, vu.MemRegionMsg{Region: s.mem.region()})
		s.mem.vm.Queue(1).PostTX(arpFrame())
		for i := range s.files {
			kick(s.files[i].kick)
		}
		a.probe("kept")
		a.live = true
	}},
	{"memory/ADD_MEM_REG overlapping the rings' region", func(a *attack) {
		s := a.open(sessionOptions{addMemReg: true})
		r := vu.MemoryRegion{GuestAddr: guestBase + 64<<10, Size: 64 << 10, UserAddr: farUser}
		a.ack("ADD_MEM_REG", "ack 1", vu.ReqAddMemReg, vu.MemRegionMsg{Region: r}, a.memfdOf(64<<10))
		a.frames(s)
	}},
	{"memory/the rings' region removed and added back 300 times, another staying", func(a *attack) {
		s := a.open(sessionOptions{addMemReg: true})
		other := vu.MemoryRegion{GuestAddr: farGuest, Size: 64 << 10, UserAddr: farUser}
		a.ack("ADD_MEM_REG elsewhere", "ack 0", vu.ReqAddMemReg, vu.MemRegionMsg{Region: other}, a.memfdOf(64<<10))
		rem := rawMsg(vu.ReqRemMemReg, v, vu.MemRegionMsg{Region: s.mem.region()}.Append(nil))
		add := rawMsg(vu.ReqAddMemReg, v, vu.MemRegionMsg{Region: s.mem.region()}.Append(nil))
		for range 300 {
			a.sendRaw(rem)
			a.sendRaw(add, s.mem.fd)
		}
		a.probe("kept")
		a.frames(s)
	}},
}

// ringSteps sets ring i up with what QEMU sends, each with NEED_REPLY,
// and returns what the last step (the enable) got.
func (a *attack) ringSteps(i int, num uint32, addr vu.VringAddr, base uint32, kick, call, errFD *os.File) string {
	a.t.Helper()
	steps := []struct {
		req vu.Request
		p   vu.Payload
		fd  *os.File
	}{
		{vu.ReqSetVringNum, vu.VringState{Index: uint32(i), Num: num}, nil},
		{vu.ReqSetVringBase, vu.VringState{Index: uint32(i), Num: base}, nil},
		{vu.ReqSetVringAddr, addr, nil},
		{vu.ReqSetVringKick, vu.VringFile{Index: uint8(i)}, kick},
		{vu.ReqSetVringCall, vu.VringFile{Index: uint8(i)}, call},
		{vu.ReqSetVringErr, vu.VringFile{Index: uint8(i)}, errFD},
	}
	for _, s := range steps {
		if s.req == vu.ReqSetVringErr && s.fd == nil {
			continue
		}
		var fds []int
		if s.fd != nil {
			fds = []int{int(s.fd.Fd())}
		}
		if got := answer(a.conn().ack(s.req, s.p, fds...)); got != "ack 0" {
			a.t.Errorf("ring %d: %s: got %s, want ack 0", i, s.req, got)
			return got
		}
	}
	return answer(a.conn().ack(vu.ReqSetVringEnable, vu.VringState{Index: uint32(i), Num: 1}))
}

// otherRings sets up every ring of s but skip, as a well-behaved
// front-end does.
func (a *attack) otherRings(s *session, skip int) {
	a.t.Helper()
	for i := range numRings {
		if i == skip {
			continue
		}
		if err := s.fe.setUpRing(i, s.mem.vringAddr(i), s.base(), s.files[i]); err != nil {
			a.t.Fatal(err)
		}
	}
}

// badAddr is a case that sets TX ring 1 up at addresses change makes of
// the right ones and wants its start refused, the connection kept; then
// the right addresses start it, and frames pass.
func badAddr(name string, change func(addr *vu.VringAddr, g *guestMem)) hostileCase {
	return hostileCase{"ring/" + name, func(a *attack) {
		s := a.prepared(sessionOptions{})
		addr := s.mem.vringAddr(1)
		change(&addr, s.mem)
		a.want("enable", a.ringSteps(1, ringSize, addr, 0, s.files[1].kick, s.files[1].call, nil), "ack 1")
		a.ack("right addresses", "ack 0", vu.ReqSetVringAddr, s.mem.vringAddr(1))
		a.otherRings(s, 1)
		a.frames(s)
	}}
}

var ringCases = []hostileCase{
	{"ring/SET_VRING_NUM 0", func(a *attack) {
		a.prepared(sessionOptions{})
		a.ack("SET_VRING_NUM", "closed", vu.ReqSetVringNum, vu.VringState{Index: 1, Num: 0})
	}},
	{"ring/SET_VRING_NUM 32769", func(a *attack) {
		a.prepared(sessionOptions{})
		a.ack("SET_VRING_NUM", "closed", vu.ReqSetVringNum, vu.VringState{Index: 1, Num: 32769})
	}},
	{"ring/split ring of 100, not a power of two", func(a *attack) {
		s := a.prepared(sessionOptions{})
		a.want("enable", a.ringSteps(1, 100, s.mem.vringAddr(1), 0, s.files[1].kick, s.files[1].call, nil), "ack 1")
		a.ack("SET_VRING_NUM 256", "ack 0", vu.ReqSetVringNum, vu.VringState{Index: 1, Num: ringSize})
		a.otherRings(s, 1)
		a.frames(s)
	}},
	badAddr("addresses in no region", func(addr *vu.VringAddr, _ *guestMem) {
		addr.DescUser, addr.AvailUser, addr.UsedUser = 0x1000, 0x2000, 0x3000
	}),
	badAddr("used ring across the region's end", func(addr *vu.VringAddr, g *guestMem) {
		addr.UsedUser = userBase + uint64(len(g.buf)) - 8
	}),
	badAddr("descriptor table not 16-byte aligned", func(addr *vu.VringAddr, _ *guestMem) {
		addr.DescUser += 8
	}),
	badAddr("addresses at the top of the address space", func(addr *vu.VringAddr, _ *guestMem) {
		addr.DescUser, addr.AvailUser, addr.UsedUser = ^uint64(0)-15, ^uint64(0)-1, ^uint64(0)-3
	}),
	{"ring/split base 40000 chains ahead of the used index", func(a *attack) {
		s := a.open(sessionOptions{})
		a.ack("SET_VRING_BASE while running", "ack 1", vu.ReqSetVringBase, vu.VringState{Index: 1, Num: 40000})
		for range 100 {
			kick(s.files[1].kick)
		}
		a.ack("right base", "ack 0", vu.ReqSetVringBase, vu.VringState{Index: 1})
		a.frames(s)
	}},
	{"ring/split used index in guest memory 1000 past the base", func(a *attack) {
		s := a.prepared(sessionOptions{})
		used := s.mem.vm.Queue(1).Bytes(s.mem.vm.Queue(1).Areas().Device, 4)
		binary.LittleEndian.PutUint16(used[2:], 1000)
		a.want("enable", a.ringSteps(1, ringSize, s.mem.vringAddr(1), 0, s.files[1].kick, s.files[1].call, nil), "ack 1")
		binary.LittleEndian.PutUint16(used[2:], 0)
		a.ack("SET_VRING_BASE again", "ack 0", vu.ReqSetVringBase, vu.VringState{Index: 1})
		a.otherRings(s, 1)
		a.frames(s)
	}},
	{"ring/split ring of 32768 over memory laid out for 256", func(a *attack) {
		s := a.prepared(sessionOptions{})
		a.want("enable", a.ringSteps(1, 32768, s.mem.vringAddr(1), 0, s.files[1].kick, s.files[1].call, nil), "")
		for range 100 {
			kick(s.files[1].kick)
		}
		a.probe("kept")
		a.live = true
	}},
	{"ring/two rings laid over each other", func(a *attack) {
		s := a.prepared(sessionOptions{})
		a.want("RX ring 0", a.ringSteps(0, ringSize, s.mem.vringAddr(0), 0, s.files[0].kick, s.files[0].call, nil), "ack 0")
		over := s.mem.vringAddr(0)
		over.Index = 1
		a.want("TX ring 1 on RX ring 0", a.ringSteps(1, ringSize, over, 0, s.files[1].kick, s.files[1].call, nil), "ack 0")
		for i := 2; i < numRings; i++ {
			a.ringSteps(i, ringSize, s.mem.vringAddr(i), 0, s.files[i].kick, s.files[i].call, nil)
		}
		rx, tx := s.mem.vm.Queue(0), s.mem.vm.Queue(3)
		for range 32 {
			rx.PostRX(slotSize)
		}
		for range 20 {
			tx.Reap()
			tx.PostTX(arpFrame())
			kick(s.files[3].kick)
			kick(s.files[0].kick)
			kick(s.files[1].kick)
			time.Sleep(5 * time.Millisecond)
		}
		a.probe("kept")
		a.live = true
	}},
	{"ring/GET_VRING_BASE while frames flow, then resumed with a new kick", func(a *attack) {
		s := a.open(sessionOptions{})
		a.frames(s)
		for _, i := range []int{0, 1} {
			// A stopped split ring has used every chain it took: it
			// resumes where its used index is. RX buffers posted past it
			// stay posted.
			b, err := a.conn().call(vu.ReqGetVringBase, vu.VringState{Index: uint32(i)})
			got, want := fmt.Sprint(err), fmt.Sprint(s.mem.vm.Queue(i).UsedIdx())
			if err == nil {
				got = fmt.Sprint(binary.NativeEndian.Uint32(b[4:]))
			}
			a.want(fmt.Sprintf("GET_VRING_BASE %d", i), got, want)
			a.ack("SET_VRING_BASE", "ack 0", vu.ReqSetVringBase, vu.VringState{Index: uint32(i), Num: binary.NativeEndian.Uint32(b[4:])})
			a.ack("SET_VRING_KICK", "ack 0", vu.ReqSetVringKick, vu.VringFile{Index: uint8(i)}, int(s.files[i].kick.Fd()))
		}
		a.frames(s)
	}},
	{"ring/SET_VRING_BASE 1000 times while the ring runs", func(a *attack) {
		s := a.open(sessionOptions{})
		a.sendRaw(many(1000, rawMsg(vu.ReqSetVringBase, v, vu.VringState{Index: 1}.Append(nil))))
		a.probe("kept")
		a.frames(s)
	}},
	{"ring/packed base past the ring's size", func(a *attack) {
		s := a.prepared(sessionOptions{features: baseFeatures | virtio.FRingPacked})
		bad := uint32(300|virtio.PackedWrap) | virtio.PackedWrap<<16
		a.want("enable", a.ringSteps(1, ringSize, s.mem.vringAddr(1), bad, s.files[1].kick, s.files[1].call, nil), "ack 1")
		a.ack("used index past the size", "ack 1", vu.ReqSetVringBase, vu.VringState{Index: 1, Num: virtio.PackedWrap | (300|virtio.PackedWrap)<<16})
		a.ack("right base", "ack 0", vu.ReqSetVringBase, vu.VringState{Index: 1, Num: s.base()})
		a.otherRings(s, 1)
		a.frames(s)
	}},
	{"ring/packed wrap counters that disagree with the driver's", func(a *attack) {
		s := a.prepared(sessionOptions{features: baseFeatures | virtio.FRingPacked})
		for i := range numRings {
			a.ringSteps(i, ringSize, s.mem.vringAddr(i), 0, s.files[i].kick, s.files[i].call, nil)
		}
		tx := a.r.dev.Counters(0).Load(engine.TXPackets)
		for range 8 {
			s.mem.vm.Queue(1).PostTX(arpFrame())
		}
		for range 100 {
			kick(s.files[1].kick)
		}
		time.Sleep(50 * time.Millisecond)
		a.want("frames sent", fmt.Sprint(a.r.dev.Counters(0).Load(engine.TXPackets)-tx), "")
		a.probe("kept")
		a.live = true
	}},
	{"ring/SET_FEATURES changed while rings run", func(a *attack) {
		s := a.open(sessionOptions{})
		a.ack("SET_FEATURES", "ack 1", vu.ReqSetFeatures, vu.U64(uint64(baseFeatures&^virtio.FEventIdx)|vu.FProtocolFeatures))
		a.frames(s)
	}},
	{"ring/RESET_DEVICE while rings run, then set up again", func(a *attack) {
		s := a.open(sessionOptions{})
		a.ack("RESET_DEVICE", "ack 0", vu.ReqResetDevice, vu.Empty{})
		a.ack("SET_FEATURES", "ack 0", vu.ReqSetFeatures, vu.U64(uint64(baseFeatures)|vu.FProtocolFeatures))
		a.otherRings(s, -1)
		a.frames(s)
	}},
}

// badFD is a case that hands bad over as ring 1's kick, call or err
// (role), and wants the ring's start refused, the connection kept; then
// an eventfd in its place starts it, and frames pass.
func badFD(name string, role vu.Request, bad func(a *attack) *os.File) hostileCase {
	return hostileCase{"fd/" + name, func(a *attack) {
		s := a.prepared(sessionOptions{})
		f := bad(a)
		kick, call, errFD := s.files[1].kick, s.files[1].call, (*os.File)(nil)
		switch role {
		case vu.ReqSetVringKick:
			kick = f
		case vu.ReqSetVringCall:
			call = f
		case vu.ReqSetVringErr:
			errFD = f
		}
		a.want("enable", a.ringSteps(1, ringSize, s.mem.vringAddr(1), 0, kick, call, errFD), "ack 1")
		good := s.files[1].kick
		switch role {
		case vu.ReqSetVringCall:
			good = s.files[1].call
		case vu.ReqSetVringErr:
			good = a.eventfd()
		}
		a.ack(role.String()+" eventfd", "ack 0", role, vu.VringFile{Index: 1}, int(good.Fd()))
		a.otherRings(s, 1)
		a.frames(s)
	}}
}

var fdCases = []hostileCase{
	badFD("kick is a regular file", vu.ReqSetVringKick, (*attack).regularFile),
	badFD("kick is a pipe whose writer closed", vu.ReqSetVringKick, func(a *attack) *os.File {
		r, w := a.pipe()
		w.Close()
		return r
	}),
	badFD("kick is a socket", vu.ReqSetVringKick, (*attack).socket),
	badFD("kick is a semaphore eventfd holding 2^63", vu.ReqSetVringKick, (*attack).semaphore),
	badFD("call is a pipe", vu.ReqSetVringCall, func(a *attack) *os.File { _, w := a.pipe(); return w }),
	badFD("err is a regular file", vu.ReqSetVringErr, (*attack).regularFile),
	{"fd/an fd on GET_FEATURES", func(a *attack) {
		a.sendRaw(rawMsg(vu.ReqGetFeatures, v, nil), int(a.eventfd().Fd()))
		a.probe("closed")
	}},
	{"fd/nine fds on one message", func(a *attack) {
		fds := make([]int, 9)
		for i := range fds {
			fds[i] = int(a.eventfd().Fd())
		}
		a.sendRaw(rawMsg(vu.ReqSetVringKick, v, u64(1)), fds...)
		a.probe("closed")
	}},
	{"fd/kick with the NOFD bit and an fd", func(a *attack) {
		a.prepared(sessionOptions{})
		a.ack("SET_VRING_KICK", "closed", vu.ReqSetVringKick, vu.VringFile{Index: 1, NoFD: true}, int(a.eventfd().Fd()))
	}},
	{"fd/descriptors the back-end keeps and never uses: SET_LOG_FD, SET_BACKEND_REQ_FD twice", func(a *attack) {
		a.prepared(sessionOptions{})
		a.ack("SET_LOG_FD", "ack 0", vu.ReqSetLogFD, vu.Empty{}, a.memfdOf(4096))
		_, w := a.pipe()
		a.ack("SET_BACKEND_REQ_FD pipe", "ack 0", vu.ReqSetBackendReqFD, vu.Empty{}, int(w.Fd()))
		a.ack("SET_BACKEND_REQ_FD socket", "ack 0", vu.ReqSetBackendReqFD, vu.Empty{}, int(a.socket().Fd()))
		a.probe("kept")
	}},
	{"fd/eventfds closed by the front-end as soon as sent", func(a *attack) {
		s := a.prepared(sessionOptions{})
		for i := range numRings {
			// The front-end keeps a duplicate to kick with; the files it
			// sent are gone before the ring starts.
			kick, err := unix.Dup(int(s.files[i].kick.Fd()))
			if err != nil {
				a.t.Fatal(err)
			}
			call, err := unix.Dup(int(s.files[i].call.Fd()))
			if err != nil {
				a.t.Fatal(err)
			}
			a.conn().send(vu.ReqSetVringKick, 0, vu.VringFile{Index: uint8(i)}, kick)
			a.conn().send(vu.ReqSetVringCall, 0, vu.VringFile{Index: uint8(i)}, call)
			unix.Close(kick)
			unix.Close(call)
			a.conn().send(vu.ReqSetVringNum, 0, vu.VringState{Index: uint32(i), Num: ringSize})
			a.conn().send(vu.ReqSetVringAddr, 0, s.mem.vringAddr(i))
			a.ack("enable", "ack 0", vu.ReqSetVringEnable, vu.VringState{Index: uint32(i), Num: 1})
		}
		a.frames(s)
	}},
	{"fd/1000 SET_VRING_CALL replacements while the ring runs", func(a *attack) {
		s := a.open(sessionOptions{})
		call := int(a.eventfd().Fd())
		msg := rawMsg(vu.ReqSetVringCall, v, vu.VringFile{Index: 1}.Append(nil))
		for range 1000 {
			a.sendRaw(msg, call)
		}
		a.probe("kept")
		a.frames(s)
	}},
	{"fd/call eventfds that are full (count 2^64-2)", func(a *attack) {
		s := a.prepared(sessionOptions{})
		for _, i := range []int{0, 1} {
			full := a.eventfd()
			if _, err := full.Write(u64(^uint64(0) - 1)); err != nil {
				a.t.Fatal(err)
			}
			s.files[i].call.Close()
			s.files[i].call = full
		}
		a.otherRings(s, -1)
		c := a.r.dev.Counters(0)
		errs, irqs := c.Load(engine.InterruptErrors), c.Load(engine.RXInterrupts)+c.Load(engine.TXInterrupts)
		a.frames(s)
		// A full counter is a wakeup already pending: not an error.
		a.want("interrupts", fmt.Sprint(c.Load(engine.RXInterrupts)+c.Load(engine.TXInterrupts)-irqs > 0), "true")
		a.want("interrupt errors", fmt.Sprint(c.Load(engine.InterruptErrors)-errs), "0")
		a.live = true
	}},
	{"fd/one eventfd as the kick of every ring", func(a *attack) {
		s := a.prepared(sessionOptions{})
		for i := 1; i < numRings; i++ {
			s.files[i].kick.Close()
			s.files[i].kick = s.files[0].kick
		}
		a.otherRings(s, -1)
		a.frames(s)
		a.probe("kept")
		a.live = true
	}},
	{"fd/one eventfd as kick and call, frames flowing", func(a *attack) {
		s := a.open(sessionOptions{sameKickCall: true})
		a.frames(s)
		tx := s.mem.vm.Queue(1)
		for range 200 {
			tx.Reap()
			tx.PostTX(arpFrame())
			kick(s.files[1].kick)
		}
		a.probe("kept")
		a.live = true
	}},
}

// putDesc writes a split descriptor into guest memory.
func putDesc(b []byte, d virtiotest.Desc) {
	binary.LittleEndian.PutUint64(b, d.Addr)
	binary.LittleEndian.PutUint32(b[8:], d.Len)
	binary.LittleEndian.PutUint16(b[12:], d.Flags)
	binary.LittleEndian.PutUint16(b[14:], d.Next)
}

// badChain is a case that publishes a chain made by write on TX ring 1 of
// a running split session, wants it dropped as a bad chain, and then a
// good chain after it sent.
func badChain(name string, o sessionOptions, write func(a *attack, s *session, g *virtiotest.Guest) uint16) hostileCase {
	return hostileCase{"chain/" + name, func(a *attack) {
		s := a.open(o)
		g := s.mem.vm.Queue(1)
		c := a.r.dev.Counters(0)
		bad, sent := c.Load(engine.TXDropBadDescriptor), c.Load(engine.TXPackets)
		g.PublishHead(write(a, s, g))
		kick(s.files[1].kick)
		a.waitCounter(0, engine.TXDropBadDescriptor, bad, 1, 5*time.Second)
		// The ring goes on: a good chain after the bad one is sent.
		frame := arpFrame()
		addr := g.Alloc(len(frame))
		copy(g.Bytes(addr, len(frame)), frame)
		g.WriteDesc(200, virtiotest.Desc{Addr: addr, Len: uint32(len(frame))})
		g.PublishHead(200)
		kick(s.files[1].kick)
		a.waitCounter(0, engine.TXPackets, sent, 1, 5*time.Second)
		a.live = true
	}}
}

var chainCases = []hostileCase{
	badChain("descriptor loop through the whole table", sessionOptions{}, func(a *attack, s *session, g *virtiotest.Guest) uint16 {
		buf := g.Alloc(64)
		for i := range uint16(ringSize) {
			g.WriteDesc(i, virtiotest.Desc{Addr: buf, Len: 64, Flags: virtiotest.FlagNext, Next: (i + 1) % ringSize})
		}
		return 0
	}),
	badChain("next out of range", sessionOptions{}, func(a *attack, s *session, g *virtiotest.Guest) uint16 {
		g.WriteDesc(0, virtiotest.Desc{Addr: g.Alloc(64), Len: 64, Flags: virtiotest.FlagNext, Next: 300})
		return 0
	}),
	badChain("indirect table outside guest memory", sessionOptions{}, func(a *attack, s *session, g *virtiotest.Guest) uint16 {
		g.WriteDesc(0, virtiotest.Desc{Addr: 0x10, Len: 64, Flags: virtiotest.FlagIndirect})
		return 0
	}),
	badChain("nested indirect tables", sessionOptions{}, func(a *attack, s *session, g *virtiotest.Guest) uint16 {
		inner, outer := g.Alloc(16), g.Alloc(16)
		putDesc(g.Bytes(inner, 16), virtiotest.Desc{Addr: g.Alloc(64), Len: 64})
		putDesc(g.Bytes(outer, 16), virtiotest.Desc{Addr: inner, Len: 16, Flags: virtiotest.FlagIndirect})
		g.WriteDesc(0, virtiotest.Desc{Addr: outer, Len: 16, Flags: virtiotest.FlagIndirect})
		return 0
	}),
	badChain("indirect table of 65536 descriptors chained end to end", sessionOptions{addMemReg: true}, func(a *attack, s *session, g *virtiotest.Guest) uint16 {
		const n = 65536
		size := n*16 + 4096
		fd := a.memfdOf(size)
		m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			a.t.Fatal(err)
		}
		a.cleanup(func() { unix.Munmap(m) })
		for i := range n {
			putDesc(m[16*i:], virtiotest.Desc{Addr: farGuest + n*16, Len: 64, Flags: virtiotest.FlagNext, Next: uint16(i + 1)})
		}
		a.ack("ADD_MEM_REG of the table", "ack 0", vu.ReqAddMemReg,
			vu.MemRegionMsg{Region: vu.MemoryRegion{GuestAddr: farGuest, Size: uint64(size), UserAddr: farUser}}, fd)
		g.WriteDesc(0, virtiotest.Desc{Addr: farGuest, Len: n * 16, Flags: virtiotest.FlagIndirect})
		return 0
	}),
	badChain("lengths that add up past 2^32", sessionOptions{addMemReg: true}, func(a *attack, s *session, g *virtiotest.Guest) uint16 {
		// 4 GiB of sparse memory, hot-plugged: each descriptor is in
		// guest memory, their sum is not a u32.
		a.ack("ADD_MEM_REG of 4 GiB", "ack 0", vu.ReqAddMemReg,
			vu.MemRegionMsg{Region: vu.MemoryRegion{GuestAddr: farGuest, Size: 4 << 30, UserAddr: farUser}}, a.memfdOf(4<<30))
		g.WriteDesc(0, virtiotest.Desc{Addr: farGuest, Len: 0xffff_0000, Flags: virtiotest.FlagNext, Next: 1})
		g.WriteDesc(1, virtiotest.Desc{Addr: farGuest, Len: 0x20000})
		return 0
	}),
	{"chain/TX frame of 512 KiB in 256 descriptors", func(a *attack) {
		s := a.open(sessionOptions{})
		g := s.mem.vm.Queue(1)
		buf := g.Alloc(slotSize)
		for i := range uint16(ringSize) {
			d := virtiotest.Desc{Addr: buf, Len: slotSize, Flags: virtiotest.FlagNext, Next: i + 1}
			if i == ringSize-1 {
				d.Flags = 0
			}
			g.WriteDesc(i, d)
		}
		c := a.r.dev.Counters(0)
		drops := func() uint64 {
			var n uint64
			for d, v := range c.Snapshot().All() {
				if d.Drop {
					n += v
				}
			}
			return n
		}
		before, sent := drops(), c.Load(engine.TXPackets)
		g.PublishHead(0)
		kick(s.files[1].kick)
		var got uint64
		for deadline := time.Now().Add(5 * time.Second); got == 0 && time.Now().Before(deadline); {
			time.Sleep(2 * time.Millisecond)
			got = drops() - before + c.Load(engine.TXPackets) - sent
		}
		a.want("dropped or sent", fmt.Sprint(got), "1")
		a.note("sent %d", c.Load(engine.TXPackets)-sent)
		a.live = true
	}},
	{"chain/RX buffers of one byte each", func(a *attack) {
		s := a.open(sessionOptions{})
		rx := s.mem.vm.Queue(0)
		for range ringSize {
			rx.PostRX(1)
		}
		kick(s.files[0].kick)
		tx := s.mem.vm.Queue(3)
		var used []virtiotest.Used
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
			tx.Reap()
			tx.PostTX(arpFrame())
			kick(s.files[3].kick)
			time.Sleep(20 * time.Millisecond)
			used = append(used, rx.Reap()...)
		}
		a.note("%d one-byte buffers used", len(used))
		got := "none"
		if err := rx.Err(); err != nil {
			got = err.Error()
		}
		a.want("protocol errors of the device", got, "none")
		a.frames(s)
		a.live = true
	}},
	{"chain/avail idx 1000 ahead, then 1000 kicks", func(a *attack) {
		s := a.open(sessionOptions{})
		broken := a.r.dev.Counters(0).Load(engine.BrokenRings)
		s.mem.vm.Queue(1).SetAvailIdx(1000)
		for range 1000 {
			kick(s.files[1].kick)
		}
		a.waitCounter(0, engine.BrokenRings, broken, 1, 5*time.Second)
		// The other pair goes on.
		if err := s.arp(3, 5*time.Second); err != nil {
			a.t.Errorf("pair 1 after pair 0's TX ring broke: %v", err)
		}
		a.live = true
	}},
	{"chain/RX chain of device-readable buffers", func(a *attack) {
		s := a.open(sessionOptions{})
		bad := a.r.dev.Counters(0).Load(engine.RXDropBadDescriptor)
		rx := s.mem.vm.Queue(0)
		rx.WriteDesc(0, virtiotest.Desc{Addr: rx.Alloc(2048), Len: 2048})
		rx.PublishHead(0)
		kick(s.files[0].kick)
		// The host's ARP reply to pair 1's request comes to RX ring 0.
		tx := s.mem.vm.Queue(3)
		for range 5 {
			tx.PostTX(arpFrame())
			kick(s.files[3].kick)
			time.Sleep(10 * time.Millisecond)
		}
		a.waitCounter(0, engine.RXDropBadDescriptor, bad, 1, 5*time.Second)
		a.live = true
	}},
	{"chain/packed ring: a chain that never ends", func(a *attack) {
		s := a.open(sessionOptions{features: baseFeatures | virtio.FRingPacked})
		g := s.mem.vm.Queue(1)
		buf := g.Alloc(64)
		descs := make([]virtiotest.Desc, ringSize)
		for i := range descs {
			descs[i] = virtiotest.Desc{Addr: buf, Len: 64, Flags: virtiotest.FlagNext, Next: 1}
		}
		c := a.r.dev.Counters(0)
		before := c.Load(engine.TXDropBadDescriptor) + c.Load(engine.BrokenRings)
		g.MakeAvailable(descs)
		kick(s.files[1].kick)
		var got uint64
		for deadline := time.Now().Add(5 * time.Second); got == 0 && time.Now().Before(deadline); {
			time.Sleep(2 * time.Millisecond)
			got = c.Load(engine.TXDropBadDescriptor) + c.Load(engine.BrokenRings) - before
		}
		a.want("dropped or broken", fmt.Sprint(got), "1")
		a.live = true
	}},
	{"chain/100000 kicks with nothing posted", func(a *attack) {
		s := a.open(sessionOptions{})
		for range 100000 {
			kick(s.files[1].kick)
		}
		a.probe("kept")
		a.frames(s)
		a.live = true
	}},
}

var floodCases = []hostileCase{
	{"flood/1000 SET_VRING_ENABLE toggles", func(a *attack) {
		s := a.open(sessionOptions{})
		off := rawMsg(vu.ReqSetVringEnable, v, vu.VringState{Index: 1, Num: 0}.Append(nil))
		on := rawMsg(vu.ReqSetVringEnable, v, vu.VringState{Index: 1, Num: 1}.Append(nil))
		a.sendRaw(many(1000, off, on))
		a.probe("kept")
		a.frames(s)
	}},
	{"flood/1000 SEND_RARP before any ring runs", func(a *attack) {
		s := a.prepared(sessionOptions{})
		rarp := rawMsg(vu.ReqSendRARP, v, append(append([]byte(nil), guestMAC...), 0, 0))
		a.sendRaw(many(1000, rarp))
		a.probe("kept")
		a.otherRings(s, -1)
		a.frames(s)
	}},
	{"flood/10000 GET_FEATURES", func(a *attack) {
		fe := a.conn()
		msg := rawMsg(vu.ReqGetFeatures, v, nil)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if fe.sendRaw(many(100, msg)) != nil {
					return
				}
			}
		}()
		n := 0
		for ; n < 10000; n++ {
			if _, err := fe.readReply(vu.ReqGetFeatures); err != nil {
				a.note("reply %d: %v", n, err)
				break
			}
		}
		wg.Wait()
		a.want("replies", fmt.Sprint(n), "10000")
		a.probe("kept")
	}},
	{"flood/GET_FEATURES whose replies are never read", func(a *attack) {
		fe := a.conn()
		msg := rawMsg(vu.ReqGetFeatures, v, nil)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				if fe.sendRaw(many(100, msg)) != nil {
					return
				}
			}
		}()
		time.Sleep(4 * replyTimeout)
		a.closed(replyWait)
		wg.Wait()
	}},
	{"flood/hang-up in the middle of a message with descriptors", func(a *attack) {
		a.negotiate()
		t := vu.MemoryTable{Regions: []vu.MemoryRegion{{GuestAddr: guestBase, Size: 1 << 20, UserAddr: userBase}}}
		b := vu.AppendMessage(nil, vu.ReqSetMemTable, v, t)
		a.sendRaw(b[:vu.HeaderSize+10], a.memfdOf(1<<20))
		a.note("hung up")
	}},
	{"flood/hang-up while rings run and frames flow both ways", func(a *attack) {
		s := a.open(sessionOptions{})
		stop := a.flood()
		packets := func(k engine.Counter) uint64 { return a.r.dev.Counters(0).Load(k) + a.r.dev.Counters(1).Load(k) }
		rx0, tx0 := packets(engine.RXPackets), packets(engine.TXPackets)
		rx, rx1, tx := s.mem.vm.Queue(0), s.mem.vm.Queue(2), s.mem.vm.Queue(1)
		udp := append(make([]byte, hdrLen), frametest.Spec{SrcMAC: guestMAC, DstMAC: net6(2), Src: guestIP, Dst: hostIP,
			Proto: frametest.ProtoUDP, SrcPort: 9, DstPort: 9, Payload: make([]byte, 512)}.Build()...)
		for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
			for _, g := range []*virtiotest.Guest{rx, rx1} {
				g.Reap()
				for {
					if _, err := g.PostRX(slotSize); err != nil {
						break
					}
				}
			}
			kick(s.files[2].kick)
			tx.Reap()
			for {
				if _, err := tx.PostTX(udp); err != nil {
					break
				}
			}
			kick(s.files[0].kick)
			kick(s.files[1].kick)
			time.Sleep(time.Millisecond)
		}
		a.note("%d frames to the guest, %d from it", packets(engine.RXPackets)-rx0, packets(engine.TXPackets)-tx0)
		s.fe.close()
		a.note("hung up")
		time.Sleep(200 * time.Millisecond)
		stop()
	}},
	{"flood/400 front-ends that leave at once, half of them after GET_FEATURES", func(a *attack) {
		n := 0
		for i := range 400 {
			fe, err := dial(a.r.path)
			if err != nil {
				a.t.Fatal(err)
			}
			if i%2 == 0 {
				if _, err := fe.callU64(vu.ReqGetFeatures, vu.Empty{}); err == nil {
					n++
				}
			}
			fe.close()
		}
		a.want("answered", fmt.Sprint(n), "200")
	}},
	{"flood/20 front-ends that leave with their rings running", func(a *attack) {
		for range 20 {
			fe, err := dial(a.r.path)
			if err != nil {
				a.t.Fatal(err)
			}
			s, err := a.r.open(fe, sessionOptions{})
			if err != nil {
				a.t.Fatal(err)
			}
			s.mem.vm.Queue(1).PostTX(arpFrame())
			kick(s.files[1].kick)
			s.close()
		}
		a.note("20 left")
	}},
}

// flood sends UDP frames from the host to the guest through the TAP
// until the returned function is called.
func (a *attack) flood() (stop func()) {
	a.t.Helper()
	sock := a.fd(a.r.packetSocket(a.t))
	frame := frametest.Spec{SrcMAC: net6(2), DstMAC: guestMAC, Src: hostIP, Dst: guestIP,
		Proto: frametest.ProtoUDP, SrcPort: 9, DstPort: 9, Payload: make([]byte, 512)}.Build()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			unix.Write(sock, frame)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	a.cleanup(stop)
	return stop
}

// net6 is a locally administered MAC ending in b.
func net6(b byte) []byte { return []byte{0x02, 0, 0, 0, 0, b} }
