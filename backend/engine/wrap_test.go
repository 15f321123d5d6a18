package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// More than 65,536 chains each way through the socketpair rig: the split
// ring's 16-bit indices wrap (starting just short of the wrap, and with
// EVENT_IDX, whose comparisons cross it), the packed ring's wrap counter
// flips hundreds of times, and no frame is lost, repeated or reordered.
func TestRingWraparound(t *testing.T) {
	// 274 batches of a full ring: 70,144 chains each way.
	const batch, frames, startIdx = 256, 274 * 256, 0xffff - 300
	for _, tc := range []struct {
		packed, eventIdx bool
	}{
		{false, false}, {false, true},
		// The packed ring's flag-based suppression does no index
		// arithmetic: with EVENT_IDX is the case that wraps.
		{true, true},
	} {
		t.Run(fmt.Sprintf("packed=%v/event_idx=%v", tc.packed, tc.eventIdx), func(t *testing.T) {
			r := newRig(t, rigOptions{packed: tc.packed, size: 256, features: virtio.FVersion1 | virtio.FEventIdx,
				guest: virtiotest.Options{StartIdx: startIdx, EventIdx: tc.eventIdx}})
			// One buffer per chain: the header, then a 64-byte frame
			// whose bytes 14 to 18 number it. The "kernel" end sends
			// and receives them a batch per system call.
			outs := make([][]byte, batch)
			ins := make([][]byte, batch)
			for i := range outs {
				outs[i] = make([]byte, r.hdrLen+64)
				ins[i] = make([]byte, 2048)
			}
			send, recv := newMmsgBufs(outs), newMmsgBufs(ins)
			out := make([]byte, r.hdrLen+64)
			msg := out[r.hdrLen:]
			for seq := 0; seq < frames; seq += batch {
				// Both ways at once: numbered frames from the "kernel"
				// and buffers for them, numbered frames from the guest;
				// then each side checks what it got, in order.
				for i := range outs {
					binary.BigEndian.PutUint32(outs[i][r.hdrLen+14:], uint32(seq+i))
				}
				if n, err := send.send(r.peer); err != nil || n != batch {
					t.Fatalf("send %d frames: sent %d, %v", batch, n, err)
				}
				r.postRX(batch, 2048)
				for i := seq; i < seq+batch; i++ {
					binary.BigEndian.PutUint32(msg[14:], uint32(i))
					if _, err := r.tx.Post([][]byte{out}, nil); err != nil {
						t.Fatalf("post TX %d: %v", i, err)
					}
				}
				if r.tx.Kick() {
					r.txKick.Notify()
				}
				for i := seq; i < seq+batch; {
					if err := waitReadable(r.peer); err != nil {
						t.Fatalf("TX frame %d: %v (counters %s)", i, err, r.qp.Counters().Snapshot())
					}
					n, err := recv.recv(r.peer)
					if err == unix.EAGAIN || err == unix.EINTR {
						continue
					}
					if err != nil {
						t.Fatal(err)
					}
					for k := range min(n, seq+batch-i) {
						b := ins[k][:recv.hdrs[k].Len]
						if len(b) != r.hdrLen+64 || binary.BigEndian.Uint32(b[r.hdrLen+14:]) != uint32(i) {
							t.Fatalf("TX frame %d: got %d bytes numbered %d", i, len(b), binary.BigEndian.Uint32(b[r.hdrLen+14:]))
						}
						i++
					}
				}
				got := 0
				deadline := time.Now().Add(3 * time.Second)
				for got < batch {
					if time.Now().After(deadline) {
						t.Fatalf("RX frame %d: not delivered (counters %s)", seq+got, r.qp.Counters().Snapshot())
					}
					used := r.rx.Reap()
					if len(used) == 0 {
						time.Sleep(20 * time.Microsecond)
					}
					for _, u := range used {
						if len(u.Data) != r.hdrLen+64 || !bytes.Equal(u.Data[r.hdrLen+18:], msg[18:]) ||
							binary.BigEndian.Uint32(u.Data[r.hdrLen+14:]) != uint32(seq+got) {
							t.Fatalf("RX frame %d: got %d bytes numbered %d", seq+got, len(u.Data), binary.BigEndian.Uint32(u.Data[r.hdrLen+14:]))
						}
						got++
					}
					if err := r.rx.Err(); err != nil {
						t.Fatal(err)
					}
				}
				// The engine returns TX chains after it wrote them.
				for r.tx.Reap(); r.tx.InFlight() > 0; r.tx.Reap() {
					time.Sleep(20 * time.Microsecond)
				}
				if err := r.tx.Err(); err != nil {
					t.Fatal(err)
				}
			}
			// The worker adds a batch to its counters after it returned the
			// batch to the guest: wait for the last one each way.
			waitFor(t, func() bool { return r.qp.Counters().Load(TXPackets) == frames }, "tx_packets")
			waitFor(t, func() bool { return r.qp.Counters().Load(RXPackets) == frames }, "rx_packets")
			s := r.qp.Counters().Snapshot()
			if s[RXPackets] != frames || s[BrokenRings]+s[TXDropBadDescriptor]+s[RXDropBadDescriptor] != 0 {
				t.Errorf("counters %s: want %d frames each way and no errors", s, frames)
			}
			if !tc.packed {
				want := uint16((startIdx + frames) % 65536)
				if idx := r.tx.UsedIdx(); idx != want {
					t.Errorf("TX used idx %d, want %d", idx, want)
				}
			}
		})
	}
}

// waitReadable waits up to 3 seconds for fd to be readable.
func waitReadable(fd int) error {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(3 * time.Second)
	for {
		k, err := unix.Poll(fds, int(time.Until(deadline)/time.Millisecond))
		switch {
		case err == unix.EINTR && time.Now().Before(deadline):
		case err != nil:
			return err
		case k == 0:
			return fmt.Errorf("nothing within 3 s")
		default:
			return nil
		}
	}
}
