package engine

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/virtio"
)

func TestTAPGuestToHostUDP(t *testing.T) {
	r := newRig(t, rigOptions{tap: true, features: virtio.FVersion1 | virtio.NetFMrgRxbuf})
	c := listenUDP(t, r.ns, "udp4", ":5000")
	var want [][]byte
	for i := 0; i < 32; i++ {
		p := bytes.Repeat([]byte{byte(i)}, 1+i*40)
		want = append(want, p)
		r.sendTX(udp(r.toHost(uint16(4000+i), 5000), p, false))
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 2000)
	for i := range want {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v (counters %s)", i, err, r.qp.Counters().Snapshot())
		}
		if !bytes.Equal(buf[:n], want[i]) || from.Port != 4000+i {
			t.Fatalf("datagram %d from %v: got %d bytes, want %d from port %d", i, from, n, len(want[i]), 4000+i)
		}
	}
}

func TestTAPHostToGuestUDP(t *testing.T) {
	r := newRig(t, rigOptions{tap: true, features: virtio.FVersion1 | virtio.NetFMrgRxbuf})
	r.postRX(256, 1536)
	c := listenUDP(t, r.ns, "udp4", ":0")
	var want [][]byte
	for i := 0; i < 16; i++ {
		p := bytes.Repeat([]byte{0x40 + byte(i)}, 10+i*90)
		want = append(want, p)
		if _, err := c.WriteToUDP(p, &net.UDPAddr{IP: guest4.AsSlice(), Port: 6000}); err != nil {
			t.Fatal(err)
		}
	}
	var got [][]byte
	deadline := time.Now().Add(3 * time.Second)
	for len(got) < len(want) && time.Now().Before(deadline) {
		for _, f := range r.reapFrames(1, 100*time.Millisecond) {
			// Keep the UDP frames to the guest; skip IPv6 chatter.
			if len(f) > 42 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 17 {
				got = append(got, f)
			}
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d UDP frames, want %d (counters %s)", len(got), len(want), r.qp.Counters().Snapshot())
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
	r := newRig(t, rigOptions{tap: true, mtu: 9000})
	r.postRX(64, 1514+12)
	c := listenUDP(t, r.ns, "udp4", ":0")
	dst := &net.UDPAddr{IP: guest4.AsSlice(), Port: 6000}
	c.WriteToUDP(make([]byte, 4000), dst)
	c.WriteToUDP([]byte("small"), dst)
	var got []byte
	deadline := time.Now().Add(3 * time.Second)
	for got == nil && time.Now().Before(deadline) {
		for _, f := range r.reapFrames(1, 100*time.Millisecond) {
			if len(f) > 42 && f[23] == 17 {
				got = f
			}
		}
	}
	if got == nil || string(got[42:]) != "small" {
		t.Fatalf("got %x, want the small datagram after the dropped one", got)
	}
	waitFor(t, func() bool { return r.qp.Counters().Load(RXDropTruncated) >= 1 }, "rx_drop_truncated")
	if s := r.qp.Counters().Snapshot(); s[RXDropTruncated] != 1 {
		t.Errorf("counters: %s; want rx_drop_truncated=1", s)
	}
}
