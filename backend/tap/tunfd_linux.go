package tap

import (
	"os"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/offload"
)

// Every ioctl vmnet issues on a TUN fd is in this file and
// tunfd_unsafe.go. Each returns the bare errno; callers wrap it in an
// OpError that names the device, queue and ioctl.

// openTunFd opens the clone device the way every queue file is opened:
// non-blocking (the engine polls it) and close-on-exec (nothing leaks into a
// child by accident; handing a queue to a child is explicit, see Queue.Dup).
// The file belongs to the network namespace of the calling thread
// (tun.c tun_chr_open).
func openTunFd() (int, error) {
	for {
		fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

func tunGetFeatures(fd int) (uint32, error) {
	return unix.IoctlGetUint32(fd, unix.TUNGETFEATURES)
}

// tunSetIff creates or attaches to the device; it returns the name the
// kernel used (a template's "%d" filled in).
func tunSetIff(fd int, name string, flags uint16) (string, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return "", err
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return "", err
	}
	return ifr.Name(), nil
}

// tunSetQueue attaches the file to the device's traffic or detaches it
// (tun.c tun_set_queue): a detached file keeps the device alive but the
// kernel never selects it for a frame.
func tunSetQueue(fd int, attach bool) error {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return err
	}
	if attach {
		ifr.SetUint16(iffAttachQueue)
	} else {
		ifr.SetUint16(iffDetachQueue)
	}
	return unix.IoctlIfreq(fd, unix.TUNSETQUEUE, ifr)
}

func tunSetVnetHdrSize(fd, size int) error {
	return unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, size)
}

func tunGetVnetHdrSize(fd int) (int, error) {
	return unix.IoctlGetInt(fd, unix.TUNGETVNETHDRSZ)
}

// tunSetVnetLE makes the kernel read and write vnet headers little-endian,
// as virtio 1.x requires, whatever the host's byte order.
func tunSetVnetLE(fd int) error {
	return unix.IoctlSetPointerInt(fd, unix.TUNSETVNETLE, 1)
}

func tunSetOffload(fd int, o offload.TunFlags) error {
	return unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, int(o))
}

func tunSetPersist(fd int, on bool) error {
	v := 0
	if on {
		v = 1
	}
	return unix.IoctlSetInt(fd, unix.TUNSETPERSIST, v)
}

func tunSetOwner(fd, uid int) error { return unix.IoctlSetInt(fd, unix.TUNSETOWNER, uid) }
func tunSetGroup(fd, gid int) error { return unix.IoctlSetInt(fd, unix.TUNSETGROUP, gid) }

func tunSetSndBuf(fd, n int) error {
	return unix.IoctlSetPointerInt(fd, unix.TUNSETSNDBUF, n)
}

// tunSetSteeringEBPF attaches a BPF_PROG_TYPE_SOCKET_FILTER program that
// picks the queue for each frame (tun.c tun_ebpf_select_queue); -1
// detaches it.
func tunSetSteeringEBPF(fd, progFd int) error {
	return unix.IoctlSetPointerInt(fd, unix.TUNSETSTEERINGEBPF, progFd)
}

// rawControl runs fn on the file's descriptor while the file cannot be
// closed under it. Going through SyscallConn instead of File.Fd keeps the
// fd non-blocking (File.Fd would switch it to blocking mode).
func rawControl(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}
