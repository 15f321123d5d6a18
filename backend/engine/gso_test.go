package engine

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// GSO through a real TAP, checked by real stacks (rig, net): what the
// guest sends as one 64 KB GSO frame must reach the peer's sockets as
// segments its stack accepts, and what the peer sends must reach the guest
// as GSO frames with correct headers when the guest accepts them.

// Features of a guest that takes every offload both ways (guestAll: those
// this kernel can hand over).
const allOffloads = allTX | virtio.NetFGuestCsum | virtio.NetFGuestTSO4 | virtio.NetFGuestTSO6 |
	virtio.NetFGuestECN | virtio.NetFGuestUSO4 | virtio.NetFGuestUSO6

// txModes are the ways a GSO frame can reach the wire: the kernel
// segments it behind a vnet header, or the engine does, for a TAP without
// one or a kernel without USO.
var txModes = []struct {
	name      string
	noVnetHdr bool
	noUSO     bool
	features  virtio.Features
}{
	{"vnet_hdr", false, false, allOffloads},
	{"no_uso", false, true, allOffloads},
	// Without a vnet header the kernel can hand over no offload: the
	// guest is offered transmit offloads only (offload.Offer).
	{"no_vnet_hdr", true, false, allTX},
}

func TestTAPGSOTransmit(t *testing.T) {
	all, kernelUSO := guestAll(t)
	r := newRig(t, rigOptions{net: true, features: all, offloads: offload.TunFlagsFor(all)})
	for _, mode := range txModes {
		t.Run(mode.name, func(t *testing.T) {
			r.use(t)
			features := mode.features & (all | allTX)
			if mode.noVnetHdr {
				r.useTAP(true, virtio.HdrLenFor(features), 0)
			}
			// A kernel before 6.2 takes no USO frames: the engine cuts
			// them, as the device tells it to (offload.TXCapsFor).
			noUSO := mode.noUSO || !kernelUSO && !mode.noVnetHdr
			r.mod = func(c *Config) { c.NoUSO = noUSO }
			r.start(features)
			for _, v6 := range []bool{false, true} {
				if !mode.noUSO {
					t.Run(fmt.Sprintf("tcp/v6=%v", v6), func(t *testing.T) { txTCP(r.use(t), v6) })
				}
				t.Run(fmt.Sprintf("udp_l4/v6=%v", v6), func(t *testing.T) { txUSO(r.use(t), v6) })
			}
			r.use(t)
			s := r.qp.Counters().Snapshot()
			if s[TXDropBadHeader]+s[TXDropKernel]+s[TXDropSoftware] != 0 {
				t.Errorf("counters %s: want no TX drops", s)
			}
			switch {
			case mode.noVnetHdr:
				if s[TXSoftGSO] != 4 || s[TXSoftCsum] == 0 {
					t.Errorf("counters %s: want tx_soft_gso=4 and partial checksums completed", s)
				}
			case noUSO:
				if s[TXSoftGSO] != 2 {
					t.Errorf("counters %s: want tx_soft_gso=2 (the USO frames)", s)
				}
			default:
				if s[TXSoftGSO]+s[TXSoftCsum] != 0 {
					t.Errorf("counters %s: want no software fallback", s)
				}
			}
		})
	}
}

// txTCP sends a 64 KB TSO frame over a real connection: the peer's
// listener must read it all, and every segment that reached the peer must
// carry its checksums and sequence numbers.
func txTCP(r *rig, v6 bool) {
	t := r.t
	network, addr, mss, max := "tcp4", "10.78.0.2:5001", 1448, 65535-frametest.IPv4Len-32
	if v6 {
		network, addr, mss, max = "tcp6", "[fd78::2]:5001", 1428, 65535-32
	}
	l := listenTCP(t, r.peerNS, network, addr)
	defer l.Close()
	capt := newCapture(t, r.peerNS, "vp")
	g := r.dial(v6, 5001)
	// One frame as big as the peer's first window and an IP packet allow.
	n := min(g.win, max)
	if n < 60000 {
		t.Fatalf("peer window %d: too small for a 64 KB frame", g.win)
	}
	data := pattern(n, 7)
	res := acceptRead(l, n, 3*time.Second)
	sent := g.write(data, mss)
	got := <-res
	if got.err != nil {
		t.Fatalf("peer read: %v (counters %s)", got.err, r.qp.Counters().Snapshot())
	}
	if !bytes.Equal(got.b, data) {
		t.Fatalf("peer read %d bytes, different from the %d sent", len(got.b), n)
	}
	segs := capt.incoming(sentFlow(sent))
	if err := checkSegments(segs, sent, mss); err != nil {
		t.Errorf("segments at the peer: %v", err)
	}
}

// txUSO sends one USO frame: the peer's socket must get every datagram.
func txUSO(r *rig, v6 bool) {
	t := r.t
	network, addr, mss := "udp4", "10.78.0.2:6000", 1472
	if v6 {
		network, addr, mss = "udp6", "[fd78::2]:6000", 1452
	}
	c := listenUDP(t, r.peerNS, network, addr)
	capt := newCapture(t, r.peerNS, "vp")
	f := r.flow(v6, 4000, 6000)
	payload := pattern(mss*40+321, 9)
	frame := udp(f, payload, true)
	r.send([]virtio.NetHdr{gsoHdr(frame, virtio.GSOUDPL4, mss)}, [][]byte{frame})
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 65536)
	for i := 0; i < 41; i++ {
		k, from, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("datagram %d of 41: %v (counters %s)", i, err, r.qp.Counters().Snapshot())
		}
		want := payload[i*mss : min((i+1)*mss, len(payload))]
		if !bytes.Equal(buf[:k], want) || from.Port != 4000 {
			t.Fatalf("datagram %d from %v: %d bytes, want %d from port 4000", i, from, k, len(want))
		}
	}
	if err := checkSegments(capt.incoming(sentFlow(frame)), frame, mss); err != nil {
		t.Errorf("datagrams at the peer: %v", err)
	}
}

// udpGSOSend sends payload from the peer to the guest as one UDP_SEGMENT
// write of mss-byte datagrams.
func udpGSOSend(t testing.TB, r *rig, v6 bool, port int, payload []byte, mss int) {
	t.Helper()
	network, laddr, dst := "udp4", "10.78.0.2:0", &net.UDPAddr{IP: guest4.AsSlice(), Port: port}
	if v6 {
		network, laddr, dst = "udp6", "[fd78::2]:0", &net.UDPAddr{IP: guest6.AsSlice(), Port: port}
	}
	c := listenUDP(t, r.peerNS, network, laddr)
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, mss)
	}); err != nil || serr != nil {
		t.Fatalf("UDP_SEGMENT: %v %v", err, serr)
	}
	if _, err := c.WriteToUDP(payload, dst); err != nil {
		t.Fatalf("send %d bytes with UDP_SEGMENT %d: %v", len(payload), mss, err)
	}
}

// rxUDP sends a UDP GSO burst from the peer and checks what the guest got:
// one GSO_UDP_L4 frame if it accepted USO, else the datagrams, every
// header and checksum right. It returns the GSO frames seen.
func rxUDP(t testing.TB, r *rig, v6 bool) int {
	t.Helper()
	mss := 1472
	if v6 {
		mss = 1452
	}
	payload := pattern(mss*20+99, 11)
	port := 7000
	udpGSOSend(t, r, v6, port, payload, mss)
	var got []byte
	gso := 0
	deadline := time.Now().Add(3 * time.Second)
	for len(got) < len(payload) && time.Now().Before(deadline) {
		for _, f := range r.reap(20 * time.Millisecond) {
			p, err := checkRX(f, r.features, r.o.mtu)
			if err != nil {
				t.Fatalf("received frame: %v", err)
			}
			if p == nil || p.Proto != frametest.ProtoUDP || p.DstPort != uint16(port) {
				continue
			}
			if f.hdr.GSOType == virtio.GSOUDPL4 {
				gso++
				if int(f.hdr.GSOSize) != mss {
					t.Errorf("gso_size %d, want the sender's %d", f.hdr.GSOSize, mss)
				}
			}
			got = append(got, p.Payload...)
		}
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("guest got %d bytes of UDP payload, want the %d sent (counters %s)", len(got), len(payload), r.qp.Counters().Snapshot())
	}
	return gso
}

// rxTCP has the peer send n bytes to the guest over TCP; the guest checks
// every frame. It returns the frames by GSO type.
func rxTCP(t testing.TB, r *rig, v6 bool, port uint16, n int) map[virtio.GSOType]int {
	t.Helper()
	network, addr := "tcp4", fmt.Sprintf("10.78.0.2:%d", port)
	if v6 {
		network, addr = "tcp6", fmt.Sprintf("[fd78::2]:%d", port)
	}
	l := listenTCP(t, r.peerNS, network, addr)
	defer l.Close()
	data := pattern(n, 13)
	done := make(chan error, 1)
	go func() {
		l.(*net.TCPListener).SetDeadline(time.Now().Add(3 * time.Second))
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetWriteDeadline(time.Now().Add(3 * time.Second))
		_, err = c.Write(data)
		done <- err
	}()
	g := r.dial(v6, port)
	if err := g.read(n, 3*time.Second, func(f rxFrame) (*frametest.Packet, error) { return checkRX(f, r.features, r.o.mtu) }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("peer write: %v", err)
	}
	if !bytes.Equal(g.got, data) {
		t.Fatalf("guest got %d bytes, different from the %d sent", len(g.got), n)
	}
	if r.onConn != nil {
		r.onConn(g)
	}
	return g.gsoSeen
}

func TestTAPGSOReceive(t *testing.T) {
	all, _ := guestAll(t)
	r := newRig(t, rigOptions{net: true})
	for _, tc := range []struct {
		name     string
		features virtio.Features
	}{
		{"all", all},
		{"csum_only", allTX | virtio.NetFGuestCsum},
		{"none", allTX},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r.use(t)
			if err := r.dev.SetOffload(offload.TunFlagsFor(tc.features)); err != nil {
				t.Fatal(err)
			}
			r.start(tc.features)
			for _, v6 := range []bool{false, true} {
				tso, uso := virtio.NetFGuestTSO4, virtio.NetFGuestUSO4
				tcpGSO := virtio.GSOTCPv4
				if v6 {
					tso, uso, tcpGSO = virtio.NetFGuestTSO6, virtio.NetFGuestUSO6, virtio.GSOTCPv6
				}
				gso := rxUDP(t, r, v6)
				if want := tc.features.Has(uso); (gso > 0) != want {
					t.Errorf("v6=%v: %d GSO_UDP_L4 frames, want them %v", v6, gso, want)
				}
				seen := rxTCP(t, r, v6, 5002, 1<<20)
				if want := tc.features.Has(tso); (seen[tcpGSO] > 0) != want {
					t.Errorf("v6=%v: frames by gso_type %v, want %v frames %v", v6, seen, tcpGSO, want)
				}
			}
			if s := r.qp.Counters().Snapshot(); s[RXDropKernel]+s[RXDropTruncated]+s[RXDropBadDescriptor] != 0 {
				t.Errorf("counters %s: want no RX drops", s)
			}
		})
	}
}

// guestAll returns allOffloads less the receive offloads this kernel's
// TUNSETOFFLOAD refuses (USO before Linux 6.2), and whether it has USO.
func guestAll(t *testing.T) (virtio.Features, bool) {
	t.Helper()
	testutil.RequireTUN(t)
	f, err := tap.Probe()
	if err != nil {
		t.Fatal(err)
	}
	if !f.OffloadsProbed {
		t.Fatalf("offloads not probed as root: %s", f)
	}
	can := offload.Offer(f.Offloads, true, offload.OfferOptions{}) & offload.GuestFeatures
	return allOffloads&^offload.GuestFeatures | allOffloads&can, f.Supports(offload.TunUSO4 | offload.TunUSO6)
}
