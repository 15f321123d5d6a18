package virtio_test

import (
	"errors"
	"net"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
)

// errText is the error's message, "" for nil.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestCheckMTU(t *testing.T) {
	for _, tt := range []struct {
		mtu  int
		want string
	}{
		{virtio.MinMTU, ""},
		{1500, ""},
		{65521, ""},
		{virtio.MaxMTU, ""},
		{67, "mtu 67, want 68 to 65535"},
		{0, "mtu 0, want 68 to 65535"},
		{-1, "mtu -1, want 68 to 65535"},
		{65536, "mtu 65536, want 68 to 65535"},
	} {
		if got := errText(virtio.CheckMTU(tt.mtu)); got != tt.want {
			t.Errorf("CheckMTU(%d) = %q, want %q", tt.mtu, got, tt.want)
		}
	}
}

func TestCheckUnicastMAC(t *testing.T) {
	for _, tt := range []struct {
		mac  net.HardwareAddr
		want string
	}{
		{net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, ""},
		{net.HardwareAddr{0x02, 0, 0, 0, 0, 1}, ""},
		{net.HardwareAddr{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff}, ""},
		{net.HardwareAddr{0, 0, 0, 0, 0, 0}, "mac 00:00:00:00:00:00 is not a unicast station address"},
		{net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1}, "mac 01:00:5e:00:00:01 is not a unicast station address"},
		{net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, "mac ff:ff:ff:ff:ff:ff is not a unicast station address"},
		{net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, "mac 33:33:00:00:00:01 is not a unicast station address"},
		{net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34}, "mac 52:54:00:12:34 has 5 bytes, want 6"},
		{net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x78, 0x9a}, "mac 52:54:00:12:34:56:78:9a has 8 bytes, want 6"},
		{nil, "mac  has 0 bytes, want 6"},
	} {
		if got := errText(virtio.CheckUnicastMAC(tt.mac)); got != tt.want {
			t.Errorf("CheckUnicastMAC(%v) = %q, want %q", tt.mac, got, tt.want)
		}
	}
}

func TestCheckHdrLen(t *testing.T) {
	for _, tt := range []struct {
		n    int
		want string
	}{
		{virtio.HdrLenLegacy, ""},
		{virtio.HdrLenV1, ""},
		{virtio.HdrLenHash, ""},
		{0, "net header of 0 bytes, want 10, 12 or 20: bad net header size"},
		{11, "net header of 11 bytes, want 10, 12 or 20: bad net header size"},
		{14, "net header of 14 bytes, want 10, 12 or 20: bad net header size"},
		{-1, "net header of -1 bytes, want 10, 12 or 20: bad net header size"},
	} {
		err := virtio.CheckHdrLen(tt.n)
		if got := errText(err); got != tt.want {
			t.Errorf("CheckHdrLen(%d) = %q, want %q", tt.n, got, tt.want)
		}
		if err != nil && !errors.Is(err, virtio.ErrHdrSize) {
			t.Errorf("CheckHdrLen(%d) = %v, want it to match ErrHdrSize", tt.n, err)
		}
	}
}

func TestCheckQueueSize(t *testing.T) {
	for _, tt := range []struct {
		size   uint32
		packed bool
		want   string
	}{
		{1, false, ""},
		{256, false, ""},
		{virtio.MaxQueueSize, false, ""},
		{0, false, "size 0 is not a power of two in [1, 32768]"},
		{100, false, "size 100 is not a power of two in [1, 32768]"},
		{65536, false, "size 65536 is not a power of two in [1, 32768]"},
		{1 << 31, false, "size 2147483648 is not a power of two in [1, 32768]"},
		{1, true, ""},
		{100, true, ""},
		{virtio.MaxQueueSize, true, ""},
		{0, true, "size 0 not in [1, 32768]"},
		{virtio.MaxQueueSize + 1, true, "size 32769 not in [1, 32768]"},
		{1 << 31, true, "size 2147483648 not in [1, 32768]"},
	} {
		if got := errText(virtio.CheckQueueSize(tt.size, tt.packed)); got != tt.want {
			t.Errorf("CheckQueueSize(%d, packed %t) = %q, want %q", tt.size, tt.packed, got, tt.want)
		}
	}
}

func TestRingAreas(t *testing.T) {
	for _, tt := range []struct {
		size             uint16
		packed, eventIdx bool
		want             [3]virtio.RingArea
	}{
		{256, false, false, [3]virtio.RingArea{{"descriptor table", 4096, 16}, {"avail ring", 516, 2}, {"used ring", 2052, 4}}},
		{256, false, true, [3]virtio.RingArea{{"descriptor table", 4096, 16}, {"avail ring", 518, 2}, {"used ring", 2054, 4}}},
		{1, false, true, [3]virtio.RingArea{{"descriptor table", 16, 16}, {"avail ring", 8, 2}, {"used ring", 14, 4}}},
		{100, true, false, [3]virtio.RingArea{{"descriptor ring", 1600, 16}, {"driver event suppression", 4, 4}, {"device event suppression", 4, 4}}},
		{100, true, true, [3]virtio.RingArea{{"descriptor ring", 1600, 16}, {"driver event suppression", 4, 4}, {"device event suppression", 4, 4}}},
		{32768, true, false, [3]virtio.RingArea{{"descriptor ring", 1 << 19, 16}, {"driver event suppression", 4, 4}, {"device event suppression", 4, 4}}},
	} {
		if got := virtio.RingAreas(tt.size, tt.packed, tt.eventIdx); got != tt.want {
			t.Errorf("RingAreas(%d, packed %t, event idx %t) = %+v, want %+v", tt.size, tt.packed, tt.eventIdx, got, tt.want)
		}
	}
}

func TestRingAreaCheckAlign(t *testing.T) {
	split := virtio.RingAreas(8, false, true)
	packed := virtio.RingAreas(8, true, true)
	for _, tt := range []struct {
		area virtio.RingArea
		gpa  uint64
		want string
	}{
		{split[0], 0x1000, ""},
		{split[0], 0x1008, "place descriptor table at guest 0x1008: not 16-byte aligned"},
		{split[1], 0x1002, ""},
		{split[1], 0x1001, "place avail ring at guest 0x1001: not 2-byte aligned"},
		{split[2], 0x1004, ""},
		{split[2], 0x1002, "place used ring at guest 0x1002: not 4-byte aligned"},
		{packed[0], 0x2010, ""},
		{packed[0], 0x2004, "place descriptor ring at guest 0x2004: not 16-byte aligned"},
		{packed[1], 0x2004, ""},
		{packed[1], 0x2002, "place driver event suppression at guest 0x2002: not 4-byte aligned"},
		{packed[2], 0, ""},
		{packed[2], 0x2006, "place device event suppression at guest 0x2006: not 4-byte aligned"},
	} {
		if got := errText(tt.area.CheckAlign(tt.gpa)); got != tt.want {
			t.Errorf("%s CheckAlign(%#x) = %q, want %q", tt.area.Name, tt.gpa, got, tt.want)
		}
	}
}
