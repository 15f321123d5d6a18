package frametest

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// ARP operations.
const (
	ARPRequest = 1
	ARPReply   = 2
)

// ARP is an ARP packet for IPv4 over Ethernet (RFC 826).
type ARP struct {
	Op                   uint16
	SenderMAC, TargetMAC net.HardwareAddr // a nil TargetMAC: unknown, as in a request
	SenderIP, TargetIP   netip.Addr
}

// arpLen is an ARP packet's length for Ethernet and IPv4.
const arpLen = 28

// Build writes the frame from SenderMAC to TargetMAC, or to everyone when
// TargetMAC is nil.
func (a ARP) Build() []byte {
	dst := a.TargetMAC
	if dst == nil {
		dst = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	}
	body := []byte{0, 1, 8, 0, 6, 4} // Ethernet, IPv4
	body = binary.BigEndian.AppendUint16(body, a.Op)
	body = append(body, mac(a.SenderMAC)...)
	body = append(body, ip4(a.SenderIP)...)
	body = append(body, mac(a.TargetMAC)...)
	body = append(body, ip4(a.TargetIP)...)
	return Spec{SrcMAC: a.SenderMAC, DstMAC: dst, EtherType: EtherARP, Payload: body}.Build()
}

// ParseARP reads the ARP packet in an untagged frame. It checks the
// EtherType and the length, nothing else.
func ParseARP(b []byte) (ARP, error) {
	if len(b) < EthLen+arpLen {
		return ARP{}, fmt.Errorf("arp frame of %d bytes", len(b))
	}
	if et := binary.BigEndian.Uint16(b[12:]); et != EtherARP {
		return ARP{}, fmt.Errorf("ethertype %#04x, not arp", et)
	}
	a := b[EthLen:]
	return ARP{
		Op:        binary.BigEndian.Uint16(a[6:]),
		SenderMAC: net.HardwareAddr(a[8:14]),
		SenderIP:  netip.AddrFrom4([4]byte(a[14:18])),
		TargetMAC: net.HardwareAddr(a[18:24]),
		TargetIP:  netip.AddrFrom4([4]byte(a[24:28])),
	}, nil
}

// ip4 is an IPv4 address's 4 bytes.
func ip4(a netip.Addr) []byte {
	if a = a.Unmap(); !a.Is4() {
		panic(fmt.Sprintf("frametest: %s is not an IPv4 address", a))
	}
	return a.AsSlice()
}
