package tap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// newDevice creates a device in a fresh network namespace and closes it
// when the test ends.
func newTestDevice(t *testing.T, opts Options) (*Device, string) {
	t.Helper()
	testutil.RequireTUN(t)
	ns := opts.NetNS
	if ns == "" {
		ns = testutil.NetNS(t)
		opts.NetNS = ns
	}
	d, err := Create(opts)
	if err != nil {
		t.Fatalf("Create(%+v): %v", opts, err)
	}
	t.Cleanup(func() { d.Close() })
	return d, ns
}

func TestProbe(t *testing.T) {
	testutil.RequireTUN(t)
	f, err := Probe()
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	t.Logf("TUN features: %s", f)
	if err := checkFeatures(f.Flags); err != nil {
		t.Fatalf("required features: %v", err)
	}
	if !f.OffloadsProbed {
		t.Fatal("running as root, yet offloads were not probed")
	}
	if !f.Supports(offload.TunCsum | offload.TunTSO4 | offload.TunTSO6 | offload.TunTSOECN) {
		t.Errorf("offloads %s lack csum/tso, which every Linux since 2.6 accepts", f.Offloads)
	}
	// USO arrived in Linux 6.2: "unsupported" on a newer kernel is a bug
	// in the probe, not a skip.
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	if major > 6 || (major == 6 && minor >= 2) {
		if !f.Supports(offload.TunUSO4 | offload.TunUSO6) {
			t.Errorf("kernel %d.%d has USO, probe says offloads %s", major, minor, f.Offloads)
		}
	}
}

func TestCreateClose(t *testing.T) {
	for _, n := range []int{1, 2, 8, 64} {
		t.Run(fmt.Sprintf("queues=%d", n), func(t *testing.T) {
			d, ns := newTestDevice(t, Options{Queues: n})
			name := d.Name()
			if !strings.HasPrefix(name, "vmnet") || IsTemplate(name) {
				t.Errorf("name: got %q, want vmnetN", name)
			}
			out := testutil.Exec(t, ns, "ip", "-d", "link", "show", "dev", name)
			if want := "tun type tap pi off vnet_hdr on multi_queue"; !strings.Contains(out, want) {
				t.Errorf("ip -d link: got\n%s\nwant it to contain %q", out, want)
			}
			info, err := d.Info()
			if err != nil {
				t.Fatal(err)
			}
			if info.Queues != n || info.DisabledQueues != 1 {
				t.Errorf("queues: got %d attached, %d detached; want %d, 1 (the keep-alive)", info.Queues, info.DisabledQueues, n)
			}
			for i := 0; i < n; i++ {
				if d.Queue(i) == nil {
					t.Errorf("queue %d not open", i)
				}
			}
			if err := d.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := d.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if _, err := Lookup(name, ns); err == nil {
				t.Errorf("%s still exists after Close of a non-persistent device", name)
			}
		})
	}
}

func TestMaxQueues(t *testing.T) {
	d, _ := newTestDevice(t, Options{Queues: MaxQueues})
	info, err := d.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Queues != MaxQueues {
		t.Errorf("got %d queues, want %d", info.Queues, MaxQueues)
	}
	// The kernel's own limit, seen from an attach past it.
	_, err = Open(d.Name(), Options{NetNS: d.opts.NetNS})
	if !errors.Is(err, unix.E2BIG) {
		t.Errorf("Open of a full device: got %v, want E2BIG", err)
	}
}

func TestExclusiveCreate(t *testing.T) {
	d, ns := newTestDevice(t, Options{Name: "vmnetexcl"})
	_, err := Create(Options{Name: d.Name(), NetNS: ns})
	if !errors.Is(err, unix.EBUSY) {
		t.Fatalf("Create over an existing name: got %v, want EBUSY", err)
	}
	var oe *OpError
	if !errors.As(err, &oe) || oe.Op != "TUNSETIFF" || oe.Device != "vmnetexcl" {
		t.Errorf("error %v: want an OpError naming TUNSETIFF and vmnetexcl", err)
	}
}

func TestMAC(t *testing.T) {
	d, ns := newTestDevice(t, Options{})
	mac, err := d.MAC()
	if err != nil {
		t.Fatal(err)
	}
	out := testutil.Exec(t, ns, "ip", "link", "show", "dev", d.Name())
	if !strings.Contains(out, "link/ether "+mac.String()) {
		t.Errorf("MAC %s not in ip link output:\n%s", mac, out)
	}
	if mac[0]&1 != 0 || mac[0]&2 == 0 {
		t.Errorf("kernel MAC %s: want unicast, locally administered", mac)
	}
	want := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	if err := d.SetMAC(want); err != nil {
		t.Fatal(err)
	}
	if got, err := d.MAC(); err != nil || !bytes.Equal(got, want) {
		t.Errorf("after SetMAC: got %s, %v; want %s", got, err, want)
	}
	if err := d.SetMTU(9000); err != nil {
		t.Fatal(err)
	}
	if err := d.SetUp(true); err != nil {
		t.Fatal(err)
	}
	info, err := d.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.MTU != 9000 || !info.Up || !bytes.Equal(info.MAC, want) {
		t.Errorf("info: got mtu %d up %v mac %s; want 9000 true %s", info.MTU, info.Up, info.MAC, want)
	}
	if err := d.SetMTU(10); err == nil {
		t.Error("SetMTU(10): got nil error")
	}
}

func TestPersistAndReopen(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	d, err := Create(Options{Name: "vmnetp%d", Queues: 2, Persist: true, NetNS: ns, Owner: 65534, Group: 65534})
	if err != nil {
		t.Fatal(err)
	}
	name := d.Name()
	t.Cleanup(func() { Delete(name, ns) })
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	info, err := Lookup(name, ns)
	if err != nil {
		t.Fatalf("persistent device gone after Close: %v", err)
	}
	if !info.Persist || info.Queues != 0 || info.Owner != 65534 || info.Group != 65534 {
		t.Errorf("after Close: got %+v; want persist, 0 queues, owner/group 65534", info)
	}
	d2, err := Open(name, Options{Queues: 4, NetNS: ns})
	if err != nil {
		t.Fatalf("Open %s: %v", name, err)
	}
	if info, _ := d2.Info(); info.Queues != 4 {
		t.Errorf("reopened: got %d queues, want 4", info.Queues)
	}
	d2.Close()
	if err := Delete(name, ns); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := Lookup(name, ns); err == nil {
		t.Error("device still exists after Delete")
	}
}

func TestOpenMismatch(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	testutil.Exec(t, ns, "ip", "tuntap", "add", "dev", "sq0", "mode", "tap")
	testutil.Exec(t, ns, "ip", "tuntap", "add", "dev", "novnet0", "mode", "tap", "multi_queue")
	testutil.Exec(t, ns, "ip", "tuntap", "add", "dev", "tun0", "mode", "tun", "multi_queue", "vnet_hdr")
	testutil.Exec(t, ns, "ip", "tuntap", "add", "dev", "pi0", "mode", "tap", "multi_queue", "vnet_hdr", "pi")
	testutil.Exec(t, ns, "ip", "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1")
	for _, tc := range []struct{ dev, field string }{
		{"sq0", "multi_queue"},
		{"novnet0", "vnet_hdr"},
		{"tun0", "type"},
		{"pi0", "pi"},
	} {
		_, err := Open(tc.dev, Options{NetNS: ns})
		var me *MismatchError
		if !errors.As(err, &me) || me.Field != tc.field {
			t.Errorf("Open(%s): got %v, want a mismatch on %s", tc.dev, err, tc.field)
		}
	}
	if _, err := Open("dummy0", Options{NetNS: ns}); !errors.Is(err, ErrNotTap) {
		t.Errorf("Open(dummy0): got %v, want ErrNotTap", err)
	}
	if err := Delete("dummy0", ns); !errors.Is(err, ErrNotTap) {
		t.Errorf("Delete(dummy0): got %v, want ErrNotTap", err)
	}
	if _, err := Open("absent0", Options{NetNS: ns}); err == nil || !strings.Contains(err.Error(), "absent0") {
		t.Errorf("Open(absent0): got %v, want an error naming absent0", err)
	}
	// None of that may have changed the devices it refused.
	out := testutil.Exec(t, ns, "ip", "-d", "link", "show", "dev", "sq0")
	if strings.Contains(out, "multi_queue") || strings.Contains(out, "vnet_hdr on") {
		t.Errorf("sq0 changed by a refused Open:\n%s", out)
	}
}

func TestFdHygiene(t *testing.T) {
	testutil.RequireTUN(t)
	ns := testutil.NetNS(t)
	// Warm up: the probe, netlink, the runtime's poller.
	d, err := Create(Options{NetNS: ns, Queues: 2})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	before := testutil.OpenFds(t)
	for i := 0; i < 1000; i++ {
		d, err := Create(Options{NetNS: ns, Queues: 2})
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if err := d.Close(); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
	// A failed Create must not leak either.
	for i := 0; i < 100; i++ {
		if _, err := Open("absent0", Options{NetNS: ns}); err == nil {
			t.Fatal("Open(absent0) succeeded")
		}
	}
	if after := testutil.OpenFds(t); after != before {
		t.Errorf("open fds: got %d after 1000 create/close cycles, want %d", after, before)
	}
}

func TestMoveToNetNS(t *testing.T) {
	d, ns1 := newTestDevice(t, Options{Queues: 2, DeferQueues: true})
	ns2 := testutil.NetNS(t)
	if _, err := d.OpenQueue(0); err != nil {
		t.Fatal(err)
	}
	if err := d.MoveToNetNS(ns2); err != nil {
		t.Fatal(err)
	}
	if _, err := Lookup(d.Name(), ns1); err == nil {
		t.Errorf("%s still in %s after the move", d.Name(), ns1)
	}
	// Queue 1 opens in the device's new namespace.
	if _, err := d.OpenQueue(1); err != nil {
		t.Fatalf("OpenQueue after move: %v", err)
	}
	info, err := Lookup(d.Name(), ns2)
	if err != nil {
		t.Fatal(err)
	}
	if info.Queues != 2 {
		t.Errorf("got %d queues in %s, want 2", info.Queues, ns2)
	}
}

func TestOpenQueueIdempotentAndClose(t *testing.T) {
	d, _ := newTestDevice(t, Options{Queues: 3, DeferQueues: true})
	q1, err := d.OpenQueue(1)
	if err != nil {
		t.Fatal(err)
	}
	q1b, err := d.OpenQueue(1)
	if err != nil || q1b != q1 {
		t.Errorf("second OpenQueue(1): got %p, %v; want the same queue %p", q1b, err, q1)
	}
	if info, _ := d.Info(); info.Queues != 1 {
		t.Errorf("got %d attached queues, want 1", info.Queues)
	}
	if _, err := d.OpenQueue(3); err == nil {
		t.Error("OpenQueue(3) of 3: got nil error")
	}
	if err := d.CloseQueue(1); err != nil {
		t.Fatal(err)
	}
	if err := d.CloseQueue(1); err != nil {
		t.Errorf("second CloseQueue: %v", err)
	}
	if info, _ := d.Info(); info.Queues != 0 {
		t.Errorf("got %d attached queues after CloseQueue, want 0", info.Queues)
	}
	// The keep-alive holds the device with no queue open.
	if _, err := d.OpenQueue(0); err != nil {
		t.Fatalf("OpenQueue after all closed: %v", err)
	}
}

func TestSetOffload(t *testing.T) {
	d, ns := newTestDevice(t, Options{})
	all := d.DriverFeatures().Offloads
	if err := d.SetOffload(all & (offload.TunCsum | offload.TunTSO4 | offload.TunTSO6)); err != nil {
		t.Fatal(err)
	}
	out := testutil.Exec(t, ns, "ethtool", "-k", d.Name())
	if !strings.Contains(out, "tcp-segmentation-offload: on") {
		t.Errorf("after SetOffload(csum,tso4,tso6) ethtool -k says:\n%s", out)
	}
	if err := d.SetOffload(0); err != nil {
		t.Fatal(err)
	}
	out = testutil.Exec(t, ns, "ethtool", "-k", d.Name())
	if !strings.Contains(out, "tcp-segmentation-offload: off") {
		t.Errorf("after SetOffload(0) ethtool -k says:\n%s", out)
	}
	if err := d.SetOffload(offload.TunTSO4); err == nil {
		t.Error("SetOffload(tso4 without csum): got nil error")
	}
}

// udpFrame builds an Ethernet/IPv4/UDP frame; srcPort varies the flow so
// the kernel's flow hash spreads frames over queues.
func udpFrame(dst, src net.HardwareAddr, srcPort uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8] = 64
	ip[9] = 17
	copy(ip[12:16], net.IPv4(10, 9, 0, 1).To4())
	copy(ip[16:20], net.IPv4(10, 9, 0, 2).To4())
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:], srcPort)
	binary.BigEndian.PutUint16(udp[2:], 9)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(f[42:], payload)
	return f
}

func ipChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// packetSocket opens an AF_PACKET socket bound to ifname inside ns: what it
// sends leaves through the TAP towards the queue files; what it receives
// is what the queue files wrote into the kernel.
func packetSocket(t *testing.T, ns, ifname string) (fd int, ifindex int) {
	t.Helper()
	h, err := openNetNS(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	err = inNetNS(h, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		ifindex = ifi.Index
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex})
	})
	if err != nil {
		t.Fatalf("packet socket on %s: %v", ifname, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, ifindex
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// drain reads every frame that arrives on q within wait.
func drain(t *testing.T, q *Queue, wait time.Duration) [][]byte {
	t.Helper()
	var frames [][]byte
	buf := make([]byte, 65536)
	q.File().SetReadDeadline(time.Now().Add(wait))
	defer q.File().SetReadDeadline(time.Time{})
	for {
		n, err := q.File().Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return frames
		}
		if err != nil {
			t.Fatalf("read queue %d: %v", q.Index(), err)
		}
		frames = append(frames, append([]byte(nil), buf[:n]...))
	}
}

// udpFramesOnly drops what the kernel sends by itself (IPv6 router
// solicitations and the like) from frames read off a queue.
func udpFramesOnly(frames [][]byte, hdr int) [][]byte {
	var out [][]byte
	for _, f := range frames {
		if len(f) >= hdr+42 && binary.BigEndian.Uint16(f[hdr+12:]) == 0x0800 && f[hdr+23] == 17 {
			out = append(out, f)
		}
	}
	return out
}

func TestFrameBothWays(t *testing.T) {
	d, ns := newTestDevice(t, Options{Queues: 1})
	if err := d.SetUp(true); err != nil {
		t.Fatal(err)
	}
	pfd, ifindex := packetSocket(t, ns, d.Name())
	mac, _ := d.MAC()
	peer := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	q := d.Queue(0)

	// Queue → kernel: a 12-byte zero vnet header, then the frame.
	frame := udpFrame(mac, peer, 4000, []byte("from the guest side"))
	msg := append(make([]byte, virtio.HdrLenV1), frame...)
	if n, err := q.File().Write(msg); err != nil || n != len(msg) {
		t.Fatalf("write: %d, %v", n, err)
	}
	got := recvFrame(t, pfd, func(b []byte) bool { return bytes.Equal(b, frame) })
	if !bytes.Equal(got, frame) {
		t.Errorf("kernel side got %x, want %x", got, frame)
	}

	// Kernel → queue: the frame arrives behind a 12-byte header.
	frame2 := udpFrame(peer, mac, 4001, []byte("from the host side"))
	if err := unix.Sendto(pfd, frame2, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}); err != nil {
		t.Fatalf("sendto: %v", err)
	}
	frames := udpFramesOnly(drain(t, q, 300*time.Millisecond), virtio.HdrLenV1)
	if len(frames) != 1 {
		t.Fatalf("got %d UDP frames on the queue, want 1", len(frames))
	}
	if h := frames[0][:10]; !bytes.Equal(h, make([]byte, 10)) {
		t.Errorf("vnet header: got %x, want zeros (no offload asked, no checksum to complete)", h)
	}
	if !bytes.Equal(frames[0][virtio.HdrLenV1:], frame2) {
		t.Errorf("queue got %x, want %x", frames[0][virtio.HdrLenV1:], frame2)
	}
}

// recvFrame reads from a packet socket until match says yes or a second
// passes.
func recvFrame(t *testing.T, fd int, match func([]byte) bool) []byte {
	t.Helper()
	tv := unix.NsecToTimeval(int64(time.Second))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := make([]byte, 65536)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			t.Fatalf("recvfrom: %v", err)
		}
		if match(buf[:n]) {
			return append([]byte(nil), buf[:n]...)
		}
	}
	return nil
}

func TestQueueDisableEnable(t *testing.T) {
	d, ns := newTestDevice(t, Options{Queues: 2})
	if err := d.SetUp(true); err != nil {
		t.Fatal(err)
	}
	pfd, ifindex := packetSocket(t, ns, d.Name())
	mac, _ := d.MAC()
	peer := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	send := func() {
		for port := uint16(1000); port < 1064; port++ {
			f := udpFrame(mac, peer, port, []byte("spread me"))
			if err := unix.Sendto(pfd, f, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}); err != nil {
				t.Fatalf("sendto: %v", err)
			}
		}
	}
	counts := func() [2]int {
		var c [2]int
		for i := range c {
			c[i] = len(udpFramesOnly(drain(t, d.Queue(i), 200*time.Millisecond), virtio.HdrLenV1))
		}
		return c
	}

	send()
	if c := counts(); c[0] == 0 || c[1] == 0 || c[0]+c[1] != 64 {
		t.Fatalf("both queues enabled: got %v frames, want 64 spread over both", c)
	}
	if err := d.DisableQueue(1); err != nil {
		t.Fatal(err)
	}
	if d.Queue(1).Enabled() {
		t.Error("queue 1 reports enabled after DisableQueue")
	}
	send()
	if c := counts(); c != [2]int{64, 0} {
		t.Fatalf("queue 1 disabled: got %v frames, want [64 0]", c)
	}
	if err := d.EnableQueue(1); err != nil {
		t.Fatal(err)
	}
	send()
	if c := counts(); c[0] == 0 || c[1] == 0 || c[0]+c[1] != 64 {
		t.Fatalf("queue 1 enabled again: got %v frames, want 64 spread over both", c)
	}
}

func TestDup(t *testing.T) {
	d, _ := newTestDevice(t, Options{})
	f, err := d.Queue(0).Dup()
	if err != nil {
		t.Fatal(err)
	}
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("dup flags %#x, %v: want FD_CLOEXEC (ExtraFiles clears it in the child)", flags, err)
	}
	f.Close()
	if info, _ := d.Info(); info.Queues != 1 {
		t.Errorf("closing the duplicate detached the queue: %d queues", info.Queues)
	}
}

func TestNetNSMissing(t *testing.T) {
	testutil.RequireTUN(t)
	_, err := Create(Options{NetNS: "vmnet-no-such-ns"})
	if err == nil || !strings.Contains(err.Error(), "vmnet-no-such-ns") {
		t.Errorf("got %v, want an error naming the namespace", err)
	}
}

func TestSndBufAndVnetHdrSize(t *testing.T) {
	d, ns := newTestDevice(t, Options{SndBuf: 1 << 20, VnetHdrSize: virtio.HdrLenHash, DeferQueues: true})
	var sndbuf, hdr int
	err := d.keepControl("TUNGETSNDBUF", func(fd int) error {
		var err error
		if sndbuf, err = unix.IoctlGetInt(fd, unix.TUNGETSNDBUF); err != nil {
			return err
		}
		hdr, err = tunGetVnetHdrSize(fd)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if sndbuf != 1<<20 || hdr != virtio.HdrLenHash {
		t.Errorf("got sndbuf %d, vnet header %d; want %d, %d", sndbuf, hdr, 1<<20, virtio.HdrLenHash)
	}
	// A later Open with another size resets the device's size: a
	// persistent device left at 20 bytes must not stay there.
	if err := d.SetPersist(true); err != nil {
		t.Fatal(err)
	}
	name := d.Name()
	d.Close()
	t.Cleanup(func() { Delete(name, ns) })
	if n, err := VnetHdrSizeOf(name, ns); err != nil || n != virtio.HdrLenHash {
		t.Fatalf("idle persistent device: got header %d, %v; want %d", n, err, virtio.HdrLenHash)
	}
	d2, err := Open(name, Options{NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	d2.Close()
	if n, err := VnetHdrSizeOf(name, ns); err != nil || n != virtio.HdrLenV1 {
		t.Errorf("after Open with the default: got header %d, %v; want %d", n, err, virtio.HdrLenV1)
	}
}

func TestSetVnetHdrSize(t *testing.T) {
	d, _ := newTestDevice(t, Options{})
	if err := d.SetVnetHdrSize(virtio.HdrLenLegacy); err != nil {
		t.Fatal(err)
	}
	var got int
	rawControl(d.Queue(0).File(), func(fd int) error { var err error; got, err = tunGetVnetHdrSize(fd); return err })
	if got != virtio.HdrLenLegacy || d.VnetHdrSize() != virtio.HdrLenLegacy {
		t.Errorf("got %d (device says %d), want %d", got, d.VnetHdrSize(), virtio.HdrLenLegacy)
	}
	if err := d.SetVnetHdrSize(16); err == nil {
		t.Error("SetVnetHdrSize(16): got nil error")
	}
}
