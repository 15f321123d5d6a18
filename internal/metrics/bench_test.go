package metrics

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/frametest"
	itest "github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/virtio"
	"github.com/vmnet-dev/vmnet/virtio/virtiotest"
)

// BenchmarkScrapeCost measures what a scraper costs the data path: a real
// device's queue pair moves frames between a Go guest driver and its TAP,
// in phases that alternate without and with a goroutine that gathers the
// device's Collector every 100 ms as Prometheus would scrape it
// (NewRegistry, with the process and Go collectors, encoded in the text
// format). tx sends 60-byte UDP frames the host drops (for another MAC);
// echo sends ICMP echo requests the host's kernel answers, 64 in flight,
// and counts the replies. It reports both rates (Mpps, scraped-Mpps), their
// ratio, the scrapes made per second of the scraped phases, and the wall
// and CPU time one scrape takes (its thread's CPU time: what it takes from
// the data path on a machine with no CPU to spare).
//
// Each of the 32 phases should last well over 100 ms: give it millions of
// frames (go test -run '^$' -bench ScrapeCost/tx -benchtime 4000000x
// ./metrics/, ScrapeCost/echo with 1000000x).
func BenchmarkScrapeCost(b *testing.B) {
	for _, mode := range []string{"tx", "echo"} {
		b.Run(mode, func(b *testing.B) { benchScrape(b, mode == "echo") })
	}
}

var (
	benchGuestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	benchGuestIP  = netip.MustParseAddr("10.0.0.2")
	benchHostIP   = netip.MustParseAddr("10.0.0.1")
)

// benchDevice is a one-pair device whose rings a Go guest drives.
type benchDevice struct {
	dev                            *backend.Device
	rx, tx                         *virtiotest.Guest
	rxKick, txKick, rxCall, txCall *os.File
	hdr                            []byte
}

func newBenchDevice(b *testing.B) *benchDevice {
	itest.RequireTUN(b)
	ns := itest.NetNS(b)
	tp, err := tap.Create(tap.Options{Queues: 1, NetNS: ns})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tp.Close() })
	itest.Exec(b, ns, "ip", "addr", "add", benchHostIP.String()+"/24", "dev", tp.Name())
	itest.Exec(b, ns, "ip", "link", "set", tp.Name(), "up")
	// The kernel answers the guest without asking ARP first.
	itest.Exec(b, ns, "ip", "neigh", "add", benchGuestIP.String(), "lladdr", benchGuestMAC.String(), "dev", tp.Name())
	dev, err := backend.New(backend.Options{TAP: tp, MAC: benchGuestMAC})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(dev.Close)
	acked := virtio.FVersion1 | virtio.FEventIdx | virtio.NetFMrgRxbuf
	if err := dev.SetFeatures(acked); err != nil {
		b.Fatal(err)
	}
	spec := virtiotest.QueueSpec{Size: 256, SlotSize: 2048, EventIdx: true}
	vm, err := virtiotest.NewMachine(virtiotest.MachineOptions{}, spec, spec)
	if err != nil {
		b.Fatal(err)
	}
	d := &benchDevice{dev: dev, rx: vm.Queue(0), tx: vm.Queue(1), hdr: make([]byte, virtio.HdrLenFor(acked))}
	files := make([]*os.File, 4)
	for i := range files {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			b.Fatal(err)
		}
		files[i] = os.NewFile(uintptr(fd), "eventfd")
		b.Cleanup(func() { files[i].Close() })
	}
	d.rxKick, d.rxCall, d.txKick, d.txCall = files[0], files[1], files[2], files[3]
	queues := make([]backend.QueueConfig, 2)
	for i, g := range []*virtiotest.Guest{d.rx, d.tx} {
		a := g.Areas()
		queues[i] = backend.QueueConfig{Size: a.Size, DescAddr: a.Desc, DriverAddr: a.Driver, DeviceAddr: a.Device,
			Kick: files[2*i], Call: files[2*i+1]}
	}
	if err := dev.Activate(vm.Memory(), queues); err != nil {
		b.Fatal(err)
	}
	for {
		if _, err := d.rx.PostRX(2048); err != nil {
			break
		}
	}
	kickQueue(b, d.rx, d.rxKick)
	return d
}

// kickQueue notifies the device when the guest's ring asks for it.
func kickQueue(b *testing.B, g *virtiotest.Guest, f *os.File) {
	if g.Kick() {
		if _, err := f.Write(binary.NativeEndian.AppendUint64(nil, 1)); err != nil {
			b.Fatal(err)
		}
	}
}

// move sends n frames from the guest and, with echo, waits for as many
// echo replies; it returns how long that took.
func (d *benchDevice) move(b *testing.B, n int, frame []byte, echo bool) time.Duration {
	msg := append(append([]byte(nil), d.hdr...), frame...)
	window := 256
	if echo {
		window = 64
	}
	deadline := time.Now().Add(time.Minute)
	t0 := time.Now()
	posted, sent, replies := 0, 0, 0
	for sent < n || echo && replies < n {
		for posted < n && posted-sent < window {
			if _, err := d.tx.PostTX(msg); err != nil {
				break
			}
			posted++
		}
		kickQueue(b, d.tx, d.txKick)
		got := len(d.tx.Reap())
		sent += got
		if echo {
			for _, u := range d.rx.Reap() {
				f := u.Data[len(d.hdr):]
				// An ICMP echo reply (IPv4, protocol 1, type 0).
				if len(f) > 34 && f[12] == 0x08 && f[13] == 0 && f[23] == 1 && f[34] == 0 {
					replies++
				}
				got++
				if _, err := d.rx.PostRX(2048); err != nil {
					b.Fatal(err)
				}
			}
			kickQueue(b, d.rx, d.rxKick)
		}
		if err := d.tx.Err(); err != nil {
			b.Fatal(err)
		}
		if got == 0 {
			if time.Now().After(deadline) {
				b.Fatalf("stuck: %d of %d frames sent, %d replies; counters %v", sent, n, replies, d.dev.Counters(0).Snapshot())
			}
			runtime.Gosched()
		}
	}
	return time.Since(t0)
}

// scraper gathers a registry every period, as Prometheus scrapes it.
type scraper struct {
	reg          *prometheus.Registry
	stop         chan struct{}
	wg           sync.WaitGroup
	n            int
	elapsed, cpu time.Duration
}

// threadCPU is the CPU time of the calling thread.
func threadCPU() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

func (s *scraper) start(b *testing.B, period time.Duration) {
	s.stop = make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// On one thread, whose CPU time is the scrapes' own.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			t0, c0 := time.Now(), threadCPU()
			mfs, err := s.reg.Gather()
			if err != nil {
				b.Error(err)
				return
			}
			enc := expfmt.NewEncoder(io.Discard, expfmt.NewFormat(expfmt.TypeTextPlain))
			for _, mf := range mfs {
				enc.Encode(mf)
			}
			s.elapsed += time.Since(t0)
			s.cpu += threadCPU() - c0
			s.n++
		}
	}()
}

func (s *scraper) halt() {
	close(s.stop)
	s.wg.Wait()
}

func benchScrape(b *testing.B, echo bool) {
	b.StopTimer()
	d := newBenchDevice(b)
	col := NewCollector()
	defer col.AddDevice(d.dev)()
	sc := &scraper{reg: NewRegistry(col)}
	tapMAC, err := d.dev.TAP().MAC()
	if err != nil {
		b.Fatal(err)
	}
	spec := frametest.Spec{SrcMAC: benchGuestMAC, DstMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99},
		Src: benchGuestIP, Dst: netip.MustParseAddr("10.0.0.3"), Proto: frametest.ProtoUDP,
		SrcPort: 4000, DstPort: 9, Payload: make([]byte, 18)}
	if echo {
		spec = frametest.Spec{SrcMAC: benchGuestMAC, DstMAC: tapMAC, Src: benchGuestIP, Dst: benchHostIP,
			Proto: frametest.ProtoICMP, Type: 8, Payload: make([]byte, 4+18)}
	}
	frame := spec.Build()
	// A warm-up: the first frames wait for the device and the kernel.
	d.move(b, 1000, frame, echo)

	// Many short phases, so that other work on the machine weighs on
	// both alike.
	const phases = 32
	var plain, scraped time.Duration
	plainN, scrapedN := 0, 0
	b.ResetTimer()
	for k := range phases {
		m := b.N / phases
		if k == phases-1 {
			m = b.N - (phases-1)*(b.N/phases)
		}
		m = max(m, 1)
		on := k%2 == 1
		if on {
			sc.start(b, 100*time.Millisecond)
		}
		b.StartTimer()
		t := d.move(b, m, frame, echo)
		b.StopTimer()
		if on {
			sc.halt()
			scraped += t
			scrapedN += m
		} else {
			plain += t
			plainN += m
		}
	}
	p := float64(plainN) / plain.Seconds() / 1e6
	s := float64(scrapedN) / scraped.Seconds() / 1e6
	b.ReportMetric(p, "Mpps")
	b.ReportMetric(s, "scraped-Mpps")
	b.ReportMetric(s/p, "ratio")
	b.ReportMetric(float64(sc.n)/scraped.Seconds(), "scrapes/s")
	if sc.n > 0 {
		b.ReportMetric(float64(sc.elapsed.Microseconds())/float64(sc.n), "µs/scrape")
		b.ReportMetric(float64(sc.cpu.Microseconds())/float64(sc.n), "cpu-µs/scrape")
	}
	if n, _ := dropsOf(d.dev); n != 0 {
		b.Errorf("the queue pair dropped %d frames", n)
	}
}

func dropsOf(dev *backend.Device) (uint64, bool) {
	var n uint64
	for desc, v := range dev.Counters(0).Snapshot().All() {
		if desc.Drop {
			n += v
		}
	}
	return n, n > 0
}
