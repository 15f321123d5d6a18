package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/testutil"
	"golang.org/x/sys/unix"
)

// frameSpec describes a test frame; build renders it.
type frameSpec struct {
	vlan       uint16 // EtherType of an outer tag, 0 for none
	ether      uint16
	src, dst   netip.Addr
	proto      uint8
	sport      uint16
	dport      uint16
	fragOff    uint16 // IPv4 flags and fragment offset field, less DF
	ihl        uint8  // IPv4 header words; 0 means 5
	truncateTo int    // cut the frame to this length; 0 keeps it whole
}

func (s frameSpec) build() []byte {
	f := make([]byte, 12, 128)
	copy(f, []byte{0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1})
	if s.vlan != 0 {
		f = binary.BigEndian.AppendUint16(f, s.vlan)
		f = binary.BigEndian.AppendUint16(f, 100)
	}
	f = binary.BigEndian.AppendUint16(f, s.ether)
	l4 := []byte{}
	l4 = binary.BigEndian.AppendUint16(l4, s.sport)
	l4 = binary.BigEndian.AppendUint16(l4, s.dport)
	l4 = append(l4, make([]byte, 16)...)
	switch s.ether {
	case etherIPv4:
		ihl := s.ihl
		if ihl == 0 {
			ihl = 5
		}
		h := make([]byte, 20)
		h[0] = 0x40 | ihl
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(h[6:], s.fragOff)
		h[8], h[9] = 64, s.proto
		copy(h[12:], s.src.AsSlice())
		copy(h[16:], s.dst.AsSlice())
		f = append(f, h...)
		if ihl > 5 {
			f = append(f, make([]byte, 4*int(ihl-5))...)
		}
	case etherIPv6:
		h := make([]byte, 40)
		h[0] = 0x60
		binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
		h[6], h[7] = s.proto, 64
		copy(h[8:], s.src.AsSlice())
		copy(h[24:], s.dst.AsSlice())
		f = append(f, h...)
	default:
		f = append(f, make([]byte, 28)...) // an ARP body, say
	}
	f = append(f, l4...)
	if s.truncateTo > 0 {
		f = f[:s.truncateTo]
	}
	return f
}

var (
	v4a = netip.MustParseAddr("10.0.0.1")
	v4b = netip.MustParseAddr("192.168.7.200")
	v6a = netip.MustParseAddr("2001:db8::1")
	v6b = netip.MustParseAddr("fd00:1234:5678::abcd")
)

func tcp4(sport, dport uint16) frameSpec {
	return frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoTCP, sport: sport, dport: dport}
}

// hashCases are frames of every shape the program parses, and some it
// must give up on.
var hashCases = []struct {
	name string
	spec frameSpec
	zero bool // FlowHash must be 0: not IP, or cut short
}{
	{name: "IPv4 TCP", spec: tcp4(40000, 5201)},
	{name: "IPv4 UDP", spec: frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoUDP, sport: 53, dport: 33333}},
	{name: "IPv4 SCTP", spec: frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoSCTP, sport: 9, dport: 10}},
	{name: "IPv4 UDP-Lite", spec: frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoUDPLit, sport: 9, dport: 10}},
	{name: "IPv4 ICMP", spec: frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: 1}},
	{name: "IPv4 with options", spec: frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoTCP, sport: 1, dport: 2, ihl: 7}},
	{name: "IPv4 bad IHL", spec: frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoTCP, sport: 1, dport: 2, ihl: 3}},
	{name: "IPv4 first fragment", spec: frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoUDP, sport: 1, dport: 2, fragOff: 0x2000}},
	{name: "IPv4 later fragment", spec: frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoUDP, sport: 7, dport: 8, fragOff: 185}},
	{name: "IPv4 ports cut short", spec: frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoTCP, sport: 1, dport: 2, truncateTo: 14 + 20 + 2}},
	{name: "IPv4 header cut short", spec: frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoTCP, truncateTo: 14 + 19}, zero: true},
	{name: "IPv6 TCP", spec: frameSpec{ether: etherIPv6, src: v6a, dst: v6b, proto: protoTCP, sport: 443, dport: 50123}},
	{name: "IPv6 UDP", spec: frameSpec{ether: etherIPv6, src: v6a, dst: v6b, proto: protoUDP, sport: 5353, dport: 5353}},
	{name: "IPv6 ICMPv6", spec: frameSpec{ether: etherIPv6, src: v6a, dst: v6b, proto: 58}},
	{name: "IPv6 hop-by-hop header", spec: frameSpec{ether: etherIPv6, src: v6a, dst: v6b, proto: 0, sport: 1, dport: 2}},
	{name: "IPv6 header cut short", spec: frameSpec{ether: etherIPv6, src: v6a, dst: v6b, proto: protoTCP, truncateTo: 14 + 39}, zero: true},
	{name: "802.1Q IPv4 TCP", spec: frameSpec{vlan: etherVLAN, ether: etherIPv4, src: v4a, dst: v4b, proto: protoTCP, sport: 1000, dport: 22}},
	{name: "802.1ad IPv6 UDP", spec: frameSpec{vlan: etherQinQ, ether: etherIPv6, src: v6a, dst: v6b, proto: protoUDP, sport: 1000, dport: 22}},
	{name: "VLAN tag cut short", spec: frameSpec{vlan: etherVLAN, ether: etherIPv4, truncateTo: 16}, zero: true},
	{name: "ARP", spec: frameSpec{ether: 0x0806}, zero: true},
	{name: "Ethernet header only", spec: frameSpec{ether: etherIPv4, truncateTo: 14}, zero: true},
}

func TestFlowHashShapes(t *testing.T) {
	for _, tc := range hashCases {
		got := FlowHash(tc.spec.build())
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
	for _, s := range []frameSpec{tcp4(40000, 5201), {ether: etherIPv6, src: v6a, dst: v6b, proto: protoUDP, sport: 9, dport: 4789}} {
		r := s
		r.src, r.dst, r.sport, r.dport = s.dst, s.src, s.dport, s.sport
		if a, b := FlowHash(s.build()), FlowHash(r.build()); a != b {
			t.Errorf("%v -> %v: %#x, reverse %#x; want equal", s.src, s.dst, a, b)
		}
	}
	first := frameSpec{ether: etherIPv4, src: v4a, dst: v4b, proto: protoUDP, sport: 1, dport: 2, fragOff: 0x2000}
	later := first
	later.fragOff, later.sport, later.dport = 185, 0x1234, 0x5678 // payload bytes where ports were
	if a, b := FlowHash(first.build()), FlowHash(later.build()); a != b {
		t.Errorf("fragments of one datagram: %#x and %#x, want equal", a, b)
	}
	udp := tcp4(40000, 5201)
	udp.proto = protoUDP
	if FlowHash(tcp4(40000, 5201).build()) == FlowHash(udp.build()) {
		t.Error("TCP and UDP flows with the same addresses and ports hash alike")
	}
	if FlowHash(tcp4(40000, 5201).build()) == FlowHash(tcp4(40001, 5201).build()) {
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
			count[FlowHash(tcp4(uint16(32768+i), 5201).build())%queues]++
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
	for in, want := range map[string]Steering{"kernel": SteeringKernel, "none": SteeringKernel, "hash": SteeringHash} {
		if got, err := ParseSteering(in); err != nil || got != want {
			t.Errorf("ParseSteering(%q): %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "rss", "Hash"} {
		if _, err := ParseSteering(in); err == nil {
			t.Errorf("ParseSteering(%q): nil error", in)
		}
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
		if len(tc.spec.build()) < ethLen {
			continue // BPF_PROG_TEST_RUN wants an Ethernet header
		}
		check(tc.name, tc.spec.build())
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
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with the goroutine.
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
			errc <- fmt.Errorf("setresuid: %w", e)
			return
		}
		p, err := LoadHashProgram()
		if err == nil {
			p.Close()
			err = errors.New("loaded as uid 65534")
		}
		errc <- err
	}()
	err := <-errc
	if !errors.Is(err, ErrPermission) {
		t.Errorf("load as uid 65534 without capabilities: %v, want ErrPermission", err)
	}
}

func TestTupleHash(t *testing.T) {
	for _, s := range []frameSpec{tcp4(40000, 5201), {ether: etherIPv6, src: v6a, dst: v6b, proto: protoUDP, sport: 9, dport: 4789}} {
		if got, want := TupleHash(s.proto, s.src, s.dst, s.sport, s.dport), FlowHash(s.build()); got != want {
			t.Errorf("TupleHash(%d, %v, %v, %d, %d) = %#x, FlowHash of the frame %#x", s.proto, s.src, s.dst, s.sport, s.dport, got, want)
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
