package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// CtrlClass is the class byte of a control-queue command (virtio 1.2
// §5.1.6.5).
type CtrlClass uint8

const (
	CtrlRX            CtrlClass = 0
	CtrlMAC           CtrlClass = 1
	CtrlVLAN          CtrlClass = 2
	CtrlAnnounce      CtrlClass = 3
	CtrlMQ            CtrlClass = 4
	CtrlGuestOffloads CtrlClass = 5
)

// Commands within each class.
const (
	CtrlRXPromisc  uint8 = 0
	CtrlRXAllMulti uint8 = 1
	CtrlRXAllUni   uint8 = 2
	CtrlRXNoMulti  uint8 = 3
	CtrlRXNoUni    uint8 = 4
	CtrlRXNoBcast  uint8 = 5

	CtrlMACTableSet uint8 = 0
	CtrlMACAddrSet  uint8 = 1

	CtrlVLANAdd uint8 = 0
	CtrlVLANDel uint8 = 1

	CtrlAnnounceAck uint8 = 0

	CtrlMQVQPairsSet uint8 = 0
	CtrlMQRSSConfig  uint8 = 1
	CtrlMQHashConfig uint8 = 2

	CtrlGuestOffloadsSet uint8 = 0
)

// CtrlAck is the byte the device writes back after a command.
type CtrlAck uint8

const (
	CtrlOK  CtrlAck = 0 // VIRTIO_NET_OK
	CtrlErr CtrlAck = 1 // VIRTIO_NET_ERR
)

const (
	ctrlMQPairsMin = 1      // VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN
	ctrlMQPairsMax = 0x8000 // VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX
	vlanIDs        = 4096
)

// GuestOffloads are the feature bits VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET can
// switch: virtio 1.2 §5.1.6.5.8.1, plus the guest USO bits of virtio 1.3.
const GuestOffloads = NetFGuestCsum | NetFGuestTSO4 | NetFGuestTSO6 | NetFGuestECN | NetFGuestUFO |
	NetFGuestUSO4 | NetFGuestUSO6

var ctrlNames = [...][]string{
	CtrlRX:            {"PROMISC", "ALLMULTI", "ALLUNI", "NOMULTI", "NOUNI", "NOBCAST"},
	CtrlMAC:           {"TABLE_SET", "ADDR_SET"},
	CtrlVLAN:          {"ADD", "DEL"},
	CtrlAnnounce:      {"ACK"},
	CtrlMQ:            {"VQ_PAIRS_SET", "RSS_CONFIG", "HASH_CONFIG"},
	CtrlGuestOffloads: {"SET"},
}

var ctrlClassNames = [...]string{"RX", "MAC", "VLAN", "ANNOUNCE", "MQ", "GUEST_OFFLOADS"}

func (c CtrlClass) String() string {
	if int(c) < len(ctrlClassNames) {
		return ctrlClassNames[c]
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// ctrlFeature is the feature a driver must have negotiated to send a command
// (the driver requirements of virtio 1.2 §5.1.6.5.1 to §5.1.6.5.8); ok is
// false for a command the spec does not define.
func ctrlFeature(class CtrlClass, cmd uint8) (f Features, ok bool) {
	switch class {
	case CtrlRX:
		switch cmd {
		case CtrlRXPromisc, CtrlRXAllMulti:
			return NetFCtrlRx, true
		case CtrlRXAllUni, CtrlRXNoMulti, CtrlRXNoUni, CtrlRXNoBcast:
			return NetFCtrlRxExtra, true
		}
	case CtrlMAC:
		switch cmd {
		case CtrlMACTableSet:
			return NetFCtrlRx, true
		case CtrlMACAddrSet:
			// §5.1.6.5.2 puts the whole MAC class under CTRL_RX, but
			// ADDR_SET is what CTRL_MAC_ADDR announces and Linux sends it
			// with CTRL_MAC_ADDR alone.
			return NetFCtrlMACAddr, true
		}
	case CtrlVLAN:
		if cmd == CtrlVLANAdd || cmd == CtrlVLANDel {
			return NetFCtrlVLAN, true
		}
	case CtrlAnnounce:
		if cmd == CtrlAnnounceAck {
			return NetFGuestAnnounce, true
		}
	case CtrlMQ:
		switch cmd {
		case CtrlMQVQPairsSet:
			return NetFMQ, true
		case CtrlMQRSSConfig:
			return NetFRSS, true
		case CtrlMQHashConfig:
			return NetFHashReport, true
		}
	case CtrlGuestOffloads:
		if cmd == CtrlGuestOffloadsSet {
			return NetFCtrlGuestOffloads, true
		}
	}
	return 0, false
}

// CtrlLimits is what the device negotiated and advertised, against which
// ParseCtrl checks a command. NetConfig.CtrlLimits fills it from the config.
type CtrlLimits struct {
	Features Features // negotiated
	Endian   Endian   // of the __virtio fields; zero is VERSION_1's little-endian

	// MaxPairs bounds VQ_PAIRS_SET and the queue indices of RSS_CONFIG:
	// max_virtqueue_pairs when MQ or RSS is negotiated. Zero counts as one
	// pair, all a device without MQ or RSS has.
	MaxPairs uint16

	MaxKeySize        uint8     // rss_max_key_size
	MaxIndirectionLen uint16    // rss_max_indirection_table_length
	HashTypes         HashTypes // supported_hash_types
}

func (l *CtrlLimits) pairs() int {
	return max(1, min(int(l.MaxPairs), ctrlMQPairsMax))
}

// MACList is a run of 6-byte addresses as VIRTIO_NET_CTRL_MAC_TABLE_SET
// carries them.
type MACList []byte

// Len returns the number of whole addresses in l.
func (l MACList) Len() int { return len(l) / 6 }

// At returns address i; it panics if i is not below Len, like an index.
func (l MACList) At(i int) MAC { return MAC(l[6*i : 6*i+6]) }

// RSSConfig is struct virtio_net_rss_config (virtio 1.2 §5.1.6.5.7.1); the
// indirection_table_mask is len(IndirectionTable)-1.
type RSSConfig struct {
	HashTypes         HashTypes
	UnclassifiedQueue uint16   // 0-based receive queue index
	IndirectionTable  []uint16 // 0-based receive queue indices
	MaxTxVQ           uint16
	Key               []byte
}

// HashConfig is struct virtio_net_hash_config (virtio 1.2 §5.1.6.5.6.4).
type HashConfig struct {
	HashTypes HashTypes
	// Reserved must be zero by the spec, but Linux before 6.5 sent its
	// queue-pair count in Reserved[3] (max_tx_vq of the RSS layout) and
	// QEMU does not check it, so it is kept, not checked.
	Reserved [4]uint16
	Key      []byte
}

// CtrlCommand is one parsed control-queue command. Class and Command select
// which of the other fields is meaningful; the byte slices (Unicast,
// Multicast, Key) alias the buffer given to ParseCtrl.
type CtrlCommand struct {
	Class   CtrlClass
	Command uint8

	On                 bool       // RX: the on/off (or suppress) byte
	Unicast, Multicast MACList    // MAC TABLE_SET
	MAC                MAC        // MAC ADDR_SET
	VLAN               uint16     // VLAN ADD and DEL
	Pairs              uint16     // MQ VQ_PAIRS_SET
	RSS                RSSConfig  // MQ RSS_CONFIG
	Hash               HashConfig // MQ HASH_CONFIG
	Offloads           Features   // GUEST_OFFLOADS SET: the offloads to enable
}

// Name returns the class and command, such as "MQ RSS_CONFIG".
func (c *CtrlCommand) Name() string {
	if int(c.Class) < len(ctrlNames) && int(c.Command) < len(ctrlNames[c.Class]) {
		return c.Class.String() + " " + ctrlNames[c.Class][c.Command]
	}
	return c.Class.String() + " command(" + strconv.Itoa(int(c.Command)) + ")"
}

// Errors of ParseCtrl, each wrapped with the command and the numbers
// involved. The device answers every one of them with CtrlErr.
var (
	ErrCtrlUnknown       = errors.New("unknown command")
	ErrCtrlNotNegotiated = errors.New("feature not negotiated")
	ErrCtrlLength        = errors.New("bad length")
	ErrCtrlValue         = errors.New("value out of range")
)

const ctrlHdrLen = 2 // struct virtio_net_ctrl_hdr

// ParseCtrl parses a control command from the device-readable bytes of its
// descriptor chain, gathered into b: the class and command bytes, then the
// command-specific data (virtio 1.2 §5.1.6.5). The ack byte that follows in
// the device-writable part is the caller's to write. Data must have exactly
// the length its command defines. On error the command has only Class and
// Command set, when b held them.
func ParseCtrl(b []byte, lim CtrlLimits) (CtrlCommand, error) {
	if len(b) < ctrlHdrLen {
		return CtrlCommand{}, fmt.Errorf("control command of %d bytes, want at least %d: %w", len(b), ctrlHdrLen, ErrCtrlLength)
	}
	c := CtrlCommand{Class: CtrlClass(b[0]), Command: b[1]}
	if err := c.parse(b[ctrlHdrLen:], &lim); err != nil {
		return CtrlCommand{Class: c.Class, Command: c.Command}, fmt.Errorf("control %s: %w", c.Name(), err)
	}
	return c, nil
}

func (c *CtrlCommand) parse(d []byte, lim *CtrlLimits) error {
	need, ok := ctrlFeature(c.Class, c.Command)
	if !ok {
		return ErrCtrlUnknown
	}
	if !lim.Features.Has(need) {
		return fmt.Errorf("needs %s: %w", need, ErrCtrlNotNegotiated)
	}
	switch c.Class {
	case CtrlRX:
		// §5.1.6.5.1.1: one byte, 0 or 1.
		if err := dataLen(d, 1); err != nil {
			return err
		}
		if d[0] > 1 {
			return fmt.Errorf("argument %d, want 0 or 1: %w", d[0], ErrCtrlValue)
		}
		c.On = d[0] == 1
	case CtrlMAC:
		if c.Command == CtrlMACAddrSet {
			return c.parseMACAddr(d)
		}
		return c.parseMACTable(d, lim.Endian)
	case CtrlVLAN:
		// §5.1.6.5.3: a 16-bit VLAN id, guest-native for legacy drivers.
		if err := dataLen(d, 2); err != nil {
			return err
		}
		c.VLAN = lim.Endian.uint16(d)
		if c.VLAN >= vlanIDs {
			return fmt.Errorf("vlan id %d, want below %d: %w", c.VLAN, vlanIDs, ErrCtrlValue)
		}
	case CtrlAnnounce:
		return dataLen(d, 0)
	case CtrlMQ:
		switch c.Command {
		case CtrlMQVQPairsSet:
			return c.parsePairs(d, lim)
		case CtrlMQRSSConfig:
			return c.parseRSS(d, lim)
		default:
			return c.parseHash(d, lim)
		}
	case CtrlGuestOffloads:
		return c.parseOffloads(d, lim)
	}
	return nil
}

func dataLen(d []byte, want int) error {
	if len(d) != want {
		return fmt.Errorf("%d bytes of data, want %d: %w", len(d), want, ErrCtrlLength)
	}
	return nil
}

// parseMACTable reads two struct virtio_net_ctrl_mac, unicast then
// multicast (virtio 1.2 §5.1.6.5.2.2). Which addresses are in which table is
// not checked: filtering is best effort, and QEMU does not check either.
func (c *CtrlCommand) parseMACTable(d []byte, e Endian) error {
	var err error
	if c.Unicast, d, err = macTable(d, "unicast", e); err != nil {
		return err
	}
	if c.Multicast, d, err = macTable(d, "multicast", e); err != nil {
		return err
	}
	if len(d) != 0 {
		return fmt.Errorf("%d bytes after the multicast table: %w", len(d), ErrCtrlLength)
	}
	return nil
}

func macTable(d []byte, which string, e Endian) (MACList, []byte, error) {
	if len(d) < 4 {
		return nil, nil, fmt.Errorf("%s table: %d bytes left for its 4-byte entry count: %w", which, len(d), ErrCtrlLength)
	}
	n := e.uint32(d)
	d = d[4:]
	if uint64(n)*6 > uint64(len(d)) {
		return nil, nil, fmt.Errorf("%s table of %d entries: %d bytes left, want %d: %w",
			which, n, len(d), uint64(n)*6, ErrCtrlLength)
	}
	k := int(n) * 6
	return MACList(d[:k]), d[k:], nil
}

func (c *CtrlCommand) parseMACAddr(d []byte) error {
	if err := dataLen(d, len(c.MAC)); err != nil {
		return err
	}
	c.MAC = MAC(d)
	if err := CheckUnicastMAC(c.MAC[:]); err != nil {
		return fmt.Errorf("%w: %w", err, ErrCtrlValue)
	}
	return nil
}

// parsePairs reads struct virtio_net_ctrl_mq_pairs_set; the driver "MUST NOT
// request a virtqueue_pairs of 0 or greater than max_virtqueue_pairs"
// (virtio 1.2 §5.1.6.5.6.1).
func (c *CtrlCommand) parsePairs(d []byte, lim *CtrlLimits) error {
	if err := dataLen(d, 2); err != nil {
		return err
	}
	c.Pairs = lim.Endian.uint16(d)
	if p := lim.pairs(); int(c.Pairs) < ctrlMQPairsMin || int(c.Pairs) > p {
		return fmt.Errorf("virtqueue_pairs %d, want %d to %d: %w", c.Pairs, ctrlMQPairsMin, p, ErrCtrlValue)
	}
	return nil
}

// parseRSS reads struct virtio_net_rss_config, all little-endian: RSS
// requires VERSION_1. The checks are the driver requirements of virtio 1.2
// §5.1.6.5.7.2, with "indices of enabled queues" taken as below MaxPairs.
func (c *CtrlCommand) parseRSS(d []byte, lim *CtrlLimits) error {
	const head = 8 // hash_types, indirection_table_mask, unclassified_queue
	if len(d) < head {
		return fmt.Errorf("%d bytes of data, want at least %d: %w", len(d), head, ErrCtrlLength)
	}
	r := &c.RSS
	r.HashTypes = HashTypes(binary.LittleEndian.Uint32(d))
	mask := binary.LittleEndian.Uint16(d[4:])
	r.UnclassifiedQueue = binary.LittleEndian.Uint16(d[6:])
	n := int(mask) + 1
	if n&(n-1) != 0 {
		return fmt.Errorf("indirection_table_mask %#x: %d entries is not a power of two: %w", mask, n, ErrCtrlValue)
	}
	if n > int(lim.MaxIndirectionLen) {
		return fmt.Errorf("indirection table of %d entries, device maximum %d: %w", n, lim.MaxIndirectionLen, ErrCtrlValue)
	}
	d = d[head:]
	if want := 2*n + 3; len(d) < want {
		return fmt.Errorf("indirection table of %d entries, max_tx_vq and hash_key_length: %d bytes left, want %d: %w",
			n, len(d), want, ErrCtrlLength)
	}
	r.IndirectionTable = make([]uint16, n)
	for i := range r.IndirectionTable {
		r.IndirectionTable[i] = binary.LittleEndian.Uint16(d[2*i:])
	}
	d = d[2*n:]
	r.MaxTxVQ = binary.LittleEndian.Uint16(d)
	var err error
	if r.Key, err = hashKey(d[2:], lim); err != nil {
		return err
	}
	if err := hashTypes(r.HashTypes, lim); err != nil {
		return err
	}
	pairs := lim.pairs()
	if int(r.UnclassifiedQueue) >= pairs {
		return fmt.Errorf("unclassified_queue %d, want below %d queue pairs: %w", r.UnclassifiedQueue, pairs, ErrCtrlValue)
	}
	for i, q := range r.IndirectionTable {
		if int(q) >= pairs {
			return fmt.Errorf("indirection_table[%d] = %d, want below %d queue pairs: %w", i, q, pairs, ErrCtrlValue)
		}
	}
	if int(r.MaxTxVQ) < 1 || int(r.MaxTxVQ) > pairs {
		return fmt.Errorf("max_tx_vq %d, want 1 to %d: %w", r.MaxTxVQ, pairs, ErrCtrlValue)
	}
	return nil
}

// parseHash reads struct virtio_net_hash_config (virtio 1.2 §5.1.6.5.6.4).
func (c *CtrlCommand) parseHash(d []byte, lim *CtrlLimits) error {
	const head = 12 // hash_types, reserved[4]
	if len(d) < head+1 {
		return fmt.Errorf("%d bytes of data, want at least %d: %w", len(d), head+1, ErrCtrlLength)
	}
	h := &c.Hash
	h.HashTypes = HashTypes(binary.LittleEndian.Uint32(d))
	for i := range h.Reserved {
		h.Reserved[i] = binary.LittleEndian.Uint16(d[4+2*i:])
	}
	var err error
	if h.Key, err = hashKey(d[head:], lim); err != nil {
		return err
	}
	return hashTypes(h.HashTypes, lim)
}

// hashKey reads hash_key_length and the key that must fill the rest of d.
func hashKey(d []byte, lim *CtrlLimits) ([]byte, error) {
	n, key := int(d[0]), d[1:]
	if len(key) != n {
		return nil, fmt.Errorf("hash_key_length %d, %d key bytes follow: %w", n, len(key), ErrCtrlLength)
	}
	if n > int(lim.MaxKeySize) {
		return nil, fmt.Errorf("hash key of %d bytes, device maximum %d: %w", n, lim.MaxKeySize, ErrCtrlValue)
	}
	return key, nil
}

func hashTypes(h HashTypes, lim *CtrlLimits) error {
	if extra := h &^ lim.HashTypes; extra != 0 {
		return fmt.Errorf("hash types %s not supported by the device: %w", extra, ErrCtrlValue)
	}
	return nil
}

// parseOffloads reads the le64 (guest-native for legacy drivers) of
// VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET. "A driver MUST NOT enable an offload
// for which the appropriate feature has not been negotiated" (virtio 1.2
// §5.1.6.5.8.2); beyond the spec, the set must keep the §5.1.3.1 rules (no
// TSO without GUEST_CSUM): the header could not describe such packets, and
// TUNSETOFFLOAD refuses TSO without checksum offload.
func (c *CtrlCommand) parseOffloads(d []byte, lim *CtrlLimits) error {
	if err := dataLen(d, 8); err != nil {
		return err
	}
	c.Offloads = Features(lim.Endian.uint64(d))
	if extra := c.Offloads &^ GuestOffloads; extra != 0 {
		return fmt.Errorf("offloads %s: %s are not guest offloads: %w", c.Offloads, extra, ErrCtrlValue)
	}
	if extra := c.Offloads &^ lim.Features; extra != 0 {
		return fmt.Errorf("offloads %s: %s: %w", c.Offloads, extra, ErrCtrlNotNegotiated)
	}
	if err := checkDependencies(c.Offloads, GuestOffloads); err != nil {
		return fmt.Errorf("offloads %s: %w: %w", c.Offloads, err, ErrCtrlValue)
	}
	return nil
}

// Append appends c as a driver would send it, header and data, with the
// __virtio fields in e: the inverse of ParseCtrl for the commands it
// accepts. For a class or command ParseCtrl does not know it appends the
// header alone.
func (c *CtrlCommand) Append(b []byte, e Endian) []byte {
	b = append(b, byte(c.Class), c.Command)
	if _, ok := ctrlFeature(c.Class, c.Command); !ok {
		return b
	}
	le := binary.LittleEndian
	switch c.Class {
	case CtrlRX:
		if c.On {
			return append(b, 1)
		}
		return append(b, 0)
	case CtrlMAC:
		if c.Command == CtrlMACAddrSet {
			return append(b, c.MAC[:]...)
		}
		for _, l := range []MACList{c.Unicast, c.Multicast} {
			b = e.appendUint32(b, uint32(l.Len()))
			b = append(b, l[:6*l.Len()]...)
		}
		return b
	case CtrlVLAN:
		return e.appendUint16(b, c.VLAN)
	case CtrlMQ:
		switch c.Command {
		case CtrlMQVQPairsSet:
			return e.appendUint16(b, c.Pairs)
		case CtrlMQRSSConfig:
			r := &c.RSS
			b = le.AppendUint32(b, uint32(r.HashTypes))
			b = le.AppendUint16(b, uint16(len(r.IndirectionTable)-1))
			b = le.AppendUint16(b, r.UnclassifiedQueue)
			for _, q := range r.IndirectionTable {
				b = le.AppendUint16(b, q)
			}
			b = le.AppendUint16(b, r.MaxTxVQ)
			b = append(b, byte(len(r.Key)))
			return append(b, r.Key...)
		default:
			h := &c.Hash
			b = le.AppendUint32(b, uint32(h.HashTypes))
			for _, r := range h.Reserved {
				b = le.AppendUint16(b, r)
			}
			b = append(b, byte(len(h.Key)))
			return append(b, h.Key...)
		}
	case CtrlGuestOffloads:
		return e.appendUint64(b, uint64(c.Offloads))
	}
	return b
}
