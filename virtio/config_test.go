package virtio

import (
	"bytes"
	"errors"
	"testing"
)

var (
	testConfig = NetConfig{
		MAC:                          MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56},
		Status:                       LinkUp | Announce,
		MaxVirtqueuePairs:            0x0102,
		MTU:                          0x05dc,
		Speed:                        0x00002710,
		Duplex:                       DuplexFull,
		RSSMaxKeySize:                40,
		RSSMaxIndirectionTableLength: 0x0080,
		SupportedHashTypes:           HashIPv4 | HashTCPv4 | HashIPv6 | HashTCPv6,
	}
	testConfigLE = []byte{
		0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // mac
		0x03, 0x00, // status
		0x02, 0x01, // max_virtqueue_pairs
		0xdc, 0x05, // mtu
		0x10, 0x27, 0x00, 0x00, // speed
		0x01,       // duplex
		40,         // rss_max_key_size
		0x80, 0x00, // rss_max_indirection_table_length
		0x1b, 0x00, 0x00, 0x00, // supported_hash_types
	}
	// A legacy big-endian guest sees the three __virtio16 fields swapped.
	testConfigBE = []byte{
		0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
		0x00, 0x03,
		0x01, 0x02,
		0x05, 0xdc,
		0x10, 0x27, 0x00, 0x00,
		0x01,
		40,
		0x80, 0x00,
		0x1b, 0x00, 0x00, 0x00,
	}
)

func TestNetConfigEncodeDecode(t *testing.T) {
	tests := []struct {
		e    Endian
		want []byte
	}{
		{LittleEndian, testConfigLE},
		{BigEndian, testConfigBE},
	}
	for _, tt := range tests {
		t.Run(tt.e.String(), func(t *testing.T) {
			b := bytes.Repeat([]byte{0xaa}, NetConfigMaxLen+2)
			if err := testConfig.Encode(b, tt.e); err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if !bytes.Equal(b[:NetConfigMaxLen], tt.want) {
				t.Errorf("Encode\n got % x\nwant % x", b[:NetConfigMaxLen], tt.want)
			}
			if b[NetConfigMaxLen] != 0xaa || b[NetConfigMaxLen+1] != 0xaa {
				t.Errorf("Encode wrote past the config: % x", b[NetConfigMaxLen:])
			}
			var c NetConfig
			if err := c.Decode(tt.want, tt.e); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if c != testConfig {
				t.Errorf("Decode\n got %+v\nwant %+v", c, testConfig)
			}
		})
	}
}

func TestNetConfigShortBuffer(t *testing.T) {
	var c NetConfig
	b := make([]byte, NetConfigMaxLen-1)
	want := "net config of 24 bytes in a buffer of 23: buffer too short"
	for name, err := range map[string]error{
		"Encode": c.Encode(b, LittleEndian),
		"Decode": c.Decode(b, LittleEndian),
	} {
		if !errors.Is(err, ErrShortBuffer) || err.Error() != want {
			t.Errorf("%s: got %v, want %q", name, err, want)
		}
	}
}

func TestNetConfigLen(t *testing.T) {
	tests := []struct {
		f    Features
		want int
	}{
		{0, 6},
		{NetFMAC, 6},
		{NetFStatus, 8},
		{NetFMAC | NetFStatus | NetFCtrlVQ, 8},
		{NetFCtrlVQ | NetFMQ, 10},
		{NetFMTU, 12},
		{NetFStatus | NetFMTU, 12},
		{NetFSpeedDuplex, 17},
		{NetFMQ | NetFSpeedDuplex, 17},
		{NetFHashReport, 24},
		{NetFRSS, 24},
		{NetFRSS | NetFMTU | NetFStatus, 24},
	}
	for _, tt := range tests {
		if got := NetConfigLen(tt.f); got != tt.want {
			t.Errorf("NetConfigLen(%s) = %d, want %d", tt.f, got, tt.want)
		}
	}
}

func TestNetConfigReadWindow(t *testing.T) {
	tests := []struct {
		name string
		off  int
		n    int
		f    Features
		e    Endian
		want []byte // nil: an error
		msg  string
	}{
		{"whole, all features", 0, 24, NetFRSS, LittleEndian, testConfigLE, ""},
		{"mac only", 0, 6, NetFMAC, LittleEndian, testConfigLE[:6], ""},
		{"status", 6, 2, NetFStatus, LittleEndian, []byte{0x03, 0x00}, ""},
		{"status big-endian", 6, 2, NetFStatus, BigEndian, []byte{0x00, 0x03}, ""},
		{"mtu", 10, 2, NetFMTU, LittleEndian, []byte{0xdc, 0x05}, ""},
		{"one byte of max pairs", 9, 1, NetFMQ, LittleEndian, []byte{0x01}, ""},
		{"empty at the end", 12, 0, NetFMTU, LittleEndian, []byte{}, ""},
		{"hash types", 20, 4, NetFHashReport, LittleEndian, []byte{0x1b, 0, 0, 0}, ""},
		{"past the mac", 0, 8, NetFMAC, LittleEndian, nil,
			"read 8 bytes at offset 0 of a 6-byte net config: outside the net config space"},
		{"mtu without the feature", 10, 2, NetFStatus, LittleEndian, nil,
			"read 2 bytes at offset 10 of a 8-byte net config: outside the net config space"},
		{"negative offset", -1, 1, NetFRSS, LittleEndian, nil,
			"read 1 bytes at offset -1 of a 24-byte net config: outside the net config space"},
		{"offset past the end", 25, 0, NetFRSS, LittleEndian, nil,
			"read 0 bytes at offset 25 of a 24-byte net config: outside the net config space"},
		{"crosses the end", 20, 8, NetFRSS, LittleEndian, nil,
			"read 8 bytes at offset 20 of a 24-byte net config: outside the net config space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := make([]byte, tt.n)
			err := testConfig.ReadWindow(dst, tt.off, tt.f, tt.e)
			if tt.want == nil {
				if !errors.Is(err, ErrConfigWindow) || err.Error() != tt.msg {
					t.Fatalf("got %v, want %q", err, tt.msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadWindow: %v", err)
			}
			if !bytes.Equal(dst, tt.want) {
				t.Errorf("got % x, want % x", dst, tt.want)
			}
		})
	}
}

func TestNetConfigValidate(t *testing.T) {
	all := NetFMAC | NetFStatus | NetFCtrlVQ | NetFMQ | NetFMTU | NetFSpeedDuplex | NetFRSS | NetFHashReport
	if err := testConfig.Validate(all); err != nil {
		t.Fatalf("Validate(testConfig) = %v, want nil", err)
	}
	tests := []struct {
		name    string
		offered Features
		change  func(*NetConfig)
		msg     string // "" when valid
	}{
		{"zero mac", NetFMAC, func(c *NetConfig) { c.MAC = MAC{} },
			"mac 00:00:00:00:00:00 is not a unicast station address: invalid net config"},
		{"multicast mac", NetFMAC, func(c *NetConfig) { c.MAC[0] = 0x01 },
			"mac 01:54:00:12:34:56 is not a unicast station address: invalid net config"},
		{"zero mac not offered", NetFStatus, func(c *NetConfig) { c.MAC = MAC{} }, ""},
		{"unknown status", NetFStatus, func(c *NetConfig) { c.Status = LinkUp | 0x8 },
			"status LINK_UP|0x8 has unknown bits 0x8: invalid net config"},
		{"zero pairs with mq", NetFCtrlVQ | NetFMQ, func(c *NetConfig) { c.MaxVirtqueuePairs = 0 },
			"max_virtqueue_pairs 0, want 1 to 0x8000: invalid net config"},
		{"too many pairs with rss", NetFCtrlVQ | NetFRSS, func(c *NetConfig) { c.MaxVirtqueuePairs = 0x8001 },
			"max_virtqueue_pairs 32769, want 1 to 0x8000: invalid net config"},
		{"most pairs", NetFCtrlVQ | NetFMQ, func(c *NetConfig) { c.MaxVirtqueuePairs = 0x8000 }, ""},
		{"zero pairs without mq", NetFStatus, func(c *NetConfig) { c.MaxVirtqueuePairs = 0 }, ""},
		{"small mtu", NetFMTU, func(c *NetConfig) { c.MTU = 67 },
			"mtu 67, want 68 to 65535: invalid net config"},
		{"smallest mtu", NetFMTU, func(c *NetConfig) { c.MTU = 68 }, ""},
		{"speed out of range", NetFSpeedDuplex, func(c *NetConfig) { c.Speed = 0x80000000 },
			"speed 0x80000000, want at most 0x7fffffff or 0xffffffff for unknown: invalid net config"},
		{"speed unknown", NetFSpeedDuplex, func(c *NetConfig) { c.Speed, c.Duplex = SpeedUnknown, DuplexUnknown }, ""},
		{"duplex 2", NetFSpeedDuplex, func(c *NetConfig) { c.Duplex = 2 },
			"duplex 0x2, want 0x0, 0x1 or 0xff: invalid net config"},
		{"small key with hash report", NetFCtrlVQ | NetFHashReport, func(c *NetConfig) { c.RSSMaxKeySize = 39 },
			"rss_max_key_size 39, want at least 40: invalid net config"},
		{"unknown hash types", NetFCtrlVQ | NetFRSS, func(c *NetConfig) { c.SupportedHashTypes = HashIPv4 | 1<<9 },
			"supported_hash_types IPv4|0x200 has unknown bits 0x200: invalid net config"},
		{"small indirection table", NetFCtrlVQ | NetFRSS, func(c *NetConfig) { c.RSSMaxIndirectionTableLength = 127 },
			"rss_max_indirection_table_length 127, want at least 128: invalid net config"},
		{"small indirection table without rss", NetFCtrlVQ | NetFHashReport,
			func(c *NetConfig) { c.RSSMaxIndirectionTableLength = 0 }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig
			tt.change(&c)
			err := c.Validate(tt.offered)
			if tt.msg == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrBadConfig) || err.Error() != tt.msg {
				t.Errorf("got %v, want %q", err, tt.msg)
			}
		})
	}
}

func TestNetConfigCtrlLimits(t *testing.T) {
	tests := []struct {
		acked Features
		e     Endian
		pairs uint16
	}{
		{NetFCtrlVQ, BigEndian, 1},
		{FVersion1 | NetFCtrlVQ | NetFMQ, LittleEndian, 0x0102},
		{FVersion1 | NetFCtrlVQ | NetFRSS, LittleEndian, 0x0102},
	}
	for _, tt := range tests {
		got := testConfig.CtrlLimits(tt.acked, tt.e)
		want := CtrlLimits{
			Features: tt.acked, Endian: tt.e, MaxPairs: tt.pairs,
			MaxKeySize: 40, MaxIndirectionLen: 128, HashTypes: testConfig.SupportedHashTypes,
		}
		if got != want {
			t.Errorf("CtrlLimits(%s, %s)\n got %+v\nwant %+v", tt.acked, tt.e, got, want)
		}
	}
}

func TestConfigStrings(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{NetStatus(0).String(), "0"},
		{LinkUp.String(), "LINK_UP"},
		{(LinkUp | Announce | 0x10).String(), "LINK_UP|ANNOUNCE|0x10"},
		{HashTypes(0).String(), "0"},
		{HashAll.String(), "IPv4|TCPv4|UDPv4|IPv6|TCPv6|UDPv6|IP_EX|TCP_EX|UDP_EX"},
		{(HashUDPv6 | 1<<12).String(), "UDPv6|0x1000"},
		{testConfig.MAC.String(), "52:54:00:12:34:56"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
