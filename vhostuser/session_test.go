package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// negotiate runs QEMU 7.2's vhost_dev_init and the start of vhost_dev_start up to the
// memory table, acking the protocol features in want that the back-end offers.
func negotiate(t *testing.T, fe *frontEnd, dev *fakeDevice, want ProtocolFeatures, acked uint64) ProtocolFeatures {
	return negotiateSlots(t, fe, dev, want, acked, DefaultMaxMemSlots)
}

func negotiateSlots(t *testing.T, fe *frontEnd, dev *fakeDevice, want ProtocolFeatures, acked uint64, slots uint64) ProtocolFeatures {
	t.Helper()
	features := fe.callU64(ReqGetFeatures, Empty{})
	if wantF := uint64(dev.features) | FProtocolFeatures; features != wantF {
		t.Fatalf("GET_FEATURES: got %#x, want %#x", features, wantF)
	}
	offered := ProtocolFeatures(fe.callU64(ReqGetProtocolFeatures, Empty{}))
	proto := offered & want
	fe.send(ReqSetProtocolFeatures, 0, U64(proto))
	if proto.Has(ProtocolMQ) {
		if got := fe.callU64(ReqGetQueueNum, Empty{}); got != uint64(dev.queues) {
			t.Fatalf("GET_QUEUE_NUM: got %d, want %d", got, dev.queues)
		}
	}
	if proto.Has(ProtocolConfigureMemSlots) {
		if got := fe.callU64(ReqGetMaxMemSlots, Empty{}); got != slots {
			t.Fatalf("GET_MAX_MEM_SLOTS: got %d, want %d", got, slots)
		}
	}
	if proto.Has(ProtocolBackendReq) {
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("socketpair: %v", err)
		}
		fe.mustAck(ReqSetBackendReqFD, Empty{}, sp[1])
		closeAll(sp[0], sp[1])
	}
	fe.send(ReqSetOwner, 0, Empty{})
	if proto.Has(ProtocolConfig) {
		got := fe.call(ReqGetConfig, Config{Data: make([]byte, 12)})
		want := Config{Data: dev.config[:12]}.Append(nil)
		if !bytes.Equal(got, want) {
			t.Fatalf("GET_CONFIG: got %x, want %x", got, want)
		}
	}
	fe.send(ReqSetFeatures, 0, U64(acked))
	if proto.Has(ProtocolStatus) {
		status := fe.callU64(ReqGetStatus, Empty{})
		fe.send(ReqSetStatus, 0, U64(status|8)) // FEATURES_OK
	}
	return proto
}

// qemuProtocol is what QEMU 7.2 acks for a vhost-user-net device.
const qemuProtocol = ProtocolMQ | ProtocolReplyAck | ProtocolBackendReq | ProtocolConfig | ProtocolMTU |
	ProtocolResetDevice | ProtocolConfigureMemSlots | ProtocolStatus | ProtocolRARP | ProtocolLogShmfd

func TestQEMUSequence(t *testing.T) {
	before := openFDs(t)
	dev := newFakeDevice()
	dev.proto = ProtocolMTU
	srv := NewServer(dev, Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)

	acked := uint64(virtio.FVersion1|virtio.NetFMAC|virtio.FEventIdx) | FProtocolFeatures
	proto := negotiate(t, fe, dev, qemuProtocol, acked)
	if want := qemuProtocol &^ (ProtocolRARP | ProtocolLogShmfd | ProtocolConfig); proto != want {
		t.Fatalf("negotiated protocol features: got %s, want %s", proto, want)
	}

	// With CONFIGURE_MEM_SLOTS QEMU adds regions one by one instead of SET_MEM_TABLE.
	mfd := memfd(t, guestSize)
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: guestRegion()}, mfd)
	unix.Close(mfd)
	for i := uint32(0); i < 2; i++ {
		fe.setUpRing(i, 256)
	}
	fe.sync()
	if _, ok := dev.queue(0); ok {
		t.Fatalf("ring 0 started before SET_VRING_ENABLE with protocol features acked")
	}
	for i := uint32(0); i < 2; i++ {
		fe.mustAck(ReqSetVringEnable, VringState{Index: i, Num: 1})
	}
	status := fe.callU64(ReqGetStatus, Empty{})
	fe.send(ReqSetStatus, 0, U64(status|1|2|4)) // ACKNOWLEDGE, DRIVER, DRIVER_OK
	if got := fe.callU64(ReqGetStatus, Empty{}); got != 0xf {
		t.Fatalf("GET_STATUS: got %#x, want 0xf", got)
	}

	for i := 0; i < 2; i++ {
		q, ok := dev.queue(i)
		if !ok {
			t.Fatalf("ring %d not started; device events %q", i, dev.eventList())
		}
		ra := ringAddr(uint32(i))
		want := QueueSetup{
			Memory: q.Memory, Size: 256, EventIdx: true,
			DescAddr:  ra.DescUser - userBase + guestBase,
			AvailAddr: ra.AvailUser - userBase + guestBase,
			UsedAddr:  ra.UsedUser - userBase + guestBase,
			Kick:      q.Kick, Call: q.Call,
		}
		if q != want {
			t.Errorf("ring %d setup: got %+v, want %+v", i, q, want)
		}
		if q.Kick == nil || q.Call == nil || q.Err != nil {
			t.Errorf("ring %d files: kick %v call %v err %v, want kick and call only", i, q.Kick, q.Call, q.Err)
		}
		if regs := q.Memory.Regions(); len(regs) != 1 || regs[0].GuestAddr != guestBase || regs[0].UserAddr != userBase || len(regs[0].Host) != guestSize {
			t.Errorf("ring %d memory: got %+v, want one region of %d bytes at guest %#x", i, regs, guestSize, guestBase)
		}
	}
	fe.mustAck(ReqNetSetMTU, U64(1500))
	if mtu, _ := dev.relayed(); mtu != 1500 {
		t.Errorf("NET_SET_MTU: device got %d, want 1500", mtu)
	}
	if got := dev.ackedFeatures(); got != virtio.Features(acked&^FProtocolFeatures) {
		t.Errorf("device acked features: got %s, want %s", got, virtio.Features(acked&^FProtocolFeatures))
	}

	// The guest's writes through the front-end's mapping are what the device sees.
	q0, _ := dev.queue(0)
	desc, err := q0.Memory.Slice(q0.DescAddr, 16)
	if err != nil {
		t.Fatalf("slice descriptor table: %v", err)
	}
	desc[0] = 0xa5

	// vhost_dev_stop: GET_VRING_BASE stops each ring and returns where it stopped.
	dev.setStopState(QueueState{NextAvail: 42})
	kick0 := dev.kickFD(0)
	got := fe.call(ReqGetVringBase, VringState{Index: 0})
	if want := (VringState{Index: 0, Num: 42}).Append(nil); !bytes.Equal(got, want) {
		t.Fatalf("GET_VRING_BASE: got %x, want %x", got, want)
	}
	if _, ok := dev.queue(0); ok {
		t.Fatalf("ring 0 still running after GET_VRING_BASE")
	}
	if isOpen(kick0) {
		t.Errorf("kick eventfd of stopped ring 0 still open")
	}

	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("ServeConn after the front-end left: got %v, want nil", err)
	}
	ev := dev.eventList()
	if i := slices.Index(ev, "stop 1"); i < 0 || ev[len(ev)-1] != "reset" || i > len(ev)-1 {
		t.Errorf("device events at teardown: got %q, want ring 1 stopped then reset", ev)
	}
	st := srv.Stats()
	if st.Sessions != 1 || st.Rejected != 0 || st.Messages[ReqSetVringKick] != 2 {
		t.Errorf("stats: got %+v, want 1 session, 0 rejected, 2 SET_VRING_KICK", st)
	}
	checkNoFDLeak(t, before)
}

func TestSetMemTableAndPackedRing(t *testing.T) {
	before := openFDs(t)
	dev := newFakeDevice()
	dev.features |= virtio.FRingPacked
	srv := NewServer(dev, Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)

	// No protocol features acked beyond REPLY_ACK: SET_MEM_TABLE, rings enabled by
	// SET_FEATURES and started by their kick (DPDK virtio-user, older QEMU).
	negotiate(t, fe, dev, ProtocolReplyAck, uint64(virtio.FVersion1|virtio.FRingPacked))
	mfd := memfd(t, guestSize)
	fe.mustAck(ReqSetMemTable, MemoryTable{Regions: []MemoryRegion{guestRegion()}}, mfd)
	unix.Close(mfd)

	kick, call := eventfd(t), eventfd(t)
	fe.send(ReqSetVringNum, 0, VringState{Index: 1, Num: 100}) // packed: any size
	// Avail index 7 with wrap counter set, used index 5 with wrap counter clear.
	fe.send(ReqSetVringBase, 0, VringState{Index: 1, Num: 7 | 1<<15 | 5<<16})
	fe.send(ReqSetVringAddr, 0, ringAddr(1))
	fe.send(ReqSetVringCall, 0, VringFile{Index: 1}, call)
	fe.send(ReqSetVringKick, 0, VringFile{Index: 1}, kick)
	closeAll(kick, call)
	fe.sync()
	q, ok := dev.queue(1)
	if !ok {
		t.Fatalf("packed ring 1 not started on its kick; events %q", dev.eventList())
	}
	if !q.Packed || q.Size != 100 || q.NextAvail != 7|1<<15 || q.NextUsed != 5 {
		t.Fatalf("packed ring setup: got packed %t size %d next avail %#x used %#x, want true 100 %#x %#x",
			q.Packed, q.Size, q.NextAvail, q.NextUsed, 7|1<<15, 5)
	}

	// A new call eventfd while running restarts the ring from where it stopped.
	stopAt := QueueState{NextAvail: 9 | 1<<15, NextUsed: 8 | 1<<15}
	dev.setStopState(stopAt)
	call2 := eventfd(t)
	fe.mustAck(ReqSetVringCall, VringFile{Index: 1}, call2)
	unix.Close(call2)
	q2, ok := dev.queue(1)
	if !ok || q2.Call == q.Call || q2.NextAvail != stopAt.NextAvail || q2.NextUsed != stopAt.NextUsed {
		t.Fatalf("ring 1 after new call fd: running %t, setup %+v; want restarted at %+v with the new call", ok, q2, stopAt)
	}

	dev.setStopState(QueueState{NextAvail: 11, NextUsed: 10 | 1<<15})
	got := fe.call(ReqGetVringBase, VringState{Index: 1})
	if want := (VringState{Index: 1, Num: 11 | (10|1<<15)<<16}).Append(nil); !bytes.Equal(got, want) {
		t.Fatalf("packed GET_VRING_BASE: got %x, want %x", got, want)
	}

	// A second SET_MEM_TABLE with the ring running: stopped, switched, restarted.
	fe.send(ReqSetVringKick, 0, VringFile{Index: 1}, fe.own(eventfd(t)))
	fe.sync()
	old, _ := dev.queue(1)
	mfd2 := memfd(t, 2*guestSize)
	r := guestRegion()
	r.Size, r.MmapOffset = guestSize, guestSize
	fe.mustAck(ReqSetMemTable, MemoryTable{Regions: []MemoryRegion{r}}, mfd2)
	unix.Close(mfd2)
	now, ok := dev.queue(1)
	if !ok || now.Memory == old.Memory {
		t.Fatalf("ring 1 after SET_MEM_TABLE: running %t, same memory %t; want restarted on the new memory", ok, now.Memory == old.Memory)
	}
	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	checkNoFDLeak(t, before)
}

func TestReplyAckAndRefusals(t *testing.T) {
	before := openFDs(t)
	dev := newFakeDevice()
	dev.proto = ProtocolConfig
	var logs logBuffer
	srv := NewServer(dev, Options{Logger: testLogger(&logs)})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	negotiate(t, fe, dev, qemuProtocol, uint64(virtio.FVersion1)|FProtocolFeatures)

	// Failures the front-end asked to hear about are nacked; the connection stays.
	if got := fe.ack(ReqSetVringNum, VringState{Index: 2, Num: 256}); got == 0 {
		t.Errorf("SET_VRING_NUM of ring 2 on a 2-queue device: got ack 0, want failure")
	}
	if got := fe.ack(ReqSetLogBase, Log{Size: 4096}, fe.own(eventfd(t))); got == 0 {
		t.Errorf("SET_LOG_BASE: got ack 0, want failure")
	}
	if got := fe.ack(ReqSetVringKick, VringFile{Index: 0, NoFD: true}); got == 0 {
		t.Errorf("SET_VRING_KICK without fd (polling): got ack 0, want failure")
	}
	if got := fe.ack(ReqSetVringAddr, ringAddr(0)); got != 0 {
		t.Errorf("SET_VRING_ADDR before memory: got ack %d, want 0 (translated at start)", got)
	}
	// Refusals without NEED_REPLY: the descriptor is closed, the connection stays.
	fe.send(ReqSetLogFD, 0, Empty{}, fe.own(eventfd(t)))
	fe.send(Request(99), 0, Raw{1, 2, 3}, fe.own(eventfd(t)))
	fe.send(Request(99), 0, Raw{1, 2, 3})
	if got := fe.ack(Request(98), Empty{}); got == 0 {
		t.Errorf("unknown request 98: got ack 0, want failure")
	}
	if got := fe.callU64(ReqCheckDeviceState, Empty{}); got == 0 {
		t.Errorf("CHECK_DEVICE_STATE: got 0, want failure")
	}
	if got := fe.call(ReqGetConfig, Config{Offset: 8, Data: make([]byte, 8)}); len(got) != 0 {
		t.Errorf("GET_CONFIG past the device's config: got %x, want an empty payload", got)
	}
	if got := fe.call(ReqGetInflightFD, Inflight{NumQueues: 2, QueueSize: 256}); !bytes.Equal(got, Inflight{}.Append(nil)) {
		t.Errorf("GET_INFLIGHT_FD: got %x, want all zero", got)
	}
	fe.mustAck(ReqSetConfig, Config{Offset: 6, Flags: ConfigFlagMigration, Data: []byte{1, 0}})
	if got := fe.ack(ReqNetSetMTU, U64(1500)); got == 0 {
		t.Errorf("NET_SET_MTU without ProtocolMTU offered: got ack 0, want failure")
	}
	fe.mustAck(ReqSendRARP, U64(binary.NativeEndian.Uint64([]byte{2, 0, 0, 0, 0, 7, 0, 0})))
	fe.mustAck(ReqResetDevice, Empty{})
	fe.sync()

	mtu, rarp := dev.relayed()
	if mtu != 0 {
		t.Errorf("NET_SET_MTU without ProtocolMTU reached the device: mtu %d", mtu)
	}
	if want := (net.HardwareAddr{2, 0, 0, 0, 0, 7}); !bytes.Equal(rarp, want) {
		t.Errorf("SEND_RARP: device got %s, want %s", rarp, want)
	}
	if ev := dev.eventList(); !slices.Contains(ev, "setconfig 6 0100 true") || ev[len(ev)-1] != "reset" {
		t.Errorf("device events: got %q, want SET_CONFIG relayed and a reset", ev)
	}
	st := srv.Stats()
	if st.Unknown != 3 || st.Rejected != 11 {
		t.Errorf("stats: got unknown %d rejected %d, want 3 and 11", st.Unknown, st.Rejected)
	}
	// Seven request types refused, request 99 twice.
	if n := strings.Count(logs.String(), "request not supported (logged once"); n != 7 {
		t.Errorf("refusal warnings: got %d, want 7, one per request type\n%s", n, logs.String())
	}

	// A failure the front-end cannot be told of ends the connection.
	fe.send(ReqSetVringNum, 0, VringState{Index: 5, Num: 256})
	fe.expectClosed()
	if err := wait(); err == nil || errors.Is(err, ErrMalformed) {
		t.Fatalf("ServeConn after an unacked failure: got %v, want a non-malformed error", err)
	}
	fe.close()
	checkNoFDLeak(t, before)
}

func TestMemorySlots(t *testing.T) {
	before := openFDs(t)
	dev := newFakeDevice()
	srv := NewServer(dev, Options{MaxMemSlots: 2})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	negotiateSlots(t, fe, dev, qemuProtocol, uint64(virtio.FVersion1)|FProtocolFeatures, 2)

	mfd := memfd(t, 4*guestSize)
	defer unix.Close(mfd)
	lo := MemoryRegion{GuestAddr: 0, Size: guestSize, UserAddr: userBase - guestSize}
	hi := guestRegion()
	hi.MmapOffset = 2 * guestSize
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: hi}, mfd)
	fe.setUpRing(0, 256)
	fe.mustAck(ReqSetVringEnable, VringState{Index: 0, Num: 1})
	first, ok := dev.queue(0)
	if !ok {
		t.Fatalf("ring 0 not started")
	}
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: lo}, mfd)
	second, ok := dev.queue(0)
	if !ok || len(second.Memory.Regions()) != 2 || second.Memory == first.Memory {
		t.Fatalf("ring 0 after ADD_MEM_REG: running %t, %d regions; want restarted over 2", ok, len(second.Memory.Regions()))
	}
	if got := fe.ack(ReqAddMemReg, MemRegionMsg{Region: MemoryRegion{GuestAddr: 8 * guestSize, Size: 4096, UserAddr: 1 << 40}}, mfd); got == 0 {
		t.Errorf("ADD_MEM_REG past MaxMemSlots: got ack 0, want failure")
	}
	if got := fe.ack(ReqAddMemReg, MemRegionMsg{Region: MemoryRegion{GuestAddr: 0, Size: 4096, UserAddr: 1 << 40}}, mfd); got == 0 {
		t.Errorf("ADD_MEM_REG overlapping: got ack 0, want failure")
	}
	small := memfd(t, 4096)
	if got := fe.ack(ReqAddMemReg, MemRegionMsg{Region: MemoryRegion{GuestAddr: 1 << 40, Size: 8192, UserAddr: 1 << 41}}, small); got == 0 {
		t.Errorf("ADD_MEM_REG larger than its file: got ack 0, want failure")
	}
	unix.Close(small)
	// REM_MEM_REG identifies the region without its mmap offset; older QEMU sends an fd.
	rm := lo
	rm.MmapOffset = 12345
	fe.mustAck(ReqRemMemReg, MemRegionMsg{Region: rm}, fe.own(eventfd(t)))
	third, ok := dev.queue(0)
	if !ok || len(third.Memory.Regions()) != 1 {
		t.Fatalf("ring 0 after REM_MEM_REG: running %t; want restarted over 1 region", ok)
	}
	// Removing the region the ring lives in leaves it stopped until a region holds it again,
	// as when a front-end replaces that region with a remove and an add.
	fe.mustAck(ReqRemMemReg, MemRegionMsg{Region: hi})
	if _, ok := dev.queue(0); ok {
		t.Fatalf("ring 0 running with its region removed")
	}
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: hi}, mfd)
	if _, ok := dev.queue(0); !ok {
		t.Fatalf("ring 0 not restarted once its region is back; events %q", dev.eventList())
	}
	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	unix.Close(mfd)
	checkNoFDLeak(t, before)
}

// TestMemoryRegionsPerQueuePair is QEMU 7.2 with a 2-queue vhost-user-net device: one
// vhost device per queue pair, each with its own copy of the memory table, so every
// ADD_MEM_REG and REM_MEM_REG arrives twice over the one connection. QEMU waits for each
// ack (REPLY_ACK) and gives up on vhost-user ("falling back on userspace virtio") on a
// failure.
func TestMemoryRegionsPerQueuePair(t *testing.T) {
	before := openFDs(t)
	dev := newFakeDevice()
	srv := NewServer(dev, Options{MaxMemSlots: 1})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	negotiateSlots(t, fe, dev, qemuProtocol, uint64(virtio.FVersion1)|FProtocolFeatures, 1)

	mfd := memfd(t, 2*guestSize)
	defer unix.Close(mfd)
	r := guestRegion()
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: r}, mfd)
	fe.setUpRing(0, 256)
	fe.mustAck(ReqSetVringEnable, VringState{Index: 0, Num: 1})
	first, ok := dev.queue(0)
	if !ok {
		t.Fatalf("ring 0 not started")
	}
	// The second vhost device's copy: acked, and with one slot it cannot have been mapped
	// a second time.
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: r}, mfd)
	if q, ok := dev.queue(0); !ok || q.Memory != first.Memory || len(q.Memory.Regions()) != 1 {
		t.Fatalf("ring 0 after a repeated ADD_MEM_REG: running %t, memory replaced %t; want it running on the same memory", ok, q.Memory != first.Memory)
	}
	// A region that only overlaps is still refused.
	moved := r
	moved.MmapOffset = guestSize
	moved.Size = guestSize / 2
	if got := fe.ack(ReqAddMemReg, MemRegionMsg{Region: moved}, mfd); got == 0 {
		t.Errorf("ADD_MEM_REG of a region overlapping another: got ack 0, want failure")
	}
	// Both copies of the removal are acked; the first one removes.
	fe.mustAck(ReqRemMemReg, MemRegionMsg{Region: r})
	if _, ok := dev.queue(0); ok {
		t.Fatalf("ring 0 running with its region removed")
	}
	fe.mustAck(ReqRemMemReg, MemRegionMsg{Region: r})
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: r}, mfd)
	fe.mustAck(ReqAddMemReg, MemRegionMsg{Region: r}, mfd)
	if q, ok := dev.queue(0); !ok || len(q.Memory.Regions()) != 1 {
		t.Fatalf("ring 0 after the region came back twice: running %t; want restarted over 1 region", ok)
	}
	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	unix.Close(mfd)
	checkNoFDLeak(t, before)
}

// TestConfigOnlyWhenAsked: CONFIG is offered only for a device that asks for it. QEMU's
// vhost-user-net serves the config space itself and warns about a back-end that offers it.
func TestConfigOnlyWhenAsked(t *testing.T) {
	for _, asks := range []bool{false, true} {
		dev := newFakeDevice()
		if asks {
			dev.proto = ProtocolConfig
		}
		srv := NewServer(dev, Options{})
		c, fe := socketPair(t)
		wait := serve(t, srv, c)
		offered := ProtocolFeatures(fe.callU64(ReqGetProtocolFeatures, Empty{}))
		if offered.Has(ProtocolConfig) != asks {
			t.Errorf("device asks for CONFIG %t: offered %s", asks, offered)
		}
		fe.send(ReqSetProtocolFeatures, 0, U64(offered))
		got := fe.call(ReqGetConfig, Config{Data: make([]byte, 6)})
		if want := (Config{Data: dev.config[:6]}.Append(nil)); asks && !bytes.Equal(got, want) {
			t.Errorf("GET_CONFIG with CONFIG: got %x, want %x", got, want)
		}
		if !asks && len(got) != 0 {
			t.Errorf("GET_CONFIG without CONFIG: got %x, want an empty payload (failure)", got)
		}
		fe.close()
		if err := wait(); err != nil {
			t.Fatalf("ServeConn: %v", err)
		}
	}
}
