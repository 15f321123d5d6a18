package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"golang.org/x/sys/unix"
)

var (
	v4a = netip.MustParseAddr("10.0.0.1")
	v4b = netip.MustParseAddr("192.168.7.200")
	v6a = netip.MustParseAddr("2001:db8::1")
	v6b = netip.MustParseAddr("fd00:1234:5678::abcd")
)

func tcp4(sport, dport uint16) frametest.Spec {
	return frametest.Spec{Src: v4a, Dst: v4b, Proto: protoTCP, SrcPort: sport, DstPort: dport}
}

// ports is a transport header frametest does not write (SCTP, UDP-Lite),
// or the data of a later fragment: two ports and 16 bytes of zeros.
func ports(sport, dport uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	return append(b, make([]byte, 16)...)
}

// hashCase is a frame of a shape the program parses, or one it must give
// up on.
type hashCase struct {
	name string
	spec frametest.Spec
	cut  int  // cut the frame to this length; 0 keeps it whole
	zero bool // FlowHash must be 0: not IP, or cut short
}

func (c hashCase) frame() []byte {
	f := c.spec.Build()
	if c.cut > 0 {
		f = f[:c.cut]
	}
	return f
}

var hashCases = []hashCase{
	{name: "IPv4 TCP", spec: tcp4(40000, 5201)},
	{name: "IPv4 UDP", spec: frametest.Spec{Src: v4a, Dst: v4b, Proto: protoUDP, SrcPort: 53, DstPort: 33333}},
	{name: "IPv4 SCTP", spec: frametest.Spec{Src: v4a, Dst: v4b, Proto: protoSCTP, Payload: ports(9, 10)}},
	{name: "IPv4 UDP-Lite", spec: frametest.Spec{Src: v4a, Dst: v4b, Proto: protoUDPLit, Payload: ports(9, 10)}},
	{name: "IPv4 ICMP", spec: frametest.Spec{Src: v4a, Dst: v4b, Proto: frametest.ProtoICMP, Type: 8, Payload: make([]byte, 16)}},
	{name: "IPv4 with options", spec: frametest.Spec{Src: v4a, Dst: v4b, Proto: protoTCP, SrcPort: 1, DstPort: 2,
		IPOptions: []byte{1, 1, 1, 1, 1, 1, 1, 1}}},
	{name: "IPv4 bad IHL", spec: frametest.Spec{Src: v4a, Dst: v4b, Proto: protoTCP, SrcPort: 1, DstPort: 2, IHL: 3}},
	{name: "IPv4 first fragment", spec: frametest.Spec{Src: v4a, Dst: v4b, Proto: protoUDP, SrcPort: 1, DstPort: 2, MF: true}},
	{name: "IPv4 later fragment", spec: frametest.Spec{Src: v4a, Dst: v4b, Proto: protoUDP, FragOffset: 1480, Payload: ports(7, 8)}},
	{name: "IPv4 ports cut short", spec: tcp4(1, 2), cut: 14 + 20 + 2},
	{name: "IPv4 header cut short", spec: tcp4(0, 0), cut: 14 + 19, zero: true},
	{name: "IPv6 TCP", spec: frametest.Spec{Src: v6a, Dst: v6b, Proto: protoTCP, SrcPort: 443, DstPort: 50123}},
	{name: "IPv6 UDP", spec: frametest.Spec{Src: v6a, Dst: v6b, Proto: protoUDP, SrcPort: 5353, DstPort: 5353}},
	{name: "IPv6 ICMPv6", spec: frametest.Spec{Src: v6a, Dst: v6b, Proto: frametest.ProtoICMPv6, Type: 128, Payload: make([]byte, 16)}},
	{name: "IPv6 hop-by-hop header", spec: frametest.Spec{Src: v6a, Dst: v6b, Ext: []uint8{frametest.HopByHop},
		Proto: protoTCP, SrcPort: 1, DstPort: 2}},
	{name: "IPv6 header cut short", spec: frametest.Spec{Src: v6a, Dst: v6b, Proto: protoTCP}, cut: 14 + 39, zero: true},
	{name: "802.1Q IPv4 TCP", spec: frametest.Spec{VLANs: []uint16{etherVLAN}, Src: v4a, Dst: v4b, Proto: protoTCP,
		SrcPort: 1000, DstPort: 22}},
	{name: "802.1ad IPv6 UDP", spec: frametest.Spec{VLANs: []uint16{etherQinQ}, Src: v6a, Dst: v6b, Proto: protoUDP,
		SrcPort: 1000, DstPort: 22}},
	{name: "VLAN tag cut short", spec: frametest.Spec{VLANs: []uint16{etherVLAN}, Src: v4a, Dst: v4b, Proto: protoTCP},
		cut: 16, zero: true},
	{name: "ARP", spec: frametest.Spec{EtherType: frametest.EtherARP, Payload: make([]byte, 28)}, zero: true},
	{name: "Ethernet header only", spec: tcp4(0, 0), cut: 14, zero: true},
}

func TestFlowHashShapes(t *testing.T) {
	for _, tc := range hashCases {
		got := FlowHash(tc.frame())
		if tc.zero != (got == 0) {
			t.Errorf("%s: FlowHash %#x, want zero=%v", tc.name, got, tc.zero)
		}
	}
	// Runts have no EtherType at all.
	if got := FlowHash(make([]byte, 13)); got != 0 {
		t.Errorf("13-byte runt: FlowHash %#x, want 0", got)
	}
}

// A flow hashes the same both ways, and fragments of one datagram hash
// alike; ports and protocol still tell flows apart.
func TestFlowHashProperties(t *testing.T) {
	for _, s := range []frametest.Spec{tcp4(40000, 5201), {Src: v6a, Dst: v6b, Proto: protoUDP, SrcPort: 9, DstPort: 4789}} {
		r := s
		r.Src, r.Dst, r.SrcPort, r.DstPort = s.Dst, s.Src, s.DstPort, s.SrcPort
		if a, b := FlowHash(s.Build()), FlowHash(r.Build()); a != b {
			t.Errorf("%v -> %v: %#x, reverse %#x; want equal", s.Src, s.Dst, a, b)
		}
	}
	first := frametest.Spec{Src: v4a, Dst: v4b, Proto: protoUDP, SrcPort: 1, DstPort: 2, MF: true}
	later := first
	later.MF, later.FragOffset, later.Payload = false, 1480, ports(0x1234, 0x5678) // payload bytes where ports were
	if a, b := FlowHash(first.Build()), FlowHash(later.Build()); a != b {
		t.Errorf("fragments of one datagram: %#x and %#x, want equal", a, b)
	}
	udp := tcp4(40000, 5201)
	udp.Proto = protoUDP
	if FlowHash(tcp4(40000, 5201).Build()) == FlowHash(udp.Build()) {
		t.Error("TCP and UDP flows with the same addresses and ports hash alike")
	}
	if FlowHash(tcp4(40000, 5201).Build()) == FlowHash(tcp4(40001, 5201).Build()) {
		t.Error("flows on neighbouring ports hash alike")
	}
}

// Flows spread evenly: 4096 TCP connections from one client to one server
// port (iperf3 -P, a web client) over 4 and 3 queues.
func TestFlowHashSpreads(t *testing.T) {
	for _, queues := range []uint32{3, 4} {
		count := make([]int, queues)
		const flows = 4096
		for i := range flows {
			count[FlowHash(tcp4(uint16(32768+i), 5201).Build())%queues]++
		}
		for q, n := range count {
			share := float64(n) / flows
			if want := 1 / float64(queues); share < 0.8*want || share > 1.2*want {
				t.Errorf("%d queues: queue %d got %.1f%% of the flows, want %.1f%% +-20%%", queues, q, 100*share, 100*want)
			}
		}
	}
}

func TestParseSteering(t *testing.T) {
	for in, want := range map[string]Steering{"auto": SteeringAuto, "kernel": SteeringKernel, "none": SteeringKernel, "hash": SteeringHash,
		"queue:0": SteeringQueue(0), "queue:3": SteeringQueue(3), "queue:65535": SteeringQueue(65535)} {
		if got, err := ParseSteering(in); err != nil || got != want {
			t.Errorf("ParseSteering(%q): %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "rss", "Hash", "queue:", "queue:-1", "queue:65536", "queue:01", "queue:+1", "queue:x"} {
		if _, err := ParseSteering(in); err == nil {
			t.Errorf("ParseSteering(%q): nil error", in)
		}
	}
	if q, ok := SteeringQueue(7).Queue(); !ok || q != 7 {
		t.Errorf("SteeringQueue(7).Queue() = %d, %v", q, ok)
	}
	if _, ok := SteeringHash.Queue(); ok {
		t.Error("SteeringHash.Queue(): ok")
	}
}

func loadHash(t *testing.T) *Program {
	t.Helper()
	testutil.RequireRoot(t)
	p, err := LoadHashProgram()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// The program in the kernel returns what FlowHash computes, for every
// shape and for random frames.
func TestProgramMatchesFlowHash(t *testing.T) {
	p := loadHash(t)
	refused := 0
	check := func(name string, frame []byte) {
		t.Helper()
		got, err := p.Run(frame)
		if errors.Is(err, unix.EINVAL) && FlowHash(frame) == 0 {
			// BPF_PROG_TEST_RUN refuses an IP frame whose IP header
			// is incomplete; such frames never reach the program in
			// tun either, which sends what the stack built.
			refused++
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if want := FlowHash(frame); got != want {
			t.Errorf("%s (% x): program returned %#x, FlowHash %#x", name, frame, got, want)
		}
	}
	for _, tc := range hashCases {
		if len(tc.frame()) < ethLen {
			continue // BPF_PROG_TEST_RUN wants an Ethernet header
		}
		check(tc.name, tc.frame())
	}
	rng := rand.New(rand.NewPCG(1, 2))
	ethers := []uint16{etherIPv4, etherIPv6, etherVLAN, etherQinQ, 0x0806}
	for i := range 2000 {
		f := make([]byte, ethLen+rng.IntN(80))
		for j := range f {
			f[j] = byte(rng.Uint32())
		}
		binary.BigEndian.PutUint16(f[ethTypeOff:], ethers[rng.IntN(len(ethers))])
		if len(f) >= 18 && rng.IntN(2) == 0 {
			binary.BigEndian.PutUint16(f[16:], ethers[rng.IntN(2)])
		}
		if len(f) > 14 && rng.IntN(2) == 0 {
			f[14] = f[14]&0x0f | 0x40 // plausible IPv4 version
		}
		if len(f) > 23 && rng.IntN(2) == 0 {
			f[23] = []byte{protoTCP, protoUDP, protoSCTP}[rng.IntN(3)]
		}
		check(fmt.Sprintf("random frame %d", i), f)
	}
	if refused > 600 {
		t.Errorf("the kernel refused to run %d of the frames: too few were compared", refused)
	}
	t.Logf("compared program and FlowHash on %d frames (%d the kernel would not run)", len(hashCases)+2000-refused, refused)
}

// Loading without privileges fails with a clear, typed error. The load
// runs on a thread of its own that gives up root (setresuid on that
// thread alone, which clears its capabilities) and is thrown away after.
func TestLoadWithoutPrivilegesIsTyped(t *testing.T) {
	testutil.RequireRoot(t)
	errc := make(chan []error, 1)
	go func() {
		// Never unlocked: the thread dies with the goroutine.
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
			errc <- []error{fmt.Errorf("setresuid: %w", e)}
			return
		}
		var errs []error
		for _, load := range []func() (interface{ Close() error }, error){
			func() (interface{ Close() error }, error) { return LoadHashProgram() },
			func() (interface{ Close() error }, error) { return LoadRSSProgram() },
			func() (interface{ Close() error }, error) { return LoadQueueProgram(1) },
		} {
			p, err := load()
			if err == nil {
				p.Close()
				err = errors.New("loaded as uid 65534")
			}
			errs = append(errs, err)
		}
		errc <- errs
	}()
	for i, err := range <-errc {
		if !errors.Is(err, ErrPermission) {
			t.Errorf("load %d as uid 65534 without capabilities: %v, want ErrPermission", i, err)
		}
	}
}

func TestTupleHash(t *testing.T) {
	for _, s := range []frametest.Spec{tcp4(40000, 5201), {Src: v6a, Dst: v6b, Proto: protoUDP, SrcPort: 9, DstPort: 4789}} {
		if got, want := TupleHash(s.Proto, s.Src, s.Dst, s.SrcPort, s.DstPort), FlowHash(s.Build()); got != want {
			t.Errorf("TupleHash(%d, %v, %v, %d, %d) = %#x, FlowHash of the frame %#x", s.Proto, s.Src, s.Dst, s.SrcPort, s.DstPort, got, want)
		}
	}
}

func TestPortForQueue(t *testing.T) {
	for q := range 3 {
		p := PortForQueue(q, 3, protoTCP, v4a, v4b, 5201, 40000)
		if got := int(TupleHash(protoTCP, v4a, v4b, p, 5201) % 3); got != q || p < 40000 {
			t.Errorf("PortForQueue(%d of 3) = %d, whose flow lands on queue %d", q, p, got)
		}
	}
}
