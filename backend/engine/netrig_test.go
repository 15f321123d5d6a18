package engine

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
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

// netRig puts a real stack on both sides of the guest. The TAP lives in a
// "router" namespace that forwards between the guest's subnet and a veth
// pair to a "peer" namespace, where the sockets the guest talks to are:
//
//	guest 10.77.0.2 ── engine ── TAP 10.77.0.1 [router] vr 10.78.0.1 ══ vp 10.78.0.2 [peer]
//	      fd77::2                    fd77::1             fd78::1        fd78::2
//
// vr neither checksums nor segments in hardware (ethtool tx, tso, gso
// off), so the router's stack cuts every GSO frame the guest sends and
// completes its checksums in software, using the partial checksum the
// guest left; and vp does not trust checksums (rx off, gro off), so the
// peer's TCP and UDP verify every segment as it arrives. A local socket
// in the TAP's own namespace would get the GSO frame whole, its checksum
// taken on trust (CHECKSUM_PARTIAL is "verified" on local delivery).
// From the peer towards the guest, vp keeps TSO: GSO frames are forwarded
// as they are and reach the TAP, which hands them to the guest whole or
// cuts them, by what TUNSETOFFLOAD allowed.
type netRig struct {
	*rig
	t        *testing.T
	dev      *tap.Device // nil for a TAP without vnet header
	ns       string      // the router namespace, with the TAP
	peer     string      // the peer namespace
	tapName  string
	tapMAC   net.HardwareAddr
	noVnet   bool          // the TAP has no vnet header
	mod      func(*Config) // adjusts every queue pair's config
	rxBuf    int
	lastPort uint16 // the guest's last TCP port, less 40000
	ecn      bool   // dial asks for ECN
	onConn   func(*guestTCP)
	mtu      int
}

var (
	guest4 = net.IPv4(10, 77, 0, 2).To4()
	peer4  = net.IPv4(10, 78, 0, 2).To4()
	guest6 = net.ParseIP("fd77::2")
	peer6  = net.ParseIP("fd78::2")
)

type netOptions struct {
	features  virtio.Features  // 0: VERSION_1|MRG_RXBUF
	offloads  offload.TunFlags // TUNSETOFFLOAD at start
	noVnetHdr bool             // a TAP from ip tuntap, opened without IFF_VNET_HDR
	mod       func(*Config)    // adjusts every queue pair's config
}

// rxFrame is one frame the guest received.
type rxFrame struct {
	hdr   virtio.NetHdr
	frame []byte
}

// newNetRig builds the namespaces and a TAP as o says, and starts a queue
// pair on it. Namespaces are cheap to make but slow to tear down, and the
// next test's setup waits for that; a test builds one netRig and changes
// its TAP (useTAP) and its queue pair (start) between subtests.
func newNetRig(t *testing.T, o netOptions) *netRig {
	t.Helper()
	testutil.RequireTUN(t)
	if o.features == 0 {
		o.features = virtio.FVersion1 | virtio.NetFMrgRxbuf
	}
	router := testutil.NetNS(t)
	peer := testutil.NetNS(t)
	nr := &netRig{t: t, ns: router, peer: peer, rxBuf: 4096, mtu: 1500, mod: o.mod}
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

	r := &rig{t: t, peer: -1, mod: func(c *Config) {
		c.NoVnetHdr = nr.noVnet
		if nr.mod != nil {
			nr.mod(c)
		}
	}}
	for _, e := range []**EventFD{&r.rxKick, &r.txKick, &r.rxCall, &r.txCall} {
		var err error
		if *e, err = NewEventFD(); err != nil {
			t.Fatal(err)
		}
		ev := *e
		t.Cleanup(func() { ev.Close() })
	}
	nr.rig = r
	t.Cleanup(func() { nr.stop(); nr.closeTAP() })
	nr.useTAP(o.noVnetHdr, virtio.HdrLenFor(o.features), o.offloads)
	nr.start(o.features)
	return nr
}

// use points the rig's failures at t, a subtest's.
func (nr *netRig) use(t *testing.T) *netRig {
	nr.t, nr.rig.t = t, t
	return nr
}

// useTAP stops the queue pair and replaces the TAP: one made by
// tap.Create with a vnet header of hdrLen bytes and TUNSETOFFLOAD
// offloads, or (noVnetHdr) a multi-queue TAP made by ip tuntap and
// attached without IFF_VNET_HDR, as an old hypervisor hands one over.
func (nr *netRig) useTAP(noVnetHdr bool, hdrLen int, offloads offload.TunFlags) {
	t := nr.t
	nr.stop()
	nr.closeTAP()
	nr.noVnet = noVnetHdr
	if noVnetHdr {
		nr.tapName = "nvhdr0"
		testutil.Exec(t, nr.ns, "ip", "tuntap", "add", "dev", nr.tapName, "mode", "tap", "multi_queue")
		nr.tap = openNoVnetHdr(t, nr.ns, nr.tapName)
		testutil.Exec(t, nr.ns, "ip", "link", "set", nr.tapName, "up")
		out := testutil.Exec(t, nr.ns, "cat", "/sys/class/net/"+nr.tapName+"/address")
		mac, err := net.ParseMAC(strings.TrimSpace(out))
		if err != nil {
			t.Fatal(err)
		}
		nr.tapMAC = mac
	} else {
		dev, err := tap.Create(tap.Options{NetNS: nr.ns, VnetHdrSize: hdrLen, Offloads: offloads})
		if err != nil {
			t.Fatal(err)
		}
		nr.dev = dev
		if err := dev.SetUp(true); err != nil {
			t.Fatal(err)
		}
		if nr.tapMAC, err = dev.MAC(); err != nil {
			t.Fatal(err)
		}
		nr.tapName, nr.tap = dev.Name(), dev.Queue(0).File()
	}
	tn := nr.tapName
	testutil.Exec(t, nr.ns, "sh", "-ec", strings.Join([]string{
		"ip addr add 10.77.0.1/24 dev " + tn,
		"ip -6 addr add fd77::1/64 dev " + tn + " nodad",
		"ip neigh replace 10.77.0.2 lladdr " + guestMAC.String() + " dev " + tn,
		"ip -6 neigh replace fd77::2 lladdr " + guestMAC.String() + " dev " + tn,
	}, "\n"))
}

// closeTAP removes the TAP.
func (nr *netRig) closeTAP() {
	if nr.dev != nil {
		nr.dev.Close()
		nr.dev = nil
	} else if nr.tap != nil {
		nr.tap.Close()
		testutil.Run(nr.ns, "ip", "tuntap", "del", "dev", nr.tapName, "mode", "tap", "multi_queue")
	}
	nr.tap = nil
}

// stop stops the queue pair, if one runs.
func (nr *netRig) stop() {
	if nr.qp != nil {
		if err := nr.qp.Stop(); err != nil {
			nr.t.Errorf("stop: %v", err)
		}
		nr.qp = nil
	}
}

// start runs a new queue pair with features on fresh rings, the RX ring
// full of buffers, as after a device reset.
func (nr *netRig) start(features virtio.Features) {
	t := nr.t
	r := nr.rig
	nr.stop()
	r.features = features
	r.hdrLen = virtio.HdrLenFor(features)
	var err error
	if r.rx, err = virtiotest.NewGuest(256, false, virtiotest.Options{SlotSize: nr.rxBuf}); err != nil {
		t.Fatal(err)
	}
	if r.tx, err = virtiotest.NewGuest(256, false, virtiotest.Options{SlotSize: 65550 + 20}); err != nil {
		t.Fatal(err)
	}
	r.qp = r.newQP(nr.mtu)
	if err := r.qp.Start(); err != nil {
		t.Fatal(err)
	}
	nr.postRX(256, nr.rxBuf)
}

// openNoVnetHdr attaches a queue to the existing multi-queue TAP name the
// way an old hypervisor would: TUNSETIFF without IFF_VNET_HDR.
func openNoVnetHdr(t *testing.T, ns, name string) *os.File {
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

// flow4 and flow6 are the guest's side of a conversation with the peer.
func (nr *netRig) flow(v6 bool, sport, dport uint16) flow {
	f := flow{srcMAC: guestMAC, dstMAC: nr.tapMAC, src: guest4, dst: peer4, sport: sport, dport: dport}
	if v6 {
		f.src, f.dst = guest6, peer6
	}
	return f
}

// send posts frames behind their headers and kicks, reaping what the
// engine is done with first.
func (nr *netRig) send(hdrs []virtio.NetHdr, frames [][]byte) {
	nr.t.Helper()
	nr.tx.Reap()
	nr.postTX(hdrs, frames)
}

// reap collects what the guest received within wait, reposting the
// buffers it used.
func (nr *netRig) reap(wait time.Duration) []rxFrame {
	nr.t.Helper()
	deadline := time.Now().Add(wait)
	var used []virtiotest.Used
	var out []rxFrame
	for {
		u := nr.rx.Reap()
		if err := nr.rx.Err(); err != nil {
			nr.t.Fatalf("guest: %v", err)
		}
		if len(u) > 0 {
			used = append(used, u...)
			nr.postRX(len(u), nr.rxBuf)
		}
		for len(used) > 0 {
			d := used[0].Data
			if len(d) < nr.hdrLen {
				nr.t.Fatalf("used buffer of %d bytes, shorter than the header", len(d))
			}
			var h virtio.NetHdr
			if err := h.Decode(d, nr.hdrLen, virtio.LittleEndian); err != nil {
				nr.t.Fatal(err)
			}
			nb := 1
			if nr.features.Has(virtio.NetFMrgRxbuf) {
				nb = int(h.NumBuffers)
			}
			if nb < 1 {
				nr.t.Fatalf("num_buffers %d", nb)
			}
			if len(used) < nb {
				break
			}
			f := append([]byte(nil), d[nr.hdrLen:]...)
			for _, v := range used[1:nb] {
				f = append(f, v.Data...)
			}
			out = append(out, rxFrame{h, f})
			used = used[nb:]
		}
		if (len(out) > 0 && len(used) == 0) || time.Now().After(deadline) {
			if len(used) > 0 {
				nr.t.Fatalf("%d used buffers of an incomplete frame", len(used))
			}
			return out
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// checkRX checks the header of a received frame against what the guest
// acked, and the frame against its header: a GSO type the guest accepted,
// the checksum fields where the transport header is, the pseudo-header's
// sum in a partial checksum, complete checksums otherwise, and GSO frames
// that the guest's stack could cut into valid segments of gso_size. It
// returns the frame's packet.
func checkRX(f rxFrame, acked virtio.Features, mtu int) (*packet, error) {
	h := f.hdr
	if _, err := peekPacket(f.frame); err != nil {
		// Neither TCP nor UDP (ARP, ICMPv6, MLD): no offload is right.
		if h.Flags&virtio.NeedsCsum != 0 || h.GSOType != virtio.GSONone {
			return nil, fmt.Errorf("%s on a frame that is no TCP or UDP: %v", h, err)
		}
		return nil, nil
	}
	partial := h.Flags&virtio.NeedsCsum != 0
	if partial && !acked.Has(virtio.NetFGuestCsum) {
		return nil, fmt.Errorf("NEEDS_CSUM without GUEST_CSUM (%s)", h)
	}
	p, err := parsePacket(f.frame, partial)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h, err)
	}
	if partial {
		want := uint16(16)
		if p.proto == protUDP {
			want = 6
		}
		if int(h.CsumStart) != p.l4 || h.CsumOffset != want {
			return nil, fmt.Errorf("%s: csum_start/offset %d/%d, want %d/%d", h, h.CsumStart, h.CsumOffset, p.l4, want)
		}
	}
	gso := h.GSOType &^ virtio.GSOECN
	if gso == virtio.GSONone {
		if h.GSOType != virtio.GSONone || h.GSOSize != 0 {
			return nil, fmt.Errorf("%s: ECN or gso_size without GSO", h)
		}
		if len(f.frame) > mtu+ethLen {
			return nil, fmt.Errorf("%s: frame of %d bytes without GSO, MTU %d", h, len(f.frame), mtu)
		}
		return p, nil
	}
	var need virtio.Features
	switch gso {
	case virtio.GSOTCPv4:
		need = virtio.NetFGuestTSO4
	case virtio.GSOTCPv6:
		need = virtio.NetFGuestTSO6
	case virtio.GSOUDPL4:
		need = virtio.NetFGuestUSO4
		if p.v6 {
			need = virtio.NetFGuestUSO6
		}
	case virtio.GSOUDP:
		need = virtio.NetFGuestUFO
	default:
		return nil, fmt.Errorf("%s: unknown gso_type", h)
	}
	if !acked.Has(need) {
		return nil, fmt.Errorf("%s: gso_type without %s (acked %s)", h, need, acked)
	}
	if h.GSOType&virtio.GSOECN != 0 && !acked.Has(virtio.NetFGuestECN) {
		return nil, fmt.Errorf("%s: ECN without GUEST_ECN", h)
	}
	if !partial {
		return nil, fmt.Errorf("%s: GSO without NEEDS_CSUM", h)
	}
	if h.GSOSize == 0 {
		return nil, fmt.Errorf("%s: GSO with gso_size 0", h)
	}
	switch {
	case gso == virtio.GSOTCPv4 && (p.v6 || p.proto != protTCP),
		gso == virtio.GSOTCPv6 && (!p.v6 || p.proto != protTCP),
		(gso == virtio.GSOUDPL4 || gso == virtio.GSOUDP) && p.proto != protUDP:
		return nil, fmt.Errorf("%s: on an ipv6=%v packet of protocol %d", h, p.v6, p.proto)
	}
	// Cut it as the guest's stack would and check the pieces.
	segs := make([][]byte, 1024)
	for i := range segs {
		segs[i] = make([]byte, int(h.GSOSize)+256)
	}
	sizes := make([]int, len(segs))
	n, err := offload.Segment(f.frame, &h, segs, sizes)
	if err != nil {
		return nil, fmt.Errorf("%s: segment: %w", h, err)
	}
	var cut [][]byte
	for i := range n {
		if sizes[i] > mtu+ethLen {
			return nil, fmt.Errorf("%s: segment %d of %d bytes, MTU %d", h, i, sizes[i], mtu)
		}
		cut = append(cut, segs[i][:sizes[i]])
	}
	if err := checkSegments(cut, f.frame, int(h.GSOSize)); err != nil {
		return nil, fmt.Errorf("%s: %w", h, err)
	}
	return p, nil
}

// listen opens a socket in namespace ns: net.Listen or net.ListenPacket.
func listenTCP(t *testing.T, ns, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	testutil.InNetNS(t, ns, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	t.Cleanup(func() { l.Close() })
	return l
}

func listenUDP(t *testing.T, ns, network, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	testutil.InNetNS(t, ns, func() error {
		a, err := net.ResolveUDPAddr(network, addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP(network, a)
		return err
	})
	t.Cleanup(func() { c.Close() })
	c.SetReadBuffer(8 << 20)
	return c
}

// acceptRead accepts one connection on l and reads n bytes from it; the
// result arrives on the channel.
func acceptRead(l net.Listener, n int, wait time.Duration) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		l.(*net.TCPListener).SetDeadline(time.Now().Add(wait))
		c, err := l.Accept()
		if err != nil {
			ch <- readResult{err: err}
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(wait))
		b := make([]byte, n)
		_, err = io.ReadFull(c, b)
		ch <- readResult{b, err}
	}()
	return ch
}

type readResult struct {
	b   []byte
	err error
}

// capture is an AF_PACKET socket on one interface of a namespace.
type capture struct {
	t  *testing.T
	fd int
}

func newCapture(t *testing.T, ns, ifname string) *capture {
	t.Helper()
	var fd int
	testutil.InNetNS(t, ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto); err != nil {
			return err
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index})
	})
	t.Cleanup(func() { unix.Close(fd) })
	return &capture{t: t, fd: fd}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// incoming returns the frames that arrived on the interface so far and
// pass keep, which sees them parsed but not checked.
func (c *capture) incoming(keep func(*packet) bool) [][]byte {
	var out [][]byte
	buf := make([]byte, 70000)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			return out
		}
		if err != nil {
			c.t.Fatalf("capture: %v", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		f := append([]byte(nil), buf[:n]...)
		if p, err := peekPacket(f); err == nil && keep(p) {
			out = append(out, f)
		}
	}
}

// sentFlow keeps the packets with payload of the flow of frame, or
// fragments of it.
func sentFlow(frame []byte) func(*packet) bool {
	s, err := peekPacket(frame)
	if err != nil {
		panic(err)
	}
	return func(p *packet) bool {
		if !p.src.Equal(s.src) || !p.dst.Equal(s.dst) || p.proto != s.proto {
			return false
		}
		if p.fragment && p.fragOff > 0 {
			return true
		}
		return p.sport == s.sport && p.dport == s.dport && len(p.payload) > 0
	}
}

// guestTCP is just enough TCP, in the guest, for one connection to the
// peer: the handshake, sending (as GSO frames), receiving in order with
// cumulative ACKs.
type guestTCP struct {
	nr       *netRig
	out      flow
	snd, rcv uint32
	tsPeer   uint32
	mss      int // the peer's
	win      int // the peer's window in its SYN-ACK (never scaled)
	got      []byte
	frames   int // frames of this connection received
	gsoSeen  map[virtio.GSOType]int

	// With ecn the guest asks for ECN in its SYN and, once data came,
	// echoes congestion (ECE) once; the peer answers with CWR in its
	// next segment, which Linux sends as a GSO frame of type TCP|ECN
	// (tcp_ecn_send). cwr collects the gso_type of every frame with CWR.
	ecn     bool
	eceSent bool
	cwr     []virtio.GSOType
}

// guestWin is the window the guest advertises after its SYN: 192 KiB
// with window scale 7, so what is in flight fits in the RX ring (256
// buffers) and the TAP's queue, and nothing is dropped for want of room.
const guestWin = 1536

// dial connects the guest to the peer's port, from a port of its own
// that no earlier connection used (the peer may still hold those).
func (nr *netRig) dial(v6 bool, dport uint16) *guestTCP {
	nr.t.Helper()
	nr.lastPort++
	sport := 40000 + nr.lastPort
	g := &guestTCP{nr: nr, out: nr.flow(v6, sport, dport), snd: 1000000, gsoSeen: map[virtio.GSOType]int{}}
	// MSS 1460 (1440 for v6), NOP NOP TS, NOP WS 7.
	mss := 1460
	if v6 {
		mss = 1440
	}
	opts := []byte{2, 4, byte(mss >> 8), byte(mss), 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7}
	synFlags := byte(tcpSYN)
	if nr.ecn {
		g.ecn = true
		synFlags |= tcpECE | tcpCWR
	}
	syn := g.out.tcp(g.snd, 0, synFlags, 0xffff, opts, nil, false)
	var synack *packet
	for try := 0; try < 3 && synack == nil; try++ {
		nr.send([]virtio.NetHdr{{}}, [][]byte{syn})
		deadline := time.Now().Add(time.Second)
		for synack == nil && time.Now().Before(deadline) {
			for _, f := range nr.reap(50 * time.Millisecond) {
				p, err := peekPacket(f.frame)
				if err == nil && g.mine(p) && p.flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK {
					synack = p
				}
			}
		}
	}
	if synack == nil {
		nr.t.Fatalf("no SYN-ACK from %v port %d (counters %s)", g.out.dst, dport, nr.qp.Counters().Snapshot())
	}
	g.snd++
	g.rcv = synack.seq + 1
	g.win = int(synack.win)
	g.mss = 536
	for o := synack.opts; len(o) > 0; {
		switch {
		case o[0] == 0:
			o = nil
		case o[0] == 1:
			o = o[1:]
		case len(o) >= 2 && int(o[1]) >= 2 && int(o[1]) <= len(o):
			if o[0] == 2 && o[1] == 4 {
				g.mss = int(binary.BigEndian.Uint16(o[2:]))
			}
			if o[0] == 8 && o[1] == 10 {
				g.tsPeer = binary.BigEndian.Uint32(o[2:])
			}
			o = o[o[1]:]
		default:
			o = nil
		}
	}
	g.ack()
	return g
}

func (g *guestTCP) mine(p *packet) bool {
	return p.proto == protTCP && p.src.Equal(g.out.dst) && p.sport == g.out.dport && p.dport == g.out.sport
}

// ack sends a pure ACK, with a partial checksum as Linux would.
func (g *guestTCP) ack() {
	flags := byte(tcpACK)
	if g.ecn && !g.eceSent && len(g.got) > 0 {
		flags |= tcpECE
		g.eceSent = true
	}
	f := g.out.tcp(g.snd, g.rcv, flags, guestWin, tsOpt(2, g.tsPeer), nil, true)
	g.nr.send([]virtio.NetHdr{gsoHdr(f, virtio.GSONone, 0)}, [][]byte{f})
}

// write sends data as one GSO frame of gsoSize-byte segments, with the
// pseudo-header's sum in the checksum field, as a Linux guest does. It
// returns the frame.
func (g *guestTCP) write(data []byte, gsoSize int) []byte {
	gso := virtio.GSOTCPv4
	if g.out.v6() {
		gso = virtio.GSOTCPv6
	}
	f := g.out.tcp(g.snd, g.rcv, tcpACK|tcpPSH, guestWin, tsOpt(3, g.tsPeer), data, true)
	g.nr.send([]virtio.NetHdr{gsoHdr(f, gso, gsoSize)}, [][]byte{f})
	g.snd += uint32(len(data))
	return f
}

// read receives until the peer sent n bytes in all, checking each frame
// with check and acknowledging as it goes.
func (g *guestTCP) read(n int, wait time.Duration, check func(rxFrame) (*packet, error)) error {
	deadline := time.Now().Add(wait)
	for len(g.got) < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("received %d of %d bytes (counters %s)", len(g.got), n, g.nr.qp.Counters().Snapshot())
		}
		frames := g.nr.reap(20 * time.Millisecond)
		progress := false
		for _, f := range frames {
			p, err := check(f)
			if err != nil {
				return fmt.Errorf("frame %d of the connection: %w", g.frames, err)
			}
			if p == nil || !g.mine(p) {
				continue
			}
			g.frames++
			g.gsoSeen[f.hdr.GSOType]++
			if p.flags&tcpCWR != 0 {
				g.cwr = append(g.cwr, f.hdr.GSOType)
			}
			if p.seq == g.rcv && len(p.payload) > 0 {
				g.got = append(g.got, p.payload...)
				g.rcv += uint32(len(p.payload))
				progress = true
			}
			for o := p.opts; len(o) >= 10; o = o[1:] {
				if o[0] == 8 && o[1] == 10 {
					g.tsPeer = binary.BigEndian.Uint32(o[2:])
					break
				}
			}
		}
		if progress || len(frames) > 0 {
			g.ack()
		}
	}
	return nil
}
