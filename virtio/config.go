package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
)

// Offsets in struct virtio_net_config (virtio 1.2 §5.1.4; Linux
// include/uapi/linux/virtio_net.h). Fields sit at fixed offsets whether or
// not the feature that makes them exist was negotiated.
const (
	cfgMAC         = 0
	cfgStatus      = 6
	cfgMaxPairs    = 8
	cfgMTU         = 10
	cfgSpeed       = 12
	cfgDuplex      = 16
	cfgRSSKeySize  = 17
	cfgRSSIndirLen = 18
	cfgHashTypes   = 20

	// NetConfigMaxLen is the size of struct virtio_net_config with every
	// field present.
	NetConfigMaxLen = 24
)

// NetStatus is the status field of the config space.
type NetStatus uint16

const (
	LinkUp   NetStatus = 1 // VIRTIO_NET_S_LINK_UP
	Announce NetStatus = 2 // VIRTIO_NET_S_ANNOUNCE
)

func (s NetStatus) String() string {
	return flagString(uint64(s), []string{"LINK_UP", "ANNOUNCE"})
}

// HashTypes is a set of VIRTIO_NET_RSS_HASH_TYPE_* bits: in the config it is
// what the device can compute, in RSS_CONFIG and HASH_CONFIG what the
// driver enables (virtio 1.2 §5.1.6.4.3.1).
type HashTypes uint32

const (
	HashIPv4  HashTypes = 1 << 0
	HashTCPv4 HashTypes = 1 << 1
	HashUDPv4 HashTypes = 1 << 2
	HashIPv6  HashTypes = 1 << 3
	HashTCPv6 HashTypes = 1 << 4
	HashUDPv6 HashTypes = 1 << 5
	HashIPEx  HashTypes = 1 << 6
	HashTCPEx HashTypes = 1 << 7
	HashUDPEx HashTypes = 1 << 8

	// HashAll is every hash type virtio 1.2 defines.
	HashAll HashTypes = 1<<9 - 1
)

func (h HashTypes) String() string {
	return flagString(uint64(h), []string{"IPv4", "TCPv4", "UDPv4", "IPv6", "TCPv6", "UDPv6", "IP_EX", "TCP_EX", "UDP_EX"})
}

// flagString names the set bits of v from names (bit i is names[i]) and
// shows the rest in hex.
func flagString(v uint64, names []string) string {
	if v == 0 {
		return "0"
	}
	var parts []string
	for i, name := range names {
		if v&(1<<i) != 0 {
			parts = append(parts, name)
			v &^= 1 << i
		}
	}
	if v != 0 {
		parts = append(parts, fmt.Sprintf("%#x", v))
	}
	return strings.Join(parts, "|")
}

// Speed and duplex values with VIRTIO_NET_F_SPEED_DUPLEX. Virtio 1.2 §5.1.4
// gives duplex 1 as full and 0 as half, and its device requirements §5.1.4.1
// say the opposite; Linux (ethtool DUPLEX_FULL = 1) and QEMU follow the
// former, and so do we.
const (
	SpeedUnknown  uint32 = 0xffffffff
	DuplexHalf    uint8  = 0x00
	DuplexFull    uint8  = 0x01
	DuplexUnknown uint8  = 0xff
)

// MAC is an Ethernet address.
type MAC [6]byte

func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// CheckUnicastMAC refuses an address no station can own as its own: not
// six bytes, the I/G (group) bit of the first octet set, or all zeros
// (Linux is_valid_ether_addr). The config space mac (virtio 1.2 §5.1.4) and
// the address of VIRTIO_NET_CTRL_MAC_ADDR_SET (§5.1.6.5.2) are such an
// address.
func CheckUnicastMAC(mac net.HardwareAddr) error {
	if len(mac) != len(MAC{}) {
		return fmt.Errorf("mac %s has %d bytes, want %d", mac, len(mac), len(MAC{}))
	}
	if mac[0]&1 != 0 || MAC(mac) == (MAC{}) {
		return fmt.Errorf("mac %s is not a unicast station address", mac)
	}
	return nil
}

// MinMTU and MaxMTU bound the mtu field of the config space: virtio 1.2
// §5.1.4.1 has the device set it between 68 and 65535 inclusive when it
// offers VIRTIO_NET_F_MTU (Linux virtio_net MIN_MTU and MAX_MTU, that is
// ETH_MIN_MTU and ETH_MAX_MTU). A device whose TAP allows less checks the
// TAP's bounds as well (tap.CheckMTU).
const (
	MinMTU = 68
	MaxMTU = 65535
)

// CheckMTU refuses an mtu the config space cannot offer: outside MinMTU to
// MaxMTU (virtio 1.2 §5.1.4.1).
func CheckMTU(mtu int) error {
	if mtu < MinMTU || mtu > MaxMTU {
		return fmt.Errorf("mtu %d, want %d to %d", mtu, MinMTU, MaxMTU)
	}
	return nil
}

// NetConfig is the device-specific configuration space of a network device,
// struct virtio_net_config.
type NetConfig struct {
	MAC                          MAC       // valid with NET_F_MAC
	Status                       NetStatus // with NET_F_STATUS
	MaxVirtqueuePairs            uint16    // with NET_F_MQ or NET_F_RSS
	MTU                          uint16    // with NET_F_MTU
	Speed                        uint32    // Mbit/s, with NET_F_SPEED_DUPLEX
	Duplex                       uint8     // with NET_F_SPEED_DUPLEX
	RSSMaxKeySize                uint8     // with NET_F_RSS or NET_F_HASH_REPORT
	RSSMaxIndirectionTableLength uint16    // with NET_F_RSS
	SupportedHashTypes           HashTypes // with NET_F_RSS or NET_F_HASH_REPORT
}

// NetConfigLen returns how many bytes of the config space exist for a
// feature set: up to the end of the last field it makes present (virtio 1.2
// §5.1.4). Absent fields before that one read as whatever is stored there.
func NetConfigLen(f Features) int {
	switch {
	case f&(NetFRSS|NetFHashReport) != 0:
		return NetConfigMaxLen
	case f&NetFSpeedDuplex != 0:
		return cfgDuplex + 1
	case f&NetFMTU != 0:
		return cfgMTU + 2
	case f&(NetFMQ|NetFRSS) != 0:
		return cfgMaxPairs + 2
	case f&NetFStatus != 0:
		return cfgStatus + 2
	default:
		return cfgStatus
	}
}

// Encode writes every field into the first NetConfigMaxLen bytes of b.
// Status, max_virtqueue_pairs and mtu are __virtio16 (guest-native for a
// legacy driver, virtio 1.2 §5.1.4.3); the rest is always little-endian.
func (c *NetConfig) Encode(b []byte, e Endian) error {
	if len(b) < NetConfigMaxLen {
		return fmt.Errorf("net config of %d bytes in a buffer of %d: %w", NetConfigMaxLen, len(b), ErrShortBuffer)
	}
	c.encode((*[NetConfigMaxLen]byte)(b), e)
	return nil
}

func (c *NetConfig) encode(b *[NetConfigMaxLen]byte, e Endian) {
	copy(b[cfgMAC:], c.MAC[:])
	e.putUint16(b[cfgStatus:], uint16(c.Status))
	e.putUint16(b[cfgMaxPairs:], c.MaxVirtqueuePairs)
	e.putUint16(b[cfgMTU:], c.MTU)
	binary.LittleEndian.PutUint32(b[cfgSpeed:], c.Speed)
	b[cfgDuplex] = c.Duplex
	b[cfgRSSKeySize] = c.RSSMaxKeySize
	binary.LittleEndian.PutUint16(b[cfgRSSIndirLen:], c.RSSMaxIndirectionTableLength)
	binary.LittleEndian.PutUint32(b[cfgHashTypes:], uint32(c.SupportedHashTypes))
}

// Decode reads every field from the first NetConfigMaxLen bytes of b.
func (c *NetConfig) Decode(b []byte, e Endian) error {
	if len(b) < NetConfigMaxLen {
		return fmt.Errorf("net config of %d bytes in a buffer of %d: %w", NetConfigMaxLen, len(b), ErrShortBuffer)
	}
	copy(c.MAC[:], b[cfgMAC:])
	c.Status = NetStatus(e.uint16(b[cfgStatus:]))
	c.MaxVirtqueuePairs = e.uint16(b[cfgMaxPairs:])
	c.MTU = e.uint16(b[cfgMTU:])
	c.Speed = binary.LittleEndian.Uint32(b[cfgSpeed:])
	c.Duplex = b[cfgDuplex]
	c.RSSMaxKeySize = b[cfgRSSKeySize]
	c.RSSMaxIndirectionTableLength = binary.LittleEndian.Uint16(b[cfgRSSIndirLen:])
	c.SupportedHashTypes = HashTypes(binary.LittleEndian.Uint32(b[cfgHashTypes:]))
	return nil
}

// ErrConfigWindow reports a config-space access outside the bytes that exist
// for the negotiated features.
var ErrConfigWindow = errors.New("outside the net config space")

// ReadWindow fills dst with the config bytes from offset off, the way a
// vhost-user VHOST_USER_GET_CONFIG or a transport's config read asks for
// them; the window must lie within NetConfigLen(f).
func (c *NetConfig) ReadWindow(dst []byte, off int, f Features, e Endian) error {
	n := NetConfigLen(f)
	if off < 0 || off > n || len(dst) > n-off {
		return fmt.Errorf("read %d bytes at offset %d of a %d-byte net config: %w", len(dst), off, n, ErrConfigWindow)
	}
	var b [NetConfigMaxLen]byte
	c.encode(&b, e)
	copy(dst, b[off:])
	return nil
}

// ErrBadConfig reports a config that breaks a device requirement of the spec.
var ErrBadConfig = errors.New("invalid net config")

// Validate checks the config a device offers alongside offered against the
// device requirements of virtio 1.2 §5.1.4.1, and that fields the spec
// gives meaning bit by bit carry no unknown bits. A MAC that no station
// could own (zero or multicast) is refused as well: Linux would replace it
// with a random one.
func (c *NetConfig) Validate(offered Features) error {
	if offered.Has(NetFMAC) {
		if err := CheckUnicastMAC(c.MAC[:]); err != nil {
			return fmt.Errorf("%w: %w", err, ErrBadConfig)
		}
	}
	if offered.Has(NetFStatus) {
		if extra := c.Status &^ (LinkUp | Announce); extra != 0 {
			return fmt.Errorf("status %s has unknown bits %#x: %w", c.Status, uint16(extra), ErrBadConfig)
		}
	}
	if offered&(NetFMQ|NetFRSS) != 0 {
		if p := c.MaxVirtqueuePairs; p < ctrlMQPairsMin || p > ctrlMQPairsMax {
			return fmt.Errorf("max_virtqueue_pairs %d, want %d to %#x: %w", p, ctrlMQPairsMin, ctrlMQPairsMax, ErrBadConfig)
		}
	}
	if offered.Has(NetFMTU) {
		if err := CheckMTU(int(c.MTU)); err != nil {
			return fmt.Errorf("%w: %w", err, ErrBadConfig)
		}
	}
	if offered.Has(NetFSpeedDuplex) {
		if c.Speed > 0x7fffffff && c.Speed != SpeedUnknown {
			return fmt.Errorf("speed %#x, want at most 0x7fffffff or %#x for unknown: %w", c.Speed, SpeedUnknown, ErrBadConfig)
		}
		if d := c.Duplex; d != DuplexHalf && d != DuplexFull && d != DuplexUnknown {
			return fmt.Errorf("duplex %#x, want %#x, %#x or %#x: %w", d, DuplexHalf, DuplexFull, DuplexUnknown, ErrBadConfig)
		}
	}
	if offered&(NetFRSS|NetFHashReport) != 0 {
		if c.RSSMaxKeySize < 40 {
			return fmt.Errorf("rss_max_key_size %d, want at least 40: %w", c.RSSMaxKeySize, ErrBadConfig)
		}
		if extra := c.SupportedHashTypes &^ HashAll; extra != 0 {
			return fmt.Errorf("supported_hash_types %s has unknown bits %#x: %w", c.SupportedHashTypes, uint32(extra), ErrBadConfig)
		}
	}
	if offered.Has(NetFRSS) && c.RSSMaxIndirectionTableLength < 128 {
		return fmt.Errorf("rss_max_indirection_table_length %d, want at least 128: %w", c.RSSMaxIndirectionTableLength, ErrBadConfig)
	}
	return nil
}

// CtrlLimits returns what ParseCtrl needs to check commands against this
// config once acked has been negotiated.
func (c *NetConfig) CtrlLimits(acked Features, e Endian) CtrlLimits {
	l := CtrlLimits{
		Features:          acked,
		Endian:            e,
		MaxPairs:          1,
		MaxKeySize:        c.RSSMaxKeySize,
		MaxIndirectionLen: c.RSSMaxIndirectionTableLength,
		HashTypes:         c.SupportedHashTypes,
	}
	if acked&(NetFMQ|NetFRSS) != 0 {
		l.MaxPairs = c.MaxVirtqueuePairs
	}
	return l
}
