package offload

import (
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/virtio"
)

// reportGBps reports the throughput of n bytes per op as GB/s, beside the
// MB/s that SetBytes gives.
func reportGBps(b *testing.B, n int) {
	b.SetBytes(int64(n))
	b.ReportAllocs()
	b.Cleanup(func() {
		if s := b.Elapsed().Seconds(); s > 0 {
			b.ReportMetric(float64(n)*float64(b.N)/s/1e9, "GB/s")
		}
	})
}

// BenchmarkChecksum measures Checksum beside the word-at-a-time reference
// (frametest.Checksum) in the same run, so the ratio holds on a noisy
// machine.
func BenchmarkChecksum(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1500, 65535} {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		var sink uint16
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			reportGBps(b, n)
			for b.Loop() {
				sink += Checksum(buf, 0)
			}
		})
		b.Run("reference-"+strconv.Itoa(n), func(b *testing.B) {
			reportGBps(b, n)
			for b.Loop() {
				sink += frametest.Checksum(buf, 0)
			}
		})
		_ = sink
	}
}

// BenchmarkSegmentTSO4 cuts a 64 KiB TCPv4 frame into 46 segments, beside
// a baseline that only copies the same bytes into the same buffers.
func BenchmarkSegmentTSO4(b *testing.B) {
	frame, h := spec{payload: 65535 - 40, flags: 0x18}.offloaded(virtio.GSOTCPv4, 1448)
	out, _ := segmentBufs(64, 1514)
	sizes := make([]int, 64)
	b.Run("segment", func(b *testing.B) {
		reportGBps(b, len(frame))
		var n int
		for b.Loop() {
			var err error
			if n, err = Segment(frame, &h, out, sizes); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
	})
	b.Run("copy-baseline", func(b *testing.B) {
		reportGBps(b, len(frame))
		for b.Loop() {
			for i := range 46 {
				at := 54 + i*1448
				copy(out[i], frame[:54])
				copy(out[i][54:], frame[at:min(at+1448, len(frame))])
			}
		}
	})
}

func BenchmarkValidateTX(b *testing.B) {
	h := virtio.NetHdr{Flags: virtio.NeedsCsum, GSOType: virtio.GSOTCPv4, GSOSize: 1448, HdrLen: 54, CsumStart: 34, CsumOffset: 16}
	acked := HostFeatures | virtio.FVersion1
	b.ReportAllocs()
	for b.Loop() {
		if err := ValidateTX(&h, 65549, acked); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPartialCsum(b *testing.B) {
	frame, h := spec{payload: 1448, flags: 0x18}.offloaded(virtio.GSONone, 0)
	reportGBps(b, len(frame)-int(h.CsumStart))
	for b.Loop() {
		if _, _, err := PartialCsum(frame, &h); err != nil {
			b.Fatal(err)
		}
	}
}
