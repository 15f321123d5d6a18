package engine

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/virtio"
)

// Buffers that hold the largest frame the guest may get with room to
// spare are filled with one read(2); a frame that fills one exactly is
// larger than negotiated and dropped, like one that does not fit.
func TestRXSingleBufferRead(t *testing.T) {
	for _, mrg := range []bool{false, true} {
		t.Run(fmt.Sprintf("mrg=%v", mrg), func(t *testing.T) {
			f := virtio.FVersion1
			if mrg {
				f |= virtio.NetFMrgRxbuf
			}
			r := newRig(t, rigOptions{features: f, size: 64})
			r.postRX(int(r.rx.Size()), 2048)
			// 1518 fits the 1500-byte MTU; 2036 fills a 2048-byte
			// buffer behind the header; 3000 overflows it.
			sizes := []int{60, 1518, 2036, 100, 3000, 1514}
			for i, n := range sizes {
				r.writePeer(frame(n, i))
			}
			got := r.reapFrames(4, 2*time.Second)
			want := []int{60, 1518, 100, 1514}
			if len(got) != len(want) {
				t.Fatalf("got %d frames, want %d (counters %s)", len(got), len(want), r.qp.Counters().Snapshot())
			}
			for i, f := range got {
				if !bytes.Equal(f, frame(want[i], []int{0, 1, 3, 5}[i])) {
					t.Errorf("frame %d: %d bytes, want the %d-byte frame", i, len(f), want[i])
				}
			}
			waitFor(t, func() bool { return r.qp.Counters().Load(RXDropTruncated) == 2 }, "rx_drop_truncated=2")
		})
	}
}
