package vhostuser

import (
	"net"
	"os"

	"github.com/vmnet-dev/vmnet/virtio"
)

// Device is the device behind a vhost-user connection. A Server calls it from one
// goroutine at a time, in the order the front-end's messages arrive, so its methods need no
// locking against each other; they should return promptly, since the front-end waits.
type Device interface {
	// Features returns the virtio features the device offers. FProtocolFeatures is added by
	// the server and must not be set here.
	Features() virtio.Features
	// ProtocolFeatures returns the protocol features the device itself implements beyond
	// what the server does: ProtocolMTU (see MTUSetter), ProtocolRARP (see Announcer) and
	// ProtocolConfig (GET_CONFIG and SET_CONFIG reach GetConfig and SetConfig; without it
	// they are refused). Other bits are ignored.
	ProtocolFeatures() ProtocolFeatures
	// NumQueues is the number of virtqueues (not queue pairs), 1 to MaxQueues; the answer to
	// GET_QUEUE_NUM and the bound on every ring index. It is read once per connection.
	NumQueues() int
	// SetFeatures gives the features the driver acknowledged, a subset of Features. It is
	// not called while a queue is started.
	SetFeatures(acked virtio.Features) error
	// GetConfig returns size bytes of the device config space from offset (virtio 1.2 §4.1.4.3
	// "device-specific configuration"); offset+size is at most MaxConfigSize.
	GetConfig(offset, size uint32) ([]byte, error)
	// SetConfig writes data at offset of the config space. migration is set when the
	// front-end restores state during live migration, the only time read-only fields may be
	// written (vhost-user.rst SET_CONFIG). data is valid only during the call.
	SetConfig(offset uint32, data []byte, migration bool) error
	// StartQueue starts processing a ring that is fully set up and enabled. index is below
	// NumQueues and the ring is not already started.
	StartQueue(index int, q QueueSetup) error
	// StopQueue stops a started ring and returns where it stopped. When it returns, the
	// device no longer touches the ring, its guest memory, or the files of its QueueSetup.
	// A failure leaves the device in an unknown state and closes the connection.
	StopQueue(index int) (QueueState, error)
	// Reset returns the device to its initial state: after the front-end goes away, and on
	// RESET_OWNER and RESET_DEVICE. Every queue has been stopped before it is called.
	Reset()
}

// QueueSetup is everything a device needs to run one virtqueue.
//
// The Memory and the three files belong to the server: they stay valid until StopQueue for
// this ring returns (or the connection's teardown, which stops every ring first), and the
// device must neither close them nor use them after that. A device that needs a file longer
// dups it.
type QueueSetup struct {
	// Memory is the guest memory the ring and its buffers live in, built from the front-end's
	// memory table.
	Memory *virtio.Memory
	// Size is the number of descriptors (SET_VRING_NUM); a power of two for split rings.
	Size uint16
	// DescAddr, AvailAddr and UsedAddr are guest physical addresses, translated from the
	// front-end's user addresses of SET_VRING_ADDR and checked to lie in Memory with the
	// alignment of virtio 1.2 §2.7/§2.8. For a packed ring they are the descriptor ring, the
	// driver event suppression area and the device event suppression area.
	DescAddr, AvailAddr, UsedAddr uint64
	// Packed and EventIdx repeat VIRTIO_F_RING_PACKED and VIRTIO_F_EVENT_IDX of the acked
	// features.
	Packed, EventIdx bool
	// NextAvail is where the device resumes in the available ring (SET_VRING_BASE, or the
	// state of the last StopQueue). For a packed ring bit 15 is the driver ring wrap counter,
	// and NextUsed, with the device ring wrap counter in bit 15, is where the next used
	// descriptor goes; a split ring reads its used index from guest memory and NextUsed is 0.
	NextAvail, NextUsed uint16
	// Kick is the eventfd the front-end writes when buffers are available. Call is the eventfd
	// the device writes to interrupt the guest; nil when the front-end polls. Err is the
	// eventfd to signal a ring error on; nil if the front-end gave none.
	Kick, Call, Err *os.File
	// Log is where the ring logs what the device writes to guest memory, for a front-end
	// migrating the guest (see DirtyLogger); the zero value logs nothing. Its Log stays valid
	// until StopQueue returns or SetQueueLog replaces it.
	Log virtio.RingLog
}

// QueueState is where a stopped ring left off, in the encoding of QueueSetup.NextAvail and
// NextUsed; the server returns it in GET_VRING_BASE and resumes from it on restart.
type QueueState struct {
	NextAvail, NextUsed uint16
}

// MTUSetter is implemented by a device that offers ProtocolMTU and wants the MTU of
// NET_SET_MTU; an error is reported to the front-end as an invalid MTU.
type MTUSetter interface {
	SetMTU(mtu uint16) error
}

// DirtyLogger is implemented by a device that logs its writes to guest memory for live
// migration (vhost-user.rst "Migration"): the server then offers VHOST_F_LOG_ALL and
// LOG_SHMFD, maps the front-end's log, and gives each ring the log it should write to, in
// QueueSetup.Log when it starts and through SetQueueLog while it runs: while
// VHOST_F_LOG_ALL is acked, a log is set (SET_LOG_BASE) and the ring's SET_VRING_ADDR has
// VHOST_VRING_F_LOG, with the ring's log_guest_addr as RingLog.UsedAddr; the zero RingLog
// otherwise.
type DirtyLogger interface {
	// SetQueueLog changes the log of started ring index. When it returns, every write the
	// ring made is logged in the old log, every later one goes to l, and the old log is no
	// longer used; no frame may be lost or repeated for it. An error closes the connection
	// (the front-end would believe in a log that is not kept).
	SetQueueLog(index int, l virtio.RingLog) error
}

// Announcer is implemented by a device that can broadcast a RARP for the guest's MAC after
// a migration (SEND_RARP). Without it SEND_RARP is acknowledged and ignored.
type Announcer interface {
	SendRARP(mac net.HardwareAddr) error
}
