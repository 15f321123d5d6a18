package vhostuser

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

func TestLimitTable(t *testing.T) {
	if err := limitTable.Check(); err != nil {
		t.Fatal(err)
	}
	if len(limitTable) != int(numLimits) {
		t.Fatalf("limitTable has %d entries, want one per Limit (%d)", len(limitTable), numLimits)
	}
	var s LimitStats
	s[LimitMemBytes] = 3
	want := "first_message_time=0 message_time=0 reply_time=0 payload_bytes=0 message_fds=0 mem_bytes=3 mem_slots=0"
	if got := s.String(); got != want {
		t.Errorf("LimitStats.String: got %q, want %q", got, want)
	}
	for l := range numLimits {
		if !errors.Is(&LimitError{Limit: l}, ErrLimit) || strings.Contains((&LimitError{Limit: l}).Error(), "%!") {
			t.Errorf("LimitError of %v: %q, want a well-formed error that is ErrLimit", l, (&LimitError{Limit: l}).Error())
		}
	}
}

// limitOf returns the limit err went past, -1 for none.
func limitOf(err error) Limit {
	var le *LimitError
	if !errors.As(err, &le) {
		return -1
	}
	return le.Limit
}

// checkLimited fails unless the server counted n refusals of l and none of any other limit.
func checkLimited(t *testing.T, srv *Server, l Limit, n uint64) {
	t.Helper()
	var want LimitStats
	want[l] = n
	if got := srv.Stats().Limited; got != want {
		t.Errorf("limits counted: got %s, want %s", got, want)
	}
}

// writeUntilBlocked sends msg again and again without reading until the back-end stops
// reading, and returns when it did.
func (f *frontEnd) writeUntilBlocked(msg []byte) time.Time {
	f.t.Helper()
	for range 1 << 20 {
		f.c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := f.c.Write(msg)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if n != 0 {
				// The next message would be read out of step.
				f.t.Fatalf("write cut a message at %d of %d bytes", n, len(msg))
			}
			return time.Now()
		}
		if err != nil {
			f.t.Fatalf("write request: %v", err)
		}
	}
	f.t.Fatalf("back-end never stopped reading")
	return time.Time{}
}

// waitPeerClosed keeps trying to send msg until the back-end has closed the connection, and
// returns when it had, or fails after limit.
func (f *frontEnd) waitPeerClosed(msg []byte, limit time.Duration) time.Time {
	f.t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		f.c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
		_, err := f.c.Write(msg)
		switch {
		case errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET):
			return time.Now()
		case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
			f.t.Fatalf("write while waiting for the back-end to close: %v", err)
		}
	}
	f.t.Fatalf("back-end did not close the connection within %v", limit)
	return time.Time{}
}

// TestReplyTimeout: a front-end that sends requests and never reads the replies loses its
// connection once a reply has waited ReplyTimeout, and the next front-end is served.
// Before the limit the server blocked in the reply's write for ever, and the front-end
// waiting behind it with it.
func TestReplyTimeout(t *testing.T) {
	fdsBefore, goBefore := openFDs(t), runtime.NumGoroutine()
	const timeout = 300 * time.Millisecond
	path := filepath.Join(t.TempDir(), "vhost.sock")
	dev := newFakeDevice()
	srv := NewServer(dev, Options{ReplyTimeout: timeout})
	stop := runServer(t, func(ctx context.Context) error { return srv.Serve(ctx, path) })

	stuck := dialFrontEnd(t, path)
	stuck.callU64(ReqGetFeatures, Empty{})
	next := dialFrontEnd(t, path) // waits in the listen backlog
	msg := AppendMessage(nil, ReqGetFeatures, Version, Empty{})
	blocked := stuck.writeUntilBlocked(msg)
	closed := stuck.waitPeerClosed(msg, timeout+5*time.Second)
	// The server blocked before the front-end's own writes did, so the gap is at most the
	// timeout; the slack is for a loaded machine.
	if d := closed.Sub(blocked); d > timeout+2*time.Second {
		t.Errorf("connection closed %v after the back-end stopped reading, want within %v", d, timeout)
	}
	stuck.close()
	dev.waitEvent(t, "reset")
	checkLimited(t, srv, LimitReplyTime, 1)

	startRing0(t, next)
	if _, ok := dev.queue(0); !ok {
		t.Fatalf("next front-end: ring 0 not started; events %q", dev.eventList())
	}
	next.close()
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if st := srv.Stats(); st.Sessions != 2 || st.Rejected != 0 {
		t.Errorf("stats: got %d sessions, %d rejected; want 2, 0", st.Sessions, st.Rejected)
	}
	checkNoFDLeak(t, fdsBefore)
	checkGoroutines(t, goBefore)
}

// TestFirstMessageTimeout: a connection that says nothing is closed after
// FirstMessageTimeout and the next front-end is served; one that spoke may then be silent
// for longer than every time limit.
func TestFirstMessageTimeout(t *testing.T) {
	fdsBefore, goBefore := openFDs(t), runtime.NumGoroutine()
	const timeout = 200 * time.Millisecond
	path := filepath.Join(t.TempDir(), "vhost.sock")
	dev := newFakeDevice()
	var logs logBuffer
	srv := NewServer(dev, Options{FirstMessageTimeout: timeout, MessageTimeout: timeout, Logger: testLogger(&logs)})
	stop := runServer(t, func(ctx context.Context) error { return srv.Serve(ctx, path) })

	start := time.Now()
	silent := dialFrontEnd(t, path)
	next := dialFrontEnd(t, path)
	// Its first message waits in the socket, so that its own clock cannot run out while
	// the test looks at the silent one.
	next.send(ReqGetFeatures, 0, Empty{})
	silent.expectClosed()
	if d := time.Since(start); d < timeout || d > timeout+2*time.Second {
		t.Errorf("silent connection closed after %v, want %v", d, timeout)
	}
	silent.close()
	dev.waitEvent(t, "reset")
	checkLimited(t, srv, LimitFirstMessage, 1)
	if !strings.Contains(logs.String(), "no message within 200ms of connecting") {
		t.Errorf("log: got\n%s\nwant the first message timeout named", logs.String())
	}

	// The next front-end, accepted when the silent one was closed, speaks at once, then
	// is silent for three times the limits, then goes on.
	next.readReply(ReqGetFeatures)
	time.Sleep(3 * timeout)
	if got := next.callU64(ReqGetQueueNum, Empty{}); got != 2 {
		t.Errorf("GET_QUEUE_NUM after a silence: got %d, want 2", got)
	}
	next.close()
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	checkLimited(t, srv, LimitFirstMessage, 1)
	checkNoFDLeak(t, fdsBefore)
	checkGoroutines(t, goBefore)
}

// TestMessageTimeout: a message that has started must be complete within MessageTimeout,
// however steadily its bytes trickle in (a slow-loris front-end), before the first message
// and after it.
func TestMessageTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	features := AppendMessage(nil, ReqSetFeatures, Version, U64(uint64(virtio.FVersion1)))
	cases := []struct {
		name    string
		greet   bool    // a whole message first
		whole   int     // bytes sent at once before the trickle
		trickle int     // bytes trickled after them, one every 40 ms
		req     Request // the request the error names
	}{
		{name: "first message trickled", trickle: len(features)},
		{name: "header trickled after a message", greet: true, trickle: len(features)},
		{name: "payload trickled", greet: true, whole: HeaderSize, trickle: 8, req: ReqSetFeatures},
		{name: "one byte then nothing", greet: true, trickle: 1},
		{name: "header then nothing", greet: true, whole: HeaderSize, req: ReqSetFeatures},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fdsBefore, goBefore := openFDs(t), runtime.NumGoroutine()
			dev := newFakeDevice()
			srv := NewServer(dev, Options{MessageTimeout: timeout})
			c, fe := socketPair(t)
			wait := serve(t, srv, c)
			if tc.greet {
				fe.callU64(ReqGetFeatures, Empty{})
			}
			start := time.Now()
			if tc.whole > 0 {
				fe.sendRaw(features[:tc.whole])
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for _, b := range features[tc.whole : tc.whole+tc.trickle] {
					if _, err := fe.c.Write([]byte{b}); err != nil {
						return
					}
					time.Sleep(40 * time.Millisecond)
				}
			}()
			err := wait()
			d := time.Since(start)
			fe.close()
			<-done
			if limitOf(err) != LimitMessageTime {
				t.Fatalf("ServeConn: got %v, want the message timeout", err)
			}
			var le *LimitError
			if errors.As(err, &le); le.Request != tc.req {
				t.Errorf("timeout names request %v, want %v", le.Request, tc.req)
			}
			if d < timeout || d > timeout+2*time.Second {
				t.Errorf("connection closed %v after the message started, want %v", d, timeout)
			}
			checkLimited(t, srv, LimitMessageTime, 1)
			checkNoFDLeak(t, fdsBefore)
			checkGoroutines(t, goBefore)
		})
	}
}

// TestMemoryLimits: memory tables and regions that would map more than MaxMemBytes, or take
// a slot past MaxMemSlots, are refused and counted; the connection goes on when the front-end
// asked for an ack, and ends when it could not be told.
func TestMemoryLimits(t *testing.T) {
	fdsBefore, goBefore := openFDs(t), runtime.NumGoroutine()
	const limit = 4 << 20
	dev := newFakeDevice()
	var logs logBuffer
	srv := NewServer(dev, Options{MaxMemBytes: limit, MaxMemSlots: 3, Logger: testLogger(&logs)})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	negotiateSlots(t, fe, dev, qemuProtocol, uint64(virtio.FVersion1)|FProtocolFeatures, 3)
	mfd := memfd(t, 64<<20) // sparse: its size costs nothing
	defer unix.Close(mfd)
	region := func(i, size uint64) MemoryRegion {
		return MemoryRegion{GuestAddr: i << 32, Size: size, UserAddr: 1<<44 + i<<32, MmapOffset: i * (8 << 20)}
	}
	table := func(regions ...MemoryRegion) MemoryTable { return MemoryTable{Regions: regions} }
	fds := func(n int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = mfd
		}
		return s
	}

	refused := uint64(0)
	refuse := func(what string, l Limit, req Request, p Payload, n int) {
		t.Helper()
		if got := fe.ack(req, p, fds(n)...); got == 0 {
			t.Errorf("%s: got ack 0, want failure", what)
		}
		refused++
		if got := srv.Stats().Limited[l]; got != refused {
			t.Errorf("%s: %v refusals counted: got %d, want %d", what, l, got, refused)
		}
	}
	refuse("SET_MEM_TABLE of 8 MiB", LimitMemBytes, ReqSetMemTable, table(region(0, 8<<20)), 1)
	refuse("SET_MEM_TABLE of 3 + 3 MiB", LimitMemBytes, ReqSetMemTable, table(region(0, 3<<20), region(1, 3<<20)), 2)
	// The whole limit, twice: a new table replaces the old one, it does not add to it.
	fe.mustAck(ReqSetMemTable, table(region(0, 2<<20), region(1, 2<<20)), fds(2)...)
	fe.mustAck(ReqSetMemTable, table(region(0, 2<<20), region(1, 2<<20)), fds(2)...)
	// Regions are counted in whole pages: a byte over the limit is a page over it.
	refuse("ADD_MEM_REG of one byte more", LimitMemBytes, ReqAddMemReg, MemRegionMsg{Region: region(2, 1)}, 1)
	fe.mustAck(ReqRemMemReg, MemRegionMsg{Region: region(1, 2<<20)})
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: region(1, 1<<20)}, mfd)
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: region(2, 1<<20)}, mfd)
	checkLimited(t, srv, LimitMemBytes, 3)
	refused = 0
	refuse("ADD_MEM_REG of a fourth region", LimitMemSlots, ReqAddMemReg, MemRegionMsg{Region: region(3, 4096)}, 1)
	if st := srv.Stats(); st.Limited[LimitMemBytes] != 3 || st.Rejected != 4 {
		t.Errorf("stats: got %d mem_bytes refusals, %d rejected; want 3, 4", st.Limited[LimitMemBytes], st.Rejected)
	}
	if n := strings.Count(logs.String(), "front-end over a limit (logged once"); n != 2 {
		t.Errorf("limit warnings: got %d, want 2, one per limit\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "ADD_MEM_REG would map 4198400 bytes of guest memory, limit 4194304") {
		t.Errorf("log: got\n%s\nwant the refused mapping's numbers", logs.String())
	}

	// Without NEED_REPLY the front-end cannot be told: the connection ends.
	fe.send(ReqSetMemTable, 0, table(region(0, 8<<20)), mfd)
	fe.expectClosed()
	if err := wait(); limitOf(err) != LimitMemBytes {
		t.Fatalf("ServeConn after an unacked refusal: got %v, want the memory limit", err)
	}
	fe.close()
	unix.Close(mfd)
	checkNoFDLeak(t, fdsBefore)
	checkGoroutines(t, goBefore)
}

// TestDefaultMemoryLimit: with the default limit a 512 GiB guest maps, a table past 1 TiB
// does not. The memfds are sparse and nothing touches the mappings: they cost address space
// only.
func TestDefaultMemoryLimit(t *testing.T) {
	if ^uint(0)>>32 == 0 {
		t.Skip("a 32-bit address space cannot map 512 GiB")
	}
	fdsBefore := openFDs(t)
	srv := NewServer(newFakeDevice(), Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	fe.send(ReqSetProtocolFeatures, 0, U64(ProtocolReplyAck))
	big := memfd(t, 1<<41)
	defer unix.Close(big)
	guest := []MemoryRegion{
		{GuestAddr: 0, Size: 3 << 30, UserAddr: 1 << 44},
		{GuestAddr: 4 << 30, Size: 509 << 30, UserAddr: 1<<44 + 4<<30, MmapOffset: 3 << 30},
	}
	fe.mustAck(ReqSetMemTable, MemoryTable{Regions: guest}, big, big)
	over := []MemoryRegion{
		{GuestAddr: 0, Size: 1 << 39, UserAddr: 1 << 44},
		{GuestAddr: 1 << 40, Size: 1<<39 + 4096, UserAddr: 1<<44 + 1<<40, MmapOffset: 1 << 39},
	}
	if got := fe.ack(ReqSetMemTable, MemoryTable{Regions: over}, big, big); got == 0 {
		t.Errorf("SET_MEM_TABLE of 1 TiB and a page: got ack 0, want failure")
	}
	checkLimited(t, srv, LimitMemBytes, 1)
	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	unix.Close(big)
	checkNoFDLeak(t, fdsBefore)
}

// TestFramingLimits: a message whose header claims a payload past MaxPayloadSize, or that
// carries more than MaxFDs descriptors (at once or spread over its bytes), ends the
// connection; it is counted, and every descriptor it carried is closed.
func TestFramingLimits(t *testing.T) {
	getFeatures := rawMessage(ReqGetFeatures, Version, nil)
	cases := []struct {
		name  string
		parts [][]byte // written one by one
		fds   []int    // descriptors on each part
		limit Limit
	}{
		{name: "payload of MaxPayloadSize+1", parts: [][]byte{Header{Request: ReqSetConfig, Flags: Version, Size: MaxPayloadSize + 1}.Append(nil)}, limit: LimitPayload},
		{name: "payload of 4 GiB", parts: [][]byte{Header{Request: Request(4000), Flags: Version, Size: ^uint32(0)}.Append(nil)}, limit: LimitPayload},
		{name: "nine fds", parts: [][]byte{getFeatures}, fds: []int{9}, limit: LimitFDs},
		{name: "253 fds, control data truncated", parts: [][]byte{getFeatures}, fds: []int{253}, limit: LimitFDs},
		{name: "4 fds on each of three parts", parts: [][]byte{getFeatures[:4], getFeatures[4:8], getFeatures[8:]}, fds: []int{4, 4, 4}, limit: LimitFDs},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fdsBefore, goBefore := openFDs(t), runtime.NumGoroutine()
			srv := NewServer(newFakeDevice(), Options{})
			c, fe := socketPair(t)
			wait := serve(t, srv, c)
			fe.callU64(ReqGetFeatures, Empty{})
			for i, p := range tc.parts {
				var fds []int
				if i < len(tc.fds) {
					fds = make([]int, tc.fds[i])
					for j := range fds {
						fds[j] = eventfd(t)
					}
				}
				fe.sendRaw(p, fds...)
				closeAll(fds...)
			}
			fe.expectClosed()
			err := wait()
			fe.close()
			if limitOf(err) != tc.limit || !errors.Is(err, ErrMalformed) {
				t.Errorf("ServeConn: got %v, want a malformed message over %v", err, tc.limit)
			}
			checkLimited(t, srv, tc.limit, 1)
			if st := srv.Stats(); st.Rejected != 1 {
				t.Errorf("rejected: got %d, want 1", st.Rejected)
			}
			checkNoFDLeak(t, fdsBefore)
			checkGoroutines(t, goBefore)
		})
	}
}

// TestExtraFDsClosed: descriptors a request does not keep are closed as soon as it is
// handled, while the connection goes on: those of requests that take none or are refused,
// REM_MEM_REG's optional one, a replaced ring eventfd.
func TestExtraFDsClosed(t *testing.T) {
	dev := newFakeDevice()
	srv := NewServer(dev, Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	negotiate(t, fe, dev, qemuProtocol, uint64(virtio.FVersion1)|FProtocolFeatures)
	mfd := memfd(t, guestSize)
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: guestRegion()}, mfd)
	unix.Close(mfd)
	fe.setUpRing(0, 256)
	fe.mustAck(ReqSetVringErr, VringFile{Index: 0}, fe.own(eventfd(t)))
	fe.mustAck(ReqSetVringEnable, VringState{Index: 0, Num: 1})
	closeAll(fe.owned...)
	fe.owned = nil
	// The baseline: a running ring, its kick, call and err eventfds held by the server.
	before := openFDs(t)
	goBefore := runtime.NumGoroutine()

	withFDs := func(n int) []int {
		fds := make([]int, n)
		for i := range fds {
			fds[i] = fe.own(eventfd(t))
		}
		return fds
	}
	fe.ack(Request(99), Raw{1, 2, 3}, withFDs(MaxFDs)...)
	fe.send(Request(98), 0, Empty{}, withFDs(3)...)
	fe.ack(ReqSetLogBase, Log{Size: 4096}, withFDs(1)...)
	fe.ack(ReqSetLogFD, Empty{}, withFDs(1)...)
	fe.ack(ReqSetInflightFD, Inflight{MmapSize: 4096, NumQueues: 2, QueueSize: 256}, withFDs(1)...)
	fe.call(ReqSetDeviceStateFD, DeviceStateTransfer{}, withFDs(1)...)
	fe.mustAck(ReqRemMemReg, MemRegionMsg{Region: MemoryRegion{GuestAddr: 1 << 40, Size: 4096, UserAddr: 1 << 45}}, withFDs(1)...)
	for range 3 {
		fe.mustAck(ReqSetVringCall, VringFile{Index: 0}, withFDs(1)...)
		fe.mustAck(ReqSetVringErr, VringFile{Index: 0}, withFDs(1)...)
	}
	closeAll(fe.owned...)
	fe.owned = nil
	fe.sync()
	// The server holds as many descriptors as before: a ring's kick, call and err eventfds
	// (the last of each sent), nothing of the rest. Numbers differ, as a new call eventfd
	// arrives before the one it replaces is closed.
	if after := openFDs(t); len(after) != len(before) {
		t.Errorf("open descriptors: got %d, want %d\nbefore %v\nafter  %v", len(after), len(before), before, after)
	}
	if _, ok := dev.queue(0); !ok {
		t.Errorf("ring 0 not running after its eventfds were replaced; events %q", dev.eventList())
	}
	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	checkGoroutines(t, goBefore)
}
