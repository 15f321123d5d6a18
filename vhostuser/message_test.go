package vhostuser

import (
	"bytes"
	"errors"
	"runtime"
	"testing"

	"github.com/vmnet-dev/vmnet/virtio"
)

// seedMessages are well-formed requests of every kind the session acts on, as QEMU sends
// them, with the descriptor counts they come with.
func seedMessages() []struct {
	msg []byte
	fds int
} {
	v := Version
	region := guestRegion()
	other := MemoryRegion{GuestAddr: 1 << 32, Size: 1 << 30, UserAddr: 1 << 44, MmapOffset: 1 << 20}
	type seed = struct {
		msg []byte
		fds int
	}
	return []seed{
		{AppendMessage(nil, ReqGetFeatures, v, Empty{}), 0},
		{AppendMessage(nil, ReqSetFeatures, v, U64(1<<32|1<<30|1<<5)), 0},
		{AppendMessage(nil, ReqGetProtocolFeatures, v, Empty{}), 0},
		{AppendMessage(nil, ReqSetProtocolFeatures, v, U64(ProtocolMQ|ProtocolReplyAck)), 0},
		{AppendMessage(nil, ReqSetOwner, v, Empty{}), 0},
		{AppendMessage(nil, ReqResetOwner, v, Empty{}), 0},
		{AppendMessage(nil, ReqSetMemTable, v|FlagNeedReply, MemoryTable{Regions: []MemoryRegion{region, other}}), 2},
		{AppendMessage(nil, ReqSetLogBase, v, Log{Size: 4096}), 1},
		{AppendMessage(nil, ReqSetLogFD, v, Empty{}), 1},
		{AppendMessage(nil, ReqSetVringNum, v, VringState{Index: 1, Num: 256}), 0},
		{AppendMessage(nil, ReqSetVringAddr, v, ringAddr(1)), 0},
		{AppendMessage(nil, ReqSetVringBase, v, VringState{Index: 1, Num: 7 | 1<<15 | 5<<16}), 0},
		{AppendMessage(nil, ReqGetVringBase, v, VringState{Index: 1}), 0},
		{AppendMessage(nil, ReqSetVringKick, v, VringFile{Index: 1}), 1},
		{AppendMessage(nil, ReqSetVringCall, v, VringFile{Index: 255, NoFD: true}), 0},
		{AppendMessage(nil, ReqSetVringErr, v, VringFile{Index: 0}), 1},
		{AppendMessage(nil, ReqGetQueueNum, v, Empty{}), 0},
		{AppendMessage(nil, ReqSetVringEnable, v|FlagNeedReply, VringState{Index: 1, Num: 1}), 0},
		{AppendMessage(nil, ReqSendRARP, v, U64(0x0000_5634_1200_5452)), 0},
		{AppendMessage(nil, ReqNetSetMTU, v|FlagNeedReply, U64(1500)), 0},
		{AppendMessage(nil, ReqSetBackendReqFD, v|FlagNeedReply, Empty{}), 1},
		{AppendMessage(nil, ReqGetConfig, v, Config{Data: make([]byte, 12)}), 0},
		{AppendMessage(nil, ReqSetConfig, v, Config{Offset: 6, Flags: ConfigFlagMigration, Data: []byte{1, 0}}), 0},
		{AppendMessage(nil, ReqGetInflightFD, v, Inflight{NumQueues: 2, QueueSize: 256}), 0},
		{AppendMessage(nil, ReqSetInflightFD, v, Inflight{MmapSize: 4096, NumQueues: 2, QueueSize: 256}), 1},
		{AppendMessage(nil, ReqResetDevice, v, Empty{}), 0},
		{AppendMessage(nil, ReqGetMaxMemSlots, v, Empty{}), 0},
		{AppendMessage(nil, ReqAddMemReg, v|FlagNeedReply, MemRegionMsg{Region: region}), 1},
		{AppendMessage(nil, ReqRemMemReg, v|FlagNeedReply, MemRegionMsg{Region: region}), 0},
		{AppendMessage(nil, ReqSetStatus, v, U64(0xf)), 0},
		{AppendMessage(nil, ReqGetStatus, v, Empty{}), 0},
		{AppendMessage(nil, ReqSetDeviceStateFD, v, DeviceStateTransfer{Direction: 1}), 1},
		{AppendMessage(nil, ReqCheckDeviceState, v, Empty{}), 0},
		{AppendMessage(nil, ReqIOTLBMsg, v, Raw(make([]byte, 32))), 0},
		{AppendMessage(nil, Request(1000), v, Raw{1, 2, 3}), 3},
	}
}

func TestSeedMessagesDecode(t *testing.T) {
	for _, s := range seedMessages() {
		h, err := DecodeHeader(s.msg)
		if err != nil {
			t.Fatalf("DecodeHeader(%x): %v", s.msg, err)
		}
		p, err := DecodeRequest(h, s.msg[HeaderSize:], s.fds)
		if err != nil {
			t.Errorf("DecodeRequest %s with %d fds: %v", h.Request, s.fds, err)
			continue
		}
		if got := AppendMessage(nil, h.Request, h.Flags, p); !bytes.Equal(got, s.msg) {
			t.Errorf("%s re-encoded: got %x, want %x", h.Request, got, s.msg)
		}
	}
}

func TestRequestNames(t *testing.T) {
	for r := Request(1); r <= maxRequest; r++ {
		if r != ReqVringKick && requestNames[r] == "" {
			t.Errorf("request %d has no name", r)
		}
	}
	if got := ReqSetBackendReqFD.String(); got != "SET_BACKEND_REQ_FD" {
		t.Errorf("ReqSetBackendReqFD.String(): got %q, want SET_BACKEND_REQ_FD", got)
	}
	if got := Request(4242).String(); got != "REQUEST_4242" {
		t.Errorf("Request(4242).String(): got %q, want REQUEST_4242", got)
	}
	if got := (ProtocolMQ | ProtocolDeviceState | 1<<40).String(); got != "MQ|DEVICE_STATE|BIT_40" {
		t.Errorf("ProtocolFeatures.String(): got %q, want MQ|DEVICE_STATE|BIT_40", got)
	}
	if got := BackendReqConfigChangeMsg.String(); got != "BACKEND_CONFIG_CHANGE_MSG" {
		t.Errorf("BackendReqConfigChangeMsg.String(): got %q", got)
	}
}

// TestDecodeAllocations: decoding allocates a bounded amount whatever the sizes a message
// claims; payload bytes are aliased, never copied.
func TestDecodeAllocations(t *testing.T) {
	big := AppendMessage(nil, Request(500), Version, Raw(make([]byte, MaxPayloadSize)))
	maxTable := make([]MemoryRegion, MaxMemTableRegions)
	for i := range maxTable {
		maxTable[i] = MemoryRegion{GuestAddr: uint64(i) << 32, Size: 4096, UserAddr: 1<<44 + uint64(i)<<32}
	}
	msgs := []struct {
		msg []byte
		fds int
	}{
		{big, 0},
		{AppendMessage(nil, ReqSetMemTable, Version, MemoryTable{Regions: maxTable}), MaxMemTableRegions},
		{AppendMessage(nil, ReqGetConfig, Version, Config{Data: make([]byte, MaxConfigSize)}), 0},
	}
	msgs = append(msgs, seedMessages()...)
	for _, m := range msgs {
		h, _ := DecodeHeader(m.msg)
		payload := m.msg[HeaderSize:]
		var ms0, ms1 runtime.MemStats
		const runs = 100
		runtime.ReadMemStats(&ms0)
		for range runs {
			if _, err := DecodeRequest(h, payload, m.fds); err != nil {
				t.Fatalf("DecodeRequest %s: %v", h.Request, err)
			}
		}
		runtime.ReadMemStats(&ms1)
		if perOp := (ms1.TotalAlloc - ms0.TotalAlloc) / runs; perOp > 512 {
			t.Errorf("DecodeRequest %s of %d bytes: got %d bytes allocated per call, want at most 512", h.Request, len(payload), perOp)
		}
	}
}

func TestDecodeHeaderShort(t *testing.T) {
	if _, err := DecodeHeader(make([]byte, HeaderSize-1)); !errors.Is(err, ErrMalformed) {
		t.Errorf("DecodeHeader of 11 bytes: got %v, want ErrMalformed", err)
	}
}

// within reports whether b is a part of buf rather than a copy: writing b changes buf.
func within(b, buf []byte) bool {
	if len(b) == 0 {
		return true
	}
	before := bytes.Clone(buf)
	b[0] ^= 0xff
	changed := !bytes.Equal(before, buf)
	b[0] ^= 0xff
	return changed
}

// FuzzMessage runs from the corpus in testdata/fuzz/FuzzMessage: seedMessages as QEMU sends
// them, and malformed variants.
func FuzzMessage(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, nfds uint8) {
		h, err := DecodeHeader(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeHeader error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if h.Size > MaxPayloadSize || h.Flags&versionMask != Version || h.Flags&FlagReply != 0 {
			t.Fatalf("DecodeHeader accepted %+v", h)
		}
		if uint64(len(data)-HeaderSize) < uint64(h.Size) {
			return // the reader would wait for the rest
		}
		payload := data[HeaderSize : HeaderSize+int(h.Size)]
		n := int(nfds) % (MaxFDs + 4)
		p, err := DecodeRequest(h, payload, n)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeRequest error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if got := p.Append(nil); !bytes.Equal(got, payload) {
			t.Fatalf("%s payload re-encoded: got %x, want %x", h.Request, got, payload)
		}
		if got := AppendMessage(nil, h.Request, h.Flags, p); !bytes.Equal(got, data[:HeaderSize+len(payload)]) {
			t.Fatalf("%s message re-encoded: got %x, want %x", h.Request, got, data[:HeaderSize+len(payload)])
		}
		checkDecoded(t, h.Request, p, n, payload)
	})
}

// checkDecoded holds every accepted payload to the bounds the session relies on.
func checkDecoded(t *testing.T, req Request, p Payload, nfds int, payload []byte) {
	switch v := p.(type) {
	case MemoryTable:
		if len(v.Regions) == 0 || len(v.Regions) > MaxMemTableRegions || len(v.Regions) != nfds {
			t.Fatalf("%s accepted with %d regions and %d fds", req, len(v.Regions), nfds)
		}
		for i, r := range v.Regions {
			if err := r.check(); err != nil {
				t.Fatalf("%s accepted region %d: %v", req, i, err)
			}
			for _, o := range v.Regions[:i] {
				if r.overlaps(o) {
					t.Fatalf("%s accepted overlapping regions %+v and %+v", req, o, r)
				}
			}
		}
	case MemRegionMsg:
		if err := v.Region.check(); err != nil || nfds > 1 || (req == ReqAddMemReg && nfds != 1) {
			t.Fatalf("%s accepted region %+v with %d fds (%v)", req, v.Region, nfds, err)
		}
	case Config:
		if len(v.Data) == 0 || len(v.Data) > MaxConfigSize || int(v.Offset)+len(v.Data) > MaxConfigSize || nfds != 0 {
			t.Fatalf("%s accepted offset %d size %d with %d fds", req, v.Offset, len(v.Data), nfds)
		}
		if !within(v.Data, payload) {
			t.Fatalf("%s data copied out of the message", req)
		}
	case VringState:
		if v.Index >= MaxQueues || (req == ReqSetVringNum && (v.Num == 0 || v.Num > virtio.MaxQueueSize)) ||
			(req == ReqSetVringEnable && v.Num > 1) || nfds != 0 {
			t.Fatalf("%s accepted %+v with %d fds", req, v, nfds)
		}
	case VringAddr:
		if v.Index >= MaxQueues || v.Flags&^VringFlagLog != 0 || nfds != 0 {
			t.Fatalf("%s accepted %+v with %d fds", req, v, nfds)
		}
	case VringFile:
		if v.NoFD != (nfds == 0) || nfds > 1 {
			t.Fatalf("%s accepted %+v with %d fds", req, v, nfds)
		}
	case U64:
		if (req == ReqSetStatus && v > 0xff) || (req == ReqNetSetMTU && (v < 68 || v > 0xffff)) || nfds != 0 {
			t.Fatalf("%s accepted %d with %d fds", req, v, nfds)
		}
	case Raw:
		if !within(v, payload) {
			t.Fatalf("%s payload copied out of the message", req)
		}
	case Empty:
		if len(payload) != 0 {
			t.Fatalf("%s accepted a payload of %d bytes as empty", req, len(payload))
		}
	}
}
