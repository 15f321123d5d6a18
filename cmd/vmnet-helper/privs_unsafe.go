package main

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// capsetAllThreads sets the effective, permitted and inheritable
// capability sets of every thread (capset(2) with
// _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set).
func capsetAllThreads(eff, prm, inh uint64) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: uint32(eff), Permitted: uint32(prm), Inheritable: uint32(inh)},
		{Effective: uint32(eff >> 32), Permitted: uint32(prm >> 32), Inheritable: uint32(inh >> 32)},
	}
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	switch errno {
	case 0:
		return nil
	case unix.ENOTSUP:
		return errCgo
	default:
		return fmt.Errorf("capset effective %#x permitted %#x inheritable %#x: %w", eff, prm, inh, errno)
	}
}
