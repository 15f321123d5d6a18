package backend

import (
	"fmt"
	"net"

	"github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
)

// VhostUser adapts the device to a vhost-user server (vhostuser.Server):
// each ring the front-end completes is built and started the way Activate
// builds and starts a queue, one at a time, with the eventfds the server
// owns duplicated for as long as the ring runs. The adapter never offers
// the control queue's features: vhost-user front-ends serve the control
// queue themselves.
func (d *Device) VhostUser() vhostuser.Device { return vhostUserAdapter{d: d} }

type vhostUserAdapter struct{ d *Device }

var _ vhostuser.Device = vhostUserAdapter{}
var _ vhostuser.MTUSetter = vhostUserAdapter{}
var _ vhostuser.Announcer = vhostUserAdapter{}
var _ vhostuser.DirtyLogger = vhostUserAdapter{}

// Features is the device's offer less what needs the control queue, but
// for GUEST_ANNOUNCE: QEMU's virtio-net passes it to the guest only if
// the back-end offers it, and then announces a migrated guest itself, by
// VIRTIO_NET_S_ANNOUNCE and the control queue it serves (a guest without
// it gets SEND_RARP).
func (b vhostUserAdapter) Features() virtio.Features {
	return b.d.Features()&^(ctrlFeatures|rssFeatures) | virtio.NetFGuestAnnounce
}

func (b vhostUserAdapter) ProtocolFeatures() vhostuser.ProtocolFeatures {
	return vhostuser.ProtocolMTU | vhostuser.ProtocolRARP
}

func (b vhostUserAdapter) NumQueues() int { return 2 * b.d.Pairs() }

func (b vhostUserAdapter) SetFeatures(acked virtio.Features) error {
	return b.d.setFeatures(acked, b.Features())
}

func (b vhostUserAdapter) GetConfig(offset, size uint32) ([]byte, error) {
	out := make([]byte, size)
	if err := b.d.ReadConfig(int(offset), out); err != nil {
		return nil, err
	}
	return out, nil
}

func (b vhostUserAdapter) SetConfig(offset uint32, data []byte, migration bool) error {
	return b.d.writeConfig(int(offset), data, migration)
}

// SetMTU is VHOST_USER_NET_SET_MTU: the front-end tells the MTU it offers.
func (b vhostUserAdapter) SetMTU(mtu uint16) error {
	if err := virtio.CheckMTU(int(mtu)); err != nil {
		return fmt.Errorf("set mtu: %w", err)
	}
	b.d.log.Debug("front-end MTU", "mtu", mtu)
	return nil
}

// SendRARP is VHOST_USER_SEND_RARP, sent after migration so switches learn
// where the guest went: a RARP request from the guest's MAC is written to
// the TAP as if the guest had sent it.
func (b vhostUserAdapter) SendRARP(mac net.HardwareAddr) error { return b.d.Announce(mac) }

// StartQueue starts ring index as Activate starts a queue. Its kick,
// call and err fds must be eventfds without EFD_SEMAPHORE (see
// QueueConfig.Kick); the device never signals err, but a front-end that
// hands over something else is told so.
func (b vhostUserAdapter) StartQueue(index int, s vhostuser.QueueSetup) error {
	if s.Err != nil {
		e, err := dupEventFD(s.Err, false)
		if err != nil {
			return fmt.Errorf("start queue %d: err: %w", index, err)
		}
		e.Close()
	}
	b.d.mu.Lock()
	q, err := b.d.newQueue(s.Memory, QueueConfig{Size: s.Size, DescAddr: s.DescAddr, DriverAddr: s.AvailAddr,
		DeviceAddr: s.UsedAddr, Resume: &QueueState{NextAvail: s.NextAvail, NextUsed: s.NextUsed}})
	b.d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("start queue %d: %w", index, err)
	}
	return b.d.startQueueLog(index, q, s.Kick, s.Call, s.Log)
}

// SetQueueLog is the dirty log of a started ring changing: SET_LOG_BASE,
// SET_FEATURES with or without VHOST_F_LOG_ALL, SET_VRING_ADDR with or
// without VHOST_VRING_F_LOG. A ring whose pair runs takes it between two
// passes of its engine, losing no frame (engine.QueuePair.SetDirtyLog).
func (b vhostUserAdapter) SetQueueLog(index int, l virtio.RingLog) error {
	return b.d.setQueueLog(index, l)
}

func (b vhostUserAdapter) StopQueue(index int) (vhostuser.QueueState, error) {
	q, err := b.d.stopQueue(index)
	if q == nil {
		return vhostuser.QueueState{}, err
	}
	st := stateOf(q)
	if _, split := q.(*virtio.SplitQueue); split {
		// A split ring's used index lives in guest memory.
		st.NextUsed = 0
	}
	return vhostuser.QueueState{NextAvail: st.NextAvail, NextUsed: st.NextUsed}, err
}

func (b vhostUserAdapter) Reset() { b.d.Reset() }
