package vhostuser

import (
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// rawMessage builds a message whose header size is len(payload).
func rawMessage(req Request, flags Flags, payload []byte) []byte {
	return append(Header{Request: req, Flags: flags, Size: uint32(len(payload))}.Append(nil), payload...)
}

func u64Bytes(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }

func tableBytes(n uint32, regions ...MemoryRegion) []byte {
	b := binary.NativeEndian.AppendUint32(nil, n)
	b = binary.NativeEndian.AppendUint32(b, 0)
	for _, r := range regions {
		b = r.append(b)
	}
	return b
}

func configBytes(offset, size, flags uint32, data int) []byte {
	b := binary.NativeEndian.AppendUint32(nil, offset)
	b = binary.NativeEndian.AppendUint32(b, size)
	b = binary.NativeEndian.AppendUint32(b, flags)
	return append(b, make([]byte, data)...)
}

func TestMalformedMessageClosesConnection(t *testing.T) {
	region := guestRegion()
	other := MemoryRegion{GuestAddr: 1 << 32, Size: 4096, UserAddr: 1 << 44}
	wrapGuest := MemoryRegion{GuestAddr: ^uint64(0) - 4095, Size: 8192, UserAddr: 1 << 44}
	wrapUser := MemoryRegion{GuestAddr: 0, Size: 8192, UserAddr: ^uint64(0) - 4095}
	bigOffset := MemoryRegion{GuestAddr: 0, Size: 8192, UserAddr: 1 << 44, MmapOffset: 1 << 63}
	overlap := region
	overlap.UserAddr = 1 << 44
	overlap.GuestAddr += 4096
	v := Version

	cases := []struct {
		name string
		msg  []byte
		fds  int
		eof  bool // not malformed: the front-end stopped mid-message
	}{
		{name: "version 2", msg: rawMessage(ReqGetFeatures, 2, nil)},
		{name: "version 0", msg: rawMessage(ReqGetFeatures, 0, nil)},
		{name: "reply flag on a request", msg: rawMessage(ReqGetFeatures, v|FlagReply, nil)},
		{name: "undefined flag", msg: rawMessage(ReqGetFeatures, v|0x10, nil)},
		{name: "payload over the limit", msg: Header{Request: ReqSetMemTable, Flags: v, Size: MaxPayloadSize + 1}.Append(nil)},
		{name: "payload of 4 GiB", msg: Header{Request: ReqGetConfig, Flags: v, Size: ^uint32(0)}.Append(nil)},
		{name: "GET_FEATURES with a payload", msg: rawMessage(ReqGetFeatures, v, u64Bytes(0))},
		{name: "SET_FEATURES short", msg: rawMessage(ReqSetFeatures, v, []byte{1, 2, 3, 4})},
		{name: "SET_FEATURES long", msg: rawMessage(ReqSetFeatures, v, make([]byte, 16))},
		{name: "GET_FEATURES with an fd", msg: rawMessage(ReqGetFeatures, v, nil), fds: 1},
		{name: "nine fds", msg: rawMessage(ReqGetFeatures, v, nil), fds: 9},
		{name: "twenty fds, control buffer truncated", msg: rawMessage(ReqGetFeatures, v, nil), fds: 20},
		{name: "unknown request with nine fds", msg: rawMessage(Request(77), v, nil), fds: 9},
		{name: "SET_MEM_TABLE no regions", msg: rawMessage(ReqSetMemTable, v, tableBytes(0))},
		{name: "SET_MEM_TABLE nine regions", msg: rawMessage(ReqSetMemTable, v, tableBytes(9, make([]MemoryRegion, 9)...)), fds: 8},
		{name: "SET_MEM_TABLE shorter than nregions", msg: rawMessage(ReqSetMemTable, v, tableBytes(2, region)), fds: 2},
		{name: "SET_MEM_TABLE longer than nregions", msg: rawMessage(ReqSetMemTable, v, tableBytes(1, region, other)), fds: 1},
		{name: "SET_MEM_TABLE header only", msg: rawMessage(ReqSetMemTable, v, []byte{1, 0, 0, 0})},
		{name: "SET_MEM_TABLE fewer fds than regions", msg: rawMessage(ReqSetMemTable, v, tableBytes(2, region, other)), fds: 1},
		{name: "SET_MEM_TABLE more fds than regions", msg: rawMessage(ReqSetMemTable, v, tableBytes(1, region)), fds: 2},
		{name: "SET_MEM_TABLE region of size 0", msg: rawMessage(ReqSetMemTable, v, tableBytes(1, MemoryRegion{UserAddr: 1})), fds: 1},
		{name: "SET_MEM_TABLE region wraps guest space", msg: rawMessage(ReqSetMemTable, v, tableBytes(1, wrapGuest)), fds: 1},
		{name: "SET_MEM_TABLE region wraps user space", msg: rawMessage(ReqSetMemTable, v, tableBytes(1, wrapUser)), fds: 1},
		{name: "SET_MEM_TABLE mmap offset overflows", msg: rawMessage(ReqSetMemTable, v, tableBytes(1, bigOffset)), fds: 1},
		{name: "SET_MEM_TABLE regions overlap", msg: rawMessage(ReqSetMemTable, v, tableBytes(2, region, overlap)), fds: 2},
		{name: "ADD_MEM_REG without fd", msg: rawMessage(ReqAddMemReg, v, MemRegionMsg{Region: region}.Append(nil))},
		{name: "ADD_MEM_REG with two fds", msg: rawMessage(ReqAddMemReg, v, MemRegionMsg{Region: region}.Append(nil)), fds: 2},
		{name: "ADD_MEM_REG short", msg: rawMessage(ReqAddMemReg, v, region.append(nil)), fds: 1},
		{name: "REM_MEM_REG with two fds", msg: rawMessage(ReqRemMemReg, v, MemRegionMsg{Region: region}.Append(nil)), fds: 2},
		{name: "REM_MEM_REG of size 0", msg: rawMessage(ReqRemMemReg, v, MemRegionMsg{}.Append(nil))},
		{name: "SET_VRING_KICK NOFD with an fd", msg: rawMessage(ReqSetVringKick, v, u64Bytes(vringNoFD)), fds: 1},
		{name: "SET_VRING_CALL without NOFD or fd", msg: rawMessage(ReqSetVringCall, v, u64Bytes(0))},
		{name: "SET_VRING_ERR bits past NOFD", msg: rawMessage(ReqSetVringErr, v, u64Bytes(0x200)), fds: 1},
		{name: "SET_VRING_KICK short", msg: rawMessage(ReqSetVringKick, v, []byte{0}), fds: 1},
		{name: "SET_VRING_NUM 0", msg: rawMessage(ReqSetVringNum, v, VringState{Num: 0}.Append(nil))},
		{name: "SET_VRING_NUM 32769", msg: rawMessage(ReqSetVringNum, v, VringState{Num: virtio.MaxQueueSize + 1}.Append(nil))},
		{name: "SET_VRING_ENABLE 2", msg: rawMessage(ReqSetVringEnable, v, VringState{Num: 2}.Append(nil))},
		{name: "GET_VRING_BASE ring 256", msg: rawMessage(ReqGetVringBase, v, VringState{Index: 256}.Append(nil))},
		{name: "SET_VRING_BASE with an fd", msg: rawMessage(ReqSetVringBase, v, VringState{}.Append(nil)), fds: 1},
		{name: "SET_VRING_ADDR undefined flag", msg: rawMessage(ReqSetVringAddr, v, VringAddr{Flags: 2}.Append(nil))},
		{name: "SET_VRING_ADDR ring 300", msg: rawMessage(ReqSetVringAddr, v, VringAddr{Index: 300}.Append(nil))},
		{name: "SET_VRING_ADDR short", msg: rawMessage(ReqSetVringAddr, v, make([]byte, 32))},
		{name: "GET_CONFIG size 0", msg: rawMessage(ReqGetConfig, v, configBytes(0, 0, 0, 0))},
		{name: "GET_CONFIG size 257", msg: rawMessage(ReqGetConfig, v, configBytes(0, 257, 0, 257))},
		{name: "GET_CONFIG past the config space", msg: rawMessage(ReqGetConfig, v, configBytes(200, 100, 0, 100))},
		{name: "GET_CONFIG size and payload disagree", msg: rawMessage(ReqGetConfig, v, configBytes(0, 12, 0, 8))},
		{name: "GET_CONFIG header cut", msg: rawMessage(ReqGetConfig, v, make([]byte, 8))},
		{name: "SET_CONFIG undefined flag", msg: rawMessage(ReqSetConfig, v, configBytes(0, 4, 2, 4))},
		{name: "SET_CONFIG with an fd", msg: rawMessage(ReqSetConfig, v, configBytes(0, 4, 0, 4)), fds: 1},
		{name: "SET_STATUS above a byte", msg: rawMessage(ReqSetStatus, v, u64Bytes(0x100))},
		{name: "NET_SET_MTU 10", msg: rawMessage(ReqNetSetMTU, v, u64Bytes(10))},
		{name: "SET_BACKEND_REQ_FD without fd", msg: rawMessage(ReqSetBackendReqFD, v, nil)},
		{name: "SET_INFLIGHT_FD short", msg: rawMessage(ReqSetInflightFD, v, make([]byte, 16)), fds: 1},
		{name: "payload cut short", msg: rawMessage(ReqSetFeatures, v, u64Bytes(1))[:HeaderSize+4], fds: 1, eof: true},
		{name: "header cut short", msg: rawMessage(ReqGetFeatures, v, nil)[:6], fds: 1, eof: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := openFDs(t)
			dev := newFakeDevice()
			var logs logBuffer
			srv := NewServer(dev, Options{Logger: testLogger(&logs)})
			c, fe := socketPair(t)
			wait := serve(t, srv, c)
			fe.callU64(ReqGetFeatures, Empty{})

			fds := make([]int, tc.fds)
			for i := range fds {
				fds[i] = eventfd(t)
			}
			fe.sendRaw(tc.msg, fds...)
			closeAll(fds...)
			if tc.eof {
				if err := fe.c.CloseWrite(); err != nil {
					t.Fatalf("shut down the front-end's writes: %v", err)
				}
			}
			fe.expectClosed()
			err := wait()
			fe.close()

			switch {
			case tc.eof && !errors.Is(err, io.ErrUnexpectedEOF):
				t.Errorf("ServeConn: got %v, want an unexpected EOF", err)
			case !tc.eof && !errors.Is(err, ErrMalformed):
				t.Errorf("ServeConn: got %v, want an error wrapping ErrMalformed", err)
			}
			if !strings.Contains(logs.String(), "[ERROR] vhostuser: front-end connection closed") {
				t.Errorf("log: got\n%s\nwant an error line for the closed connection", logs.String())
			}
			if st := srv.Stats(); !tc.eof && st.Rejected != 1 {
				t.Errorf("rejected messages: got %d, want 1", st.Rejected)
			}
			if ev := dev.eventList(); len(ev) != 1 || ev[0] != "reset" {
				t.Errorf("device events: got %q, want one reset at teardown", ev)
			}
			checkNoFDLeak(t, before)
		})
	}
}

// TestFailedMappingLeaksNothing sends memory tables whose descriptors cannot be mapped.
func TestFailedMappingLeaksNothing(t *testing.T) {
	before := openFDs(t)
	dev := newFakeDevice()
	srv := NewServer(dev, Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	fe.send(ReqSetProtocolFeatures, 0, U64(ProtocolReplyAck))

	good, short, ev := memfd(t, guestSize), memfd(t, 4096), eventfd(t)
	other := MemoryRegion{GuestAddr: 1 << 32, Size: guestSize, UserAddr: 1 << 44}
	for _, tc := range []struct {
		name string
		fds  []int
	}{
		{"second region's file too short", []int{good, short}},
		{"second region's fd an eventfd", []int{good, ev}},
	} {
		if got := fe.ack(ReqSetMemTable, MemoryTable{Regions: []MemoryRegion{guestRegion(), other}}, tc.fds...); got == 0 {
			t.Errorf("%s: got ack 0, want failure", tc.name)
		}
	}
	closeAll(good, short, ev)
	fe.close()
	if err := wait(); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	checkNoFDLeak(t, before)
}

func TestStartFailureWithoutAckClosesConnection(t *testing.T) {
	before := openFDs(t)
	dev := newFakeDevice()
	srv := NewServer(dev, Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	fe.send(ReqSetFeatures, 0, U64(0)) // no protocol features: rings start on their kick
	mfd := memfd(t, guestSize)
	fe.send(ReqSetMemTable, 0, MemoryTable{Regions: []MemoryRegion{guestRegion()}}, mfd)
	unix.Close(mfd)
	fe.send(ReqSetVringNum, 0, VringState{Index: 0, Num: 100}) // split rings need a power of two
	fe.send(ReqSetVringAddr, 0, ringAddr(0))
	kick := eventfd(t)
	fe.send(ReqSetVringKick, 0, VringFile{Index: 0}, kick)
	unix.Close(kick)
	fe.expectClosed()
	if err := wait(); err == nil || !strings.Contains(err.Error(), "power of two") {
		t.Fatalf("ServeConn: got %v, want the ring size refused", err)
	}
	fe.close()
	checkNoFDLeak(t, before)
}

// failingStop is a device whose StopQueue fails.
type failingStop struct{ *fakeDevice }

func (d failingStop) StopQueue(index int) (QueueState, error) {
	d.fakeDevice.StopQueue(index)
	return QueueState{}, errors.New("device wedged")
}

// TestStopFailureClosesConnection: a ring the device cannot stop ends the connection, even
// mid-way through replacing the ring's call eventfd, and nothing leaks.
func TestStopFailureClosesConnection(t *testing.T) {
	before := openFDs(t)
	dev := newFakeDevice()
	srv := NewServer(failingStop{dev}, Options{})
	c, fe := socketPair(t)
	wait := serve(t, srv, c)
	fe.send(ReqSetFeatures, 0, U64(0))
	mfd := memfd(t, guestSize)
	fe.send(ReqSetMemTable, 0, MemoryTable{Regions: []MemoryRegion{guestRegion()}}, mfd)
	unix.Close(mfd)
	fe.send(ReqSetVringNum, 0, VringState{Index: 0, Num: 256})
	fe.send(ReqSetVringAddr, 0, ringAddr(0))
	fe.send(ReqSetVringKick, 0, VringFile{Index: 0}, fe.own(eventfd(t)))
	fe.sync()
	if _, ok := dev.queue(0); !ok {
		t.Fatalf("ring 0 not started; events %q", dev.eventList())
	}
	call := eventfd(t)
	fe.send(ReqSetVringCall, FlagNeedReply, VringFile{Index: 0}, call)
	unix.Close(call)
	fe.expectClosed()
	if err := wait(); err == nil || !strings.Contains(err.Error(), "device wedged") {
		t.Fatalf("ServeConn: got %v, want the stop failure", err)
	}
	fe.close()
	checkNoFDLeak(t, before)
}
