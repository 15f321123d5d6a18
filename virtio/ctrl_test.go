package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
func le16(v uint16) []byte       { return binary.LittleEndian.AppendUint16(nil, v) }
func le32(v uint32) []byte       { return binary.LittleEndian.AppendUint32(nil, v) }
func le64(v uint64) []byte       { return binary.LittleEndian.AppendUint64(nil, v) }
func be16(v uint16) []byte       { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte       { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte       { return binary.BigEndian.AppendUint64(nil, v) }

func le16s(vs ...uint16) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	return b
}

var (
	macA  = []byte{0x52, 0x54, 0x00, 0x00, 0x00, 0x01}
	macM1 = []byte{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}
	macM2 = []byte{0x33, 0x33, 0x00, 0x00, 0x00, 0x01}
	key40 = bytes.Repeat([]byte{0x6d, 0x5a}, 20)

	// ctrlAll negotiates every feature a control command needs.
	ctrlAll = FVersion1 | NetFCtrlVQ | NetFCtrlRx | NetFCtrlRxExtra | NetFCtrlVLAN | NetFGuestAnnounce |
		NetFMQ | NetFCtrlMACAddr | NetFRSS | NetFHashReport | NetFCtrlGuestOffloads |
		NetFGuestCsum | NetFGuestTSO4 | NetFGuestTSO6 | NetFGuestECN | NetFGuestUFO | NetFGuestUSO4
	ctrlLim = CtrlLimits{
		Features: ctrlAll, MaxPairs: 4, MaxKeySize: 40, MaxIndirectionLen: 128,
		HashTypes: HashIPv4 | HashTCPv4 | HashIPv6 | HashTCPv6,
	}
	legacyLim = CtrlLimits{
		Features: NetFCtrlVQ | NetFCtrlRx | NetFCtrlVLAN | NetFMQ | NetFCtrlGuestOffloads | NetFGuestCsum |
			NetFGuestTSO4,
		Endian: BigEndian, MaxPairs: 2,
	}
)

func TestParseCtrl(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		lim  CtrlLimits
		want CtrlCommand
	}{
		{"rx promisc on", []byte{0, 0, 1}, ctrlLim, CtrlCommand{Class: CtrlRX, Command: CtrlRXPromisc, On: true}},
		{"rx allmulti off", []byte{0, 1, 0}, ctrlLim, CtrlCommand{Class: CtrlRX, Command: CtrlRXAllMulti}},
		{"rx alluni", []byte{0, 2, 1}, ctrlLim, CtrlCommand{Class: CtrlRX, Command: CtrlRXAllUni, On: true}},
		{"rx nomulti", []byte{0, 3, 1}, ctrlLim, CtrlCommand{Class: CtrlRX, Command: CtrlRXNoMulti, On: true}},
		{"rx nouni", []byte{0, 4, 0}, ctrlLim, CtrlCommand{Class: CtrlRX, Command: CtrlRXNoUni}},
		{"rx nobcast", []byte{0, 5, 1}, ctrlLim, CtrlCommand{Class: CtrlRX, Command: CtrlRXNoBcast, On: true}},
		{"mac table", cat([]byte{1, 0}, le32(1), macA, le32(2), macM1, macM2), ctrlLim, CtrlCommand{
			Class: CtrlMAC, Command: CtrlMACTableSet, Unicast: MACList(macA), Multicast: MACList(cat(macM1, macM2))}},
		{"mac table empty", cat([]byte{1, 0}, le32(0), le32(0)), ctrlLim, CtrlCommand{
			Class: CtrlMAC, Command: CtrlMACTableSet, Unicast: MACList{}, Multicast: MACList{}}},
		{"mac table big-endian", cat([]byte{1, 0}, be32(0), be32(1), macM1), legacyLim, CtrlCommand{
			Class: CtrlMAC, Command: CtrlMACTableSet, Unicast: MACList{}, Multicast: MACList(macM1)}},
		{"mac addr", cat([]byte{1, 1}, macA), ctrlLim, CtrlCommand{
			Class: CtrlMAC, Command: CtrlMACAddrSet, MAC: MAC(macA)}},
		{"vlan add 4095", cat([]byte{2, 0}, le16(4095)), ctrlLim, CtrlCommand{
			Class: CtrlVLAN, Command: CtrlVLANAdd, VLAN: 4095}},
		{"vlan del 0", cat([]byte{2, 1}, le16(0)), ctrlLim, CtrlCommand{Class: CtrlVLAN, Command: CtrlVLANDel}},
		{"vlan big-endian", cat([]byte{2, 0}, be16(0x123)), legacyLim, CtrlCommand{
			Class: CtrlVLAN, Command: CtrlVLANAdd, VLAN: 0x123}},
		{"announce ack", []byte{3, 0}, ctrlLim, CtrlCommand{Class: CtrlAnnounce, Command: CtrlAnnounceAck}},
		{"mq pairs", cat([]byte{4, 0}, le16(4)), ctrlLim, CtrlCommand{
			Class: CtrlMQ, Command: CtrlMQVQPairsSet, Pairs: 4}},
		{"mq pairs big-endian", cat([]byte{4, 0}, be16(2)), legacyLim, CtrlCommand{
			Class: CtrlMQ, Command: CtrlMQVQPairsSet, Pairs: 2}},
		{"rss", cat([]byte{4, 1}, le32(uint32(HashTCPv4|HashTCPv6)), le16(3), le16(3), le16s(0, 1, 2, 3),
			le16(4), []byte{40}, key40), ctrlLim, CtrlCommand{
			Class: CtrlMQ, Command: CtrlMQRSSConfig, RSS: RSSConfig{
				HashTypes: HashTCPv4 | HashTCPv6, UnclassifiedQueue: 3, IndirectionTable: []uint16{0, 1, 2, 3},
				MaxTxVQ: 4, Key: key40}}},
		{"rss one entry no key", cat([]byte{4, 1}, le32(0), le16(0), le16(0), le16s(1), le16(1), []byte{0}),
			ctrlLim, CtrlCommand{Class: CtrlMQ, Command: CtrlMQRSSConfig, RSS: RSSConfig{
				IndirectionTable: []uint16{1}, MaxTxVQ: 1, Key: []byte{}}}},
		{"rss largest table", cat([]byte{4, 1}, le32(0), le16(127), le16(0), make([]byte, 256), le16(4), []byte{0}),
			ctrlLim, CtrlCommand{Class: CtrlMQ, Command: CtrlMQRSSConfig, RSS: RSSConfig{
				IndirectionTable: make([]uint16, 128), MaxTxVQ: 4, Key: []byte{}}}},
		{"hash", cat([]byte{4, 2}, le32(uint32(HashIPv4)), le16s(0, 0, 0, 0), []byte{40}, key40), ctrlLim,
			CtrlCommand{Class: CtrlMQ, Command: CtrlMQHashConfig, Hash: HashConfig{HashTypes: HashIPv4, Key: key40}}},
		{"hash from linux before 6.5", cat([]byte{4, 2}, le32(0), le16s(0, 0, 0, 4), []byte{0}), ctrlLim,
			CtrlCommand{Class: CtrlMQ, Command: CtrlMQHashConfig, Hash: HashConfig{
				Reserved: [4]uint16{0, 0, 0, 4}, Key: []byte{}}}},
		{"offloads", cat([]byte{5, 0}, le64(uint64(NetFGuestCsum|NetFGuestTSO4|NetFGuestTSO6|NetFGuestUSO4))),
			ctrlLim, CtrlCommand{Class: CtrlGuestOffloads, Command: CtrlGuestOffloadsSet,
				Offloads: NetFGuestCsum | NetFGuestTSO4 | NetFGuestTSO6 | NetFGuestUSO4}},
		{"offloads none", cat([]byte{5, 0}, le64(0)), ctrlLim, CtrlCommand{
			Class: CtrlGuestOffloads, Command: CtrlGuestOffloadsSet}},
		{"offloads big-endian", cat([]byte{5, 0}, be64(uint64(NetFGuestCsum|NetFGuestTSO4))), legacyLim,
			CtrlCommand{Class: CtrlGuestOffloads, Command: CtrlGuestOffloadsSet, Offloads: NetFGuestCsum | NetFGuestTSO4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCtrl(tt.b, tt.lim)
			if err != nil {
				t.Fatalf("ParseCtrl: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			if re := got.Append(nil, tt.lim.Endian); !bytes.Equal(re, tt.b) {
				t.Errorf("Append\n got % x\nwant % x", re, tt.b)
			}
		})
	}
}

func TestParseCtrlErrors(t *testing.T) {
	noFeatures := ctrlLim
	noFeatures.Features = FVersion1 | NetFCtrlVQ
	offloadsOnly := ctrlLim
	offloadsOnly.Features = NetFCtrlVQ | NetFCtrlGuestOffloads | NetFGuestTSO4
	noPairs := ctrlLim
	noPairs.MaxPairs = 0
	hugePairs := ctrlLim
	hugePairs.MaxPairs = 0xffff
	rss := func(mask, unclassified uint16, table []byte, maxTx uint16, key []byte) []byte {
		return cat([]byte{4, 1}, le32(uint32(HashIPv4)), le16(mask), le16(unclassified), table,
			le16(maxTx), []byte{byte(len(key))}, key)
	}
	tests := []struct {
		name string
		b    []byte
		lim  CtrlLimits
		is   error
		msg  string
	}{
		{"empty", nil, ctrlLim, ErrCtrlLength, "control command of 0 bytes, want at least 2: bad length"},
		{"one byte", []byte{0}, ctrlLim, ErrCtrlLength, "control command of 1 bytes, want at least 2: bad length"},
		{"unknown class", []byte{6, 0, 1}, ctrlLim, ErrCtrlUnknown, "control class(6) command(0): unknown command"},
		{"class 255", []byte{255, 255}, ctrlLim, ErrCtrlUnknown, "control class(255) command(255): unknown command"},
		{"unknown rx command", []byte{0, 6, 1}, ctrlLim, ErrCtrlUnknown, "control RX command(6): unknown command"},
		{"unknown mac command", []byte{1, 2}, ctrlLim, ErrCtrlUnknown, "control MAC command(2): unknown command"},
		{"unknown vlan command", []byte{2, 2, 0, 0}, ctrlLim, ErrCtrlUnknown, "control VLAN command(2): unknown command"},
		{"unknown announce command", []byte{3, 1}, ctrlLim, ErrCtrlUnknown, "control ANNOUNCE command(1): unknown command"},
		{"unknown mq command", []byte{4, 3}, ctrlLim, ErrCtrlUnknown, "control MQ command(3): unknown command"},
		{"unknown offloads command", []byte{5, 1}, ctrlLim, ErrCtrlUnknown,
			"control GUEST_OFFLOADS command(1): unknown command"},

		{"promisc without ctrl_rx", []byte{0, 0, 1}, noFeatures, ErrCtrlNotNegotiated,
			"control RX PROMISC: needs NET_F_CTRL_RX: feature not negotiated"},
		{"alluni without ctrl_rx_extra", []byte{0, 2, 1}, noFeatures, ErrCtrlNotNegotiated,
			"control RX ALLUNI: needs NET_F_CTRL_RX_EXTRA: feature not negotiated"},
		{"mac table without ctrl_rx", cat([]byte{1, 0}, le32(0), le32(0)), noFeatures, ErrCtrlNotNegotiated,
			"control MAC TABLE_SET: needs NET_F_CTRL_RX: feature not negotiated"},
		{"mac addr without ctrl_mac_addr", cat([]byte{1, 1}, macA), noFeatures, ErrCtrlNotNegotiated,
			"control MAC ADDR_SET: needs NET_F_CTRL_MAC_ADDR: feature not negotiated"},
		{"vlan without ctrl_vlan", cat([]byte{2, 0}, le16(1)), noFeatures, ErrCtrlNotNegotiated,
			"control VLAN ADD: needs NET_F_CTRL_VLAN: feature not negotiated"},
		{"announce without guest_announce", []byte{3, 0}, noFeatures, ErrCtrlNotNegotiated,
			"control ANNOUNCE ACK: needs NET_F_GUEST_ANNOUNCE: feature not negotiated"},
		{"pairs without mq", cat([]byte{4, 0}, le16(1)), noFeatures, ErrCtrlNotNegotiated,
			"control MQ VQ_PAIRS_SET: needs NET_F_MQ: feature not negotiated"},
		{"rss without rss", []byte{4, 1}, noFeatures, ErrCtrlNotNegotiated,
			"control MQ RSS_CONFIG: needs NET_F_RSS: feature not negotiated"},
		{"hash without hash_report", []byte{4, 2}, noFeatures, ErrCtrlNotNegotiated,
			"control MQ HASH_CONFIG: needs NET_F_HASH_REPORT: feature not negotiated"},
		{"offloads without ctrl_guest_offloads", cat([]byte{5, 0}, le64(0)), noFeatures, ErrCtrlNotNegotiated,
			"control GUEST_OFFLOADS SET: needs NET_F_CTRL_GUEST_OFFLOADS: feature not negotiated"},

		{"rx without data", []byte{0, 0}, ctrlLim, ErrCtrlLength,
			"control RX PROMISC: 0 bytes of data, want 1: bad length"},
		{"rx with 2 bytes", []byte{0, 1, 1, 0}, ctrlLim, ErrCtrlLength,
			"control RX ALLMULTI: 2 bytes of data, want 1: bad length"},
		{"rx value 2", []byte{0, 5, 2}, ctrlLim, ErrCtrlValue,
			"control RX NOBCAST: argument 2, want 0 or 1: value out of range"},

		{"mac table without count", []byte{1, 0, 0, 0, 0}, ctrlLim, ErrCtrlLength,
			"control MAC TABLE_SET: unicast table: 3 bytes left for its 4-byte entry count: bad length"},
		{"mac table short unicast", cat([]byte{1, 0}, le32(2), macA, le32(0)), ctrlLim, ErrCtrlLength,
			"control MAC TABLE_SET: unicast table of 2 entries: 10 bytes left, want 12: bad length"},
		{"mac table huge count", cat([]byte{1, 0}, le32(0xffffffff), macA), ctrlLim, ErrCtrlLength,
			"control MAC TABLE_SET: unicast table of 4294967295 entries: 6 bytes left, want 25769803770: bad length"},
		{"mac table without multicast", cat([]byte{1, 0}, le32(1), macA), ctrlLim, ErrCtrlLength,
			"control MAC TABLE_SET: multicast table: 0 bytes left for its 4-byte entry count: bad length"},
		{"mac table short multicast", cat([]byte{1, 0}, le32(0), le32(1), macM1[:5]), ctrlLim, ErrCtrlLength,
			"control MAC TABLE_SET: multicast table of 1 entries: 5 bytes left, want 6: bad length"},
		{"mac table trailing bytes", cat([]byte{1, 0}, le32(0), le32(1), macM1, []byte{0}), ctrlLim, ErrCtrlLength,
			"control MAC TABLE_SET: 1 bytes after the multicast table: bad length"},
		{"mac table count in the wrong order", cat([]byte{1, 0}, le32(0), be32(1), macM1), ctrlLim, ErrCtrlLength,
			"control MAC TABLE_SET: multicast table of 16777216 entries: 6 bytes left, want 100663296: bad length"},
		{"mac addr short", cat([]byte{1, 1}, macA[:5]), ctrlLim, ErrCtrlLength,
			"control MAC ADDR_SET: 5 bytes of data, want 6: bad length"},
		{"mac addr multicast", cat([]byte{1, 1}, macM1), ctrlLim, ErrCtrlValue,
			"control MAC ADDR_SET: mac 01:00:5e:00:00:01 is not a unicast station address: value out of range"},
		{"mac addr zero", cat([]byte{1, 1}, make([]byte, 6)), ctrlLim, ErrCtrlValue,
			"control MAC ADDR_SET: mac 00:00:00:00:00:00 is not a unicast station address: value out of range"},

		{"vlan 4096", cat([]byte{2, 0}, le16(4096)), ctrlLim, ErrCtrlValue,
			"control VLAN ADD: vlan id 4096, want below 4096: value out of range"},
		{"vlan 0xffff", cat([]byte{2, 1}, le16(0xffff)), ctrlLim, ErrCtrlValue,
			"control VLAN DEL: vlan id 65535, want below 4096: value out of range"},
		{"vlan little-endian to a big-endian guest", cat([]byte{2, 0}, le16(16)), legacyLim, ErrCtrlValue,
			"control VLAN ADD: vlan id 4096, want below 4096: value out of range"},
		{"vlan 3 bytes", []byte{2, 0, 1, 0, 0}, ctrlLim, ErrCtrlLength,
			"control VLAN ADD: 3 bytes of data, want 2: bad length"},
		{"announce with data", []byte{3, 0, 0}, ctrlLim, ErrCtrlLength,
			"control ANNOUNCE ACK: 1 bytes of data, want 0: bad length"},

		{"pairs 0", cat([]byte{4, 0}, le16(0)), ctrlLim, ErrCtrlValue,
			"control MQ VQ_PAIRS_SET: virtqueue_pairs 0, want 1 to 4: value out of range"},
		{"pairs above max", cat([]byte{4, 0}, le16(5)), ctrlLim, ErrCtrlValue,
			"control MQ VQ_PAIRS_SET: virtqueue_pairs 5, want 1 to 4: value out of range"},
		{"pairs with zero limit", cat([]byte{4, 0}, le16(2)), noPairs, ErrCtrlValue,
			"control MQ VQ_PAIRS_SET: virtqueue_pairs 2, want 1 to 1: value out of range"},
		{"pairs above the spec maximum", cat([]byte{4, 0}, le16(0x8001)), hugePairs, ErrCtrlValue,
			"control MQ VQ_PAIRS_SET: virtqueue_pairs 32769, want 1 to 32768: value out of range"},
		{"pairs 1 byte", []byte{4, 0, 1}, ctrlLim, ErrCtrlLength,
			"control MQ VQ_PAIRS_SET: 1 bytes of data, want 2: bad length"},

		{"rss short head", []byte{4, 1, 0, 0, 0, 0, 0, 0, 0}, ctrlLim, ErrCtrlLength,
			"control MQ RSS_CONFIG: 7 bytes of data, want at least 8: bad length"},
		{"rss 3 entries", rss(2, 0, le16s(0, 0, 0), 1, nil), ctrlLim, ErrCtrlValue,
			"control MQ RSS_CONFIG: indirection_table_mask 0x2: 3 entries is not a power of two: value out of range"},
		{"rss mask 0xffff", rss(0xffff, 0, nil, 1, nil), ctrlLim, ErrCtrlValue,
			"control MQ RSS_CONFIG: indirection table of 65536 entries, device maximum 128: value out of range"},
		{"rss table above max", rss(255, 0, make([]byte, 512), 1, nil), ctrlLim, ErrCtrlValue,
			"control MQ RSS_CONFIG: indirection table of 256 entries, device maximum 128: value out of range"},
		{"rss truncated table", cat([]byte{4, 1}, le32(0), le16(3), le16(0), le16s(0, 0, 0)), ctrlLim, ErrCtrlLength,
			"control MQ RSS_CONFIG: indirection table of 4 entries, max_tx_vq and hash_key_length: 6 bytes left, want 11: bad length"},
		{"rss key shorter than its length", cat(rss(0, 0, le16s(0), 1, key40)[:20]), ctrlLim, ErrCtrlLength,
			"control MQ RSS_CONFIG: hash_key_length 40, 5 key bytes follow: bad length"},
		{"rss key longer than its length", cat(rss(0, 0, le16s(0), 1, nil), []byte{1}), ctrlLim, ErrCtrlLength,
			"control MQ RSS_CONFIG: hash_key_length 0, 1 key bytes follow: bad length"},
		{"rss key above max", rss(0, 0, le16s(0), 1, make([]byte, 41)), ctrlLim, ErrCtrlValue,
			"control MQ RSS_CONFIG: hash key of 41 bytes, device maximum 40: value out of range"},
		{"rss unsupported hash types", cat([]byte{4, 1}, le32(uint32(HashIPv4|HashUDPv4|HashUDPEx)), le16(0),
			le16(0), le16s(0), le16(1), []byte{0}), ctrlLim, ErrCtrlValue,
			"control MQ RSS_CONFIG: hash types UDPv4|UDP_EX not supported by the device: value out of range"},
		{"rss unclassified queue", rss(0, 4, le16s(0), 1, nil), ctrlLim, ErrCtrlValue,
			"control MQ RSS_CONFIG: unclassified_queue 4, want below 4 queue pairs: value out of range"},
		{"rss table entry", rss(3, 0, le16s(0, 1, 9, 2), 1, nil), ctrlLim, ErrCtrlValue,
			"control MQ RSS_CONFIG: indirection_table[2] = 9, want below 4 queue pairs: value out of range"},
		{"rss max_tx_vq 0", rss(0, 0, le16s(0), 0, nil), ctrlLim, ErrCtrlValue,
			"control MQ RSS_CONFIG: max_tx_vq 0, want 1 to 4: value out of range"},
		{"rss max_tx_vq above pairs", rss(0, 0, le16s(0), 5, nil), ctrlLim, ErrCtrlValue,
			"control MQ RSS_CONFIG: max_tx_vq 5, want 1 to 4: value out of range"},

		{"hash short", cat([]byte{4, 2}, le32(0), le16s(0, 0, 0, 0)), ctrlLim, ErrCtrlLength,
			"control MQ HASH_CONFIG: 12 bytes of data, want at least 13: bad length"},
		{"hash key mismatch", cat([]byte{4, 2}, le32(0), le16s(0, 0, 0, 0), []byte{2, 0}), ctrlLim, ErrCtrlLength,
			"control MQ HASH_CONFIG: hash_key_length 2, 1 key bytes follow: bad length"},
		{"hash key above max", cat([]byte{4, 2}, le32(0), le16s(0, 0, 0, 0), []byte{41}, make([]byte, 41)), ctrlLim,
			ErrCtrlValue, "control MQ HASH_CONFIG: hash key of 41 bytes, device maximum 40: value out of range"},
		{"hash unsupported types", cat([]byte{4, 2}, le32(1<<20), le16s(0, 0, 0, 0), []byte{0}), ctrlLim,
			ErrCtrlValue, "control MQ HASH_CONFIG: hash types 0x100000 not supported by the device: value out of range"},

		{"offloads 7 bytes", cat([]byte{5, 0}, le64(0)[:7]), ctrlLim, ErrCtrlLength,
			"control GUEST_OFFLOADS SET: 7 bytes of data, want 8: bad length"},
		{"offloads with a device bit", cat([]byte{5, 0}, le64(uint64(NetFGuestCsum|NetFCsum|NetFMQ))), ctrlLim,
			ErrCtrlValue, "control GUEST_OFFLOADS SET: offloads NET_F_CSUM|NET_F_GUEST_CSUM|NET_F_MQ: " +
				"NET_F_CSUM|NET_F_MQ are not guest offloads: value out of range"},
		{"offloads not negotiated", cat([]byte{5, 0}, le64(uint64(NetFGuestCsum|NetFGuestUSO6))), ctrlLim,
			ErrCtrlNotNegotiated, "control GUEST_OFFLOADS SET: offloads NET_F_GUEST_CSUM|NET_F_GUEST_USO6: " +
				"NET_F_GUEST_USO6: feature not negotiated"},
		{"offloads tso without csum", cat([]byte{5, 0}, le64(uint64(NetFGuestTSO4))), offloadsOnly, ErrCtrlValue,
			"control GUEST_OFFLOADS SET: offloads NET_F_GUEST_TSO4: " +
				"feature NET_F_GUEST_TSO4 requires NET_F_GUEST_CSUM: value out of range"},
		{"offloads ecn without tso", cat([]byte{5, 0}, le64(uint64(NetFGuestCsum|NetFGuestECN))), ctrlLim, ErrCtrlValue,
			"control GUEST_OFFLOADS SET: offloads NET_F_GUEST_CSUM|NET_F_GUEST_ECN: " +
				"feature NET_F_GUEST_ECN requires NET_F_GUEST_TSO4 or NET_F_GUEST_TSO6: value out of range"},
		{"offloads little-endian to a big-endian guest", cat([]byte{5, 0}, le64(uint64(NetFGuestCsum))), legacyLim,
			ErrCtrlValue, "control GUEST_OFFLOADS SET: offloads NET_F_HASH_REPORT: NET_F_HASH_REPORT are not guest offloads: value out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCtrl(tt.b, tt.lim)
			if !errors.Is(err, tt.is) {
				t.Fatalf("got %v, want errors.Is %v", err, tt.is)
			}
			if err.Error() != tt.msg {
				t.Errorf("got  %q\nwant %q", err.Error(), tt.msg)
			}
			var want CtrlCommand
			if len(tt.b) >= 2 {
				want = CtrlCommand{Class: CtrlClass(tt.b[0]), Command: tt.b[1]}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("command on error: got %+v, want %+v", got, want)
			}
		})
	}
}

func TestParseCtrlDependencyError(t *testing.T) {
	lim := ctrlLim
	lim.Features = NetFCtrlVQ | NetFCtrlGuestOffloads | NetFGuestTSO6
	_, err := ParseCtrl(cat([]byte{5, 0}, le64(uint64(NetFGuestTSO6))), lim)
	var de *DependencyError
	if !errors.As(err, &de) || de.Feature != NetFGuestTSO6 || de.Requires != NetFGuestCsum {
		t.Errorf("got %v, want a *DependencyError for NET_F_GUEST_TSO6 requiring NET_F_GUEST_CSUM", err)
	}
}

func TestParseCtrlAliasesInput(t *testing.T) {
	b := cat([]byte{4, 2}, le32(0), le16s(0, 0, 0, 0), []byte{2, 0xaa, 0xbb})
	c, err := ParseCtrl(b, ctrlLim)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] = 0xcc
	if c.Hash.Key[1] != 0xcc {
		t.Errorf("Key is a copy, want it to alias the parsed buffer")
	}
}

func TestCtrlNames(t *testing.T) {
	tests := []struct {
		class CtrlClass
		cmd   uint8
		want  string
	}{
		{CtrlRX, CtrlRXPromisc, "RX PROMISC"},
		{CtrlRX, CtrlRXAllMulti, "RX ALLMULTI"},
		{CtrlRX, CtrlRXAllUni, "RX ALLUNI"},
		{CtrlRX, CtrlRXNoMulti, "RX NOMULTI"},
		{CtrlRX, CtrlRXNoUni, "RX NOUNI"},
		{CtrlRX, CtrlRXNoBcast, "RX NOBCAST"},
		{CtrlMAC, CtrlMACTableSet, "MAC TABLE_SET"},
		{CtrlMAC, CtrlMACAddrSet, "MAC ADDR_SET"},
		{CtrlVLAN, CtrlVLANAdd, "VLAN ADD"},
		{CtrlVLAN, CtrlVLANDel, "VLAN DEL"},
		{CtrlAnnounce, CtrlAnnounceAck, "ANNOUNCE ACK"},
		{CtrlMQ, CtrlMQVQPairsSet, "MQ VQ_PAIRS_SET"},
		{CtrlMQ, CtrlMQRSSConfig, "MQ RSS_CONFIG"},
		{CtrlMQ, CtrlMQHashConfig, "MQ HASH_CONFIG"},
		{CtrlGuestOffloads, CtrlGuestOffloadsSet, "GUEST_OFFLOADS SET"},
		{CtrlMQ, 9, "MQ command(9)"},
		{7, 0, "class(7) command(0)"},
	}
	for _, tt := range tests {
		c := CtrlCommand{Class: tt.class, Command: tt.cmd}
		if got := c.Name(); got != tt.want {
			t.Errorf("Name of %d/%d = %q, want %q", tt.class, tt.cmd, got, tt.want)
		}
		if _, known := ctrlFeature(tt.class, tt.cmd); known == strings.Contains(tt.want, "(") {
			t.Errorf("%s: ctrlFeature known = %v", tt.want, known)
		}
	}
}

func TestCtrlAppendUnknown(t *testing.T) {
	c := CtrlCommand{Class: 9, Command: 1, On: true, VLAN: 5}
	if got, want := c.Append([]byte{0xee}, LittleEndian), []byte{0xee, 9, 1}; !bytes.Equal(got, want) {
		t.Errorf("got % x, want % x", got, want)
	}
}

func TestCtrlAckValues(t *testing.T) {
	if CtrlOK != 0 || CtrlErr != 1 {
		t.Errorf("CtrlOK, CtrlErr = %d, %d; want 0, 1 (VIRTIO_NET_OK, VIRTIO_NET_ERR)", CtrlOK, CtrlErr)
	}
}

// checkCtrl asserts what every command ParseCtrl accepts must satisfy.
func checkCtrl(t *testing.T, b []byte, lim CtrlLimits, c CtrlCommand) {
	t.Helper()
	need, known := ctrlFeature(c.Class, c.Command)
	if !known || !lim.Features.Has(need) {
		t.Fatalf("accepted %s (known %v) without %s in %s", c.Name(), known, need, lim.Features)
	}
	pairs := max(1, min(int(lim.MaxPairs), 0x8000))
	data := len(b) - 2
	switch c.Class {
	case CtrlRX:
		if data != 1 || b[2] > 1 {
			t.Fatalf("accepted RX data % x", b[2:])
		}
	case CtrlMAC:
		if c.Command == CtrlMACAddrSet {
			if data != 6 || c.MAC[0]&1 != 0 || c.MAC == (MAC{}) {
				t.Fatalf("accepted ADDR_SET %s from %d bytes", c.MAC, data)
			}
			break
		}
		if len(c.Unicast)%6 != 0 || len(c.Multicast)%6 != 0 || 4+len(c.Unicast)+4+len(c.Multicast) != data {
			t.Fatalf("accepted tables of %d and %d bytes from %d bytes", len(c.Unicast), len(c.Multicast), data)
		}
		if n := lim.Endian.uint32(b[2:]); int(n) != c.Unicast.Len() {
			t.Fatalf("unicast count %d, %d entries", n, c.Unicast.Len())
		}
		for i := range c.Multicast.Len() {
			if got, want := c.Multicast.At(i), MAC(c.Multicast[6*i:]); got != want {
				t.Fatalf("Multicast.At(%d) = %s, want %s", i, got, want)
			}
		}
	case CtrlVLAN:
		if c.VLAN >= 4096 {
			t.Fatalf("accepted vlan %d", c.VLAN)
		}
	case CtrlAnnounce:
		if data != 0 {
			t.Fatalf("accepted ANNOUNCE with %d bytes", data)
		}
	case CtrlMQ:
		switch c.Command {
		case CtrlMQVQPairsSet:
			if c.Pairs < 1 || int(c.Pairs) > pairs {
				t.Fatalf("accepted %d pairs of %d", c.Pairs, pairs)
			}
		case CtrlMQRSSConfig:
			r := c.RSS
			n := len(r.IndirectionTable)
			if n == 0 || n&(n-1) != 0 || n > int(lim.MaxIndirectionLen) {
				t.Fatalf("accepted a table of %d entries, max %d", n, lim.MaxIndirectionLen)
			}
			if mask := binary.LittleEndian.Uint16(b[6:]); int(mask) != n-1 {
				t.Fatalf("mask %#x for %d entries", mask, n)
			}
			for i, q := range r.IndirectionTable {
				if int(q) >= pairs {
					t.Fatalf("accepted indirection_table[%d] = %d of %d pairs", i, q, pairs)
				}
			}
			if int(r.UnclassifiedQueue) >= pairs || r.MaxTxVQ < 1 || int(r.MaxTxVQ) > pairs {
				t.Fatalf("accepted unclassified %d, max_tx_vq %d of %d pairs", r.UnclassifiedQueue, r.MaxTxVQ, pairs)
			}
			if len(r.Key) > int(lim.MaxKeySize) || r.HashTypes&^lim.HashTypes != 0 {
				t.Fatalf("accepted key of %d bytes (max %d), hash types %s (supported %s)",
					len(r.Key), lim.MaxKeySize, r.HashTypes, lim.HashTypes)
			}
		case CtrlMQHashConfig:
			h := c.Hash
			if len(h.Key) > int(lim.MaxKeySize) || h.HashTypes&^lim.HashTypes != 0 {
				t.Fatalf("accepted key of %d bytes (max %d), hash types %s (supported %s)",
					len(h.Key), lim.MaxKeySize, h.HashTypes, lim.HashTypes)
			}
		}
	case CtrlGuestOffloads:
		if c.Offloads&^GuestOffloads != 0 || c.Offloads&^lim.Features != 0 {
			t.Fatalf("accepted offloads %s with %s negotiated", c.Offloads, lim.Features)
		}
		if err := checkDependencies(c.Offloads, GuestOffloads); err != nil {
			t.Fatalf("accepted offloads %s: %v", c.Offloads, err)
		}
	}
	if re := c.Append(nil, lim.Endian); !bytes.Equal(re, b) {
		t.Fatalf("Append of %s\n got % x\nwant % x", c.Name(), re, b)
	}
}

func FuzzCtrl(f *testing.F) {
	all := uint64(ctrlAll)
	f.Add([]byte{0, 0, 1}, all, uint16(4), uint8(40), uint16(128), uint32(0x1ff), false)
	f.Add(cat([]byte{1, 0}, le32(1), macA, le32(1), macM1), all, uint16(4), uint8(40), uint16(128), uint32(0x1ff), false)
	f.Add(cat([]byte{1, 0}, be32(0), be32(2), macM1, macM2), uint64(legacyLim.Features), uint16(1), uint8(0), uint16(0), uint32(0), true)
	f.Add(cat([]byte{2, 0}, le16(100)), all, uint16(4), uint8(40), uint16(128), uint32(0x1ff), false)
	f.Add(cat([]byte{4, 0}, le16(3)), all, uint16(4), uint8(40), uint16(128), uint32(0x1ff), false)
	f.Add(cat([]byte{4, 1}, le32(0x12), le16(3), le16(0), le16s(0, 1, 2, 3), le16(4), []byte{40}, key40),
		all, uint16(4), uint8(40), uint16(128), uint32(0x1ff), false)
	f.Add(cat([]byte{4, 2}, le32(0x3), le16s(0, 0, 0, 4), []byte{40}, key40),
		all, uint16(4), uint8(40), uint16(128), uint32(0x1ff), false)
	f.Add(cat([]byte{5, 0}, le64(uint64(NetFGuestCsum|NetFGuestTSO4))), all, uint16(1), uint8(0), uint16(0), uint32(0), false)
	f.Fuzz(func(t *testing.T, b []byte, features uint64, maxPairs uint16, maxKey uint8, maxIndir uint16,
		hashTypes uint32, big bool) {
		lim := CtrlLimits{
			Features: Features(features), Endian: Endian(big), MaxPairs: maxPairs,
			MaxKeySize: maxKey, MaxIndirectionLen: maxIndir, HashTypes: HashTypes(hashTypes),
		}
		c, err := ParseCtrl(b, lim)
		if err != nil {
			if !errors.Is(err, ErrCtrlUnknown) && !errors.Is(err, ErrCtrlNotNegotiated) &&
				!errors.Is(err, ErrCtrlLength) && !errors.Is(err, ErrCtrlValue) {
				t.Fatalf("error %v matches none of the ParseCtrl errors", err)
			}
			if !strings.HasPrefix(err.Error(), "control ") {
				t.Fatalf("error %q does not name the command", err)
			}
			return
		}
		checkCtrl(t, b, lim, c)
	})
}

func TestMACList(t *testing.T) {
	tests := []struct {
		name string
		l    MACList
		want []MAC
	}{
		{"nil", nil, nil},
		{"one", MACList(macA), []MAC{MAC(macA)}},
		{"two", MACList(cat(macM1, macM2)), []MAC{MAC(macM1), MAC(macM2)}},
		{"partial tail", MACList(cat(macM1, macM2[:3])), []MAC{MAC(macM1)}},
	}
	for _, tt := range tests {
		if got := tt.l.Len(); got != len(tt.want) {
			t.Errorf("%s: Len = %d, want %d", tt.name, got, len(tt.want))
			continue
		}
		for i, want := range tt.want {
			if got := tt.l.At(i); got != want {
				t.Errorf("%s: At(%d) = %s, want %s", tt.name, i, got, want)
			}
		}
	}
}
