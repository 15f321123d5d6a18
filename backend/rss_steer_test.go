package backend_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
)

// steerPort is the guest's UDP port the flows of the steering tests go to.
const steerPort = 5000

// flowFrame is a flow's frame as the guest received it, its header
// decoded, and the receive queue it came on.
type flowFrame struct {
	queue int
	hdr   virtio.NetHdr
	frame []byte
}

// sendFlows sends one datagram of each of n UDP flows from the host
// (10.0.0.1, source port 40000+i) to the guest, and returns each flow's
// frame as the guest's receive queues got it.
func (r *vmRig) sendFlows(n, pairs int) map[int]flowFrame {
	r.t.Helper()
	testutil.InNetNS(r.t, r.ns, func() error {
		for i := range n {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: hostIP, Port: 40000 + i}, &net.UDPAddr{IP: guestIP, Port: steerPort})
			if err != nil {
				return err
			}
			_, err = c.Write([]byte("steer me"))
			c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	got := map[int]flowFrame{}
	hdrLen := virtio.HdrLenFor(r.acked)
	for deadline := time.Now().Add(10 * time.Second); len(got) < n && time.Now().Before(deadline); {
		idle := true
		for q := range pairs {
			rx := r.vm.Queue(2 * q)
			for _, u := range rx.Reap() {
				idle = false
				var h virtio.NetHdr
				if err := h.Decode(u.Data, hdrLen, virtio.LittleEndian); err != nil {
					r.t.Fatal(err)
				}
				f := append([]byte(nil), u.Data[hdrLen:]...)
				p, err := frametest.Parse(f)
				if err != nil || p.Proto != frametest.ProtoUDP || p.DstPort != steerPort {
					continue // the host's own chatter: IPv6 router solicitations and the like
				}
				i := int(p.SrcPort) - 40000
				if _, dup := got[i]; dup {
					r.t.Errorf("flow %d: a second datagram", i)
				}
				got[i] = flowFrame{queue: q, hdr: h, frame: f}
			}
			// Give the buffers back.
			for {
				if _, err := rx.PostRX(2048); err != nil {
					break
				}
			}
			kick(rx, r.queues[2*q].Kick)
		}
		if idle {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if len(got) < n {
		r.t.Fatalf("%d of %d flows reached the guest; counters %v", len(got), n, r.dev.Counters(0).Snapshot())
	}
	return got
}

// distribution counts the flows on each of pairs queues.
func distribution(flows map[int]flowFrame, pairs int) []int {
	count := make([]int, pairs)
	for _, f := range flows {
		count[f.queue]++
	}
	return count
}

// A guest that negotiated RSS and hash reports (Linux acks everything
// offered) gets each flow on the receive queue its key and indirection
// table pick, with the hash it computed in the header; a new table moves
// the flows live; VQ_PAIRS_SET brings the hash program back; and what the
// guest's configurations put where is logged, beside the other steerings.
func TestRSSSteersGuestFlows(t *testing.T) {
	const pairs, flows = 4, 64
	r := newVMRig(t, pairs)
	acked := linuxAcks(r.dev, false, true)
	if !acked.Has(virtio.NetFRSS | virtio.NetFHashReport) {
		t.Fatalf("offered %v: want RSS and HASH_REPORT", acked)
	}
	r.layOut(acked)
	if err := r.dev.Activate(r.vm.Memory(), r.queues); err != nil {
		t.Fatal(err)
	}
	testutil.Exec(t, r.ns, "ip", "neigh", "replace", guestIP.String(), "lladdr", guestMAC.String(), "dev", r.tap.Name(), "nud", "permanent")
	ctrl := 2 * pairs
	key := []byte(strings.Repeat("vmnet RSS key, 40 bytes of Toeplitz... ", 2)[:virtio.RSSKeySize])
	hasher, err := virtio.NewHasher(key, virtio.HashAll)
	if err != nil {
		t.Fatal(err)
	}
	var report strings.Builder
	fmt.Fprintf(&report, "%-22s %5s %5s %5s %5s\n", "steering", "q0", "q1", "q2", "q3")
	logRow := func(name string, got map[int]flowFrame) {
		c := distribution(got, pairs)
		fmt.Fprintf(&report, "%-22s %5d %5d %5d %5d\n", name, c[0], c[1], c[2], c[3])
	}

	// Before any RSS_CONFIG the guest has one pair (virtio 1.2 §5.1.6.5.5).
	for _, c := range []struct {
		name  string
		table []uint16 // repeated over 128 entries
	}{
		{"rss, equal 4", []uint16{0, 1, 2, 3}},
		{"rss, weight 4 2 1 1", []uint16{0, 0, 0, 0, 1, 1, 2, 3}},
	} {
		name, table := c.name, c.table
		cfg := virtio.RSSConfig{HashTypes: virtio.HashAll, MaxTxVQ: pairs, Key: key}
		for i := range 128 {
			cfg.IndirectionTable = append(cfg.IndirectionTable, table[i%len(table)])
		}
		if ack := r.ctrl(ctrl, virtio.CtrlCommand{Class: virtio.CtrlMQ, Command: virtio.CtrlMQRSSConfig, RSS: cfg}); ack != virtio.CtrlOK {
			t.Fatalf("%s: RSS_CONFIG ack %d", name, ack)
		}
		if _, ok := r.dev.RSS(); !ok || r.dev.ActivePairs() != pairs {
			t.Fatalf("%s: after RSS_CONFIG, RSS steers %v with %d pairs active", name, ok, r.dev.ActivePairs())
		}
		pc := ebpf.RSSConfig{Hasher: hasher, Table: cfg.IndirectionTable, Unclassified: cfg.UnclassifiedQueue}
		got := r.sendFlows(flows, pairs)
		for i, f := range got {
			if want := int(ebpf.RSSQueue(pc, f.frame)); f.queue != want {
				t.Errorf("%s: flow %d on receive queue %d, RSS says %d", name, i, f.queue, want)
			}
			v, rep := hasher.Hash(f.frame)
			if f.hdr.HashValue != v || f.hdr.HashReport != rep {
				t.Errorf("%s: flow %d reports %#08x %s, want %#08x %s", name, i, f.hdr.HashValue, f.hdr.HashReport, v, rep)
			}
		}
		logRow(name, got)
	}

	// VQ_PAIRS_SET: the hash program steers again; frames still report
	// the guest's hash.
	if ack := r.ctrl(ctrl, virtio.CtrlCommand{Class: virtio.CtrlMQ, Command: virtio.CtrlMQVQPairsSet, Pairs: pairs}); ack != virtio.CtrlOK {
		t.Fatalf("VQ_PAIRS_SET: ack %d", ack)
	}
	if _, ok := r.dev.RSS(); ok {
		t.Fatal("RSS still steers after VQ_PAIRS_SET")
	}
	got := r.sendFlows(flows, pairs)
	for i, f := range got {
		if want := int(ebpf.FlowHash(f.frame) % pairs); f.queue != want {
			t.Errorf("after VQ_PAIRS_SET: flow %d on receive queue %d, the hash program says %d", i, f.queue, want)
		}
		if v, rep := hasher.Hash(f.frame); f.hdr.HashValue != v || f.hdr.HashReport != rep {
			t.Errorf("after VQ_PAIRS_SET: flow %d reports %#08x %s, want %#08x %s", i, f.hdr.HashValue, f.hdr.HashReport, v, rep)
		}
	}
	logRow("hash (VQ_PAIRS_SET)", got)
	t.Logf("%d UDP flows 10.0.0.1:40000-%d -> 10.0.0.2:%d over a 4-pair device:\n%s", flows, 40000+flows-1, steerPort, report.String())
}
