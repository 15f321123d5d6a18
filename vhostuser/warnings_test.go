package vhostuser

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// warnLines returns the lines of log at warn level that hold msg.
func warnLines(log, msg string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "[WARN]") && strings.Contains(l, msg) {
			out = append(out, l)
		}
	}
	return out
}

// A front-end that repeats a failing request with NEED_REPLY is answered
// every time and counted every time, but logged at warn level once per
// connection (then at most once a minute): it does not decide how much
// the helper logs. It logged a line per request.
func TestFailedRequestsWarnOnce(t *testing.T) {
	before := openFDs(t)
	var logs logBuffer
	srv := NewServer(newFakeDevice(), Options{Logger: testLogger(&logs)})
	for conn := 1; conn <= 2; conn++ {
		c, fe := socketPair(t)
		wait := serve(t, srv, c)
		for range 1000 {
			if got := fe.ack(ReqSetVringNum, VringState{Index: 200, Num: 256}); got == 0 {
				t.Fatalf("SET_VRING_NUM of ring 200 of 2: got ack 0, want failure")
			}
		}
		fe.close()
		if err := wait(); err != nil {
			t.Fatalf("ServeConn: %v", err)
		}
		lines := warnLines(logs.String(), "request failed")
		if len(lines) != conn || !strings.Contains(lines[conn-1], "times=1") {
			t.Fatalf("after connection %d: got %d \"request failed\" warnings, want %d, the first of each connection (times=1):\n%s",
				conn, len(lines), conn, strings.Join(lines, "\n"))
		}
	}
	if got := srv.Stats().Rejected; got != 2000 {
		t.Errorf("Stats.Rejected: got %d, want 2000", got)
	}
	checkNoFDLeak(t, before)
}

// A front-end that takes the region its rings live in away and gives it
// back, over and over, while another region stays, leaves the rings
// stopped each time; that is logged once, not once per ring and removal.
// It logged a line per ring and removal.
func TestRingStaysStoppedWarnsOnce(t *testing.T) {
	before := openFDs(t)
	dev := newFakeDevice()
	var logs logBuffer
	srv := NewServer(dev, Options{Logger: testLogger(&logs)})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	negotiate(t, fe, dev, qemuProtocol, uint64(virtio.FVersion1)|FProtocolFeatures)

	mfd := memfd(t, guestSize)
	defer unix.Close(mfd)
	rings := guestRegion()
	other := MemoryRegion{GuestAddr: 1 << 32, Size: 4096, UserAddr: 1 << 44}
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: rings}, mfd)
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: other}, mfd)
	for i := uint32(0); i < 2; i++ {
		fe.setUpRing(i, 256)
		fe.mustAck(ReqSetVringEnable, VringState{Index: i, Num: 1})
	}
	for range 100 {
		fe.mustAck(ReqRemMemReg, MemRegionMsg{Region: rings})
		if _, ok := dev.queue(0); ok {
			t.Fatalf("ring 0 runs with its region removed")
		}
		fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: rings}, mfd)
	}
	for i := range 2 {
		if _, ok := dev.queue(i); !ok {
			t.Fatalf("ring %d stopped after its region came back; device events %q", i, dev.eventList())
		}
	}
	if lines := warnLines(logs.String(), "ring stays stopped"); len(lines) != 1 {
		t.Errorf("got %d \"ring stays stopped\" warnings for 100 removals of 2 rings' region, want 1:\n%s",
			len(lines), strings.Join(lines, "\n"))
	}
	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	unix.Close(mfd)
	checkNoFDLeak(t, before)
}
