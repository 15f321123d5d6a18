package testutil

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// ARPExchange proves that TAP queue files carry traffic both ways: it
// writes an ARP request for dstIP from srcMAC/srcIP on files[0] (after a
// zeroed virtio-net header of hdrLen bytes, 0 for none) and waits until
// the reply arrives on any of the files. It needs the other side of the
// TAP (a bridge or the TAP itself) to own dstIP. The files must be
// non-blocking, as TAP queue files are; their read deadlines are changed.
func ARPExchange(files []*os.File, hdrLen int, srcMAC net.HardwareAddr, srcIP, dstIP net.IP, timeout time.Duration) error {
	src4, dst4 := srcIP.To4(), dstIP.To4()
	if len(files) == 0 || len(srcMAC) != 6 || src4 == nil || dst4 == nil {
		return errors.New("arp exchange: want files, a 6-byte MAC and two IPv4 addresses")
	}
	req := make([]byte, hdrLen, hdrLen+42)
	req = append(req, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	req = append(req, srcMAC...)
	req = binary.BigEndian.AppendUint16(req, 0x0806)
	req = append(req, 0, 1, 8, 0, 6, 4, 0, 1) // Ethernet, IPv4, request
	req = append(req, srcMAC...)
	req = append(req, src4...)
	req = append(req, 0, 0, 0, 0, 0, 0)
	req = append(req, dst4...)

	deadline := time.Now().Add(timeout)
	found := make(chan int, len(files))
	for i, f := range files {
		if err := f.SetReadDeadline(deadline); err != nil {
			return fmt.Errorf("arp exchange: file %d: %w", i, err)
		}
		go func() {
			buf := make([]byte, 65536)
			for {
				n, err := f.Read(buf)
				if err != nil {
					return
				}
				if isARPReply(buf[:n], hdrLen, srcMAC, dst4) {
					found <- i
					return
				}
			}
		}()
	}
	// Resend now and then: the first request can race the bridge port
	// reaching forwarding state.
	for time.Now().Before(deadline) {
		if _, err := files[0].Write(req); err != nil {
			return fmt.Errorf("arp exchange: write request: %w", err)
		}
		select {
		case <-found:
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("arp exchange: no reply from %s to %s within %s", dstIP, srcMAC, timeout)
}

func isARPReply(b []byte, hdrLen int, mac net.HardwareAddr, from net.IP) bool {
	if len(b) < hdrLen+42 {
		return false
	}
	f := b[hdrLen:]
	return binary.BigEndian.Uint16(f[12:14]) == 0x0806 && binary.BigEndian.Uint16(f[20:22]) == 2 &&
		bytes.Equal(f[28:32], from) && bytes.Equal(f[32:38], mac)
}
