package backend

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/vmnet-dev/vmnet/virtio"
)

// Announce writes a RARP request from mac to the TAP, as QEMU's
// qemu_announce_self does for a guest that cannot announce itself, so that
// bridges and switches on the host side learn where the guest now is.
func (d *Device) Announce(mac net.HardwareAddr) error {
	if len(mac) != 6 {
		return fmt.Errorf("announce: %d-byte MAC, want 6", len(mac))
	}
	// Which TAP queues are attached is the device's to decide, under
	// d.mu: a queue pair starting or stopping on queue 0 meanwhile must
	// not find it detached under its feet, nor leave it attached.
	d.mu.Lock()
	defer d.mu.Unlock()
	q, err := d.opts.TAP.OpenQueue(0)
	if err != nil {
		return fmt.Errorf("announce: %w", err)
	}
	// A detached queue file cannot write (tun.c returns EBUSY): attach
	// queue 0 for the write when no queue pair runs on it.
	if d.pairs[0].run == nil {
		if err := d.opts.TAP.EnableQueue(0); err != nil {
			return fmt.Errorf("announce: %w", err)
		}
		defer func() {
			if err := d.opts.TAP.DisableQueue(0); err != nil {
				d.log.Warn("detach TAP queue 0 after an announce", "error", err)
			}
		}()
	}
	hdr := d.opts.TAP.VnetHdrSize()
	f := make([]byte, hdr+60) // a zero vnet header, then the padded frame
	e := f[hdr:]
	copy(e[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(e[6:12], mac)
	binary.BigEndian.PutUint16(e[12:], 0x8035) // ETH_P_RARP
	a := e[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // hardware: Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // protocol: IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 3) // RARP request
	copy(a[8:14], mac)
	copy(a[18:24], mac)
	if hdr >= virtio.HdrLenV1 {
		virtio.PutNumBuffers(f, 0, virtio.LittleEndian)
	}
	if _, err := q.File().Write(f); err != nil {
		return fmt.Errorf("announce %s on %s: %w", mac, d.opts.TAP.Name(), err)
	}
	return nil
}
