package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// rig is a queue pair over a SOCK_SEQPACKET socketpair standing in for the
// TAP queue file, with Go guests driving its two virtqueues.
type rig struct {
	t        *testing.T
	qp       *QueuePair
	rx, tx   *virtiotest.Guest
	peer     int // the "kernel" end of the socketpair
	tap      *os.File
	rxKick   *EventFD
	txKick   *EventFD
	rxCall   *EventFD
	txCall   *EventFD
	hdrLen   int
	features virtio.Features
	mod      func(*Config) // adjusts the config of every queue pair newQP makes
}

type rigOptions struct {
	size     uint16
	packed   bool
	features virtio.Features
	rxSlot   int // bytes of buffer memory per RX chain
	txSlot   int
	guest    virtiotest.Options
	mtu      int
	mod      func(*Config)
}

func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	if o.size == 0 {
		o.size = 256
	}
	if o.features == 0 {
		o.features = virtio.FVersion1
	}
	if o.rxSlot == 0 {
		o.rxSlot = 2048
	}
	if o.txSlot == 0 {
		o.txSlot = 2048
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		// Room for 64 KiB frames in flight.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	unix.SetNonblock(fds[0], true)
	r := &rig{t: t, peer: fds[1], tap: os.NewFile(uintptr(fds[0]), "tap"), features: o.features,
		hdrLen: virtio.HdrLenFor(o.features), mod: o.mod}
	t.Cleanup(func() { unix.Close(r.peer); r.tap.Close() })
	gopts := o.guest
	gopts.SlotSize = o.rxSlot
	if r.rx, err = virtiotest.NewGuest(o.size, o.packed, gopts); err != nil {
		t.Fatal(err)
	}
	gopts.SlotSize = o.txSlot
	if r.tx, err = virtiotest.NewGuest(o.size, o.packed, gopts); err != nil {
		t.Fatal(err)
	}
	for _, e := range []**EventFD{&r.rxKick, &r.txKick, &r.rxCall, &r.txCall} {
		if *e, err = NewEventFD(); err != nil {
			t.Fatal(err)
		}
		ev := *e
		t.Cleanup(func() { ev.Close() })
	}
	r.qp = r.newQP(o.mtu)
	if err := r.qp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.qp.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return r
}

func (r *rig) newQP(mtu int) *QueuePair {
	r.t.Helper()
	rxq, err := r.rx.NewQueue()
	if err != nil {
		r.t.Fatal(err)
	}
	txq, err := r.tx.NewQueue()
	if err != nil {
		r.t.Fatal(err)
	}
	cfg := Config{RX: rxq, TX: txq, RXKick: r.rxKick, TXKick: r.txKick, RXCall: r.rxCall, TXCall: r.txCall,
		TAP: r.tap, HdrLen: r.hdrLen, Features: r.features, MTU: mtu}
	if r.mod != nil {
		r.mod(&cfg)
	}
	qp, err := New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	return qp
}

// frame makes an Ethernet frame of n bytes whose payload encodes seq.
func frame(n int, seq int) []byte {
	f := make([]byte, n)
	copy(f, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xb5})
	for i := 14; i < n; i++ {
		f[i] = byte(seq + i)
	}
	if n >= 18 {
		binary.BigEndian.PutUint32(f[14:], uint32(seq))
	}
	return f
}

// sendTX posts frames on the TX ring behind zero headers and kicks.
func (r *rig) sendTX(frames ...[]byte) {
	r.t.Helper()
	for _, f := range frames {
		if _, err := r.tx.PostTX(append(make([]byte, r.hdrLen), f...)); err != nil {
			r.t.Fatalf("post TX: %v", err)
		}
	}
	if r.tx.Kick() {
		r.txKick.Notify()
	}
}

// readPeer reads one message from the kernel end, or nil after wait.
func (r *rig) readPeer(wait time.Duration) []byte {
	r.t.Helper()
	buf := make([]byte, 70000)
	fds := []unix.PollFd{{Fd: int32(r.peer), Events: unix.POLLIN}}
	deadline := time.Now().Add(wait)
	for {
		// A signal (the Go runtime preempts with SIGURG) ends poll early.
		n, err := unix.Poll(fds, int(time.Until(deadline)/time.Millisecond))
		if err == unix.EINTR && time.Now().Before(deadline) {
			continue
		}
		if err != nil || n == 0 {
			return nil
		}
		break
	}
	n, err := unix.Read(r.peer, buf)
	if err != nil {
		r.t.Fatalf("read peer: %v", err)
	}
	return buf[:n]
}

// writePeer sends a frame from the kernel end behind a zero header.
func (r *rig) writePeer(f []byte) {
	r.t.Helper()
	if _, err := unix.Write(r.peer, append(make([]byte, r.hdrLen), f...)); err != nil {
		r.t.Fatalf("write peer: %v", err)
	}
}

// postRX posts n receive chains of size bytes and kicks.
func (r *rig) postRX(n, size int) {
	r.t.Helper()
	for i := 0; i < n; i++ {
		if _, err := r.rx.PostRX(size); err != nil {
			r.t.Fatalf("post RX %d: %v", i, err)
		}
	}
	if r.rx.Kick() {
		r.rxKick.Notify()
	}
}

// reapFrames collects want frames from the RX ring, merging chains by
// num_buffers, within a deadline.
func (r *rig) reapFrames(want int, wait time.Duration) [][]byte {
	r.t.Helper()
	var frames [][]byte
	var used []virtiotest.Used
	deadline := time.Now().Add(wait)
	for len(frames) < want && time.Now().Before(deadline) {
		used = append(used, r.rx.Reap()...)
		if err := r.rx.Err(); err != nil {
			r.t.Fatalf("guest: %v", err)
		}
		for len(used) > 0 {
			u := used[0]
			if len(u.Data) < r.hdrLen {
				r.t.Fatalf("used buffer of %d bytes, shorter than the header", len(u.Data))
			}
			nb := 1
			if r.hdrLen >= virtio.HdrLenV1 {
				nb = int(binary.LittleEndian.Uint16(u.Data[10:]))
			}
			if !r.features.Has(virtio.NetFMrgRxbuf) && nb != 1 {
				r.t.Fatalf("num_buffers %d without MRG_RXBUF", nb)
			}
			if nb < 1 {
				r.t.Fatalf("num_buffers %d", nb)
			}
			if len(used) < nb {
				break
			}
			f := append([]byte(nil), u.Data[r.hdrLen:]...)
			for _, v := range used[1:nb] {
				f = append(f, v.Data...)
			}
			frames = append(frames, f)
			used = used[nb:]
		}
		if len(frames) < want {
			time.Sleep(time.Millisecond)
		}
	}
	return frames
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
	qp, err := New(Config{RX: r.qp.cfg.RX, TX: r.qp.cfg.TX, RXKick: r.rxKick, TXKick: r.txKick, RXCall: r.rxCall, TXCall: r.txCall,
		TAP: r.tap, HdrLen: r.hdrLen, Features: r.features})
	if err != nil {
		t.Fatal(err)
	}
	if err := qp.Start(); err != nil {
		t.Fatal(err)
	}
	r.qp = qp
	r.writePeer(frame(3000, 7))
	got := r.reapFrames(1, 2*time.Second)
	if len(got) != 1 || !bytes.Equal(got[0], frame(3000, 7)) {
		t.Fatalf("after restart: got %d frames, want the 3000-byte frame", len(got))
	}
}
