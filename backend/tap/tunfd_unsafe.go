package tap

import (
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ifreqHWAddr is struct ifreq with the ifr_hwaddr member (a struct
// sockaddr) spelled out; unix.Ifreq has no accessor for it.
type ifreqHWAddr struct {
	name   [unix.IFNAMSIZ]byte
	family uint16
	data   [14]byte
	_      [8]byte // pad to sizeof(struct ifreq) == 40
}

// tunGetHWAddr reads the device's MAC through the TUN fd (tun.c handles
// SIOCGIFHWADDR itself), which works whatever network namespace the
// device has moved to.
func tunGetHWAddr(fd int) (net.HardwareAddr, error) {
	var ifr ifreqHWAddr
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCGIFHWADDR, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return nil, errno
	}
	mac := make(net.HardwareAddr, 6)
	copy(mac, ifr.data[:6])
	return mac, nil
}
