package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/offload"
)

// The plugin's only TUN ioctls of its own: tap.CreateSingleQueue leaves
// the vnet header at the kernel's 10 bytes and the offloads off, and a
// single-queue TAP has no tap.Device to set them through. Both are
// settings of the device (tun_struct), so they outlive the file.

// configureSingle sets the vnet header size (TUNSETVNETHDRSZ) and the
// offloads (TUNSETOFFLOAD) of the single-queue TAP whose only file is f.
func configureSingle(f *os.File, name string, vnetHdr int, offloads offload.TunFlags) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		if ioErr = unix.IoctlSetPointerInt(int(fd), unix.TUNSETVNETHDRSZ, vnetHdr); ioErr != nil {
			ioErr = fmt.Errorf("tap %s: TUNSETVNETHDRSZ %d: %w", name, vnetHdr, ioErr)
			return
		}
		if ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, int(offloads)); ioErr != nil {
			ioErr = fmt.Errorf("tap %s: TUNSETOFFLOAD %s: %w", name, offloads, ioErr)
		}
	})
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	return ioErr
}
