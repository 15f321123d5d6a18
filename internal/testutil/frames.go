package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vmnet-dev/vmnet/internal/frametest"
)

// ARPExchange proves that TAP queue files carry traffic both ways: it
// writes an ARP request for dstIP from srcMAC/srcIP on files[0] (after a
// zeroed virtio-net header of hdrLen bytes, 0 for none) and waits until
// the reply arrives on any of the files. It needs the other side of the
// TAP (a bridge or the TAP itself) to own dstIP. The files must be
// non-blocking, as TAP queue files are; their read deadlines are changed.
func ARPExchange(files []*os.File, hdrLen int, srcMAC net.HardwareAddr, srcIP, dstIP net.IP, timeout time.Duration) error {
	src4, ok4 := netip.AddrFromSlice(srcIP.To4())
	dst4, ok := netip.AddrFromSlice(dstIP.To4())
	if len(files) == 0 || len(srcMAC) != 6 || !ok4 || !ok {
		return errors.New("arp exchange: want files, a 6-byte MAC and two IPv4 addresses")
	}
	req := append(make([]byte, hdrLen), frametest.ARP{Op: frametest.ARPRequest, SenderMAC: srcMAC,
		SenderIP: src4, TargetIP: dst4}.Build()...)

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

func isARPReply(b []byte, hdrLen int, mac net.HardwareAddr, from netip.Addr) bool {
	if len(b) < hdrLen {
		return false
	}
	a, err := frametest.ParseARP(b[hdrLen:])
	return err == nil && a.Op == frametest.ARPReply && a.SenderIP == from && bytes.Equal(a.TargetMAC, mac)
}
