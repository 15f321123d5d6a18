package tap

import "golang.org/x/sys/unix"

// This file mirrors the parts of include/uapi/linux/if_tun.h that
// golang.org/x/sys/unix does not carry, under their kernel spelling. It is
// the only file that uses these names; the rest of the package speaks in
// terms of Options (TUNSETOFFLOAD's flags are offload.TunFlags).

// TUNSETIFF / TUNGETFEATURES flags. x/sys/unix has most of them; NAPI and
// NAPI_FRAGS are repeated here so every flag the package checks is in one
// table.
const (
	iffTUN         = unix.IFF_TUN
	iffTAP         = unix.IFF_TAP
	iffNAPI        = 0x0010 // IFF_NAPI
	iffNAPIFrags   = 0x0020 // IFF_NAPI_FRAGS
	iffNoCarrier   = 0x0040 // IFF_NO_CARRIER (Linux 6.0)
	iffNoPI        = unix.IFF_NO_PI
	iffOneQueue    = unix.IFF_ONE_QUEUE
	iffVnetHdr     = unix.IFF_VNET_HDR
	iffTUNExcl     = unix.IFF_TUN_EXCL
	iffMultiQueue  = unix.IFF_MULTI_QUEUE
	iffAttachQueue = unix.IFF_ATTACH_QUEUE
	iffDetachQueue = unix.IFF_DETACH_QUEUE
	iffPersist     = unix.IFF_PERSIST
)

// maxTapQueues is MAX_TAP_QUEUES in tun.c: attached plus detached queue
// files of one device. tun_attach refuses more with E2BIG.
const maxTapQueues = 256

// tunDevice is the TUN/TAP clone device (Documentation/networking/tuntap.rst).
const tunDevice = "/dev/net/tun"
