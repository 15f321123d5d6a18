package engine

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// rig is a queue pair under test, with Go guests (virtio/virtiotest)
// driving its two virtqueues. Its TAP queue file is one of three, as
// rigOptions says: a SOCK_SEQPACKET socketpair (the default), whose other
// end, peer, stands in for the kernel and shows exactly the bytes the
// engine wrote; queue 0 of a real TAP (tap) in a fresh namespace, where
// the TAP has 10.77.0.1/24 and the guest is 10.77.0.2 with guestMAC; or
// that TAP in a "router" namespace that forwards between the guest's
// subnet and a veth pair to a "peer" namespace (net), where the sockets
// the guest talks to are:
//
//	guest 10.77.0.2 ── engine ── TAP 10.77.0.1 [router] vr 10.78.0.1 ══ vp 10.78.0.2 [peer]
//	      fd77::2                    fd77::1             fd78::1        fd78::2
//
// In the net layout vr neither checksums nor segments in hardware
// (ethtool tx, tso, gso off), so the router's stack cuts every GSO frame
// the guest sends and completes its checksums in software, using the
// partial checksum the guest left; and vp does not trust checksums (rx
// off, gro off), so the peer's TCP and UDP verify every segment as it
// arrives. A local socket in the TAP's own namespace would get the GSO
// frame whole, its checksum taken on trust (CHECKSUM_PARTIAL is "verified"
// on local delivery). From the peer towards the guest, vp keeps TSO: GSO
// frames are forwarded as they are and reach the TAP, which hands them to
// the guest whole or cuts them, by what TUNSETOFFLOAD allowed.
//
// Namespaces are cheap to make but slow to tear down, and the next test's
// setup waits for that: a test builds one TAP rig and changes its TAP
// (useTAP) and its queue pair (start) between subtests, and a benchmark's
// sub-benchmarks run their rigs on one TAP (rigOptions.tapOf).
type rig struct {
	t        testing.TB
	o        rigOptions // as newRig filled it in
	qp       *QueuePair // the queue pair of the moment; nil once stopped
	rx, tx   *virtiotest.Guest
	rxKick   *EventFD
	txKick   *EventFD
	rxCall   *EventFD
	txCall   *EventFD
	hdrLen   int
	features virtio.Features
	mod      func(*Config) // adjusts the config of every queue pair the rig runs
	tap      *os.File      // the TAP queue file, or the engine's end of the socketpair
	peer     int           // the socketpair's "kernel" end; -1 on a TAP

	// On a TAP:
	dev     *tap.Device // nil for a TAP without vnet header
	ns      string      // the TAP's namespace (the router's, with net)
	peerNS  string      // with net, the peer's namespace
	tapName string
	tapMAC  net.HardwareAddr
	noVnet  bool // the TAP has no vnet header

	// The guest's TCP (dial) in the net layout:
	lastPort uint16 // the guest's last TCP port, less 40000
	ecn      bool   // dial asks for ECN
	onConn   func(*guestTCP)
}

type rigOptions struct {
	// tap runs the queue pair on a real TAP instead of a socketpair; net
	// puts that TAP between the guest and a peer namespace, and implies
	// tap. tapOf runs it on the TAP of another rig, which keeps it: a
	// benchmark's sub-benchmarks share one.
	tap, net bool
	tapOf    *rig
	// noVnetHdr: the TAP has no vnet header (Config.NoVnetHdr). A real
	// one is then made by ip tuntap and attached without IFF_VNET_HDR,
	// as an old hypervisor hands one over.
	noVnetHdr bool
	offloads  offload.TunFlags // TUNSETOFFLOAD of a TAP made by tap.Create

	size     uint16          // of each ring; 0 is 256
	packed   bool            // packed rings, else split
	features virtio.Features // 0 is VERSION_1, and MRG_RXBUF with net
	rxSlot   int             // bytes of buffer memory per RX chain; 0 is 2048, 4096 with net
	txSlot   int             // 0 is 2048, on a TAP room for the largest GSO frame
	guest    virtiotest.Options
	mtu      int           // Config.MTU, and the MTU of a TAP the rig makes; 0 is the default, 1500 with net
	mod      func(*Config) // adjusts the config of every queue pair the rig runs
	// stopped: newRig makes neither rings nor a queue pair; the test or
	// benchmark does (start, or rings and run).
	stopped bool
}

// guestMAC is the guest's address on a TAP.
var guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x02}

// The guest's and the peer's addresses on a TAP; host4 is the TAP's.
var (
	guest4 = netip.MustParseAddr("10.77.0.2")
	host4  = netip.MustParseAddr("10.77.0.1")
	peer4  = netip.MustParseAddr("10.78.0.2")
	guest6 = netip.MustParseAddr("fd77::2")
	peer6  = netip.MustParseAddr("fd78::2")
)

// newRig builds the rig o describes and, unless o.stopped, starts a queue
// pair on it. Everything it made goes when the test ends.
func newRig(t testing.TB, o rigOptions) *rig {
	t.Helper()
	o.tap = o.tap || o.net || o.tapOf != nil
	if o.size == 0 {
		o.size = 256
	}
	if o.features == 0 {
		o.features = virtio.FVersion1
		if o.net {
			o.features |= virtio.NetFMrgRxbuf
		}
	}
	if o.rxSlot == 0 {
		o.rxSlot = 2048
		if o.net {
			o.rxSlot = 4096
		}
	}
	if o.txSlot == 0 {
		o.txSlot = 2048
		if o.tap {
			o.txSlot = 65550 + 20
		}
	}
	if o.mtu == 0 && o.net {
		o.mtu = 1500
	}
	r := &rig{t: t, o: o, peer: -1, mod: o.mod, features: o.features, hdrLen: virtio.HdrLenFor(o.features),
		noVnet: o.noVnetHdr}
	switch {
	case o.tapOf != nil:
		s := o.tapOf
		r.ns, r.peerNS, r.dev, r.tap, r.tapName, r.tapMAC, r.noVnet = s.ns, s.peerNS, s.dev, s.tap, s.tapName, s.tapMAC, s.noVnet
	case o.tap:
		testutil.RequireTUN(t)
		r.ns = testutil.NetNS(t)
		if o.net {
			r.peerNS = testutil.NetNS(t)
			r.linkPeer()
		}
	default:
		r.socketpair()
	}
	for _, e := range []**EventFD{&r.rxKick, &r.txKick, &r.rxCall, &r.txCall} {
		var err error
		if *e, err = NewEventFD(); err != nil {
			t.Fatal(err)
		}
		ev := *e
		t.Cleanup(func() { ev.Close() })
	}
	t.Cleanup(func() {
		r.stop()
		if o.tapOf == nil {
			r.closeTAP()
		}
	})
	if o.tap && o.tapOf == nil {
		r.useTAP(o.noVnetHdr, r.hdrLen, o.offloads)
	}
	if !o.stopped {
		r.start(o.features)
	}
	return r
}

// socketpair makes the stand-in TAP.
func (r *rig) socketpair() {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	for _, fd := range fds {
		// Room for 64 KiB frames in flight.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	unix.SetNonblock(fds[0], true)
	r.tap, r.peer = os.NewFile(uintptr(fds[0]), "tap"), fds[1]
}

// linkPeer joins the router and peer namespaces with a veth pair and
// routes between them.
func (r *rig) linkPeer() {
	t, router, peer := r.t, r.ns, r.peerNS
	// No duplicate address detection: addresses usable at once, link-local
	// ones included (the veth end moved here gets its configuration here).
	for _, ns := range []string{router, peer} {
		testutil.Exec(t, ns, "sh", "-ec", "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad")
	}
	testutil.Exec(t, router, "sh", "-ec", strings.Join([]string{
		"ip link add vr type veth peer name vp netns " + peer,
		"ip addr add 10.78.0.1/24 dev vr",
		"ip -6 addr add fd78::1/64 dev vr nodad",
		"ethtool -K vr tx off tso off gso off >/dev/null",
		"ip link set vr up",
		"echo 1 > /proc/sys/net/ipv4/ip_forward",
		"echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
	}, "\n"))
	testutil.Exec(t, peer, "sh", "-ec", strings.Join([]string{
		"ip addr add 10.78.0.2/24 dev vp",
		"ip -6 addr add fd78::2/64 dev vp nodad",
		"ethtool -K vp rx off gro off >/dev/null",
		"ip link set vp up",
		"ip route add default via 10.78.0.1",
		"ip -6 route add default via fd78::1",
	}, "\n"))
	// Static neighbours on the veth too: nothing waits for ARP or ND.
	vrMAC := strings.TrimSpace(testutil.Exec(t, router, "cat", "/sys/class/net/vr/address"))
	vpMAC := strings.TrimSpace(testutil.Exec(t, peer, "cat", "/sys/class/net/vp/address"))
	testutil.Exec(t, router, "sh", "-ec", "ip neigh add 10.78.0.2 lladdr "+vpMAC+" dev vr; ip -6 neigh add fd78::2 lladdr "+vpMAC+" dev vr")
	testutil.Exec(t, peer, "sh", "-ec", "ip neigh add 10.78.0.1 lladdr "+vrMAC+" dev vp; ip -6 neigh add fd78::1 lladdr "+vrMAC+" dev vp")
}

// use points the rig's failures at t, a subtest's.
func (r *rig) use(t testing.TB) *rig {
	r.t = t
	return r
}

// useTAP stops the queue pair and replaces the TAP: one made by
// tap.Create with a vnet header of hdrLen bytes and TUNSETOFFLOAD
// offloads, or (noVnetHdr) a multi-queue TAP made by ip tuntap and
// attached without IFF_VNET_HDR. It comes up with the guest's subnet and
// static neighbours for the guest.
func (r *rig) useTAP(noVnetHdr bool, hdrLen int, offloads offload.TunFlags) {
	t := r.t
	r.stop()
	r.closeTAP()
	r.noVnet = noVnetHdr
	if noVnetHdr {
		r.tapName = "nvhdr0"
		testutil.Exec(t, r.ns, "ip", "tuntap", "add", "dev", r.tapName, "mode", "tap", "multi_queue")
		r.tap = openNoVnetHdr(t, r.ns, r.tapName)
		testutil.Exec(t, r.ns, "ip", "link", "set", r.tapName, "up")
		out := testutil.Exec(t, r.ns, "cat", "/sys/class/net/"+r.tapName+"/address")
		mac, err := net.ParseMAC(strings.TrimSpace(out))
		if err != nil {
			t.Fatal(err)
		}
		r.tapMAC = mac
	} else {
		dev, err := tap.Create(tap.Options{NetNS: r.ns, VnetHdrSize: hdrLen, Offloads: offloads})
		if err != nil {
			t.Fatal(err)
		}
		r.dev = dev
		if r.o.mtu != 0 {
			if err := dev.SetMTU(r.o.mtu); err != nil {
				t.Fatal(err)
			}
		}
		if err := dev.SetUp(true); err != nil {
			t.Fatal(err)
		}
		if r.tapMAC, err = dev.MAC(); err != nil {
			t.Fatal(err)
		}
		r.tapName, r.tap = dev.Name(), dev.Queue(0).File()
	}
	tn := r.tapName
	cmds := []string{
		"ip addr add 10.77.0.1/24 dev " + tn,
		"ip neigh replace 10.77.0.2 lladdr " + guestMAC.String() + " dev " + tn,
	}
	if r.peerNS != "" {
		cmds = append(cmds,
			"ip -6 addr add fd77::1/64 dev "+tn+" nodad",
			"ip -6 neigh replace fd77::2 lladdr "+guestMAC.String()+" dev "+tn)
	}
	testutil.Exec(t, r.ns, "sh", "-ec", strings.Join(cmds, "\n"))
}

// openNoVnetHdr attaches a queue to the existing multi-queue TAP name the
// way an old hypervisor would: TUNSETIFF without IFF_VNET_HDR.
func openNoVnetHdr(t testing.TB, ns, name string) *os.File {
	t.Helper()
	var fd int
	testutil.InNetNS(t, ns, func() error {
		var err error
		if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		return nil
	})
	return os.NewFile(uintptr(fd), "tap "+name)
}

// closeTAP closes the TAP, removing one made by ip tuntap, or the
// socketpair.
func (r *rig) closeTAP() {
	switch {
	case r.dev != nil:
		r.dev.Close()
		r.dev = nil
	case r.tap != nil && r.peer >= 0:
		unix.Close(r.peer)
		r.tap.Close()
		r.peer = -1
	case r.tap != nil:
		r.tap.Close()
		testutil.Run(r.ns, "ip", "tuntap", "del", "dev", r.tapName, "mode", "tap", "multi_queue")
	}
	r.tap = nil
}

// stop stops the queue pair, if one runs.
func (r *rig) stop() {
	if r.qp != nil {
		if err := r.qp.Stop(); err != nil {
			r.t.Errorf("stop: %v", err)
		}
		r.qp = nil
	}
}

// start runs a new queue pair with features on fresh rings, as after a
// device reset; with net, the RX ring full of buffers of rxSlot bytes.
func (r *rig) start(features virtio.Features) {
	t := r.t
	t.Helper()
	r.stop()
	r.features, r.hdrLen = features, virtio.HdrLenFor(features)
	r.rings()
	rxq, err := r.rx.NewQueue()
	if err != nil {
		t.Fatal(err)
	}
	txq, err := r.tx.NewQueue()
	if err != nil {
		t.Fatal(err)
	}
	r.run(rxq, txq)
	if r.o.net {
		r.postRX(int(r.o.size), r.o.rxSlot)
	}
}

// rings gives the rig fresh guests, their rings empty.
func (r *rig) rings() {
	r.t.Helper()
	g := r.o.guest
	var err error
	g.SlotSize = r.o.rxSlot
	if r.rx, err = virtiotest.NewGuest(r.o.size, r.o.packed, g); err != nil {
		r.t.Fatal(err)
	}
	g.SlotSize = r.o.txSlot
	if r.tx, err = virtiotest.NewGuest(r.o.size, r.o.packed, g); err != nil {
		r.t.Fatal(err)
	}
}

// run starts a queue pair on device queues rxq and txq of the rig's rings:
// every queue pair a rig runs is made here.
func (r *rig) run(rxq, txq virtio.Queue) {
	r.t.Helper()
	cfg := Config{RX: rxq, TX: txq, RXKick: r.rxKick, TXKick: r.txKick, RXCall: r.rxCall, TXCall: r.txCall,
		TAP: r.tap, HdrLen: r.hdrLen, Features: r.features, MTU: r.o.mtu, NoVnetHdr: r.noVnet}
	if r.mod != nil {
		r.mod(&cfg)
	}
	qp, err := New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := qp.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.qp = qp
}

// resume stops the queue pair and starts a new one on new device queues
// over the same rings, from where the old ones stopped, as vhost-user
// does across GET_VRING_BASE and SET_VRING_BASE or an embedding VMM across
// a live update.
func (r *rig) resume() {
	r.t.Helper()
	old := r.qp
	if err := old.Stop(); err != nil {
		r.t.Fatalf("stop: %v", err)
	}
	r.qp = nil
	r.run(deviceQueue(r.t, r.rx, old.cfg.RX), deviceQueue(r.t, r.tx, old.cfg.TX))
}

// deviceQueue makes the device side of g's split ring from where prev
// stopped, or from the start without prev.
func deviceQueue(t testing.TB, g *virtiotest.Guest, prev virtio.Queue) virtio.Queue {
	t.Helper()
	cfg := g.SplitConfig()
	if prev != nil {
		cfg.NextAvail, cfg.NextUsed = prev.NextAvail(), g.UsedIdx()
	}
	q, err := virtio.NewSplitQueue(g.Memory(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// tapStat reads a statistics counter of the rig's TAP.
func (r *rig) tapStat(name string) uint64 {
	r.t.Helper()
	out := testutil.Exec(r.t, r.ns, "cat", "/sys/class/net/"+r.tapName+"/statistics/"+name)
	v, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	if err != nil {
		r.t.Fatal(err)
	}
	return v
}

// sendTX posts frames on the TX ring behind zero headers and kicks.
func (r *rig) sendTX(frames ...[]byte) {
	r.t.Helper()
	r.postTX(make([]virtio.NetHdr, len(frames)), frames)
}

// postTX posts frames behind their headers and kicks.
func (r *rig) postTX(hdrs []virtio.NetHdr, frames [][]byte) {
	r.t.Helper()
	for i, f := range frames {
		if _, err := r.tx.PostTX(withHdr(hdrs[i], r.hdrLen, f)); err != nil {
			r.t.Fatalf("post TX %d: %v", i, err)
		}
	}
	if r.tx.Kick() {
		r.txKick.Notify()
	}
}

// send posts frames behind their headers and kicks, reaping what the
// engine is done with first: for tests that keep sending.
func (r *rig) send(hdrs []virtio.NetHdr, frames [][]byte) {
	r.t.Helper()
	r.tx.Reap()
	r.postTX(hdrs, frames)
}

// readPeer reads one message from the socketpair's kernel end, or nil
// after wait.
func (r *rig) readPeer(wait time.Duration) []byte {
	r.t.Helper()
	buf := make([]byte, 70000)
	fds := []unix.PollFd{{Fd: int32(r.peer), Events: unix.POLLIN}}
	deadline := time.Now().Add(wait)
	for {
		// A signal (the Go runtime preempts with SIGURG) ends poll early.
		n, err := unix.Poll(fds, int(time.Until(deadline)/time.Millisecond))
		if err == unix.EINTR && time.Now().Before(deadline) {
			continue
		}
		if err != nil || n == 0 {
			return nil
		}
		break
	}
	n, err := unix.Read(r.peer, buf)
	if err != nil {
		r.t.Fatalf("read peer: %v", err)
	}
	return buf[:n]
}

// readN reads n messages from the kernel end, failing if they do not come
// or more follow.
func (r *rig) readN(n int) [][]byte {
	r.t.Helper()
	var out [][]byte
	for range n {
		m := r.readPeer(2 * time.Second)
		if m == nil {
			r.t.Fatalf("got %d messages, want %d (counters %s)", len(out), n, r.qp.Counters().Snapshot())
		}
		out = append(out, m)
	}
	if extra := r.readPeer(20 * time.Millisecond); extra != nil {
		r.t.Fatalf("message %d of %d bytes after the %d expected", n+1, len(extra), n)
	}
	return out
}

// writePeer sends a frame from the kernel end behind a zero header.
func (r *rig) writePeer(f []byte) {
	r.t.Helper()
	if _, err := unix.Write(r.peer, append(make([]byte, r.hdrLen), f...)); err != nil {
		r.t.Fatalf("write peer: %v", err)
	}
}

// postRX posts n receive chains of size bytes and kicks.
func (r *rig) postRX(n, size int) {
	r.t.Helper()
	for i := 0; i < n; i++ {
		if _, err := r.rx.PostRX(size); err != nil {
			r.t.Fatalf("post RX %d: %v", i, err)
		}
	}
	if r.rx.Kick() {
		r.rxKick.Notify()
	}
}

// rxFrame is one frame the guest received.
type rxFrame struct {
	hdr   virtio.NetHdr
	frame []byte
}

// merge takes the frames off the front of used, a frame's chains merged
// by num_buffers, and returns them and the chains of a frame not all
// used yet.
func (r *rig) merge(used []virtiotest.Used) (frames []rxFrame, rest []virtiotest.Used) {
	r.t.Helper()
	for len(used) > 0 {
		d := used[0].Data
		if len(d) < r.hdrLen {
			r.t.Fatalf("used buffer of %d bytes, shorter than the header", len(d))
		}
		var h virtio.NetHdr
		if err := h.Decode(d, r.hdrLen, virtio.LittleEndian); err != nil {
			r.t.Fatal(err)
		}
		nb := 1
		if r.hdrLen >= virtio.HdrLenV1 {
			nb = int(h.NumBuffers)
		}
		if !r.features.Has(virtio.NetFMrgRxbuf) && nb != 1 {
			r.t.Fatalf("num_buffers %d without MRG_RXBUF", nb)
		}
		if nb < 1 {
			r.t.Fatalf("num_buffers %d", nb)
		}
		if len(used) < nb {
			break
		}
		f := append([]byte(nil), d[r.hdrLen:]...)
		for _, v := range used[1:nb] {
			f = append(f, v.Data...)
		}
		frames = append(frames, rxFrame{h, f})
		used = used[nb:]
	}
	return frames, used
}

// reapFrames collects want frames from the RX ring within wait.
func (r *rig) reapFrames(want int, wait time.Duration) [][]byte {
	r.t.Helper()
	var frames [][]byte
	var used []virtiotest.Used
	deadline := time.Now().Add(wait)
	for len(frames) < want && time.Now().Before(deadline) {
		used = append(used, r.rx.Reap()...)
		if err := r.rx.Err(); err != nil {
			r.t.Fatalf("guest: %v", err)
		}
		var got []rxFrame
		got, used = r.merge(used)
		for _, f := range got {
			frames = append(frames, f.frame)
		}
		if len(frames) < want {
			time.Sleep(time.Millisecond)
		}
	}
	return frames
}

// reap collects what the guest received within wait, reposting the
// buffers it used; it returns once something came and no frame is left
// half used.
func (r *rig) reap(wait time.Duration) []rxFrame {
	r.t.Helper()
	deadline := time.Now().Add(wait)
	var used []virtiotest.Used
	var out []rxFrame
	for {
		u := r.rx.Reap()
		if err := r.rx.Err(); err != nil {
			r.t.Fatalf("guest: %v", err)
		}
		if len(u) > 0 {
			used = append(used, u...)
			r.postRX(len(u), r.o.rxSlot)
		}
		var got []rxFrame
		got, used = r.merge(used)
		out = append(out, got...)
		if (len(out) > 0 && len(used) == 0) || time.Now().After(deadline) {
			if len(used) > 0 {
				r.t.Fatalf("%d used buffers of an incomplete frame", len(used))
			}
			return out
		}
		time.Sleep(200 * time.Microsecond)
	}
}
