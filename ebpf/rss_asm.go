package ebpf

import (
	"fmt"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/vmnet-dev/vmnet/virtio"
)

// The RSS program is virtio.Hasher's parser and RSSQueue's lookup as a
// socket filter: the same steps, in the same order, stopping at the same
// limits, so that tests can hold the two to the same answer for any
// frame. Loops (VLAN tags, extension headers, options) are unrolled up to
// those limits; the Toeplitz hash is 36 lookups in the key's table, the
// input zero-padded (a zero byte adds nothing).
//
// Registers: R6 the context, R7 the configuration slot in use, R8 the
// offset of the header being parsed (from the MAC header), R9 the
// EtherType, then the IP protocol. R1 to R5 are scratch: helper calls
// clobber them.
const (
	rCfg  = asm.R7
	rOff8 = asm.R8
	rNext = asm.R9
)

// Stack of the program, below the hash program's buffer (bufOff, 40 bytes
// a header is loaded into).
const (
	stInput = -96  // the hash input, 36 bytes (zeroed: its tail stays 0)
	stHome  = -112 // the home address option's address
	stRt    = -128 // the type 2 routing header's address
	stFlags = -136 // what the IPv6 walk found: flag* bits
	stHdr   = -144 // the length of the extension header being parsed
	stOpt   = -152 // offset of the next option of a destination options header
	stEnd   = -160 // where that header's options end
	stTLV   = -168 // an option's type and length
	stAddr  = -184 // an address, before it is known whole
	stLow   = stAddr
)

const (
	flagExt  = 1 << iota // an extension header was seen
	flagFrag             // a fragment header: no transport header
	flagHome             // stHome holds a home address
	flagRt               // stRt holds a routing header's address
)

// Transport header kinds in R9 once the IPv6 walk is done.
const (
	l4None = 0
	l4TCP  = 1
	l4UDP  = 2
)

// prog builds instructions with labels. A label names the next
// instruction emitted.
type prog struct {
	insns asm.Instructions
	label string
}

func (p *prog) emit(insns ...asm.Instruction) {
	for _, ins := range insns {
		if p.label != "" {
			ins = ins.WithSymbol(p.label)
			p.label = ""
		}
		p.insns = append(p.insns, ins)
	}
}

// at puts label on the next instruction.
func (p *prog) at(label string) {
	if p.label != "" {
		// Two labels for one place: the first gets a jump to the second.
		p.emit(asm.Ja.Label(label))
	}
	p.label = label
}

// load copies n bytes of the frame at off (plus R8 when fromOff) to the
// stack at to, jumping to fail if the frame is shorter (as load does for
// the hash program).
func (p *prog) load(off int32, fromOff bool, n int32, to int16, fail string) {
	p.emit(asm.Mov.Reg(asm.R1, asm.R6))
	if fromOff {
		p.emit(asm.Mov.Reg(asm.R2, rOff8), asm.Add.Imm(asm.R2, off))
	} else {
		p.emit(asm.Mov.Imm(asm.R2, off))
	}
	p.emit(
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, int32(to)),
		asm.Mov.Imm(asm.R4, n),
		asm.Mov.Imm(asm.R5, 0), // BPF_HDR_START_MAC
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, fail),
	)
}

// loadAt is load from the offset in register reg plus off.
func (p *prog) loadAt(reg asm.Register, off int32, n int32, to int16, fail string) {
	p.emit(
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, reg),
		asm.Add.Imm(asm.R2, off),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, int32(to)),
		asm.Mov.Imm(asm.R4, n),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, fail),
	)
}

// copyWords copies n bytes (a multiple of 4) within the stack, as they
// lie: a word load and store keep byte order.
func (p *prog) copyWords(to, from int16, n int) {
	for i := 0; i < n; i += 4 {
		p.emit(
			asm.LoadMem(asm.R1, asm.RFP, from+int16(i), asm.Word),
			asm.StoreMem(asm.RFP, to+int16(i), asm.R1, asm.Word),
		)
	}
}

// byteAt loads the byte at i of the buffer a header was loaded into.
func byteAt(dst asm.Register, i int16) asm.Instruction {
	return asm.LoadMem(dst, asm.RFP, bufOff+i, asm.Byte)
}

// setFlag ORs f into stFlags.
func (p *prog) setFlag(f int32) {
	p.emit(
		asm.LoadMem(asm.R1, asm.RFP, stFlags, asm.DWord),
		asm.Or.Imm(asm.R1, f),
		asm.StoreMem(asm.RFP, stFlags, asm.R1, asm.DWord),
	)
}

// ifFlag jumps to label if f is set (or, with !set, clear) in stFlags.
func (p *prog) ifFlag(f int32, set bool, label string) {
	p.emit(
		asm.LoadMem(asm.R1, asm.RFP, stFlags, asm.DWord),
		asm.And.Imm(asm.R1, f),
	)
	if set {
		p.emit(asm.JNE.Imm(asm.R1, 0, label))
	} else {
		p.emit(asm.JEq.Imm(asm.R1, 0, label))
	}
}

// ifType jumps to label if the enabled hash types hold t.
func (p *prog) ifType(t virtio.HashTypes, label string) {
	p.emit(
		asm.LoadMem(asm.R1, rCfg, slotTypes, asm.Word),
		asm.And.Imm(asm.R1, int32(t)),
		asm.JNE.Imm(asm.R1, 0, label),
	)
}

// rssInstructions is the program over configuration map m.
func rssInstructions(m *cebpf.Map, hashOnly bool) asm.Instructions {
	p := &prog{}
	p.emit(asm.Mov.Reg(asm.R6, asm.R1))
	// Everything read before it is surely written starts zeroed.
	p.emit(asm.Mov.Imm(asm.R1, 0))
	for off := int16(stLow); off < stInput+40; off += 8 {
		p.emit(asm.StoreMem(asm.RFP, off, asm.R1, asm.DWord))
	}
	// The slot in use: R7 = &value.slots[value.active & 1].
	cfg := asm.LoadMapValue(rCfg, m.FD(), 0)
	if err := cfg.AssociateMap(m); err != nil {
		panic(fmt.Sprintf("rss program: %v", err)) // LoadMapValue is a map load
	}
	p.emit(
		cfg,
		asm.LoadMem(asm.R1, rCfg, cfgActive, asm.Word),
		asm.And.Imm(asm.R1, 1),
		asm.Mul.Imm(asm.R1, slotSize),
		asm.Add.Reg(rCfg, asm.R1),
		asm.Add.Imm(rCfg, cfgSlots),
	)

	// Ethernet, behind up to virtio.HashMaxVLANs tags.
	p.emit(asm.Mov.Imm(rOff8, ethLen))
	p.load(ethTypeOff, false, 2, bufOff, "unclassified")
	p.emit(asm.LoadMem(rNext, asm.RFP, bufOff, asm.Half), asm.HostTo(asm.BE, rNext, asm.Half))
	for i := range virtio.HashMaxVLANs {
		tag := fmt.Sprintf("vlan%d", i)
		p.emit(
			asm.JEq.Imm(rNext, etherVLAN, tag),
			asm.JNE.Imm(rNext, etherQinQ, "l3"),
		)
		p.at(tag)
		p.load(2, true, 2, bufOff, "unclassified")
		p.emit(
			asm.LoadMem(rNext, asm.RFP, bufOff, asm.Half),
			asm.HostTo(asm.BE, rNext, asm.Half),
			asm.Add.Imm(rOff8, vlanLen),
		)
	}
	p.at("l3")
	p.emit(
		asm.JEq.Imm(rNext, etherIPv4, "ipv4"),
		asm.JEq.Imm(rNext, etherIPv6, "ipv6"),
		asm.Ja.Label("unclassified"),
	)

	p.ipv4()
	p.ipv6()

	// The Toeplitz hash of the input, one table lookup per byte, then the
	// indirection table.
	p.at("hash")
	p.emit(asm.Mov.Imm(asm.R0, 0))
	for i := range virtio.RSSInputMax {
		p.emit(
			asm.LoadMem(asm.R1, asm.RFP, stInput+int16(i), asm.Byte),
			asm.LSh.Imm(asm.R1, 2),
			asm.Mov.Reg(asm.R2, rCfg),
			asm.Add.Reg(asm.R2, asm.R1),
			asm.Add.Imm(asm.R2, int32(slotToeplitz+1024*i)), // past an int16 offset
			asm.LoadMem(asm.R3, asm.R2, 0, asm.Word),
			asm.Xor.Reg32(asm.R0, asm.R3),
		)
	}
	if !hashOnly {
		p.emit(
			asm.LoadMem(asm.R1, rCfg, slotMask, asm.Word),
			asm.And.Reg(asm.R1, asm.R0),
			asm.And.Imm(asm.R1, RSSMaxTable-1),
			asm.LSh.Imm(asm.R1, 1),
			asm.Mov.Reg(asm.R2, rCfg),
			asm.Add.Reg(asm.R2, asm.R1),
			asm.LoadMem(asm.R0, asm.R2, slotTable, asm.Half),
		)
	}
	p.emit(asm.Return())

	p.at("unclassified")
	p.emit(asm.LoadMem(asm.R0, rCfg, slotUnclass, asm.Word), asm.Return())
	return p.insns
}

// ipv4 is virtio.Hasher.ipv4: from "ipv4", with R8 at the IP header, to
// "hash" with the input written, or "unclassified".
func (p *prog) ipv4() {
	p.at("ipv4")
	p.load(0, true, ipv4Len, bufOff, "unclassified")
	p.emit(
		byteAt(asm.R1, 0),
		asm.Mov.Reg(asm.R2, asm.R1),
		asm.RSh.Imm(asm.R2, 4),
		asm.JNE.Imm(asm.R2, 4, "unclassified"),
		asm.And.Imm(asm.R1, 0xf),
		asm.LSh.Imm(asm.R1, 2),
		asm.JLT.Imm(asm.R1, ipv4Len, "unclassified"),
		asm.Add.Reg(rOff8, asm.R1), // R8 at the transport header
	)
	p.copyWords(stInput, bufOff+12, 8)
	p.emit(
		asm.LoadMem(asm.R1, asm.RFP, bufOff+6, asm.Half),
		asm.HostTo(asm.BE, asm.R1, asm.Half),
		asm.And.Imm(asm.R1, 0x3fff),
		asm.JNE.Imm(asm.R1, 0, "v4_ip"), // a fragment
		byteAt(rNext, 9),
		asm.JNE.Imm(rNext, protoTCP, "v4_udp"),
	)
	p.emit(
		asm.LoadMem(asm.R1, rCfg, slotTypes, asm.Word),
		asm.And.Imm(asm.R1, int32(virtio.HashTCPv4)),
		asm.JEq.Imm(asm.R1, 0, "v4_ip"),
	)
	p.load(0, true, 20, bufOff, "v4_ip")
	p.copyWords(stInput+8, bufOff, 4)
	p.emit(asm.Ja.Label("hash"))

	p.at("v4_udp")
	p.emit(
		asm.JNE.Imm(rNext, protoUDP, "v4_ip"),
		asm.LoadMem(asm.R1, rCfg, slotTypes, asm.Word),
		asm.And.Imm(asm.R1, int32(virtio.HashUDPv4)),
		asm.JEq.Imm(asm.R1, 0, "v4_ip"),
	)
	p.load(0, true, 8, bufOff, "v4_ip")
	p.copyWords(stInput+8, bufOff, 4)
	p.emit(asm.Ja.Label("hash"))

	p.at("v4_ip")
	p.ifType(virtio.HashIPv4, "hash")
	p.emit(asm.Ja.Label("unclassified"))
}

// ipv6 is virtio.Hasher.ipv6, from "ipv6" to "hash" or "unclassified".
func (p *prog) ipv6() {
	p.at("ipv6")
	p.load(0, true, ipv6Len, bufOff, "unclassified")
	p.emit(
		byteAt(asm.R1, 0),
		asm.RSh.Imm(asm.R1, 4),
		asm.JNE.Imm(asm.R1, 6, "unclassified"),
	)
	p.copyWords(stInput, bufOff+8, 32)
	p.emit(
		byteAt(rNext, 6),
		asm.Add.Imm(rOff8, ipv6Len),
	)
	for i := range virtio.HashMaxExtHeaders {
		p.extHeader(i)
	}

	// The transport header, unless a fragment: R9 becomes its kind.
	p.at("v6_l4")
	p.ifFlag(flagFrag, true, "v6_nol4")
	p.emit(
		asm.JEq.Imm(rNext, protoTCP, "v6_tcp"),
		asm.JEq.Imm(rNext, protoUDP, "v6_udp"),
		asm.Ja.Label("v6_nol4"),
	)
	p.at("v6_tcp")
	p.load(0, true, 20, bufOff, "v6_nol4")
	p.emit(asm.Mov.Imm(rNext, l4TCP), asm.Ja.Label("v6_select"))
	p.at("v6_udp")
	p.load(0, true, 8, bufOff, "v6_nol4")
	p.emit(asm.Mov.Imm(rNext, l4UDP), asm.Ja.Label("v6_select"))
	p.at("v6_nol4")
	p.emit(asm.Mov.Imm(rNext, l4None))

	// With extension headers, the _EX types first.
	p.at("v6_select")
	p.ifFlag(flagExt, false, "v6_plain")
	p.emit(asm.JNE.Imm(rNext, l4TCP, "v6_ex_udp"))
	p.ifType(virtio.HashTCPEx, "v6_ex_ports")
	p.at("v6_ex_udp")
	p.emit(asm.JNE.Imm(rNext, l4UDP, "v6_ex_ip"))
	p.ifType(virtio.HashUDPEx, "v6_ex_ports")
	p.at("v6_ex_ip")
	p.ifType(virtio.HashIPEx, "v6_ex_addrs")
	p.emit(asm.Ja.Label("v6_plain"))
	p.at("v6_ex_ports")
	p.copyWords(stInput+32, bufOff, 4)
	p.at("v6_ex_addrs")
	p.ifFlag(flagHome, false, "v6_ex_rt")
	p.copyWords(stInput, stHome, 16)
	p.at("v6_ex_rt")
	p.ifFlag(flagRt, false, "hash")
	p.copyWords(stInput+16, stRt, 16)
	p.emit(asm.Ja.Label("hash"))

	p.at("v6_plain")
	p.emit(asm.JNE.Imm(rNext, l4TCP, "v6_plain_udp"))
	p.ifType(virtio.HashTCPv6, "v6_ports")
	p.at("v6_plain_udp")
	p.emit(asm.JNE.Imm(rNext, l4UDP, "v6_plain_ip"))
	p.ifType(virtio.HashUDPv6, "v6_ports")
	p.at("v6_plain_ip")
	p.ifType(virtio.HashIPv6, "hash")
	p.emit(asm.Ja.Label("unclassified"))
	p.at("v6_ports")
	p.copyWords(stInput+32, bufOff, 4)
	p.emit(asm.Ja.Label("hash"))

	p.at("v6_trunc")
	p.emit(asm.Mov.Imm(rNext, protoNone), asm.Ja.Label("v6_l4"))
}

// extHeader is step i of the walk over extension headers: with R9 the
// next header and R8 its offset, it goes to "v6_l4" if R9 is none, else
// steps over it to the next step (or "v6_l4" after the last).
func (p *prog) extHeader(i int) {
	next := fmt.Sprintf("ext%d_next", i)
	hdr := fmt.Sprintf("ext%d", i)
	p.at(fmt.Sprintf("ext%d_check", i))
	for _, proto := range []int32{protoHopByHop, protoRouting, protoFragment, protoAH, protoDestOpts, protoMobility} {
		p.emit(asm.JEq.Imm(rNext, proto, hdr))
	}
	p.emit(asm.Ja.Label("v6_l4"))
	p.at(hdr)
	p.setFlag(flagExt)
	frag := fmt.Sprintf("ext%d_frag", i)
	p.emit(asm.JEq.Imm(rNext, protoFragment, frag))
	p.load(0, true, 8, bufOff, "v6_trunc")
	// The header's length: 8-byte units less one, AH's 4-byte units less two.
	p.emit(
		byteAt(asm.R1, 1),
		asm.JEq.Imm(rNext, protoAH, fmt.Sprintf("ext%d_ah", i)),
		asm.Add.Imm(asm.R1, 1),
		asm.LSh.Imm(asm.R1, 3),
		asm.Ja.Label(fmt.Sprintf("ext%d_len", i)),
	)
	p.at(fmt.Sprintf("ext%d_ah", i))
	p.emit(asm.Add.Imm(asm.R1, 2), asm.LSh.Imm(asm.R1, 2))
	p.at(fmt.Sprintf("ext%d_len", i))
	p.emit(
		asm.StoreMem(asm.RFP, stHdr, asm.R1, asm.DWord),
		asm.JEq.Imm(rNext, protoRouting, fmt.Sprintf("ext%d_rt", i)),
		asm.JEq.Imm(rNext, protoDestOpts, fmt.Sprintf("ext%d_opts", i)),
		asm.Ja.Label(next),
	)

	// A type 2 routing header of one address: the _EX destination.
	p.at(fmt.Sprintf("ext%d_rt", i))
	p.emit(
		byteAt(asm.R1, 2),
		asm.JNE.Imm(asm.R1, routingType2, next),
		byteAt(asm.R1, 1),
		asm.JNE.Imm(asm.R1, 2, next),
	)
	p.load(8, true, 16, stAddr, next)
	p.copyWords(stRt, stAddr, 16)
	p.setFlag(flagRt)
	p.emit(asm.Ja.Label(next))

	// Destination options: the home address option is the _EX source.
	p.at(fmt.Sprintf("ext%d_opts", i))
	p.emit(
		asm.Mov.Reg(asm.R1, rOff8),
		asm.Add.Imm(asm.R1, 2),
		asm.StoreMem(asm.RFP, stOpt, asm.R1, asm.DWord),
		asm.LoadMem(asm.R2, asm.RFP, stHdr, asm.DWord),
		asm.Add.Reg(asm.R2, rOff8),
		asm.StoreMem(asm.RFP, stEnd, asm.R2, asm.DWord),
	)
	for j := range virtio.HashMaxOptions {
		tlv := fmt.Sprintf("ext%d_opt%d_tlv", i, j)
		skip := fmt.Sprintf("ext%d_opt%d_skip", i, j)
		after := fmt.Sprintf("ext%d_opt%d", i, j+1)
		if j == virtio.HashMaxOptions-1 {
			after = next
		}
		p.at(fmt.Sprintf("ext%d_opt%d", i, j))
		p.emit(
			asm.LoadMem(asm.R1, asm.RFP, stOpt, asm.DWord),
			asm.LoadMem(asm.R2, asm.RFP, stEnd, asm.DWord),
			asm.JGE.Reg(asm.R1, asm.R2, next),
			asm.Mov.Reg(asm.R3, asm.R1), // R1 goes to the helper
		)
		p.loadAt(asm.R3, 0, 2, stTLV, next)
		p.emit(
			asm.LoadMem(asm.R1, asm.RFP, stTLV, asm.Byte),
			asm.JNE.Imm(asm.R1, optPad1, tlv),
			asm.LoadMem(asm.R2, asm.RFP, stOpt, asm.DWord),
			asm.Add.Imm(asm.R2, 1),
			asm.StoreMem(asm.RFP, stOpt, asm.R2, asm.DWord),
			asm.Ja.Label(after),
		)
		p.at(tlv)
		p.emit(
			asm.LoadMem(asm.R2, asm.RFP, stTLV+1, asm.Byte),
			asm.JNE.Imm(asm.R1, optHomeAddr, skip),
			asm.JNE.Imm(asm.R2, 16, skip),
			asm.LoadMem(asm.R3, asm.RFP, stOpt, asm.DWord),
		)
		p.loadAt(asm.R3, 2, 16, stAddr, next)
		p.copyWords(stHome, stAddr, 16)
		p.setFlag(flagHome)
		p.emit(asm.Ja.Label(next))
		p.at(skip)
		p.emit(
			asm.LoadMem(asm.R3, asm.RFP, stOpt, asm.DWord),
			asm.Add.Reg(asm.R3, asm.R2),
			asm.Add.Imm(asm.R3, 2),
			asm.StoreMem(asm.RFP, stOpt, asm.R3, asm.DWord),
		)
		if after != next {
			p.emit(asm.Ja.Label(after))
		}
	}
	p.emit(asm.Ja.Label(next))

	p.at(frag)
	p.setFlag(flagFrag)
	p.emit(asm.Ja.Label("v6_l4"))

	p.at(next)
	p.emit(
		byteAt(rNext, 0),
		asm.LoadMem(asm.R1, asm.RFP, stHdr, asm.DWord),
		asm.Add.Reg(rOff8, asm.R1),
	)
	if i == virtio.HashMaxExtHeaders-1 {
		p.emit(asm.Ja.Label("v6_l4"))
	}
}

// IPv6 next header values and option types the walk knows (RFC 8200,
// RFC 4302, RFC 6275), as virtio.Hasher does.
const (
	protoHopByHop = 0
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoNone     = 59
	protoDestOpts = 60
	protoMobility = 135
	routingType2  = 2
	optPad1       = 0
	optHomeAddr   = 0xc9
)
