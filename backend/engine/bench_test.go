package engine

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// The engine against a raw read or write loop on the same TAP queue, in
// the same run: each benchmark reports the engine's rate (Mpps, or Gbps
// for 64 KB GSO frames), the raw loop's, and their ratio, which holds on a
// noisy machine where the absolute numbers do not. The two alternate in
// sixteen phases each, and the raw loop reads into and writes from the same
// guest buffers the engine uses, so that neither gets hotter caches or a
// quieter machine. Only the engine's phases run with the timer on, so
// allocs/op is the engine's (and the Go guest driver's, which allocates
// nothing per frame); each engine phase runs a new queue pair on the same
// rings, started and stopped with the timer off.
//
// The raw loop makes one read(2) or write(2) per frame, the way a
// hypervisor's TAP backend does. Each case runs the engine three ways
// (engineModes): batching through io_uring, the default; the same with a
// busy-poll window; and with one system call per frame (NoIOURing), which
// shows how much of the engine's rate the batching brings.
//
// TX: the guest's frames go to a MAC address that is not the TAP's, so
// the kernel drops them in ip_rcv (PACKET_OTHERHOST) at the same cost for
// both loops. RX: an AF_PACKET socket in the TAP's namespace sends frames
// out of the TAP with sendmmsg, bypassing the qdisc, faster than either
// reader takes them (the TAP drops the excess), for both loops alike.
//
//	go test -run '^$' -bench . -benchmem ./backend/engine/

var (
	benchOther = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99} // a MAC nobody has
	benchGuest = frametest.Spec{SrcMAC: guestMAC, DstMAC: benchOther, Src: guest4, Dst: netip.MustParseAddr("10.77.0.3"),
		DF: true, SrcPort: 1000, DstPort: 2000}
)

type benchCase struct {
	name  string
	frame int  // bytes on the wire, without the vnet header
	gso   bool // a 64 KB TSO frame: report Gbps
	// rxOnly: a receive case, small frames to a guest that acked
	// receive offloads with 2 KiB mergeable buffers, as a Linux guest
	// does by default: a frame may span buffers.
	rxOnly bool
}

var benchCases = []benchCase{
	{"64B", 64, false, false},
	{"1514B", 1514, false, false},
	// The largest frame the kernel's GSO takes whole on the RX side:
	// netif_skb_features segments an skb of gso_max_size (65536) or more.
	{"64KB_GSO", 65535, true, false},
	{"64B_guest_offloads", 64, false, true},
}

// benchFrame returns the frame and its header: UDP for the small ones, a
// TSO frame of 1448-byte segments for GSO.
func benchFrame(c benchCase) (virtio.NetHdr, []byte) {
	if c.gso {
		f := tcp(benchGuest, 1, 1, frametest.ACK, 1000, nil, make([]byte, c.frame-frametest.EthLen-frametest.IPv4Len-frametest.TCPLen), true)
		return gsoHdr(f, virtio.GSOTCPv4, 1448), f
	}
	return virtio.NetHdr{}, udp(benchGuest, make([]byte, c.frame-frametest.EthLen-frametest.IPv4Len-frametest.UDPLen), false)
}

// benchTAP is the rig whose TAP the sub-benchmarks of one benchmark
// share: namespaces are torn down in the background, and one going away
// would slow the measurements of the next.
func benchTAP(b *testing.B) *rig {
	return newRig(b, rigOptions{tap: true, stopped: true})
}

// rawFd is the descriptor of f for the raw loops' system calls.
func rawFd(b *testing.B, f *os.File) int {
	rc, err := f.SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	var fd int
	rc.Control(func(u uintptr) { fd = int(u) })
	return fd
}

// benchRing drives one virtqueue as a guest would, allocating nothing: it
// hands every used chain straight back, and sleeps on the call eventfd
// (EVENT_IDX, interrupt after a quarter of the ring) when the device has
// not used any.
type benchRing struct {
	g          *virtiotest.Guest
	q          virtio.Queue // the device's side, for the current queue pair
	size       uint16
	usedAddr   uint64
	last       uint16
	shown      uint16 // avail idx to publish at release
	kick, call *EventFD
	pfd        []unix.PollFd
	mrg        bool // count frames by num_buffers (RX)
	skip       int  // chains left of the current frame
}

func newBenchRing(g *virtiotest.Guest, kick, call *EventFD) *benchRing {
	return &benchRing{g: g, size: g.Size(), usedAddr: g.SplitConfig().UsedAddr, kick: kick, call: call,
		pfd: []unix.PollFd{{Fd: int32(call.Fd()), Events: unix.POLLIN}}}
}

// buffer returns the memory of chain id's (only) buffer, n bytes of it
// and of the slots after it.
func (r *benchRing) buffer(id uint16, n int) []byte {
	return r.g.Bytes(r.g.ReadDesc(id).Addr, n)
}

// queue makes the device side of the ring, from where the previous one
// stopped, with what the driver made available hidden until release.
func (r *benchRing) queue(b *testing.B) virtio.Queue {
	q := deviceQueue(b, r.g, r.q)
	r.shown = r.g.NextAvail()
	r.g.SetAvailIdx(q.NextAvail())
	r.q = q
	return q
}

// release makes the hidden chains available and kicks.
func (r *benchRing) release() {
	r.g.SetAvailIdx(r.shown)
	r.kick.Notify()
}

// run waits for n frames, handing each used chain back.
func (r *benchRing) run(n int) error {
	done := 0
	for done < n {
		if r.g.UsedIdx() == r.last {
			r.g.SetUsedEvent(r.last + r.size/4 - 1)
			if r.g.UsedIdx() != r.last {
				continue
			}
			k, err := unix.Poll(r.pfd, 1000)
			if err != nil && err != unix.EINTR {
				return fmt.Errorf("poll call eventfd: %w", err)
			}
			if k == 0 && r.g.UsedIdx() == r.last {
				return fmt.Errorf("no used chain within a second, %d of %d frames done", done, n)
			}
			r.call.Drain()
			continue
		}
		done += r.reap()
		if r.g.Kick() {
			r.kick.Notify()
		}
	}
	return nil
}

// reap hands back every used chain and returns the frames they held.
func (r *benchRing) reap() int {
	frames := 0
	for idx := r.g.UsedIdx(); r.last != idx; r.last++ {
		e := r.g.Bytes(r.usedAddr+4+8*uint64(r.last%r.size), 8)
		id := uint16(binary.LittleEndian.Uint32(e))
		if r.mrg {
			if r.skip == 0 {
				r.skip = int(binary.LittleEndian.Uint16(r.buffer(id, virtio.HdrLenV1)[10:]))
				frames++
			}
			r.skip--
		} else {
			frames++
		}
		r.g.PublishHead(id)
	}
	return frames
}

// benchQP is a rig on the benchmark's TAP whose rings the benchmark
// drives (benchRing), and the queue pair of the moment: each engine phase
// of a benchmark runs a new one on the same rings, from where the last
// stopped.
type benchQP struct {
	r      *rig
	tx, rx *benchRing
	mode   engineMode
}

func newBenchQP(b *testing.B, bt *rig, features virtio.Features, txSlot, rxSlot int, size uint16, mode engineMode) *benchQP {
	r := newRig(b, rigOptions{tapOf: bt, features: features, size: size, txSlot: txSlot, rxSlot: rxSlot,
		guest: virtiotest.Options{EventIdx: true}, mod: mode.config, stopped: true})
	r.rings()
	if mode.log {
		// One log for both guests' memories: they overlap in guest
		// physical address space, which only merges their marks.
		l := virtio.NewDirtyLog(1 << 32)
		r.mod = func(c *Config) {
			mode.config(c)
			c.RXLog = virtio.RingLog{Log: l, UsedAddr: r.rx.Areas().Device}
			c.TXLog = virtio.RingLog{Log: l, UsedAddr: r.tx.Areas().Device}
		}
	}
	bq := &benchQP{r: r, mode: mode, tx: newBenchRing(r.tx, r.txKick, r.txCall), rx: newBenchRing(r.rx, r.rxKick, r.rxCall)}
	bq.rx.mrg = features.Has(virtio.NetFMrgRxbuf)
	return bq
}

// start runs a new queue pair on the rings, with nothing available until
// release.
func (bq *benchQP) start(b *testing.B) {
	bq.r.run(bq.rx.queue(b), bq.tx.queue(b))
	if !bq.mode.noRing && !bq.r.qp.IOURing() {
		testutil.Skip(b, "no io_uring on this kernel: the %s rows would measure system calls", bq.mode.name)
	}
}

// stop stops the queue pair and hands back what it used after the
// measured part, before the raw loop overwrites those buffers.
func (bq *benchQP) stop(b *testing.B) Snapshot {
	qp := bq.r.qp
	if err := qp.Stop(); err != nil {
		b.Fatal(err)
	}
	bq.tx.reap()
	bq.rx.reap()
	return qp.Counters().Snapshot()
}

// phases splits n frames into alternating raw and engine phases, so that
// drift on the machine (frequency, other work) weighs on both alike.
const phases = 16

// measure runs n frames through raw and engine loops in alternating
// phases and reports both rates and their ratio. Only the engine phases
// run with the timer on.
func measure(b *testing.B, c benchCase, n int, raw func(n int) error, bq *benchQP, ring *benchRing) {
	var rawT, engT time.Duration
	done, rawN := 0, 0
	for k := range phases {
		m := (n - done) / (phases - k)
		if k == phases-1 {
			m = n - done
		}
		rm := max(m, 250)
		t0 := time.Now()
		if err := raw(rm); err != nil {
			b.Fatalf("raw loop: %v", err)
		}
		rawT += time.Since(t0)
		rawN += rm
		if m == 0 {
			continue
		}
		bq.start(b)
		b.StartTimer()
		t0 = time.Now()
		ring.release()
		err := ring.run(m)
		engT += time.Since(t0)
		b.StopTimer()
		s := bq.stop(b)
		if err != nil {
			b.Fatalf("engine: %v (counters %s)", err, s)
		}
		if s[TXDropKernel]+s[TXDropBadHeader]+s[RXDropKernel]+s[RXDropTruncated] != 0 {
			b.Fatalf("counters %s: want no drops", s)
		}
		done += m
	}
	report(b, c, n, engT, rawT, rawN)
}

// report puts the engine's rate beside the raw loop's.
func report(b *testing.B, c benchCase, n int, engine, raw time.Duration, rawN int) {
	unit, scale := "Mpps", 1e-6
	per := 1.0
	if c.gso {
		unit, scale, per = "Gbps", 1e-9, float64(c.frame*8)
	}
	e := float64(n) * per / engine.Seconds() * scale
	r := float64(rawN) * per / raw.Seconds() * scale
	b.ReportMetric(e, unit)
	b.ReportMetric(r, "raw-"+unit)
	b.ReportMetric(e/r, "ratio")
}

// engineMode is how the engine runs in a benchmark row: batching TAP
// reads and writes through io_uring (the default), the same with a busy
// poll window, or one system call per frame (Config.NoIOURing), the last
// to show what io_uring brings.
type engineMode struct {
	name   string
	busy   time.Duration
	noRing bool
	// hash, when set, makes the guest ack HASH_REPORT (a 20-byte header)
	// and is the queue pair's hash configuration (Config.Hash).
	hash *atomic.Pointer[virtio.Hasher]
	// log makes both rings log into a dirty log (Config.RXLog, TXLog),
	// as during a live migration.
	log bool
}

// config sets the mode in a queue pair's config.
func (m engineMode) config(c *Config) { c.BusyPoll, c.NoIOURing, c.Hash = m.busy, m.noRing, m.hash }

var engineModes = []engineMode{
	{"iouring", 0, false, nil, false},
	{"iouring+busypoll=50µs", 50 * time.Microsecond, false, nil, false},
	{"syscalls", 0, true, nil, false},
}

func BenchmarkTAPTX(b *testing.B) {
	bt := benchTAP(b)
	for _, c := range benchCases {
		if c.rxOnly {
			continue
		}
		for _, m := range engineModes {
			b.Run(c.name+"/"+m.name, func(b *testing.B) { benchTX(b, bt, c, m) })
		}
	}
}

func benchTX(b *testing.B, bt *rig, c benchCase, mode engineMode) {
	b.StopTimer()
	b.ReportAllocs()
	h, frame := benchFrame(c)
	features := virtio.FVersion1 | virtio.FEventIdx | virtio.NetFCsum | virtio.NetFHostTSO4
	msg := withHdr(h, virtio.HdrLenV1, frame)
	size := uint16(1024)
	if c.gso {
		size = 256
	}
	bq := newBenchQP(b, bt, features, len(msg), 64, size, mode)
	fd := rawFd(b, bt.tap)
	for range size {
		if _, err := bq.tx.g.PostTX(msg); err != nil {
			b.Fatal(err)
		}
	}
	// The raw loop writes the same frames from the same guest memory,
	// one write(2) per frame, with RawSyscall as the engine does.
	bufs := make([][]byte, size)
	for id := range bufs {
		bufs[id] = bq.tx.buffer(uint16(id), len(msg))
	}
	i := 0
	raw := func(n int) error {
		for range n {
			if _, err := writeFd(fd, bufs[i%len(bufs)]); err != nil {
				return err
			}
			i++
		}
		return nil
	}
	b.ResetTimer()
	b.StopTimer()
	measure(b, c, b.N, raw, bq, bq.tx)
}

// The RX benchmarks' frame source is another process: the test binary
// run again, in the TAP's namespace, with sourceEnv set (see TestMain). A
// goroutine of the benchmark's own would compete with the engine and the
// Go guest driver for the scheduler's Ps (GOMAXPROCS is the number of
// CPUs), which a real traffic source does not.
const sourceEnv = "VMNET_BENCH_SOURCE"

func TestMain(m *testing.M) {
	if spec := os.Getenv(sourceEnv); spec != "" {
		if err := runSource(spec); err != nil {
			fmt.Fprintf(os.Stderr, "bench source: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runSource sends the benchmark frame of spec ("ifname,case") out of the
// interface until it is killed, 64 frames per sendmmsg, bypassing the
// qdisc.
func runSource(spec string) error {
	ifname, name, _ := strings.Cut(spec, ",")
	var c benchCase
	for _, bc := range benchCases {
		if bc.name == name {
			c = bc
		}
	}
	if c.name == "" {
		return fmt.Errorf("no benchmark case %q", name)
	}
	h, frame := benchFrame(c)
	copy(frame, guestMAC)
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		return err
	}
	msg := frame
	if h.GSOType != virtio.GSONone {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
			return err
		}
		// PACKET_VNET_HDR takes struct virtio_net_hdr, 10 bytes, native
		// order.
		msg = withHdr(h, virtio.HdrLenLegacy, frame)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
		return err
	}
	// The source yields the CPU after every batch, and a batch is at most
	// 256 KiB (4 frames of 64 KB, each call some 50 us in the kernel): on
	// a small machine it would otherwise keep the Go guest driver, which
	// has to run now and then, waiting behind it, which a guest's own vCPU
	// never does. It still sends faster than either loop reads; the TAP
	// drops the rest.
	batch := newMmsgBatch(msg, min(64, max(1, (256<<10)/len(msg))))
	for {
		if _, err := batch.send(fd); err != nil && err != unix.ENOBUFS && err != unix.EAGAIN && err != unix.EINTR {
			return fmt.Errorf("sendmmsg: %w", err)
		}
		unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	}
}

// startSource runs the frame source of case c for the sub-benchmark; it
// is killed when the sub-benchmark ends. The returned check fails the
// benchmark if the source died early.
func startSource(b *testing.B, bt *rig, c benchCase) (check func()) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", bt.ns, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), sourceEnv+"="+bt.tapName+","+c.name, "GOMAXPROCS=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.Cleanup(func() { cmd.Process.Kill(); <-exited })
	return func() {
		select {
		case <-exited:
			b.Fatalf("frame source exited: %s", stderr.String())
		default:
		}
	}
}

func BenchmarkTAPRX(b *testing.B) {
	bt := benchTAP(b)
	for _, c := range benchCases {
		for _, m := range engineModes {
			b.Run(c.name+"/"+m.name, func(b *testing.B) { benchRX(b, bt, c, m) })
		}
	}
}

// BenchmarkTAPRXHashReport is BenchmarkTAPRX's small-frame cases with
// what VIRTIO_NET_F_HASH_REPORT costs: the 12-byte header, the 20-byte
// header with no hash configured (the engine only zeroes the hash
// fields), and with every hash type enabled (the engine computes each
// frame's Toeplitz hash from the guest's buffer and writes it).
func BenchmarkTAPRXHashReport(b *testing.B) {
	bt := benchTAP(b)
	none, all := new(atomic.Pointer[virtio.Hasher]), new(atomic.Pointer[virtio.Hasher])
	h, err := virtio.NewHasher(make([]byte, virtio.RSSKeySize), virtio.HashAll)
	if err != nil {
		b.Fatal(err)
	}
	all.Store(h)
	for _, c := range benchCases {
		if c.gso {
			continue
		}
		for _, m := range []engineMode{
			{"iouring", 0, false, nil, false},
			{"iouring+hdr20_no_hash", 0, false, none, false},
			{"iouring+hash_report", 0, false, all, false},
		} {
			b.Run(c.name+"/"+m.name, func(b *testing.B) { benchRX(b, bt, c, m) })
		}
	}
}

// BenchmarkTAPDirtyLog is what dirty logging costs while a live migration
// runs: BenchmarkTAPTX's and BenchmarkTAPRX's cases with the rings
// logging every write (each frame's buffer pages, its used element, the
// used index) beside the same rows without, in the same run. Logging off
// costs a predicted branch per write, which BenchmarkTAPTX and
// BenchmarkTAPRX measure.
func BenchmarkTAPDirtyLog(b *testing.B) {
	bt := benchTAP(b)
	modes := []engineMode{
		{"iouring", 0, false, nil, false},
		{"iouring+dirty_log", 0, false, nil, true},
	}
	for _, c := range benchCases {
		for _, m := range modes {
			if !c.rxOnly {
				b.Run("TX/"+c.name+"/"+m.name, func(b *testing.B) { benchTX(b, bt, c, m) })
			}
			b.Run("RX/"+c.name+"/"+m.name, func(b *testing.B) { benchRX(b, bt, c, m) })
		}
	}
}

func benchRX(b *testing.B, bt *rig, c benchCase, mode engineMode) {
	b.StopTimer()
	b.ReportAllocs()
	features := virtio.FVersion1 | virtio.FEventIdx | virtio.NetFMrgRxbuf
	if mode.hash != nil {
		features |= virtio.NetFHashReport
	}
	// The TAP's vnet header is the guest's.
	hdrLen := virtio.HdrLenFor(features)
	if err := bt.dev.SetVnetHdrSize(hdrLen); err != nil {
		b.Fatal(err)
	}
	var offloads offload.TunFlags
	_, frame := benchFrame(c)
	rxSlot, size := 2048, uint16(1024)
	if c.gso || c.rxOnly {
		features |= virtio.NetFGuestCsum | virtio.NetFGuestTSO4
		offloads = offload.TunCsum | offload.TunTSO4
	}
	if c.gso {
		rxSlot = 4096
	}
	if err := bt.dev.SetOffload(offloads); err != nil {
		b.Fatal(err)
	}
	copy(frame, guestMAC)
	checkSource := startSource(b, bt, c)
	bq := newBenchQP(b, bt, features, 64, rxSlot, size, mode)
	for range size {
		if _, err := bq.rx.g.PostRX(rxSlot); err != nil {
			b.Fatal(err)
		}
	}

	// The raw loop reads the same frames into the same guest memory (a
	// frame bigger than one buffer into the buffers after it), one read(2)
	// per frame with RawSyscall as the engine does, and polls when there
	// is none.
	want := hdrLen + len(frame)
	per := (want + rxSlot - 1) / rxSlot
	var bufs [][]byte
	for id := 0; id+per <= int(size); id += per {
		bufs = append(bufs, bq.rx.buffer(uint16(id), per*rxSlot))
	}
	fd := rawFd(b, bt.tap)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	i := 0
	raw := func(n int) error {
		for got := 0; got < n; {
			k, err := readFd(fd, bufs[i%len(bufs)])
			switch {
			case err == unix.EAGAIN:
				if _, err := unix.Poll(pfd, 1000); err != nil && err != unix.EINTR {
					return err
				}
			case err != nil:
				return err
			case k == want:
				got++
				i++
			}
		}
		return nil
	}
	b.ResetTimer()
	b.StopTimer()
	dropped := bq.r.tapStat("tx_dropped")
	measure(b, c, b.N, raw, bq, bq.rx)
	checkSource()
	// Frames the TAP dropped for want of a reader, per frame read by
	// either loop: above zero, the source kept ahead of both.
	b.ReportMetric(float64(bq.r.tapStat("tx_dropped")-dropped)/float64(2*b.N), "drops/frame")
}

// BenchmarkTAPLatency sends one ICMP echo request at a time from the
// guest to the TAP's address and waits for the kernel's reply: ns/op is
// the round trip through the engine both ways. The Go guest driver spins
// on the used rings, as a polling guest would, so what BusyPoll changes
// is the engine's own sleeping and waking.
func BenchmarkTAPLatency(b *testing.B) {
	bt := benchTAP(b)
	for _, m := range engineModes {
		b.Run(m.name, func(b *testing.B) { benchLatency(b, bt, m) })
	}
}

// echoRequest is an ICMP echo request from the guest to the TAP's
// address, 64 bytes of ICMP with the identifier "vm".
func echoRequest(r *rig) []byte {
	f := r.toHost(0, 0)
	f.Proto, f.Type, f.Payload = frametest.ProtoICMP, 8, append([]byte{0x76, 0x6d, 0, 0}, make([]byte, 56)...)
	return f.Build()
}

func benchLatency(b *testing.B, bt *rig, mode engineMode) {
	b.StopTimer()
	b.ReportAllocs()
	features := virtio.FVersion1 | virtio.FEventIdx | virtio.NetFMrgRxbuf
	req := withHdr(virtio.NetHdr{}, virtio.HdrLenV1, echoRequest(bt))
	bq := newBenchQP(b, bt, features, len(req), 2048, 256, mode)
	txID, err := bq.tx.g.PostTX(req)
	if err != nil {
		b.Fatal(err)
	}
	for range 255 {
		if _, err := bq.rx.g.PostRX(2048); err != nil {
			b.Fatal(err)
		}
	}
	bq.start(b)
	defer bq.stop(b)
	bq.rx.release()
	// The request chain, hidden by start, goes on the ring for each round
	// trip.
	tx, rx := bq.tx, bq.rx
	kick := func(r *benchRing, old uint16) {
		// Kick only if the engine asked (EVENT_IDX avail_event).
		if n := r.g.NextAvail(); n-r.g.AvailEvent()-1 < n-old {
			r.kick.Notify()
		}
	}
	b.ResetTimer()
	b.StartTimer()
	for i := range b.N {
		old := tx.g.NextAvail()
		tx.g.PublishHead(txID)
		kick(tx, old)
		if !spin(tx) {
			b.Fatalf("request %d not sent within a second (counters %s)", i, bq.r.qp.Counters().Snapshot())
		}
		tx.last++
		// The reply: anything else the kernel sends (it sends nothing
		// with a static neighbour and no IPv6 address) counts too.
		if !spin(rx) {
			b.Fatalf("no reply to request %d within a second (counters %s)", i, bq.r.qp.Counters().Snapshot())
		}
		old = rx.g.NextAvail()
		rx.reap()
		kick(rx, old)
	}
	b.StopTimer()
	if s := bq.r.qp.Counters().Snapshot(); s[TXPackets] < uint64(b.N) {
		b.Fatalf("counters %s: want %d frames sent", s, b.N)
	}
}

// spin waits for r's used idx to move, for up to a second.
func spin(r *benchRing) bool {
	for k := 0; r.g.UsedIdx() == r.last; k++ {
		if k == 1<<20 {
			k = 0
			deadline := time.Now().Add(time.Second)
			for r.g.UsedIdx() == r.last {
				if time.Now().After(deadline) {
					return false
				}
			}
		}
	}
	return true
}
