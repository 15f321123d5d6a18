package backend

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/internal/memfault"
	"github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
)

// VhostUser adapts the device to a vhost-user server: it builds split or
// packed virtqueues from each ring's setup and dups the ring's eventfds,
// which the server owns, for as long as the ring runs.
func (d *Device) VhostUser() vhostuser.Device {
	return &vhostUserAdapter{d: d, files: map[int][]*engine.EventFD{}}
}

type vhostUserAdapter struct {
	d     *Device
	files map[int][]*engine.EventFD // per ring, the dups to close at stop
}

var _ vhostuser.Device = (*vhostUserAdapter)(nil)
var _ vhostuser.MTUSetter = (*vhostUserAdapter)(nil)
var _ vhostuser.Announcer = (*vhostUserAdapter)(nil)

// Features leave out the control queue's features: a vhost-user
// front-end serves the control queue itself.
func (b *vhostUserAdapter) Features() virtio.Features { return b.d.Features() &^ ctrlFeatures }

func (b *vhostUserAdapter) ProtocolFeatures() vhostuser.ProtocolFeatures {
	return vhostuser.ProtocolMTU | vhostuser.ProtocolRARP
}

func (b *vhostUserAdapter) NumQueues() int { return 2 * b.d.Pairs() }

func (b *vhostUserAdapter) SetFeatures(acked virtio.Features) error { return b.d.SetFeatures(acked) }

func (b *vhostUserAdapter) GetConfig(offset, size uint32) ([]byte, error) {
	cfg := b.d.Config()
	out := make([]byte, size)
	if err := cfg.ReadWindow(out, int(offset), b.d.Features(), virtio.LittleEndian); err != nil {
		return nil, err
	}
	return out, nil
}

// SetConfig accepts writes of the MAC, the one field a driver may write
// (legacy drivers without CTRL_MAC_ADDR).
func (b *vhostUserAdapter) SetConfig(offset uint32, data []byte, migration bool) error {
	if offset+uint32(len(data)) > 6 && !migration {
		return fmt.Errorf("set config: bytes %d to %d are read-only", offset, offset+uint32(len(data)))
	}
	b.d.mu.Lock()
	defer b.d.mu.Unlock()
	var buf [virtio.NetConfigMaxLen]byte
	if err := b.d.config.Encode(buf[:], virtio.LittleEndian); err != nil {
		return err
	}
	if int(offset)+len(data) > len(buf) {
		return fmt.Errorf("set config: bytes %d to %d outside the %d-byte config", offset, int(offset)+len(data), len(buf))
	}
	copy(buf[offset:], data)
	return b.d.config.Decode(buf[:], virtio.LittleEndian)
}

// SetMTU is VHOST_USER_NET_SET_MTU: the front-end tells the MTU it offers.
func (b *vhostUserAdapter) SetMTU(mtu uint16) error {
	if mtu < 68 {
		return fmt.Errorf("set mtu %d: want at least 68", mtu)
	}
	b.d.log.Debug("front-end MTU", "mtu", mtu)
	return nil
}

// SendRARP is VHOST_USER_SEND_RARP, sent after migration so switches learn
// where the guest went: a RARP request from the guest's MAC is written to
// the TAP as if the guest had sent it.
func (b *vhostUserAdapter) SendRARP(mac net.HardwareAddr) error {
	return b.d.Announce(mac)
}

func (b *vhostUserAdapter) StartQueue(index int, s vhostuser.QueueSetup) error {
	var q virtio.Queue
	// A split ring set up from scratch reads its used index from guest
	// memory, which a front-end may have shrunk away (internal/memfault).
	err := memfault.Guard(func() error {
		var err error
		if s.Packed {
			q, err = virtio.NewPackedQueue(s.Memory, virtio.PackedConfig{Size: s.Size, DescAddr: s.DescAddr,
				DriverAddr: s.AvailAddr, DeviceAddr: s.UsedAddr, EventIdx: s.EventIdx, NextAvail: s.NextAvail, NextUsed: s.NextUsed})
		} else {
			q, err = virtio.NewSplitQueue(s.Memory, virtio.SplitConfig{Size: s.Size, DescAddr: s.DescAddr,
				AvailAddr: s.AvailAddr, UsedAddr: s.UsedAddr, EventIdx: s.EventIdx, NextAvail: s.NextAvail, NextUsed: s.NextUsed})
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("start queue %d: %w", index, err)
	}
	kick, err := dupEventFD(s.Kick)
	if err != nil {
		return fmt.Errorf("start queue %d: kick: %w", index, err)
	}
	files := []*engine.EventFD{kick}
	var call engine.Notifier = noCall{}
	if s.Call != nil {
		c, err := dupEventFD(s.Call)
		if err != nil {
			kick.Close()
			return fmt.Errorf("start queue %d: call: %w", index, err)
		}
		files = append(files, c)
		call = c
	}
	if err := b.d.StartQueue(index, q, kick, call); err != nil {
		for _, f := range files {
			f.Close()
		}
		return err
	}
	b.files[index] = files
	return nil
}

func (b *vhostUserAdapter) StopQueue(index int) (vhostuser.QueueState, error) {
	q, err := b.d.StopQueue(index)
	for _, f := range b.files[index] {
		f.Close()
	}
	delete(b.files, index)
	if q == nil {
		return vhostuser.QueueState{}, err
	}
	st := vhostuser.QueueState{NextAvail: q.NextAvail()}
	if pq, ok := q.(*virtio.PackedQueue); ok {
		st.NextUsed = pq.NextUsed()
	}
	return st, err
}

func (b *vhostUserAdapter) Reset() {
	b.d.Reset()
	for i, fs := range b.files {
		for _, f := range fs {
			f.Close()
		}
		delete(b.files, i)
	}
}

// noCall stands in for the call eventfd of a front-end that polls.
type noCall struct{}

func (noCall) Notify() error { return nil }

// dupEventFD dups an eventfd the server owns, so the engine can keep it for
// as long as the ring runs.
func dupEventFD(f *os.File) (*engine.EventFD, error) {
	if f == nil {
		return nil, fmt.Errorf("no eventfd")
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, err
	}
	return engine.EventFDFromFile(os.NewFile(uintptr(nfd), "eventfd"))
}
