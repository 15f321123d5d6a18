package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/virtio"
)

// frame makes an Ethernet frame of n bytes (the local experimental
// EtherType) whose payload encodes seq.
func frame(n int, seq int) []byte {
	p := make([]byte, max(n-frametest.EthLen, 0))
	for i := range p {
		p[i] = byte(seq + frametest.EthLen + i)
	}
	if len(p) >= 4 {
		binary.BigEndian.PutUint32(p, uint32(seq))
	}
	f := frametest.Spec{DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		EtherType: 0x88b5, Payload: p}.Build()
	return f[:n]
}

func TestTXFrameSizes(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprintf("packed=%v", packed), func(t *testing.T) {
			r := newRig(t, rigOptions{packed: packed, txSlot: 65550 + 12, size: 64})
			sizes := []int{14, 15, 60, 64, 1514, 1518, 4096, 9014, 32768, 65535, 65550}
			for i, n := range sizes {
				f := frame(n, i)
				r.sendTX(f)
				got := r.readPeer(2 * time.Second)
				if got == nil {
					t.Fatalf("frame of %d bytes: nothing arrived", n)
				}
				if !bytes.Equal(got[:r.hdrLen], make([]byte, r.hdrLen)) {
					t.Errorf("frame of %d bytes: header %x, want zeros", n, got[:r.hdrLen])
				}
				if !bytes.Equal(got[r.hdrLen:], f) {
					t.Errorf("frame of %d bytes: payload differs (got %d bytes)", n, len(got)-r.hdrLen)
				}
			}
			waitFor(t, func() bool { r.tx.Reap(); return r.tx.InFlight() == 0 }, "TX chains returned")
			// The worker adds to its counters once per batch, after it
			// returned the chains.
			waitFor(t, func() bool { return r.qp.Counters().Load(TXPackets) == uint64(len(sizes)) }, "tx_packets")
		})
	}
}

func TestTXRuntDropped(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.sendTX(make([]byte, 13), frame(60, 1))
	got := r.readPeer(time.Second)
	if got == nil || !bytes.Equal(got[r.hdrLen:], frame(60, 1)) {
		t.Fatalf("got %x, want the 60-byte frame (the runt dropped)", got)
	}
	if extra := r.readPeer(100 * time.Millisecond); extra != nil {
		t.Errorf("runt reached the TAP: %x", extra)
	}
	waitFor(t, func() bool { r.tx.Reap(); return r.tx.InFlight() == 0 }, "TX chains returned")
	waitFor(t, func() bool { return r.qp.Counters().Load(TXPackets) == 1 }, "tx_packets")
	if s := r.qp.Counters().Snapshot(); s[TXDropBadHeader] != 1 || s[TXPackets] != 1 {
		t.Errorf("counters: %s; want tx_drop_bad_header=1 tx_packets=1", s)
	}
}

func TestRXFrameSizes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features virtio.Features
		rxSlot   int
		bufSize  int
		sizes    []int
	}{
		{"big buffers", virtio.FVersion1 | virtio.NetFGuestCsum | virtio.NetFGuestTSO4, 65550 + 12, 65550 + 12,
			[]int{14, 60, 1514, 9014, 65535, 65550}},
		{"mtu buffers", virtio.FVersion1, 2048, 1514 + 12, []int{14, 60, 1000, 1514}},
		{"mergeable", virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFGuestCsum | virtio.NetFGuestTSO4, 2048, 1536,
			[]int{14, 60, 1514, 1524, 1525, 3000, 9014, 65535, 65550}},
		{"legacy header", virtio.NetFGuestCsum, 2048, 1514 + 10, []int{60, 1514}},
	} {
		for _, packed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/packed=%v", tc.name, packed), func(t *testing.T) {
				r := newRig(t, rigOptions{features: tc.features, rxSlot: tc.rxSlot, packed: packed, size: 128})
				r.postRX(int(r.rx.Size()), tc.bufSize)
				for i, n := range tc.sizes {
					f := frame(n, i)
					r.writePeer(f)
					got := r.reapFrames(1, 2*time.Second)
					if len(got) != 1 {
						t.Fatalf("frame of %d bytes: got %d frames", n, len(got))
					}
					if !bytes.Equal(got[0], f) {
						t.Fatalf("frame of %d bytes: got %d bytes, different", n, len(got[0]))
					}
					// Keep the ring full.
					for r.rx.InFlight() < int(r.rx.Size()) {
						if _, err := r.rx.PostRX(tc.bufSize); err != nil {
							break
						}
					}
					if r.rx.Kick() {
						r.rxKick.Notify()
					}
				}
				waitFor(t, func() bool { return r.qp.Counters().Load(RXPackets) == uint64(len(tc.sizes)) }, "rx_packets")
				if s := r.qp.Counters().Snapshot(); s[RXPackets] != uint64(len(tc.sizes)) {
					t.Errorf("counters: %s; want rx_packets=%d", s, len(tc.sizes))
				}
			})
		}
	}
}

// With no receive buffers the engine stops reading: frames wait in the
// kernel (here, the socket) and nothing is dropped on vmnet's side.
func TestRXBackPressure(t *testing.T) {
	r := newRig(t, rigOptions{size: 16})
	for i := 0; i < 40; i++ {
		r.writePeer(frame(100, i))
	}
	time.Sleep(50 * time.Millisecond)
	if s := r.qp.Counters().Snapshot(); s[RXPackets] != 0 || s[RXWaitBuffers] == 0 {
		t.Fatalf("before buffers: %s; want no rx_packets and rx_wait_buffers > 0", s)
	}
	var got [][]byte
	for len(got) < 40 {
		r.postRX(int(r.rx.Size())-r.rx.InFlight(), 1514+12)
		f := r.reapFrames(min(16, 40-len(got)), 2*time.Second)
		if len(f) == 0 {
			t.Fatalf("stalled after %d frames", len(got))
		}
		got = append(got, f...)
	}
	for i, f := range got {
		if !bytes.Equal(f, frame(100, i)) {
			t.Fatalf("frame %d out of order or damaged", i)
		}
	}
	waitFor(t, func() bool { return r.qp.Counters().Load(RXPackets) == 40 }, "rx_packets")
	s := r.qp.Counters().Snapshot()
	if s[RXPackets] != 40 || s[RXDropTruncated]+s[RXDropKernel]+s[RXDropBadDescriptor] != 0 {
		t.Errorf("counters: %s; want rx_packets=40 and no drops", s)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A header the guest may not send (GSO it did not negotiate) never reaches
// the TAP.
func TestTXBadHeaderDropped(t *testing.T) {
	r := newRig(t, rigOptions{})
	bad := make([]byte, r.hdrLen)
	bad[0] = byte(virtio.NeedsCsum)
	bad[1] = byte(virtio.GSOTCPv4)
	binary.LittleEndian.PutUint16(bad[4:], 1448)
	if _, err := r.tx.PostTX(append(bad, frame(2000, 1)...)); err != nil {
		t.Fatal(err)
	}
	r.sendTX(frame(60, 2))
	got := r.readPeer(time.Second)
	if got == nil || !bytes.Equal(got[r.hdrLen:], frame(60, 2)) {
		t.Fatalf("got %x, want only the good frame", got)
	}
	if extra := r.readPeer(100 * time.Millisecond); extra != nil {
		t.Errorf("bad header reached the TAP")
	}
	waitFor(t, func() bool { return r.qp.Counters().Load(TXDropBadHeader) == 1 }, "tx_drop_bad_header")
}

// Stopping gives popped-but-unfilled receive buffers back to the ring, so
// a successor on the same ring delivers into them and the driver never
// gets an empty used buffer.
func TestStopGivesBuffersBack(t *testing.T) {
	r := newRig(t, rigOptions{features: virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFGuestCsum | virtio.NetFGuestTSO4, size: 128})
	r.postRX(128, 1536)
	// The worker pops ahead of any frame; give it time to.
	time.Sleep(50 * time.Millisecond)
	if err := r.qp.Stop(); err != nil {
		t.Fatal(err)
	}
	if used := r.rx.Reap(); len(used) != 0 {
		t.Fatalf("stop returned %d buffers to the driver, want 0", len(used))
	}
	// A new queue pair on the same queues (as after GET_VRING_BASE and a
	// restart at that index) delivers into the buffers.
	r.run(r.qp.cfg.RX, r.qp.cfg.TX)
	r.writePeer(frame(3000, 7))
	got := r.reapFrames(1, 2*time.Second)
	if len(got) != 1 || !bytes.Equal(got[0], frame(3000, 7)) {
		t.Fatalf("after restart: got %d frames, want the 3000-byte frame", len(got))
	}
}
