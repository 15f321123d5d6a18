package engine

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// hashKey is the key of Microsoft's RSS verification suite.
var hashKey = []byte{0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
	0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
	0xbe, 0xac, 0x01, 0xfa}

func newHasher(t testing.TB, types virtio.HashTypes) *virtio.Hasher {
	t.Helper()
	h, err := virtio.NewHasher(hashKey, types)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// With HASH_REPORT acked, every frame the guest receives carries the hash
// virtio.Hasher computes under the configuration of the moment, or NONE
// with zeros when there is none or the types select nothing; whatever the
// kernel (or the guest's own stale bytes) left in those fields is gone.
// Buffers of every framing: one per chain, mergeable ones, and a header
// split over descriptors.
func TestHashReport(t *testing.T) {
	frames := [][]byte{
		frametest.Spec{Src: guest4, Dst: peer4, Proto: frametest.ProtoTCP, SrcPort: 40000, DstPort: 443, Payload: make([]byte, 100)}.Build(),
		frametest.Spec{Src: peer6, Dst: guest6, Proto: frametest.ProtoUDP, SrcPort: 53, DstPort: 40000, Payload: make([]byte, 1400)}.Build(),
		frametest.Spec{VLANs: []uint16{frametest.EtherVLAN}, Src: guest4, Dst: peer4, Proto: frametest.ProtoICMP, Type: 8, Payload: make([]byte, 8)}.Build(),
		frametest.Spec{EtherType: frametest.EtherARP, Payload: make([]byte, 28)}.Build(),
	}
	all, tcpOnly := newHasher(t, virtio.HashAll), newHasher(t, virtio.HashTCPv4)
	for _, layout := range []struct {
		name     string
		features virtio.Features
		guest    virtiotest.Options
	}{
		{"a buffer per chain", virtio.FVersion1 | virtio.NetFHashReport, virtiotest.Options{}},
		{"mergeable buffers", virtio.FVersion1 | virtio.NetFHashReport | virtio.NetFMrgRxbuf, virtiotest.Options{}},
		// 229 descriptors a chain: the frame's headers are gathered.
		{"header over descriptors of 7 bytes", virtio.FVersion1 | virtio.NetFHashReport, virtiotest.Options{Segment: 7}},
	} {
		t.Run(layout.name, func(t *testing.T) {
			var cfg atomic.Pointer[virtio.Hasher]
			r := newRig(t, rigOptions{features: layout.features, guest: layout.guest, size: 1024, rxSlot: 1600,
				mod: func(c *Config) { c.Hash = &cfg }})
			if r.hdrLen != virtio.HdrLenHash {
				t.Fatalf("header of %d bytes with HASH_REPORT", r.hdrLen)
			}
			r.postRX(4, 1600)
			for _, h := range []*virtio.Hasher{nil, all, tcpOnly, all} {
				cfg.Store(h)
				for _, f := range frames {
					// The kernel's end writes junk where the hash goes.
					hdr := make([]byte, virtio.HdrLenHash)
					for i := virtio.HdrLenV1; i < len(hdr); i++ {
						hdr[i] = 0xa5
					}
					if _, err := unix.Write(r.peer, append(hdr, f...)); err != nil {
						t.Fatal(err)
					}
					got := r.reap(5 * time.Second)
					if len(got) != 1 {
						t.Fatalf("%d frames received, want 1", len(got))
					}
					var want virtio.NetHdr
					if h != nil {
						want.HashValue, want.HashReport = h.Hash(f)
					}
					if g := got[0].hdr; g.HashValue != want.HashValue || g.HashReport != want.HashReport {
						t.Errorf("hasher %v: frame of %d bytes: hash %#08x %s, want %#08x %s", h != nil, len(f), g.HashValue, g.HashReport,
							want.HashValue, want.HashReport)
					}
				}
			}
		})
	}
}

// Without a hash configuration of its own (Config.Hash nil) a 20-byte
// header still reports nothing.
func TestHashReportNoConfig(t *testing.T) {
	r := newRig(t, rigOptions{features: virtio.FVersion1 | virtio.NetFHashReport})
	r.postRX(4, 2048)
	hdr := make([]byte, virtio.HdrLenHash)
	binary.LittleEndian.PutUint32(hdr[12:], 0xdeadbeef)
	binary.LittleEndian.PutUint16(hdr[16:], 3)
	f := frametest.Spec{Src: guest4, Dst: netip.MustParseAddr("10.77.0.9"), Proto: frametest.ProtoUDP, SrcPort: 1, DstPort: 2}.Build()
	if _, err := unix.Write(r.peer, append(hdr, f...)); err != nil {
		t.Fatal(err)
	}
	got := r.reap(5 * time.Second)
	if len(got) != 1 || got[0].hdr.HashValue != 0 || got[0].hdr.HashReport != virtio.HashReportNone {
		t.Fatalf("got %+v, want one frame with hash 0, NONE", got)
	}
}
