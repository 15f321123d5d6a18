package hostile_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/frametest"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/vhostuser"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

var (
	guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	guestIP  = netip.MustParseAddr("10.0.0.2")
	hostIP   = netip.MustParseAddr("10.0.0.1")
)

// The server's time limits in the suite: far above what a front-end that
// writes each message whole and reads each reply needs, short enough that
// the cases that run into them take a moment.
const (
	firstMessageTimeout = time.Second
	messageTimeout      = 500 * time.Millisecond
	replyTimeout        = 500 * time.Millisecond
)

// rig is one helper: a two-queue TAP in a namespace of its own where the
// host is 10.0.0.1, the device over it and the vhost-user server on a
// unix socket, serving one front-end after another for the whole suite.
type rig struct {
	ns   string
	tap  *tap.Device
	dev  *backend.Device
	srv  *vhostuser.Server
	path string
	log  lineBuffer

	// The process's descriptors and goroutines once the helper has served
	// a first front-end: what every case must come back to.
	baseFds, baseGoroutines, baseMaps int
}

func newRig(t *testing.T) *rig {
	t.Helper()
	testutil.RequireTUN(t)
	r := &rig{ns: testutil.NetNS(t)}
	var err error
	if r.tap, err = tap.Create(tap.Options{Name: "hostile%d", Queues: 2, NetNS: r.ns}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.tap.Close() })
	testutil.Exec(t, r.ns, "ip", "addr", "add", hostIP.String()+"/24", "dev", r.tap.Name())
	testutil.Exec(t, r.ns, "ip", "link", "set", r.tap.Name(), "up")
	log := hclog.New(&hclog.LoggerOptions{Name: "helper", Output: &r.log, Level: hclog.Info})
	if r.dev, err = backend.New(backend.Options{TAP: r.tap, MAC: guestMAC, Logger: log}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.dev.Close)
	r.srv = vhostuser.NewServer(r.dev.VhostUser(), vhostuser.Options{Logger: log,
		FirstMessageTimeout: firstMessageTimeout, MessageTimeout: messageTimeout, ReplyTimeout: replyTimeout})
	r.path = filepath.Join(t.TempDir(), "vhost-user.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.srv.Serve(ctx, r.path) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	// The socket file is there from bind(2) on, before listen(2): wait for
	// the server's word.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if log, _ := r.log.since(0); strings.Contains(log, "listening") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not listening on %s after 10 s", r.path)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r
}

// sessionOptions say how a front-end sets up its session.
type sessionOptions struct {
	features virtio.Features // 0: baseFeatures
	mem      memOptions
	// addMemReg hands the memory over with ADD_MEM_REG instead of
	// SET_MEM_TABLE.
	addMemReg bool
	// noRings stops after the memory: the case sets up rings itself.
	noRings bool
	// sameKickCall hands each ring's kick eventfd over as its call too.
	sameKickCall bool
}

// session is a front-end that negotiated, shared its memory and, unless
// told otherwise, set up and enabled every ring.
type session struct {
	fe     *frontEnd
	mem    *guestMem
	files  [numRings]ringFiles
	packed bool
}

// open sets a session up on fe, which it takes: close closes it.
func (r *rig) open(fe *frontEnd, o sessionOptions) (*session, error) {
	if o.features == 0 {
		o.features = baseFeatures
	}
	s := &session{fe: fe, packed: o.features.Has(virtio.FRingPacked)}
	o.mem.packed, o.mem.eventIdx = s.packed, o.features.Has(virtio.FEventIdx)
	var err error
	if s.mem, err = newGuestMem(o.mem); err != nil {
		s.close()
		return nil, err
	}
	for i := range s.files {
		if s.files[i].kick, err = newEventFD(); err != nil {
			s.close()
			return nil, err
		}
		if o.sameKickCall {
			s.files[i].call = s.files[i].kick
		} else if s.files[i].call, err = newEventFD(); err != nil {
			s.close()
			return nil, err
		}
	}
	if err := s.setUp(o); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *session) setUp(o sessionOptions) error {
	if err := s.fe.negotiate(o.features); err != nil {
		return err
	}
	if o.addMemReg {
		if err := s.fe.mustAck(vhostuser.ReqAddMemReg, vhostuser.MemRegionMsg{Region: s.mem.region()}, s.mem.fd); err != nil {
			return err
		}
	} else if err := s.fe.mustAck(vhostuser.ReqSetMemTable, s.mem.table(), s.mem.fd); err != nil {
		return err
	}
	if o.noRings {
		return nil
	}
	for i := range numRings {
		if err := s.fe.setUpRing(i, s.mem.vringAddr(i), s.base(), s.files[i]); err != nil {
			return err
		}
	}
	return nil
}

// base is SET_VRING_BASE of a new ring: for a packed ring both wrap
// counters start at 1 (virtio 1.2 §2.8.1).
func (s *session) base() uint32 {
	if s.packed {
		return virtio.PackedWrap | virtio.PackedWrap<<16
	}
	return 0
}

// close hangs up and releases the front-end's files and memory.
func (s *session) close() {
	if s.fe != nil {
		s.fe.close()
	}
	// Files may be shared between rings: *os.File closes once.
	for _, f := range s.files {
		if f.kick != nil {
			f.kick.Close()
		}
		if f.call != nil {
			f.call.Close()
		}
	}
	if s.mem != nil {
		s.mem.close()
	}
}

// arpFrame is the guest's ARP request for the host, after its vnet
// header.
func arpFrame() []byte {
	return append(make([]byte, hdrLen), frametest.ARP{Op: frametest.ARPRequest, SenderMAC: guestMAC,
		SenderIP: guestIP, TargetIP: hostIP}.Build()...)
}

// isARPReply reports whether a received buffer is the host's answer.
func isARPReply(b []byte) bool {
	if len(b) < hdrLen {
		return false
	}
	a, err := frametest.ParseARP(b[hdrLen:])
	return err == nil && a.Op == frametest.ARPReply && a.SenderIP == hostIP && bytes.Equal(a.TargetMAC, guestMAC)
}

// arp has the guest ask for the host on TX ring tx, resending, until the
// kernel's reply arrives on one of the RX rings (the steering program
// sends what is not IP to queue 0; the kernel's own steering to where the
// guest last sent): proof that frames cross the TAP both ways.
func (s *session) arp(tx int, d time.Duration) error {
	rxRings := []int{0, 2}
	for _, i := range rxRings {
		g := s.mem.vm.Queue(i)
		for {
			if _, err := g.PostRX(slotSize); err != nil {
				break
			}
		}
		if err := kick(s.files[i].kick); err != nil {
			return fmt.Errorf("kick RX ring %d: %w", i, err)
		}
	}
	g := s.mem.vm.Queue(tx)
	frame := arpFrame()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		g.Reap()
		if _, err := g.PostTX(frame); err != nil && !errors.Is(err, virtiotest.ErrFull) {
			return fmt.Errorf("post on TX ring %d: %w", tx, err)
		}
		if err := kick(s.files[tx].kick); err != nil {
			return fmt.Errorf("kick TX ring %d: %w", tx, err)
		}
		for until := time.Now().Add(200 * time.Millisecond); time.Now().Before(until); {
			for _, i := range rxRings {
				rx := s.mem.vm.Queue(i)
				used := rx.Reap()
				for _, u := range used {
					if isARPReply(u.Data) {
						return nil
					}
					rx.PostRX(slotSize)
				}
				if len(used) > 0 {
					kick(s.files[i].kick)
				}
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, i := range append(rxRings, tx) {
		if err := s.mem.vm.Queue(i).Err(); err != nil {
			return fmt.Errorf("ring %d: the device broke the protocol: %w", i, err)
		}
	}
	return fmt.Errorf("TX ring %d: no ARP reply within %v", tx, d)
}

// wellBehaved is a front-end that does everything right on a fresh
// connection: it must get an ARP request out through each queue pair and
// the host's reply back.
func (r *rig) wellBehaved() error {
	fe, err := dial(r.path)
	if err != nil {
		return err
	}
	s, err := r.open(fe, sessionOptions{})
	if err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	defer s.close()
	for _, tx := range []int{1, 3} {
		if err := s.arp(tx, 5*time.Second); err != nil {
			return fmt.Errorf("queue pair %d: %w", tx/2, err)
		}
	}
	s.close()
	return r.idle()
}

// idle waits until the server has torn down every connection it served:
// what the process holds is then the helper's alone.
func (r *rig) idle() error {
	var served, ended int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		log, _ := r.log.since(0)
		served = strings.Count(log, "front-end connected")
		ended = strings.Count(log, "front-end disconnected") + strings.Count(log, "front-end connection closed")
		if ended >= served {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("server still serving after 10 s: %d connections served, %d ended", served, ended)
}

// counters reads both queue pairs' counters.
func (r *rig) counters() [2]engine.Snapshot {
	return [2]engine.Snapshot{r.dev.Counters(0).Snapshot(), r.dev.Counters(1).Snapshot()}
}

// settle waits up to d for get to fall to at most want, and returns what
// it last saw.
func settle(get func() int, want int, d time.Duration) int {
	n := get()
	for deadline := time.Now().Add(d); n > want && time.Now().Before(deadline); n = get() {
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

// settledGoroutines counts goroutines once the count stops changing.
func settledGoroutines() int {
	n, same := runtime.NumGoroutine(), 0
	for i := 0; i < 100 && same < 3; i++ {
		time.Sleep(20 * time.Millisecond)
		if m := runtime.NumGoroutine(); m == n {
			same++
		} else {
			n, same = m, 0
		}
	}
	return n
}

// memfdMaps counts the process's mappings of memfds: guest memory that
// the helper or a front-end still holds.
func memfdMaps() int {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return -1
	}
	return strings.Count(string(b), "/memfd:")
}

// lineBuffer is the helper's log, shared by its goroutines and the test.
type lineBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lineBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// since returns what was logged after offset n, and the offset now.
func (l *lineBuffer) since(n int) (string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()[n:], l.b.Len()
}

// warnings counts the lines at warn level and above.
func warnings(log string) int {
	return strings.Count(log, "[WARN]") + strings.Count(log, "[ERROR]")
}

// packetSocket opens a raw socket on the TAP in its namespace: frames
// written to it leave through the TAP, towards the guest.
func (r *rig) packetSocket(t *testing.T) int {
	t.Helper()
	fd := -1
	testutil.InNetNS(t, r.ns, func() error {
		ifi, err := net.InterfaceByName(r.tap.Name())
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", r.tap.Name(), err)
		}
		return nil
	})
	return fd
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
