package main

import (
	"fmt"
	"net"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/virtio"
)

// The flags' limits are the packages' that own them: the TAP's MTU
// (tap.CheckMTU), the vnet header sizes (virtio.CheckHdrLen) and a guest's
// own MAC (virtio.CheckUnicastMAC). The helper checks through them and
// prints their constants; it restates none of the rules.

var (
	mtuRange = fmt.Sprintf("%d to %d", tap.MinMTU, tap.MaxMTU)
	hdrLens  = fmt.Sprintf("%d, %d or %d", virtio.HdrLenLegacy, virtio.HdrLenV1, virtio.HdrLenHash)
)

// checkMTUFlag refuses an --mtu the TAP cannot take; 0 is no --mtu.
func checkMTUFlag(cmd string, mtu int) error {
	if mtu != 0 && tap.CheckMTU(mtu) != nil {
		return usagef("%s: --mtu %d: want %s", cmd, mtu, mtuRange)
	}
	return nil
}

// checkVnetHdrFlag refuses a --vnet-hdr no guest negotiates.
func checkVnetHdrFlag(cmd string, size int) error {
	if virtio.CheckHdrLen(size) != nil {
		return usagef("%s: --vnet-hdr %d: want %s", cmd, size, hdrLens)
	}
	return nil
}

// parseMACFlag parses a --mac that must be a station's own address.
func parseMACFlag(cmd, s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err == nil {
		err = virtio.CheckUnicastMAC(mac)
	}
	if err != nil {
		return nil, usagef("%s: --mac %q: want a unicast Ethernet address such as 52:54:00:12:34:56", cmd, s)
	}
	return mac, nil
}
