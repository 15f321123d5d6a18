package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// Steering is how a multi-queue TAP spreads the frames it sends to the
// guest across its queues.
type Steering string

const (
	// SteeringAuto, the zero value, is SteeringHash on a TAP with several
	// queues and SteeringKernel on one with a single queue, or where the
	// program cannot be loaded (no CAP_BPF).
	SteeringAuto Steering = ""
	// SteeringKernel leaves the choice to tun.c's flow table: a flow
	// follows the queue the guest last sent it on. No program runs.
	SteeringKernel Steering = "kernel"
	// SteeringHash attaches the flow-hash program (LoadHashProgram): a
	// flow's addresses and ports pick its queue, the same for the flow's
	// whole life.
	SteeringHash Steering = "hash"
)

// queuePrefix starts a SteeringQueue value.
const queuePrefix = "queue:"

// SteeringQueue is the steering that sends every frame to queue q, for
// debugging: "queue:q". The queue is the TAP's q-th attached queue (tun.c
// takes a program's answer modulo the attached queues), which is queue
// pair q on a TAP whose queues are attached in order, as a device keeps
// them.
func SteeringQueue(q int) Steering { return Steering(queuePrefix + strconv.Itoa(q)) }

// Queue returns the queue of a SteeringQueue value; ok is false for any
// other steering.
func (s Steering) Queue() (q int, ok bool) {
	rest, found := strings.CutPrefix(string(s), queuePrefix)
	if !found {
		return 0, false
	}
	q, err := strconv.Atoi(rest)
	if err != nil || q < 0 || q > 0xffff || strconv.Itoa(q) != rest {
		return 0, false
	}
	return q, true
}

// ParseSteering reads a --steering value: auto, kernel (or none), hash or
// queue:N.
func ParseSteering(s string) (Steering, error) {
	switch s {
	case "auto":
		return SteeringAuto, nil
	case "kernel", "none":
		return SteeringKernel, nil
	case "hash":
		return SteeringHash, nil
	}
	if _, ok := Steering(s).Queue(); ok {
		return Steering(s), nil
	}
	return "", fmt.Errorf("steering %q: want auto, kernel, hash or queue:N (N from 0 to 65535)", s)
}

// Program is a loaded steering program. Its file descriptor is what
// TUNSETSTEERINGEBPF takes; the TAP keeps its own reference to the
// program, so closing the Program after attaching it does not detach it.
type Program struct {
	prog *cebpf.Program
}

// ErrPermission says the process may not load eBPF programs: it lacks
// CAP_BPF (or CAP_SYS_ADMIN), and kernel.unprivileged_bpf_disabled keeps
// socket filters from everyone else.
var ErrPermission = errors.New("loading eBPF programs needs CAP_BPF or CAP_SYS_ADMIN")

// LoadHashProgram loads the flow-hash steering program.
func LoadHashProgram() (*Program, error) {
	spec := &cebpf.ProgramSpec{
		Name:         "vmnet_steer",
		Type:         cebpf.SocketFilter,
		Instructions: hashInstructions(),
		License:      "Dual MIT/GPL",
	}
	p, err := cebpf.NewProgram(spec)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("load steering program: %w: %w", ErrPermission, err)
		}
		return nil, fmt.Errorf("load steering program: %w", err)
	}
	return &Program{prog: p}, nil
}

// FD is the program's file descriptor, valid until Close.
func (p *Program) FD() int { return p.prog.FD() }

// Close releases the program. A TAP it is attached to keeps it.
func (p *Program) Close() error { return p.prog.Close() }

// Run runs the program on frame (an Ethernet frame, at least 14 bytes) in
// the kernel (BPF_PROG_TEST_RUN) and returns what it returned: the value
// tun.c takes modulo the number of attached queues.
func (p *Program) Run(frame []byte) (uint32, error) {
	ret, err := p.prog.Run(&cebpf.RunOptions{Data: frame})
	if err != nil {
		return 0, fmt.Errorf("run steering program: %w", err)
	}
	return ret, nil
}

// Frame layout the program and FlowHash read.
const (
	ethTypeOff = 12
	ethLen     = 14
	vlanLen    = 4
	ipv4Len    = 20
	ipv6Len    = 40

	etherIPv4   = 0x0800
	etherIPv6   = 0x86dd
	etherVLAN   = 0x8100
	etherQinQ   = 0x88a8
	protoTCP    = 6
	protoUDP    = 17
	protoSCTP   = 132
	protoUDPLit = 136

	golden = 0x9e3779b1 // 2^32 / phi: spreads the folded ports
	mix1   = 0x85ebca6b // MurmurHash3's fmix32 constants
	mix2   = 0xc2b2ae35
)

// FlowHash is the value the hash program returns for frame, computed in
// Go. It depends only on the flow: for IPv4 and IPv6 (behind at most one
// VLAN tag), the XOR of the source and destination addresses, the protocol,
// and for TCP, UDP, UDP-Lite and SCTP the XOR of the two ports, mixed
// (MurmurHash3's finalizer). Swapping source and destination leaves it
// unchanged. Fragments of IPv4 datagrams hash without ports, so that every
// fragment goes where the first one went; IPv6 extension headers are not
// walked, so such packets hash without ports too. Anything else (ARP, a
// frame cut short) hashes to 0: queue 0.
//
// The words are read as the program reads them: little-endian loads of
// bytes in network order.
func FlowHash(frame []byte) uint32 {
	le := binary.LittleEndian
	if len(frame) < ethLen {
		return 0
	}
	l3 := ethLen
	etype := binary.BigEndian.Uint16(frame[ethTypeOff:])
	if etype == etherVLAN || etype == etherQinQ {
		if len(frame) < ethLen+vlanLen {
			return 0
		}
		etype = binary.BigEndian.Uint16(frame[ethTypeOff+vlanLen:])
		l3 += vlanLen
	}
	var h, proto uint32
	var l4 int
	switch etype {
	case etherIPv4:
		if len(frame) < l3+ipv4Len {
			return 0
		}
		ip := frame[l3:]
		h = le.Uint32(ip[12:]) ^ le.Uint32(ip[16:])
		proto = uint32(ip[9])
		ihl := int(ip[0]&0xf) << 2
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 || ihl < ipv4Len {
			return fmix(h, proto)
		}
		l4 = l3 + ihl
	case etherIPv6:
		if len(frame) < l3+ipv6Len {
			return 0
		}
		ip := frame[l3:]
		for i := 8; i < 40; i += 4 {
			h ^= le.Uint32(ip[i:])
		}
		proto = uint32(ip[6])
		l4 = l3 + ipv6Len
	default:
		return 0
	}
	switch proto {
	case protoTCP, protoUDP, protoSCTP, protoUDPLit:
	default:
		return fmix(h, proto)
	}
	if len(frame) < l4+4 {
		return fmix(h, proto)
	}
	w := le.Uint32(frame[l4:])
	h ^= (w>>16 ^ w&0xffff) * golden
	return fmix(h, proto)
}

func fmix(h, proto uint32) uint32 {
	h ^= proto
	h ^= h >> 16
	h *= mix1
	h ^= h >> 13
	h *= mix2
	h ^= h >> 16
	return h
}

// Registers and stack of the program. R6 to R9 survive helper calls.
const (
	rSkb   = asm.R6 // the context, struct __sk_buff
	rOff   = asm.R7 // offset of the header being parsed, from the MAC header
	rHash  = asm.R8
	rProto = asm.R9 // EtherType, then the IP protocol
	bufOff = -48    // a 40-byte stack buffer the headers are loaded into
)

// load copies n bytes at offset off (plus rOff when fromReg) from the MAC
// header into the stack buffer (bpf_skb_load_bytes_relative, which works
// wherever skb->data points: at the MAC header in tun's ndo_select_queue,
// past it in BPF_PROG_TEST_RUN), jumping to fail if the frame is shorter.
func load(off int32, fromReg bool, n int32, fail string) asm.Instructions {
	insns := asm.Instructions{asm.Mov.Reg(asm.R1, rSkb)}
	if fromReg {
		insns = append(insns, asm.Mov.Reg(asm.R2, rOff), asm.Add.Imm(asm.R2, off))
	} else {
		insns = append(insns, asm.Mov.Imm(asm.R2, off))
	}
	return append(insns,
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, bufOff),
		asm.Mov.Imm(asm.R4, n),
		asm.Mov.Imm(asm.R5, 0), // BPF_HDR_START_MAC
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, fail),
	)
}

// imm32 is u as the signed immediate of a 32-bit ALU instruction.
func imm32(u uint32) int32 { return int32(u) }

// labeled names the first instruction of insns, for jumps to it.
func labeled(name string, insns asm.Instructions) asm.Instructions {
	insns[0] = insns[0].WithSymbol(name)
	return insns
}

// word loads the 32-bit little-endian word at byte i of the buffer.
func word(dst asm.Register, i int16) asm.Instruction {
	return asm.LoadMem(dst, asm.RFP, bufOff+i, asm.Word)
}

// hashInstructions is FlowHash as a socket filter.
func hashInstructions() asm.Instructions {
	var p asm.Instructions
	p = append(p,
		asm.Mov.Reg(rSkb, asm.R1),
		asm.Mov.Imm(rHash, 0),
		asm.Mov.Imm(rOff, ethLen),
	)
	p = append(p, load(ethTypeOff, false, 2, "out")...)
	p = append(p,
		asm.LoadMem(rProto, asm.RFP, bufOff, asm.Half),
		asm.HostTo(asm.BE, rProto, asm.Half),
		asm.JEq.Imm(rProto, etherVLAN, "vlan"),
		asm.JNE.Imm(rProto, etherQinQ, "l3"),
	)
	p = append(p, labeled("vlan", load(ethTypeOff+vlanLen, false, 2, "out"))...)
	p = append(p,
		asm.LoadMem(rProto, asm.RFP, bufOff, asm.Half),
		asm.HostTo(asm.BE, rProto, asm.Half),
		asm.Mov.Imm(rOff, ethLen+vlanLen),

		asm.JEq.Imm(rProto, etherIPv4, "ipv4").WithSymbol("l3"),
		asm.JEq.Imm(rProto, etherIPv6, "ipv6"),
		asm.Ja.Label("out"),
	)

	// IPv4: addresses, protocol; ports unless a fragment or a bad IHL.
	p = append(p, labeled("ipv4", load(0, true, ipv4Len, "out"))...)
	p = append(p,
		word(rHash, 12),
		word(asm.R1, 16),
		asm.Xor.Reg32(rHash, asm.R1),
		asm.LoadMem(rProto, asm.RFP, bufOff+9, asm.Byte),
		asm.LoadMem(asm.R1, asm.RFP, bufOff+6, asm.Half),
		asm.HostTo(asm.BE, asm.R1, asm.Half),
		asm.And.Imm32(asm.R1, 0x3fff),
		asm.JNE.Imm(asm.R1, 0, "mix"),
		asm.LoadMem(asm.R1, asm.RFP, bufOff, asm.Byte),
		asm.And.Imm32(asm.R1, 0xf),
		asm.LSh.Imm32(asm.R1, 2),
		asm.JLT.Imm(asm.R1, ipv4Len, "mix"),
		asm.Add.Reg(rOff, asm.R1),
		asm.Ja.Label("ports"),
	)

	// IPv6: both addresses, the next header; ports right behind.
	p = append(p, labeled("ipv6", load(0, true, ipv6Len, "out"))...)
	p = append(p, word(rHash, 8))
	for i := int16(12); i < 40; i += 4 {
		p = append(p, word(asm.R1, i), asm.Xor.Reg32(rHash, asm.R1))
	}
	p = append(p,
		asm.LoadMem(rProto, asm.RFP, bufOff+6, asm.Byte),
		asm.Add.Imm(rOff, ipv6Len),

		asm.JEq.Imm(rProto, protoTCP, "l4").WithSymbol("ports"),
		asm.JEq.Imm(rProto, protoUDP, "l4"),
		asm.JEq.Imm(rProto, protoSCTP, "l4"),
		asm.JEq.Imm(rProto, protoUDPLit, "l4"),
		asm.Ja.Label("mix"),
	)

	// Ports, folded so that swapping them changes nothing.
	p = append(p, labeled("l4", load(0, true, 4, "mix"))...)
	p = append(p,
		word(asm.R1, 0),
		asm.Mov.Reg32(asm.R2, asm.R1),
		asm.RSh.Imm32(asm.R2, 16),
		asm.And.Imm32(asm.R1, 0xffff),
		asm.Xor.Reg32(asm.R1, asm.R2),
		asm.Mul.Imm32(asm.R1, imm32(golden)),
		asm.Xor.Reg32(rHash, asm.R1),

		// fmix32(hash ^ protocol).
		asm.Xor.Reg32(rHash, rProto).WithSymbol("mix"),
		asm.Mov.Reg32(asm.R1, rHash),
		asm.RSh.Imm32(asm.R1, 16),
		asm.Xor.Reg32(rHash, asm.R1),
		asm.Mul.Imm32(rHash, imm32(mix1)),
		asm.Mov.Reg32(asm.R1, rHash),
		asm.RSh.Imm32(asm.R1, 13),
		asm.Xor.Reg32(rHash, asm.R1),
		asm.Mul.Imm32(rHash, imm32(mix2)),
		asm.Mov.Reg32(asm.R1, rHash),
		asm.RSh.Imm32(asm.R1, 16),
		asm.Xor.Reg32(rHash, asm.R1),

		asm.Mov.Reg32(asm.R0, rHash).WithSymbol("out"),
		asm.Return(),
	)
	return p
}

// TupleHash is FlowHash of a frame of the flow from src:sport to
// dst:dport over IP protocol proto (IPv4 without options, or IPv6
// without extension headers), so a test or a demo can pick ports whose
// flow lands on the queue it wants: queue = TupleHash(...) % queues.
func TupleHash(proto uint8, src, dst netip.Addr, sport, dport uint16) uint32 {
	f := make([]byte, ethLen, ethLen+ipv6Len+4)
	var ip []byte
	if src.Is4() && dst.Is4() {
		binary.BigEndian.PutUint16(f[ethTypeOff:], etherIPv4)
		ip = make([]byte, ipv4Len)
		ip[0], ip[9] = 0x45, proto
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
	} else {
		binary.BigEndian.PutUint16(f[ethTypeOff:], etherIPv6)
		ip = make([]byte, ipv6Len)
		ip[0], ip[6] = 0x60, proto
		s, d := src.As16(), dst.As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	}
	f = append(f, ip...)
	f = binary.BigEndian.AppendUint16(f, sport)
	f = binary.BigEndian.AppendUint16(f, dport)
	return FlowHash(f)
}

// PortForQueue returns the first source port from `from` up whose flow
// from src to dst:dport over proto the hash program puts on queue q of
// queues: a client that binds it (iperf3 --cport, say) gives each queue a
// flow of its own. queues must be at least 1 and q below it.
func PortForQueue(q, queues int, proto uint8, src, dst netip.Addr, dport, from uint16) uint16 {
	for p := from; ; p++ {
		if int(TupleHash(proto, src, dst, p, dport)%uint32(queues)) == q || p == 0xffff {
			return p
		}
	}
}
