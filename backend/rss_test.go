package backend

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
)

// rssAcked is what a Linux guest acks of a ControlQueue device that offers
// RSS and hash reports.
const rssAcked = ctrlAcked | rssFeatures

var rssKey = bytes.Repeat([]byte{0x6d, 0x5a, 0x56, 0xda, 0x25}, 8)

func rssCmd(types virtio.HashTypes, table []uint16, unclassified, maxTx uint16, key []byte) []byte {
	return cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlMQ, Command: virtio.CtrlMQRSSConfig, RSS: virtio.RSSConfig{
		HashTypes: types, IndirectionTable: table, UnclassifiedQueue: unclassified, MaxTxVQ: maxTx, Key: key}})
}

func hashCmd(types virtio.HashTypes, key []byte) []byte {
	return cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlMQ, Command: virtio.CtrlMQHashConfig,
		Hash: virtio.HashConfig{HashTypes: types, Key: key}})
}

func pairsCmd(n uint16) []byte {
	return cmdBytes(virtio.CtrlCommand{Class: virtio.CtrlMQ, Command: virtio.CtrlMQVQPairsSet, Pairs: n})
}

// equalTable is `ethtool -X eth0 equal k`.
func equalTable(n, k int) []uint16 {
	t := make([]uint16, n)
	for i := range t {
		t[i] = uint16(i % k)
	}
	return t
}

// startRings starts the first pairs queue pairs' rings and the control
// queue of d, which acked features, and returns the control ring.
func startRings(t *testing.T, d *Device, pairs int) *ring {
	t.Helper()
	ctrl, _ := startRingsAll(t, d, pairs)
	return ctrl
}

// startRingsAll is startRings that returns every ring as well, for a test
// that closes their eventfds itself (closeRings) before it counts fds.
func startRingsAll(t *testing.T, d *Device, pairs int) (ctrl *ring, all []*ring) {
	t.Helper()
	for i := 0; i < 2*pairs; i++ {
		r := newRing(t)
		all = append(all, r)
		if err := d.startQueue(i, r.q, r.kick.File(), r.call.File()); err != nil {
			t.Fatal(err)
		}
	}
	ctrl = newRing(t)
	all = append(all, ctrl)
	if err := d.startQueue(2*d.Pairs(), ctrl.q, ctrl.kick.File(), ctrl.call.File()); err != nil {
		t.Fatal(err)
	}
	return ctrl, all
}

// closeRings closes the test's own eventfds of rings (the device works on
// duplicates); their cleanup closes them again, to no effect.
func closeRings(rs []*ring) {
	for _, r := range rs {
		r.kick.Close()
		r.call.Close()
	}
}

// A device that serves its control queue offers RSS (where its steering
// program loads) and hash reports, with the config space fields they
// need; its vhost-user adapter offers neither.
func TestRSSOffer(t *testing.T) {
	d, _, _ := newTestDevice(t, 4, Options{ControlQueue: true})
	f := d.Features()
	if !f.Has(virtio.NetFRSS | virtio.NetFHashReport | virtio.NetFMQ) {
		t.Errorf("offered %v: want RSS, HASH_REPORT and MQ", f)
	}
	cfg := d.Config()
	if cfg.RSSMaxKeySize != virtio.RSSKeySize || cfg.RSSMaxIndirectionTableLength != ebpf.RSSMaxTable || cfg.SupportedHashTypes != virtio.HashAll {
		t.Errorf("config: key size %d, table length %d, hash types %s; want %d, %d, %s", cfg.RSSMaxKeySize,
			cfg.RSSMaxIndirectionTableLength, cfg.SupportedHashTypes, virtio.RSSKeySize, ebpf.RSSMaxTable, virtio.HashAll)
	}
	if err := cfg.Validate(f); err != nil {
		t.Error(err)
	}
	var b [4]byte
	if err := d.ReadConfig(20, b[:]); err != nil || virtio.HashTypes(b[0])|virtio.HashTypes(b[1])<<8 != virtio.HashAll {
		t.Errorf("ReadConfig of supported_hash_types: % x, %v", b, err)
	}
	if f := d.VhostUser().Features(); f&rssFeatures != 0 {
		t.Errorf("vhost-user offered %v: the front-end serves the control queue, RSS is its to offer", f&rssFeatures)
	}

	// Without the control queue, nothing; with a steering the caller
	// chose, hash reports but not RSS.
	d2, _, _ := newTestDevice(t, 4, Options{})
	if f := d2.Features(); f&rssFeatures != 0 {
		t.Errorf("without ControlQueue: offered %v", f&rssFeatures)
	}
	for _, st := range []ebpf.Steering{ebpf.SteeringKernel, ebpf.SteeringQueue(1)} {
		d3, _, _ := newTestDevice(t, 4, Options{ControlQueue: true, Steering: st})
		if f := d3.Features(); f&rssFeatures != virtio.NetFHashReport {
			t.Errorf("steering %s: offered %v, want HASH_REPORT alone", st, f&rssFeatures)
		}
	}
}

// Where the RSS program cannot be loaded, RSS is not offered, one line
// says why, and the hash program steers.
func TestRSSFallsBackToHash(t *testing.T) {
	old := loadRSSProgram
	loadRSSProgram = func() (*ebpf.RSSProgram, error) { return nil, ebpf.ErrPermission }
	defer func() { loadRSSProgram = old }()
	var out syncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Info})
	d, _, _ := newTestDevice(t, 4, Options{ControlQueue: true, Logger: log})
	if f := d.Features(); f.Has(virtio.NetFRSS) || !f.Has(virtio.NetFHashReport) {
		t.Errorf("offered %v: want HASH_REPORT without RSS", f&rssFeatures)
	}
	if d.Steering() != ebpf.SteeringHash {
		t.Errorf("steering %s, want hash", d.Steering())
	}
	if n := strings.Count(out.String(), "RSS not offered"); n != 1 {
		t.Errorf("log has %d lines saying RSS is not offered, want 1:\n%s", n, out.String())
	}
	if cfg := d.Config(); cfg.RSSMaxIndirectionTableLength != 0 {
		t.Errorf("rss_max_indirection_table_length %d without RSS", cfg.RSSMaxIndirectionTableLength)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// RSS_CONFIG and HASH_CONFIG through the control queue, as the Go guest
// driver sends them: good ones take effect, bad ones (lengths, table
// sizes, queues, keys, types, features not negotiated) are refused and
// change nothing; VQ_PAIRS_SET goes back to automatic steering; reset
// forgets it all.
func TestRSSCommands(t *testing.T) {
	d, tp, _ := newTestDevice(t, 4, Options{ControlQueue: true})
	if err := d.SetFeatures(rssAcked); err != nil {
		t.Fatal(err)
	}
	ctrl := startRings(t, d, 3) // pair 3's rings are not set up
	expect := func(what string, cmd []byte, want virtio.CtrlAck) {
		t.Helper()
		if got := sendCtrl(t, ctrl, cmd); got != want {
			t.Errorf("%s: ack %d, want %d", what, got, want)
		}
	}
	if _, ok := d.RSS(); ok {
		t.Error("RSS steers before any RSS_CONFIG")
	}
	if d.rss.hasher.Load() != nil {
		t.Error("a hash is reported before any configuration")
	}

	good := rssCmd(virtio.HashAll, equalTable(128, 3), 1, 3, rssKey)
	expect("equal 3 over 3 pairs", good, virtio.CtrlOK)
	cfg, ok := d.RSS()
	if !ok || len(cfg.IndirectionTable) != 128 || cfg.UnclassifiedQueue != 1 || !bytes.Equal(cfg.Key, rssKey) || cfg.HashTypes != virtio.HashAll {
		t.Errorf("RSS() after RSS_CONFIG: %+v, %v", cfg, ok)
	}
	if n := attached(t, tp); n != 3 || d.ActivePairs() != 3 {
		t.Errorf("RSS_CONFIG with max_tx_vq 3: %d TAP queues attached, %d pairs active; want 3, 3", n, d.ActivePairs())
	}
	if h := d.rss.hasher.Load(); h == nil || h.Types() != virtio.HashAll {
		t.Errorf("hash reports after RSS_CONFIG with HASH_REPORT: %v", h)
	}
	// The table may name more pairs than max_tx_vq: they run too.
	expect("max_tx_vq 1, table over 3", rssCmd(virtio.HashIPv4, equalTable(4, 3), 0, 1, rssKey), virtio.CtrlOK)
	if d.ActivePairs() != 3 {
		t.Errorf("table over 3 pairs, max_tx_vq 1: %d pairs active, want 3", d.ActivePairs())
	}
	expect("equal 2, one entry", rssCmd(virtio.HashTCPv4, []uint16{1}, 0, 2, rssKey[:16]), virtio.CtrlOK)
	if n := attached(t, tp); n != 2 {
		t.Errorf("max_tx_vq 2, table naming pair 1: %d TAP queues attached, want 2", n)
	}
	before, _ := d.RSS()

	key41 := append(bytes.Clone(rssKey), 0)
	for _, c := range []struct {
		name string
		cmd  []byte
	}{
		{"table of 3 entries", rssCmd(virtio.HashAll, []uint16{0, 1, 2}, 0, 3, rssKey)},
		{"table of 512 entries", rssCmd(virtio.HashAll, equalTable(512, 3), 0, 3, rssKey)},
		{"entry naming pair 4 of 4", rssCmd(virtio.HashAll, []uint16{0, 4}, 0, 3, rssKey)},
		{"entry naming pair 3, not set up", rssCmd(virtio.HashAll, []uint16{0, 3}, 0, 3, rssKey)},
		{"unclassified pair 3, not set up", rssCmd(virtio.HashAll, []uint16{0, 1}, 3, 3, rssKey)},
		{"max_tx_vq 0", rssCmd(virtio.HashAll, []uint16{0, 1}, 0, 0, rssKey)},
		{"max_tx_vq 5 of 4", rssCmd(virtio.HashAll, []uint16{0, 1}, 0, 5, rssKey)},
		{"key of 41 bytes", rssCmd(virtio.HashAll, []uint16{0, 1}, 0, 3, key41)},
		{"unknown hash type", rssCmd(virtio.HashAll+1, []uint16{0, 1}, 0, 3, rssKey)},
		{"cut in the table", good[:2+8+100]},
		{"key longer than its length", append(bytes.Clone(good), 0)},
		{"key shorter than its length", good[:len(good)-1]},
		{"HASH_CONFIG key of 41 bytes", hashCmd(virtio.HashAll, key41)},
	} {
		expect(c.name, c.cmd, virtio.CtrlErr)
	}
	if after, ok := d.RSS(); !ok || !slicesEqual(after.IndirectionTable, before.IndirectionTable) || after.MaxTxVQ != before.MaxTxVQ {
		t.Errorf("refused commands changed the configuration: %+v, want %+v", after, before)
	}
	if n := attached(t, tp); n != 2 {
		t.Errorf("after refused commands: %d TAP queues attached, want 2 still", n)
	}

	// HASH_CONFIG changes what frames report, not the steering.
	expect("HASH_CONFIG", hashCmd(virtio.HashUDPv4, rssKey), virtio.CtrlOK)
	if h := d.rss.hasher.Load(); h == nil || h.Types() != virtio.HashUDPv4 {
		t.Errorf("hash reports after HASH_CONFIG: %v", h)
	}
	if _, ok := d.RSS(); !ok {
		t.Error("HASH_CONFIG stopped RSS steering")
	}
	// VQ_PAIRS_SET: automatic steering again; reports stay.
	expect("VQ_PAIRS_SET 3", pairsCmd(3), virtio.CtrlOK)
	if _, ok := d.RSS(); ok {
		t.Error("RSS still steers after VQ_PAIRS_SET")
	}
	if d.rss.hasher.Load() == nil {
		t.Error("VQ_PAIRS_SET dropped the hash configuration")
	}
	expect("RSS_CONFIG again", good, virtio.CtrlOK)
	if _, ok := d.RSS(); !ok {
		t.Error("RSS_CONFIG after VQ_PAIRS_SET: RSS does not steer")
	}
	d.Reset()
	if _, ok := d.RSS(); ok || d.rss.hasher.Load() != nil {
		t.Errorf("after reset: RSS steers %v, hash reported %v; want neither", ok, d.rss.hasher.Load() != nil)
	}
}

func slicesEqual(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Without RSS or HASH_REPORT acked, their commands are refused.
func TestRSSNotNegotiated(t *testing.T) {
	d, _, _ := newTestDevice(t, 2, Options{ControlQueue: true})
	if err := d.SetFeatures(ctrlAcked); err != nil {
		t.Fatal(err)
	}
	ctrl := startRings(t, d, 2)
	for _, c := range []struct {
		name string
		cmd  []byte
	}{
		{"RSS_CONFIG", rssCmd(virtio.HashAll, []uint16{0, 1}, 0, 2, rssKey)},
		{"HASH_CONFIG", hashCmd(virtio.HashAll, rssKey)},
	} {
		if got := sendCtrl(t, ctrl, c.cmd); got != virtio.CtrlErr {
			t.Errorf("%s without its feature: ack %d, want ERR", c.name, got)
		}
	}
	// HASH_REPORT alone: HASH_CONFIG, not RSS_CONFIG.
	d.Reset()
	if err := d.SetFeatures(ctrlAcked | virtio.NetFHashReport); err != nil {
		t.Fatal(err)
	}
	ctrl = startRings(t, d, 2)
	if got := sendCtrl(t, ctrl, hashCmd(virtio.HashAll, rssKey)); got != virtio.CtrlOK {
		t.Errorf("HASH_CONFIG with HASH_REPORT: ack %d", got)
	}
	if got := sendCtrl(t, ctrl, rssCmd(virtio.HashAll, []uint16{0, 1}, 0, 2, rssKey)); got != virtio.CtrlErr {
		t.Errorf("RSS_CONFIG with HASH_REPORT alone: ack %d, want ERR", got)
	}
	if _, ok := d.RSS(); ok {
		t.Error("RSS steers without RSS negotiated")
	}
}

// The device follows tun.c's numbering of attached queues, which a
// steering program answers with: pairs attached out of order, detached
// from the middle.
func TestTunOrder(t *testing.T) {
	d := &Device{}
	for _, i := range []int{0, 2, 1, 3} {
		d.tunAttached(i)
	}
	d.tunDetached(2) // tun moves the last (3) into 2's place
	d.tunDetached(7) // never attached: no change
	if want := []int{0, 3, 1}; !intsEqual(d.rss.order, want) {
		t.Errorf("order %v, want %v", d.rss.order, want)
	}
}

func intsEqual(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// 1,000 rounds of RSS_CONFIG (the RSS program configured and attached),
// HASH_CONFIG and VQ_PAIRS_SET (the hash program back), with a reset
// every 100 and 20 devices made and closed, leak no file descriptor and
// no eBPF program or map this process holds; once the devices and the
// TAP are gone, so is every program they loaded.
func TestRSSCyclesLeakNothing(t *testing.T) {
	testutil.RequireTUN(t)
	tp, err := tap.Create(tap.Options{NetNS: testutil.NetNS(t), Queues: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	fds, held := testutil.SettledFds(t), testutil.HeldBPF(t)
	var progs []uint32
	rng := rand.New(rand.NewPCG(9, 10))
	const rounds = 1000
	d, err := New(Options{TAP: tp, ControlQueue: true})
	if err != nil {
		t.Fatal(err)
	}
	progs = append(progs, testutil.BPFProgramID(t, d.rss.prog.FD()), testutil.BPFProgramID(t, d.rss.auto.FD()))
	var ctrl *ring
	var rings []*ring
	restart := func() {
		d.Reset()
		closeRings(rings)
		if err := d.SetFeatures(rssAcked); err != nil {
			t.Fatal(err)
		}
		ctrl, rings = startRingsAll(t, d, 4)
	}
	restart()
	for i := range rounds {
		if i > 0 && i%100 == 0 {
			restart()
		}
		n := 1 << rng.IntN(9) // 1 to 256 entries
		table := make([]uint16, n)
		for j := range table {
			table[j] = uint16(rng.IntN(4))
		}
		for _, c := range [][]byte{
			rssCmd(virtio.HashTypes(rng.Uint32())&virtio.HashAll, table, uint16(rng.IntN(4)), uint16(1+rng.IntN(4)), rssKey),
			hashCmd(virtio.HashTypes(rng.Uint32())&virtio.HashAll, rssKey[:rng.IntN(41)]),
			pairsCmd(uint16(1 + rng.IntN(4))),
		} {
			if got := sendCtrl(t, ctrl, c); got != virtio.CtrlOK {
				t.Fatalf("round %d: command % x: ack %d", i, c[:2], got)
			}
		}
	}
	d.Close()
	closeRings(rings)
	for range 20 {
		d, err := New(Options{TAP: tp, ControlQueue: true})
		if err != nil {
			t.Fatal(err)
		}
		progs = append(progs, testutil.BPFProgramID(t, d.rss.prog.FD()))
		if err := d.SetFeatures(rssAcked); err != nil {
			t.Fatal(err)
		}
		ctrl, rings := startRingsAll(t, d, 4)
		if got := sendCtrl(t, ctrl, rssCmd(virtio.HashAll, equalTable(128, 4), 0, 4, rssKey)); got != virtio.CtrlOK {
			t.Fatalf("RSS_CONFIG: ack %d", got)
		}
		d.Close()
		closeRings(rings)
	}
	testutil.WaitFds(t, fds)
	if now := testutil.HeldBPF(t); len(now.Progs) != len(held.Progs) || len(now.Maps) != len(held.Maps) {
		t.Errorf("eBPF objects held: %v, before %v", now, held)
	}
	// The TAP holds the hash program the last device left on it; closed,
	// it lets go, and nothing the devices loaded is left on the host.
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, id := range progs {
		for testutil.BPFProgramExists(t, id) {
			if time.Now().After(deadline) {
				t.Fatalf("eBPF program %d still exists after the devices and the TAP closed", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

var errNoRSS = errors.New("no RSS program")

// A device whose RSS program failed to load still offers the rest, and a
// driver that acks RSS cannot: the offer does not hold it.
func TestRSSNotOfferedRefusesAck(t *testing.T) {
	old := loadRSSProgram
	loadRSSProgram = func() (*ebpf.RSSProgram, error) { return nil, errNoRSS }
	defer func() { loadRSSProgram = old }()
	d, _, _ := newTestDevice(t, 2, Options{ControlQueue: true})
	var notOffered *virtio.NotOfferedError
	if err := d.SetFeatures(rssAcked); !errors.As(err, &notOffered) || notOffered.Bits != virtio.NetFRSS {
		t.Errorf("SetFeatures with RSS not offered: %v, want NotOfferedError for RSS", err)
	}
}

// queue:N attaches a program that sends every frame to one queue; a queue
// the TAP does not have is refused.
func TestSetSteeringQueue(t *testing.T) {
	testutil.RequireTUN(t)
	tp, err := tap.Create(tap.Options{NetNS: testutil.NetNS(t), Queues: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	if got, err := SetSteering(tp, ebpf.SteeringQueue(3), nil); err != nil || got != ebpf.SteeringQueue(3) {
		t.Errorf("SetSteering queue:3: %s, %v", got, err)
	}
	if _, err := SetSteering(tp, ebpf.SteeringQueue(4), nil); err == nil || !strings.Contains(err.Error(), "4 queues") {
		t.Errorf("SetSteering queue:4 on 4 queues: %v, want an error saying the TAP has 4 queues", err)
	}
	if _, err := SetSteering(tp, "rss", nil); err == nil {
		t.Error("SetSteering rss: nil error")
	}
}
