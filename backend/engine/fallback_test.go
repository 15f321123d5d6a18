package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// The software fallbacks, first over the socketpair rig, where the "TAP"
// shows exactly the bytes the engine wrote.

var (
	macA = net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x0a}
	macB = net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x0b}
	fl4  = frametest.Spec{SrcMAC: macA, DstMAC: macB, Src: netip.MustParseAddr("10.1.0.1"), Dst: netip.MustParseAddr("10.1.0.2"),
		DF: true, SrcPort: 40000, DstPort: 5001}
	fl6 = frametest.Spec{SrcMAC: macA, DstMAC: macB, Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"),
		SrcPort: 40000, DstPort: 5001}
)

// allTX are the transmit offloads a guest may be offered with the
// fallbacks behind them.
const allTX = virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.NetFCsum | virtio.NetFHostTSO4 | virtio.NetFHostTSO6 |
	virtio.NetFHostECN | virtio.NetFHostUFO | virtio.NetFHostUSO

// pattern is n bytes that differ at every offset modulo 251.
func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i + seed) % 251)
	}
	return b
}

// tsOpt is a TCP timestamp option padded to 12 bytes, as Linux sends it.
func tsOpt(val, echo uint32) []byte {
	o := []byte{1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(o[4:], val)
	binary.BigEndian.PutUint32(o[8:], echo)
	return o
}

// checkSegments checks that frames are orig (a TCP or UDP frame sent with
// GSO of mss bytes) cut the way the kernel cuts it: complete checksums,
// at most mss bytes of payload each, the payload in order, TCP sequence
// numbers following it, IPv4 ids counting up.
func checkSegments(frames [][]byte, orig []byte, mss int) error {
	op, err := parsePacket(orig, true)
	if err != nil {
		return fmt.Errorf("original: %w", err)
	}
	want := (len(op.Payload) + mss - 1) / mss
	if len(frames) != want {
		return fmt.Errorf("got %d segments, want %d", len(frames), want)
	}
	var got []byte
	for i, f := range frames {
		p, err := parsePacket(f, false)
		if err != nil {
			return fmt.Errorf("segment %d: %w", i, err)
		}
		if len(p.Payload) > mss || (i < len(frames)-1 && len(p.Payload) != mss) {
			return fmt.Errorf("segment %d: %d bytes of payload, gso_size %d", i, len(p.Payload), mss)
		}
		if p.Proto != op.Proto || p.SrcPort != op.SrcPort || p.DstPort != op.DstPort {
			return fmt.Errorf("segment %d: proto %d ports %d>%d, want %d %d>%d", i, p.Proto, p.SrcPort, p.DstPort, op.Proto, op.SrcPort, op.DstPort)
		}
		if p.Proto == frametest.ProtoTCP {
			if wantSeq := op.Seq + uint32(len(got)); p.Seq != wantSeq {
				return fmt.Errorf("segment %d: seq %d, want %d", i, p.Seq, wantSeq)
			}
			if !bytes.Equal(p.Options, op.Options) {
				return fmt.Errorf("segment %d: tcp options %x, want %x", i, p.Options, op.Options)
			}
		}
		if !p.V6 && p.ID != op.ID+uint16(i) {
			return fmt.Errorf("segment %d: ipv4 id %d, want %d", i, p.ID, op.ID+uint16(i))
		}
		got = append(got, p.Payload...)
	}
	if !bytes.Equal(got, op.Payload) {
		return fmt.Errorf("segments carry %d bytes, different from the %d sent", len(got), len(op.Payload))
	}
	return nil
}

func TestFallbackNoVnetHdrTX(t *testing.T) {
	udp4 := fl4
	udp4.DstPort = 6000
	big := pattern(65000, 3)
	tso4 := tcp(fl4, 1000, 7, frametest.ACK|frametest.PSH, 500, tsOpt(1, 2), pattern(65483, 1), true)
	tso6 := tcp(fl6, 1<<31+5, 7, frametest.ACK, 500, tsOpt(1, 2), pattern(65503-32, 2), true)
	uso4 := udp(udp4, pattern(1472*40+100, 4), true)
	uso6 := udp(fl6, pattern(1452*20, 5), true)
	ufo4 := udp(udp4, pattern(9000, 6), true)
	for _, tc := range []struct {
		name  string
		frame []byte
		hdr   virtio.NetHdr
		check func(t *testing.T, got [][]byte, sent []byte)
		segs  int
	}{
		{"plain", udp(fl4, big[:1000], false), virtio.NetHdr{}, wantSame, 1},
		{"csum udp4", udp(udp4, big[:1001], true), gsoHdr(udp(udp4, nil, true), virtio.GSONone, 0), wantCompleted, 1},
		{"csum tcp6 odd", tcp(fl6, 9, 9, frametest.ACK, 9, nil, big[:3333], true), gsoHdr(tcp(fl6, 0, 0, 0, 0, nil, nil, true), virtio.GSONone, 0), wantCompleted, 1},
		{"tso4", tso4, gsoHdr(tso4, virtio.GSOTCPv4, 1448), wantSegments(1448), 46},
		{"tso6", tso6, gsoHdr(tso6, virtio.GSOTCPv6, 1428), wantSegments(1428), 46},
		{"tso4 small", tcp(fl4, 5, 5, frametest.ACK, 5, nil, big[:100], true), gsoHdr(tcp(fl4, 5, 5, frametest.ACK, 5, nil, big[:100], true), virtio.GSOTCPv4, 1448), wantSegments(1448), 1},
		{"uso4", uso4, gsoHdr(uso4, virtio.GSOUDPL4, 1472), wantSegments(1472), 41},
		{"uso6", uso6, gsoHdr(uso6, virtio.GSOUDPL4, 1452), wantSegments(1452), 20},
		{"ufo4", ufo4, gsoHdr(ufo4, virtio.GSOUDP, 1480), wantFragments, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, rigOptions{features: allTX, txSlot: 65600, size: 128,
				// Descriptors of 777 bytes: frames, headers and
				// checksum fields cross buffer boundaries.
				guest:     virtiotest.Options{Segment: 777},
				noVnetHdr: true})
			r.postTX([]virtio.NetHdr{tc.hdr}, [][]byte{tc.frame})
			got := r.readN(tc.segs)
			tc.check(t, got, tc.frame)
			waitFor(t, func() bool { return r.qp.Counters().Load(TXPackets) == 1 }, "tx_packets")
			s := r.qp.Counters().Snapshot()
			if s[TXDropSoftware]+s[TXDropKernel]+s[TXDropBadHeader] != 0 {
				t.Errorf("counters %s: want no drops", s)
			}
			if tc.hdr.GSOType != virtio.GSONone && (s[TXSoftGSO] != 1 || s[TXSoftSegments] != uint64(tc.segs)) {
				t.Errorf("counters %s: want tx_soft_gso=1 tx_soft_segments=%d", s, tc.segs)
			}
			if tc.hdr.GSOType == virtio.GSONone && tc.hdr.Flags != 0 && s[TXSoftCsum] != 1 {
				t.Errorf("counters %s: want tx_soft_csum=1", s)
			}
		})
	}
}

func wantSame(t *testing.T, got [][]byte, sent []byte) {
	t.Helper()
	if !bytes.Equal(got[0], sent) {
		t.Errorf("got %d bytes, want the %d sent, unchanged and without a header", len(got[0]), len(sent))
	}
}

// wantCompleted wants sent with its checksum completed and nothing else
// changed.
func wantCompleted(t *testing.T, got [][]byte, sent []byte) {
	t.Helper()
	if _, err := parsePacket(got[0], false); err != nil {
		t.Fatalf("checksum not completed: %v", err)
	}
	if len(got[0]) != len(sent) {
		t.Fatalf("got %d bytes, want %d", len(got[0]), len(sent))
	}
	p, err := frametest.Parse(sent)
	if err != nil {
		t.Fatal(err)
	}
	at := p.L4 + p.CsumOffset()
	if !bytes.Equal(got[0][:at], sent[:at]) || !bytes.Equal(got[0][at+2:], sent[at+2:]) {
		t.Errorf("bytes other than the checksum changed")
	}
}

func wantSegments(mss int) func(*testing.T, [][]byte, []byte) {
	return func(t *testing.T, got [][]byte, sent []byte) {
		t.Helper()
		if err := checkSegments(got, sent, mss); err != nil {
			t.Error(err)
		}
	}
}

// wantFragments wants the UDP datagram in sent as IPv4 fragments that
// reassemble to it, with its checksum completed.
func wantFragments(t *testing.T, got [][]byte, sent []byte) {
	t.Helper()
	op, err := parsePacket(sent, true)
	if err != nil {
		t.Fatal(err)
	}
	var whole []byte
	for i, f := range got {
		p, err := parsePacket(f, false)
		if err != nil {
			t.Fatalf("fragment %d: %v", i, err)
		}
		if !p.Fragment || p.FragOffset != len(whole) || p.More != (i < len(got)-1) || p.ID != op.ID {
			t.Fatalf("fragment %d: offset %d more %v id %d; want offset %d more %v id %d",
				i, p.FragOffset, p.More, p.ID, len(whole), i < len(got)-1, op.ID)
		}
		whole = append(whole, f[p.L4:]...)
	}
	// Reassembled, the datagram must check out.
	re := append(append([]byte(nil), sent[:op.L4]...), whole...)
	binary.BigEndian.PutUint16(re[frametest.EthLen+2:], uint16(len(re)-frametest.EthLen))
	re[frametest.EthLen+10], re[frametest.EthLen+11] = 0, 0
	binary.BigEndian.PutUint16(re[frametest.EthLen+10:], frametest.Checksum(re[frametest.EthLen:frametest.EthLen+frametest.IPv4Len], 0))
	p, err := parsePacket(re, false)
	if err != nil {
		t.Fatalf("reassembled: %v", err)
	}
	if !bytes.Equal(p.Payload, op.Payload) {
		t.Errorf("reassembled payload differs")
	}
}

// A TAP without vnet header: the guest still gets a header, all zeros but
// num_buffers, in front of each frame.
func TestFallbackNoVnetHdrRX(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features virtio.Features
		bufSize  int
	}{
		{"mergeable", virtio.FVersion1 | virtio.NetFMrgRxbuf, 1000},
		{"big buffers", virtio.FVersion1, 1514 + 12},
		{"legacy", virtio.NetFCsum, 1514 + 10},
		{"hash header", virtio.FVersion1 | virtio.NetFHashReport, 1514 + 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, rigOptions{features: tc.features, guest: virtiotest.Options{Segment: 61},
				noVnetHdr: true})
			// Up to 26 descriptors a chain: 8 chains fill most of the ring.
			r.postRX(8, tc.bufSize)
			for i, n := range []int{14, 60, 1000, 1514} {
				f := frame(n, i)
				if _, err := writeRaw(r.peer, f); err != nil {
					t.Fatal(err)
				}
				var used []virtiotest.Used
				deadline := time.Now().Add(2 * time.Second)
				for len(used) == 0 && time.Now().Before(deadline) {
					used = r.rx.Reap()
					time.Sleep(time.Millisecond)
				}
				if len(used) == 0 {
					t.Fatalf("frame %d: nothing delivered (counters %s)", i, r.qp.Counters().Snapshot())
				}
				hdr := used[0].Data[:r.hdrLen]
				wantHdr := make([]byte, r.hdrLen)
				if r.hdrLen >= virtio.HdrLenV1 {
					wantHdr[10] = byte(len(used))
				}
				if !bytes.Equal(hdr, wantHdr) {
					t.Errorf("frame %d: header %x, want %x", i, hdr, wantHdr)
				}
				var got []byte
				for j, u := range used {
					if j == 0 {
						got = append(got, u.Data[r.hdrLen:]...)
					} else {
						got = append(got, u.Data...)
					}
				}
				if !bytes.Equal(got, f) {
					t.Errorf("frame %d: got %d bytes, want %d", i, len(got), len(f))
				}
				r.postRX(len(used), tc.bufSize)
			}
		})
	}
}

// A kernel without USO: USO frames are segmented, every other frame keeps
// its header and goes to the kernel as it is.
func TestFallbackNoUSO(t *testing.T) {
	r := newRig(t, rigOptions{features: allTX, txSlot: 65600, size: 64, mod: func(c *Config) { c.NoUSO = true }})
	udp4 := fl4
	udp4.DstPort = 6000
	uso := udp(udp4, pattern(1400*10, 1), true)
	tso := tcp(fl4, 1, 1, frametest.ACK, 1, nil, pattern(20000, 2), true)
	r.postTX([]virtio.NetHdr{gsoHdr(uso, virtio.GSOUDPL4, 1400), gsoHdr(tso, virtio.GSOTCPv4, 1448)}, [][]byte{uso, tso})
	got := r.readN(11)
	var segs [][]byte
	for i, m := range got[:10] {
		if !bytes.Equal(m[:r.hdrLen], make([]byte, r.hdrLen)) {
			t.Errorf("segment %d: header %x, want zeros", i, m[:r.hdrLen])
		}
		segs = append(segs, m[r.hdrLen:])
	}
	if err := checkSegments(segs, uso, 1400); err != nil {
		t.Error(err)
	}
	want := withHdr(gsoHdr(tso, virtio.GSOTCPv4, 1448), r.hdrLen, tso)
	if !bytes.Equal(got[10], want) {
		t.Errorf("tso frame changed on its way: got %d bytes, want %d", len(got[10]), len(want))
	}
	waitFor(t, func() bool { return r.qp.Counters().Load(TXPackets) == 2 }, "tx_packets")
	if s := r.qp.Counters().Snapshot(); s[TXSoftGSO] != 1 || s[TXSoftSegments] != 10 {
		t.Errorf("counters %s: want tx_soft_gso=1 tx_soft_segments=10", s)
	}
}

// A GSO frame the fallback cannot cut into its scratch is dropped and
// counted, and the frames behind it still go.
func TestFallbackTooManySegments(t *testing.T) {
	r := newRig(t, rigOptions{features: allTX, txSlot: 65600, size: 64, noVnetHdr: true})
	tso := tcp(fl4, 1, 1, frametest.ACK, 1, nil, pattern(60000, 2), true)
	ok := udp(fl4, []byte("after"), false)
	r.postTX([]virtio.NetHdr{gsoHdr(tso, virtio.GSOTCPv4, 8), {}}, [][]byte{tso, ok})
	got := r.readN(1)
	if !bytes.Equal(got[0], ok) {
		t.Errorf("got %d bytes, want the frame after the dropped one", len(got[0]))
	}
	waitFor(t, func() bool { return r.qp.Counters().Load(TXDropSoftware) == 1 }, "tx_drop_software")
}
