package engine

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// tapRig is a queue pair over queue 0 of a real multi-queue TAP in a fresh
// network namespace, where the TAP has 10.77.0.1/24 and the "guest" is
// 10.77.0.2 with a fixed MAC.
type tapRig struct {
	*rig
	dev    *tap.Device
	ns     string
	tapMAC net.HardwareAddr
}

var guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x02}

func newTapRig(t *testing.T, features virtio.Features, rxSlot int, mtu int) *tapRig {
	t.Helper()
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	hdr := virtio.HdrLenFor(features)
	dev, err := tap.Create(tap.Options{NetNS: ns, VnetHdrSize: hdr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	if mtu != 0 {
		if err := dev.SetMTU(mtu); err != nil {
			t.Fatal(err)
		}
	}
	if err := dev.SetUp(true); err != nil {
		t.Fatal(err)
	}
	testutil.Exec(t, ns, "ip", "addr", "add", "10.77.0.1/24", "dev", dev.Name())
	testutil.Exec(t, ns, "ip", "neigh", "add", "10.77.0.2", "lladdr", guestMAC.String(), "dev", dev.Name())
	mac, err := dev.MAC()
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, tap: dev.Queue(0).File(), features: features, hdrLen: hdr, peer: -1}
	if r.rx, err = virtiotest.NewGuest(256, false, virtiotest.Options{SlotSize: rxSlot}); err != nil {
		t.Fatal(err)
	}
	if r.tx, err = virtiotest.NewGuest(256, false, virtiotest.Options{SlotSize: 65550 + 20}); err != nil {
		t.Fatal(err)
	}
	for _, e := range []**EventFD{&r.rxKick, &r.txKick, &r.rxCall, &r.txCall} {
		if *e, err = NewEventFD(); err != nil {
			t.Fatal(err)
		}
		ev := *e
		t.Cleanup(func() { ev.Close() })
	}
	r.qp = r.newQP(mtu)
	if err := r.qp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.qp.Stop() })
	return &tapRig{rig: r, dev: dev, ns: ns, tapMAC: mac}
}

// udpSocket opens a UDP socket bound to port inside the rig's namespace.
func (tr *tapRig) udpSocket(port int) *net.UDPConn {
	tr.t.Helper()
	var c *net.UDPConn
	testutil.InNetNS(tr.t, tr.ns, func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	})
	tr.t.Cleanup(func() { c.Close() })
	return c
}

// guestUDP builds an Ethernet/IPv4/UDP frame from the guest to the host
// side, with a correct UDP checksum.
func (tr *tapRig) guestUDP(srcPort, dstPort int, payload []byte) []byte {
	f := make([]byte, 42+len(payload))
	copy(f[0:], tr.tapMAC)
	copy(f[6:], guestMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(28+len(payload)))
	copy(ip[12:], net.IPv4(10, 77, 0, 2).To4())
	copy(ip[16:], net.IPv4(10, 77, 0, 1).To4())
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip, 0)))
	udp := f[34:]
	binary.BigEndian.PutUint16(udp[0:], uint16(srcPort))
	binary.BigEndian.PutUint16(udp[2:], uint16(dstPort))
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	ps := sum(ip[12:20], 0) + 17 + uint32(8+len(payload))
	binary.BigEndian.PutUint16(udp[6:], ^fold(sum(udp, ps)))
	return f
}

func sum(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func TestTAPGuestToHostUDP(t *testing.T) {
	tr := newTapRig(t, virtio.FVersion1|virtio.NetFMrgRxbuf, 2048, 0)
	c := tr.udpSocket(5000)
	var want [][]byte
	for i := 0; i < 32; i++ {
		p := bytes.Repeat([]byte{byte(i)}, 1+i*40)
		want = append(want, p)
		tr.sendTX(tr.guestUDP(4000+i, 5000, p))
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 2000)
	for i := range want {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v (counters %s)", i, err, tr.qp.Counters().Snapshot())
		}
		if !bytes.Equal(buf[:n], want[i]) || from.Port != 4000+i {
			t.Fatalf("datagram %d from %v: got %d bytes, want %d from port %d", i, from, n, len(want[i]), 4000+i)
		}
	}
}

func TestTAPHostToGuestUDP(t *testing.T) {
	tr := newTapRig(t, virtio.FVersion1|virtio.NetFMrgRxbuf, 2048, 0)
	tr.postRX(256, 1536)
	c := tr.udpSocket(0)
	var want [][]byte
	for i := 0; i < 16; i++ {
		p := bytes.Repeat([]byte{0x40 + byte(i)}, 10+i*90)
		want = append(want, p)
		if _, err := c.WriteToUDP(p, &net.UDPAddr{IP: net.IPv4(10, 77, 0, 2), Port: 6000}); err != nil {
			t.Fatal(err)
		}
	}
	var got [][]byte
	deadline := time.Now().Add(3 * time.Second)
	for len(got) < len(want) && time.Now().Before(deadline) {
		for _, f := range tr.reapFrames(1, 100*time.Millisecond) {
			// Keep the UDP frames to the guest; skip IPv6 chatter.
			if len(f) > 42 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 17 {
				got = append(got, f)
			}
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d UDP frames, want %d (counters %s)", len(got), len(want), tr.qp.Counters().Snapshot())
	}
	for i, f := range got {
		if !bytes.Equal(f[:6], guestMAC) || !bytes.Equal(f[42:], want[i]) {
			t.Errorf("frame %d: dst %x payload %d bytes; want dst %s and %d bytes", i, f[:6], len(f)-42, guestMAC, len(want[i]))
		}
	}
}

func TestTAPFrameTooBigForBuffers(t *testing.T) {
	// No MRG_RXBUF and 1500-byte buffers, but a 9000-byte MTU on the host
	// side: the kernel must drop what does not fit, and say so.
	tr := newTapRig(t, virtio.FVersion1, 2048, 9000)
	tr.postRX(64, 1514+12)
	c := tr.udpSocket(0)
	dst := &net.UDPAddr{IP: net.IPv4(10, 77, 0, 2), Port: 6000}
	c.WriteToUDP(make([]byte, 4000), dst)
	c.WriteToUDP([]byte("small"), dst)
	var got []byte
	deadline := time.Now().Add(3 * time.Second)
	for got == nil && time.Now().Before(deadline) {
		for _, f := range tr.reapFrames(1, 100*time.Millisecond) {
			if len(f) > 42 && f[23] == 17 {
				got = f
			}
		}
	}
	if got == nil || string(got[42:]) != "small" {
		t.Fatalf("got %x, want the small datagram after the dropped one", got)
	}
	waitFor(t, func() bool { return tr.qp.Counters().Load(RXDropTruncated) >= 1 }, "rx_drop_truncated")
	if s := tr.qp.Counters().Snapshot(); s[RXDropTruncated] != 1 {
		t.Errorf("counters: %s; want rx_drop_truncated=1", s)
	}
}
