package ebpf

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
	"golang.org/x/sys/unix"
)

const (
	tapQueues = 4
	hostIP    = "10.9.0.1"
	guestIP   = "10.9.0.2"
	guestMAC  = "02:00:00:00:00:02"
	dstPort   = 5000
	flows     = 48
)

// steeringRig is a 4-queue TAP in a namespace whose stack sends UDP flows
// to a guest address behind the TAP.
type steeringRig struct {
	t   *testing.T
	ns  string
	tap *tap.Device
	mac net.HardwareAddr // the TAP's own
}

func newSteeringRig(t *testing.T) *steeringRig {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	tap, err := tap.Create(tap.Options{NetNS: ns, Queues: tapQueues})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	if err := tap.SetUp(true); err != nil {
		t.Fatal(err)
	}
	mac, err := tap.MAC()
	if err != nil {
		t.Fatal(err)
	}
	testutil.Exec(t, ns, "ip", "addr", "add", hostIP+"/24", "dev", tap.Name())
	testutil.Exec(t, ns, "ip", "neigh", "add", guestIP, "lladdr", guestMAC, "dev", tap.Name(), "nud", "permanent")
	return &steeringRig{t: t, ns: ns, tap: tap, mac: mac}
}

// send sends one datagram of each flow (source port 40000+i) from the
// namespace to the guest.
func (r *steeringRig) send() { r.sendN(flows, nil) }

// sendN sends one datagram of each of n flows, with payload (or "steer
// me" if nil).
func (r *steeringRig) sendN(n int, payload []byte) {
	r.t.Helper()
	if payload == nil {
		payload = []byte("steer me")
	}
	testutil.InNetNS(r.t, r.ns, func() error {
		for i := range n {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(hostIP), Port: 40000 + i}, &net.UDPAddr{IP: net.ParseIP(guestIP), Port: dstPort})
			if err != nil {
				return err
			}
			_, err = c.Write(payload)
			c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// collect reads every queue until the flows' datagrams are in and returns,
// for each flow, the queue its datagram arrived on and the frame.
func (r *steeringRig) collect() (queue map[int]int, frames map[int][]byte) { return r.collectN(flows) }

// collectN is collect for n flows.
func (r *steeringRig) collectN(flows int) (queue map[int]int, frames map[int][]byte) {
	r.t.Helper()
	queue, frames = map[int]int{}, map[int][]byte{}
	buf := make([]byte, 65536)
	deadline := time.Now().Add(5 * time.Second)
	for len(queue) < flows && time.Now().Before(deadline) {
		idle := true
		for q := range tapQueues {
			fd := int(r.tap.Queue(q).File().Fd())
			n, err := unix.Read(fd, buf)
			if err != nil {
				continue
			}
			idle = false
			f := buf[virtio.HdrLenV1:n]
			if sport, ok := udpTo(f, dstPort); ok {
				if _, dup := queue[sport-40000]; dup {
					r.t.Errorf("flow %d: a second datagram", sport-40000)
				}
				queue[sport-40000] = q
				frames[sport-40000] = append([]byte(nil), f...)
			}
		}
		if idle {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if len(queue) < flows {
		r.t.Fatalf("got %d of %d flows' datagrams from the TAP's queues", len(queue), flows)
	}
	return queue, frames
}

// udpTo reports the source port of an IPv4 UDP frame to port.
func udpTo(f []byte, port int) (int, bool) {
	p, err := frametest.Parse(f)
	if err != nil || p.V6 || p.Proto != protoUDP || int(p.DstPort) != port {
		return 0, false
	}
	return int(p.SrcPort), true
}

// reply writes, on queue q, a datagram of flow i from the guest back to
// the host, as a guest transmitting on that queue would: under tun.c's
// own steering the flow's next frames follow it to q.
func (r *steeringRig) reply(q, i int) {
	r.t.Helper()
	src, dst := netip.MustParseAddr(guestIP), netip.MustParseAddr(hostIP)
	gmac, _ := net.ParseMAC(guestMAC)
	f := frametest.Spec{SrcMAC: gmac, DstMAC: r.mac, Src: src, Dst: dst, Proto: protoUDP, SrcPort: dstPort,
		DstPort: uint16(40000 + i), Payload: []byte("reply")}.Build()
	msg := append(make([]byte, virtio.HdrLenV1), f...)
	if _, err := unix.Write(int(r.tap.Queue(q).File().Fd()), msg); err != nil {
		r.t.Fatalf("write reply of flow %d on queue %d: %v", i, q, err)
	}
}

// With the hash program attached every flow lands on queue FlowHash %
// queues, the flows use every queue, and a guest answering a flow on
// another queue does not move it.
func TestHashSteeringOnTAP(t *testing.T) {
	r := newSteeringRig(t)
	p := loadHash(t)
	if err := r.tap.SetSteeringEBPF(p.FD()); err != nil {
		t.Fatal(err)
	}
	// The TAP holds the program: closing ours changes nothing.
	p.Close()
	r.send()
	queue, frames := r.collect()
	used := map[int]bool{}
	for i, q := range queue {
		used[q] = true
		if want := int(FlowHash(frames[i]) % tapQueues); q != want {
			t.Errorf("flow %d: on queue %d, FlowHash says %d", i, q, want)
		}
	}
	if len(used) != tapQueues {
		t.Errorf("%d flows used queues %v, want all %d", flows, used, tapQueues)
	}
	// The guest answers every flow on the queue after its own.
	for i, q := range queue {
		r.reply((q+1)%tapQueues, i)
	}
	r.send()
	again, _ := r.collect()
	for i := range again {
		if again[i] != queue[i] {
			t.Errorf("flow %d moved from queue %d to %d after the guest answered on %d", i, queue[i], again[i], (queue[i]+1)%tapQueues)
		}
	}
}

// Without a program, tun.c's flow table moves a flow to the queue the
// guest last answered it on: the behaviour the hash program replaces.
// Detaching the program (SteeringKernel) brings it back.
func TestKernelSteeringFollowsGuest(t *testing.T) {
	r := newSteeringRig(t)
	p := loadHash(t)
	if err := r.tap.SetSteeringEBPF(p.FD()); err != nil {
		t.Fatal(err)
	}
	if err := r.tap.SetSteeringEBPF(-1); err != nil {
		t.Fatal(err)
	}
	r.send()
	queue, _ := r.collect()
	for i, q := range queue {
		r.reply((q+1)%tapQueues, i)
	}
	r.send()
	again, _ := r.collect()
	moved := 0
	for i := range again {
		if again[i] == (queue[i]+1)%tapQueues {
			moved++
		}
	}
	if moved < flows*9/10 {
		t.Errorf("kernel steering: %d of %d flows followed the guest's answer to another queue, want nearly all", moved, flows)
	}
}
