package engine

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// The net layout's real stacks (rigOptions.net): what the guest says to
// the peer, and how the test reads what arrives at either end.

// toHost is the guest's side of a conversation with the TAP's own
// address.
func (r *rig) toHost(sport, dport uint16) frametest.Spec {
	return frametest.Spec{SrcMAC: guestMAC, DstMAC: r.tapMAC, Src: guest4, Dst: host4, DF: true,
		SrcPort: sport, DstPort: dport}
}

// flow is the guest's side of a conversation with the peer.
func (r *rig) flow(v6 bool, sport, dport uint16) frametest.Spec {
	f := frametest.Spec{SrcMAC: guestMAC, DstMAC: r.tapMAC, Src: guest4, Dst: peer4, DF: true, SrcPort: sport, DstPort: dport}
	if v6 {
		f.Src, f.Dst = guest6, peer6
	}
	return f
}

// checkRX checks the header of a received frame against what the guest
// acked, and the frame against its header: a GSO type the guest accepted,
// the checksum fields where the transport header is, the pseudo-header's
// sum in a partial checksum, complete checksums otherwise, and GSO frames
// that the guest's stack could cut into valid segments of gso_size. It
// returns the frame's packet.
func checkRX(f rxFrame, acked virtio.Features, mtu int) (*frametest.Packet, error) {
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
		if p.Proto == frametest.ProtoUDP {
			want = 6
		}
		if int(h.CsumStart) != p.L4 || h.CsumOffset != want {
			return nil, fmt.Errorf("%s: csum_start/offset %d/%d, want %d/%d", h, h.CsumStart, h.CsumOffset, p.L4, want)
		}
	}
	gso := h.GSOType &^ virtio.GSOECN
	if gso == virtio.GSONone {
		if h.GSOType != virtio.GSONone || h.GSOSize != 0 {
			return nil, fmt.Errorf("%s: ECN or gso_size without GSO", h)
		}
		if len(f.frame) > mtu+frametest.EthLen {
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
		if p.V6 {
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
	case gso == virtio.GSOTCPv4 && (p.V6 || p.Proto != frametest.ProtoTCP),
		gso == virtio.GSOTCPv6 && (!p.V6 || p.Proto != frametest.ProtoTCP),
		(gso == virtio.GSOUDPL4 || gso == virtio.GSOUDP) && p.Proto != frametest.ProtoUDP:
		return nil, fmt.Errorf("%s: on an ipv6=%v packet of protocol %d", h, p.V6, p.Proto)
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
		if sizes[i] > mtu+frametest.EthLen {
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
func listenTCP(t testing.TB, ns, network, addr string) net.Listener {
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

func listenUDP(t testing.TB, ns, network, addr string) *net.UDPConn {
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
	t  testing.TB
	fd int
}

func newCapture(t testing.TB, ns, ifname string) *capture {
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
func (c *capture) incoming(keep func(*frametest.Packet) bool) [][]byte {
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
func sentFlow(frame []byte) func(*frametest.Packet) bool {
	s, err := peekPacket(frame)
	if err != nil {
		panic(err)
	}
	return func(p *frametest.Packet) bool {
		if p.Src != s.Src || p.Dst != s.Dst || p.Proto != s.Proto {
			return false
		}
		if p.Fragment && p.FragOffset > 0 {
			return true
		}
		return p.SrcPort == s.SrcPort && p.DstPort == s.DstPort && len(p.Payload) > 0
	}
}

// guestTCP is just enough TCP, in the guest, for one connection to the
// peer: the handshake, sending (as GSO frames), receiving in order with
// cumulative ACKs.
type guestTCP struct {
	r        *rig
	out      frametest.Spec
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
func (r *rig) dial(v6 bool, dport uint16) *guestTCP {
	r.t.Helper()
	r.lastPort++
	sport := 40000 + r.lastPort
	g := &guestTCP{r: r, out: r.flow(v6, sport, dport), snd: 1000000, gsoSeen: map[virtio.GSOType]int{}}
	// MSS 1460 (1440 for v6), NOP NOP TS, NOP WS 7.
	mss := 1460
	if v6 {
		mss = 1440
	}
	opts := []byte{2, 4, byte(mss >> 8), byte(mss), 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7}
	synFlags := byte(frametest.SYN)
	if r.ecn {
		g.ecn = true
		synFlags |= frametest.ECE | frametest.CWR
	}
	syn := tcp(g.out, g.snd, 0, synFlags, 0xffff, opts, nil, false)
	var synack *frametest.Packet
	for try := 0; try < 3 && synack == nil; try++ {
		r.send([]virtio.NetHdr{{}}, [][]byte{syn})
		deadline := time.Now().Add(time.Second)
		for synack == nil && time.Now().Before(deadline) {
			for _, f := range r.reap(50 * time.Millisecond) {
				p, err := peekPacket(f.frame)
				if err == nil && g.mine(p) && p.Flags&(frametest.SYN|frametest.ACK) == frametest.SYN|frametest.ACK {
					synack = p
				}
			}
		}
	}
	if synack == nil {
		r.t.Fatalf("no SYN-ACK from %v port %d (counters %s)", g.out.Dst, dport, r.qp.Counters().Snapshot())
	}
	g.snd++
	g.rcv = synack.Seq + 1
	g.win = int(synack.Window)
	g.mss = 536
	for o := synack.Options; len(o) > 0; {
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

func (g *guestTCP) mine(p *frametest.Packet) bool {
	return p.Proto == frametest.ProtoTCP && p.Src == g.out.Dst && p.SrcPort == g.out.DstPort && p.DstPort == g.out.SrcPort
}

// ack sends a pure ACK, with a partial checksum as Linux would.
func (g *guestTCP) ack() {
	flags := byte(frametest.ACK)
	if g.ecn && !g.eceSent && len(g.got) > 0 {
		flags |= frametest.ECE
		g.eceSent = true
	}
	f := tcp(g.out, g.snd, g.rcv, flags, guestWin, tsOpt(2, g.tsPeer), nil, true)
	g.r.send([]virtio.NetHdr{gsoHdr(f, virtio.GSONone, 0)}, [][]byte{f})
}

// write sends data as one GSO frame of gsoSize-byte segments, with the
// pseudo-header's sum in the checksum field, as a Linux guest does. It
// returns the frame.
func (g *guestTCP) write(data []byte, gsoSize int) []byte {
	gso := virtio.GSOTCPv4
	if g.out.Src.Is6() {
		gso = virtio.GSOTCPv6
	}
	f := tcp(g.out, g.snd, g.rcv, frametest.ACK|frametest.PSH, guestWin, tsOpt(3, g.tsPeer), data, true)
	g.r.send([]virtio.NetHdr{gsoHdr(f, gso, gsoSize)}, [][]byte{f})
	g.snd += uint32(len(data))
	return f
}

// read receives until the peer sent n bytes in all, checking each frame
// with check and acknowledging as it goes.
func (g *guestTCP) read(n int, wait time.Duration, check func(rxFrame) (*frametest.Packet, error)) error {
	deadline := time.Now().Add(wait)
	for len(g.got) < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("received %d of %d bytes (counters %s)", len(g.got), n, g.r.qp.Counters().Snapshot())
		}
		frames := g.r.reap(20 * time.Millisecond)
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
			if p.Flags&frametest.CWR != 0 {
				g.cwr = append(g.cwr, f.hdr.GSOType)
			}
			if p.Seq == g.rcv && len(p.Payload) > 0 {
				g.got = append(g.got, p.Payload...)
				g.rcv += uint32(len(p.Payload))
				progress = true
			}
			for o := p.Options; len(o) >= 10; o = o[1:] {
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
