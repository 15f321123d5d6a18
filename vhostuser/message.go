package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/vmnet-dev/vmnet/virtio"
)

// Wire sizes and bounds. All numbers on the wire are in the machine's native byte order
// (vhost-user.rst "Message Specification").
const (
	// HeaderSize is the size of request, flags and size.
	HeaderSize = 12
	// MaxPayloadSize bounds every payload this package reads, so a hostile size field never
	// decides an allocation. The largest payloads the package acts on are a memory table
	// (8 + 8*32 bytes) and a config space access (12 + 256); QEMU's own bound, the crypto
	// session, is about 1.1 KiB.
	MaxPayloadSize = 4096
	// MaxFDs is the most file descriptors one message may carry: SET_MEM_TABLE sends one per
	// region and has at most MaxMemTableRegions.
	MaxFDs = 8
	// MaxMemTableRegions is the region count of the "Multiple Memory regions description".
	MaxMemTableRegions = 8
	// MaxConfigSize is the largest config space access (VHOST_USER_MAX_CONFIG_SIZE in QEMU).
	MaxConfigSize = 256
	// MaxQueues is the most rings a vhost-user device can have: the ring index of
	// SET_VRING_KICK/CALL/ERR has 8 bits.
	MaxQueues = 256
)

const (
	memoryRegionSize = 32
	vringStateSize   = 8
	vringAddrSize    = 40
	u64Size          = 8
	memRegMsgSize    = 8 + memoryRegionSize
	configHeaderSize = 12
	logSize          = 16
	inflightSize     = 20
	deviceStateSize  = 8
)

// Flags is the flags word of the header.
type Flags uint32

const (
	// Version is the protocol version, in the two low bits of every message.
	Version Flags = 0x1
	// FlagReply marks a reply from the back-end.
	FlagReply Flags = 0x4
	// FlagNeedReply asks for an ack (vhost-user.rst "REPLY_ACK").
	FlagNeedReply Flags = 0x8

	versionMask Flags = 0x3
)

// Request is a front-end → back-end message type (vhost-user.rst "Front-end message types").
type Request uint32

// Front-end message types.
const (
	ReqGetFeatures         Request = 1
	ReqSetFeatures         Request = 2
	ReqSetOwner            Request = 3
	ReqResetOwner          Request = 4
	ReqSetMemTable         Request = 5
	ReqSetLogBase          Request = 6
	ReqSetLogFD            Request = 7
	ReqSetVringNum         Request = 8
	ReqSetVringAddr        Request = 9
	ReqSetVringBase        Request = 10
	ReqGetVringBase        Request = 11
	ReqSetVringKick        Request = 12
	ReqSetVringCall        Request = 13
	ReqSetVringErr         Request = 14
	ReqGetProtocolFeatures Request = 15
	ReqSetProtocolFeatures Request = 16
	ReqGetQueueNum         Request = 17
	ReqSetVringEnable      Request = 18
	ReqSendRARP            Request = 19
	ReqNetSetMTU           Request = 20
	ReqSetBackendReqFD     Request = 21
	ReqIOTLBMsg            Request = 22
	ReqSetVringEndian      Request = 23
	ReqGetConfig           Request = 24
	ReqSetConfig           Request = 25
	ReqCreateCryptoSession Request = 26
	ReqCloseCryptoSession  Request = 27
	ReqPostcopyAdvise      Request = 28
	ReqPostcopyListen      Request = 29
	ReqPostcopyEnd         Request = 30
	ReqGetInflightFD       Request = 31
	ReqSetInflightFD       Request = 32
	ReqGPUSetSocket        Request = 33
	ReqResetDevice         Request = 34
	ReqVringKick           Request = 35
	ReqGetMaxMemSlots      Request = 36
	ReqAddMemReg           Request = 37
	ReqRemMemReg           Request = 38
	ReqSetStatus           Request = 39
	ReqGetStatus           Request = 40
	ReqGetSharedObject     Request = 41
	ReqSetDeviceStateFD    Request = 42
	ReqCheckDeviceState    Request = 43
	maxRequest                     = ReqCheckDeviceState
)

var requestNames = [...]string{
	ReqGetFeatures:         "GET_FEATURES",
	ReqSetFeatures:         "SET_FEATURES",
	ReqSetOwner:            "SET_OWNER",
	ReqResetOwner:          "RESET_OWNER",
	ReqSetMemTable:         "SET_MEM_TABLE",
	ReqSetLogBase:          "SET_LOG_BASE",
	ReqSetLogFD:            "SET_LOG_FD",
	ReqSetVringNum:         "SET_VRING_NUM",
	ReqSetVringAddr:        "SET_VRING_ADDR",
	ReqSetVringBase:        "SET_VRING_BASE",
	ReqGetVringBase:        "GET_VRING_BASE",
	ReqSetVringKick:        "SET_VRING_KICK",
	ReqSetVringCall:        "SET_VRING_CALL",
	ReqSetVringErr:         "SET_VRING_ERR",
	ReqGetProtocolFeatures: "GET_PROTOCOL_FEATURES",
	ReqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	ReqGetQueueNum:         "GET_QUEUE_NUM",
	ReqSetVringEnable:      "SET_VRING_ENABLE",
	ReqSendRARP:            "SEND_RARP",
	ReqNetSetMTU:           "NET_SET_MTU",
	ReqSetBackendReqFD:     "SET_BACKEND_REQ_FD",
	ReqIOTLBMsg:            "IOTLB_MSG",
	ReqSetVringEndian:      "SET_VRING_ENDIAN",
	ReqGetConfig:           "GET_CONFIG",
	ReqSetConfig:           "SET_CONFIG",
	ReqCreateCryptoSession: "CREATE_CRYPTO_SESSION",
	ReqCloseCryptoSession:  "CLOSE_CRYPTO_SESSION",
	ReqPostcopyAdvise:      "POSTCOPY_ADVISE",
	ReqPostcopyListen:      "POSTCOPY_LISTEN",
	ReqPostcopyEnd:         "POSTCOPY_END",
	ReqGetInflightFD:       "GET_INFLIGHT_FD",
	ReqSetInflightFD:       "SET_INFLIGHT_FD",
	ReqGPUSetSocket:        "GPU_SET_SOCKET",
	ReqResetDevice:         "RESET_DEVICE",
	ReqVringKick:           "VRING_KICK",
	ReqGetMaxMemSlots:      "GET_MAX_MEM_SLOTS",
	ReqAddMemReg:           "ADD_MEM_REG",
	ReqRemMemReg:           "REM_MEM_REG",
	ReqSetStatus:           "SET_STATUS",
	ReqGetStatus:           "GET_STATUS",
	ReqGetSharedObject:     "GET_SHARED_OBJECT",
	ReqSetDeviceStateFD:    "SET_DEVICE_STATE_FD",
	ReqCheckDeviceState:    "CHECK_DEVICE_STATE",
}

// String returns the spec name without its VHOST_USER_ prefix.
func (r Request) String() string {
	if int(r) < len(requestNames) && requestNames[r] != "" {
		return requestNames[r]
	}
	return fmt.Sprintf("REQUEST_%d", uint32(r))
}

// MarshalText is String: a request's name, as JSON keys print it.
func (r Request) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a name String returns, "REQUEST_N" included.
func (r *Request) UnmarshalText(b []byte) error {
	s := string(b)
	for i, name := range requestNames {
		if name != "" && name == s {
			*r = Request(i)
			return nil
		}
	}
	if n, ok := strings.CutPrefix(s, "REQUEST_"); ok {
		if v, err := strconv.ParseUint(n, 10, 32); err == nil {
			*r = Request(v)
			return nil
		}
	}
	return fmt.Errorf("unknown vhost-user request %q", s)
}

// BackendRequest is a back-end → front-end message type, sent on the channel of
// SET_BACKEND_REQ_FD (vhost-user.rst "Back-end message types").
type BackendRequest uint32

// Back-end message types.
const (
	BackendReqIOTLBMsg             BackendRequest = 1
	BackendReqConfigChangeMsg      BackendRequest = 2
	BackendReqVringHostNotifierMsg BackendRequest = 3
	BackendReqVringCall            BackendRequest = 4
	BackendReqVringErr             BackendRequest = 5
	BackendReqSharedObjectAdd      BackendRequest = 6
	BackendReqSharedObjectRemove   BackendRequest = 7
	BackendReqSharedObjectLookup   BackendRequest = 8
)

var backendRequestNames = [...]string{
	BackendReqIOTLBMsg:             "BACKEND_IOTLB_MSG",
	BackendReqConfigChangeMsg:      "BACKEND_CONFIG_CHANGE_MSG",
	BackendReqVringHostNotifierMsg: "BACKEND_VRING_HOST_NOTIFIER_MSG",
	BackendReqVringCall:            "BACKEND_VRING_CALL",
	BackendReqVringErr:             "BACKEND_VRING_ERR",
	BackendReqSharedObjectAdd:      "BACKEND_SHARED_OBJECT_ADD",
	BackendReqSharedObjectRemove:   "BACKEND_SHARED_OBJECT_REMOVE",
	BackendReqSharedObjectLookup:   "BACKEND_SHARED_OBJECT_LOOKUP",
}

// String returns the spec name without its VHOST_USER_ prefix.
func (r BackendRequest) String() string {
	if int(r) < len(backendRequestNames) && backendRequestNames[r] != "" {
		return backendRequestNames[r]
	}
	return fmt.Sprintf("BACKEND_REQUEST_%d", uint32(r))
}

// FProtocolFeatures is the virtio feature bit by which a back-end says it speaks
// GET/SET_PROTOCOL_FEATURES (VHOST_USER_F_PROTOCOL_FEATURES, the reserved bit 30).
const FProtocolFeatures uint64 = 1 << 30

// FLogAll is the vhost feature bit by which the front-end asks the back-end to log its
// writes to guest memory (VHOST_F_LOG_ALL, bit 26; vhost-user.rst "Migration"). The server
// offers it for a device that implements DirtyLogger.
const FLogAll uint64 = 1 << 26

// ProtocolFeatures is a set of vhost-user protocol feature bits (vhost-user.rst
// "Protocol features").
type ProtocolFeatures uint64

// Protocol feature bits.
const (
	ProtocolMQ                  ProtocolFeatures = 1 << 0
	ProtocolLogShmfd            ProtocolFeatures = 1 << 1
	ProtocolRARP                ProtocolFeatures = 1 << 2
	ProtocolReplyAck            ProtocolFeatures = 1 << 3
	ProtocolMTU                 ProtocolFeatures = 1 << 4
	ProtocolBackendReq          ProtocolFeatures = 1 << 5
	ProtocolCrossEndian         ProtocolFeatures = 1 << 6
	ProtocolCryptoSession       ProtocolFeatures = 1 << 7
	ProtocolPagefault           ProtocolFeatures = 1 << 8
	ProtocolConfig              ProtocolFeatures = 1 << 9
	ProtocolBackendSendFD       ProtocolFeatures = 1 << 10
	ProtocolHostNotifier        ProtocolFeatures = 1 << 11
	ProtocolInflightShmfd       ProtocolFeatures = 1 << 12
	ProtocolResetDevice         ProtocolFeatures = 1 << 13
	ProtocolInbandNotifications ProtocolFeatures = 1 << 14
	ProtocolConfigureMemSlots   ProtocolFeatures = 1 << 15
	ProtocolStatus              ProtocolFeatures = 1 << 16
	ProtocolXenMmap             ProtocolFeatures = 1 << 17
	ProtocolSharedObject        ProtocolFeatures = 1 << 18
	ProtocolDeviceState         ProtocolFeatures = 1 << 19
)

var protocolFeatureNames = [...]string{
	"MQ", "LOG_SHMFD", "RARP", "REPLY_ACK", "MTU", "BACKEND_REQ", "CROSS_ENDIAN",
	"CRYPTO_SESSION", "PAGEFAULT", "CONFIG", "BACKEND_SEND_FD", "HOST_NOTIFIER",
	"INFLIGHT_SHMFD", "RESET_DEVICE", "INBAND_NOTIFICATIONS", "CONFIGURE_MEM_SLOTS",
	"STATUS", "XEN_MMAP", "SHARED_OBJECT", "DEVICE_STATE",
}

// Has reports whether every bit of x is in f.
func (f ProtocolFeatures) Has(x ProtocolFeatures) bool { return f&x == x }

// String lists the set bits by spec name, "MQ|REPLY_ACK|BIT_40" style.
func (f ProtocolFeatures) String() string {
	if f == 0 {
		return "0"
	}
	var names []string
	for bit := 0; bit < 64; bit++ {
		if f&(1<<bit) == 0 {
			continue
		}
		if bit < len(protocolFeatureNames) {
			names = append(names, protocolFeatureNames[bit])
		} else {
			names = append(names, fmt.Sprintf("BIT_%d", bit))
		}
	}
	return strings.Join(names, "|")
}

// Bits of the u64 payload of SET_VRING_KICK, SET_VRING_CALL and SET_VRING_ERR.
const (
	vringIndexMask = 0xff
	vringNoFD      = 0x100
)

// VringFlagLog is the one defined bit of VringAddr.Flags: log writes to the used ring
// (VHOST_VRING_F_LOG, vhost-user.rst "Migration").
const VringFlagLog = 0x1

// ErrMalformed is wrapped by every error that rejects a message's framing or payload.
var ErrMalformed = errors.New("malformed message")

// ErrNotSupported is wrapped by the errors of requests this package or the device does not
// implement; the session answers them with a failure and keeps the connection.
var ErrNotSupported = errors.New("not supported")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Header is the fixed part of every message.
type Header struct {
	Request Request
	Flags   Flags
	Size    uint32 // payload bytes that follow
}

// NeedReply reports whether the sender asked for an ack.
func (h Header) NeedReply() bool { return h.Flags&FlagNeedReply != 0 }

// DecodeHeader decodes and checks a request header: version 1, no reply bit, no
// undefined flag bits, and a payload of at most MaxPayloadSize.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, malformed("header is %d bytes, want %d", len(b), HeaderSize)
	}
	h := Header{
		Request: Request(binary.NativeEndian.Uint32(b[0:])),
		Flags:   Flags(binary.NativeEndian.Uint32(b[4:])),
		Size:    binary.NativeEndian.Uint32(b[8:]),
	}
	if v := h.Flags & versionMask; v != Version {
		return h, malformed("%s has version %d, want %d", h.Request, v, Version)
	}
	if h.Flags&FlagReply != 0 {
		return h, malformed("%s has the reply flag set", h.Request)
	}
	if extra := h.Flags &^ (versionMask | FlagReply | FlagNeedReply); extra != 0 {
		return h, malformed("%s has undefined flags %#x", h.Request, uint32(extra))
	}
	if h.Size > MaxPayloadSize {
		return h, overLimit(LimitPayload, h.Request, uint64(h.Size), MaxPayloadSize)
	}
	return h, nil
}

// Append appends the wire form of h.
func (h Header) Append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint32(b, uint32(h.Request))
	b = binary.NativeEndian.AppendUint32(b, uint32(h.Flags))
	return binary.NativeEndian.AppendUint32(b, h.Size)
}

// Payload is the decoded body of a message.
type Payload interface {
	// Append appends the wire form of the payload.
	Append(b []byte) []byte
}

// AppendMessage appends a whole message, header and payload; the header's size is taken
// from the encoded payload. A nil p is an empty payload.
func AppendMessage(b []byte, req Request, flags Flags, p Payload) []byte {
	start := len(b)
	b = Header{Request: req, Flags: flags}.Append(b)
	if p != nil {
		b = p.Append(b)
	}
	binary.NativeEndian.PutUint32(b[start+8:], uint32(len(b)-start-HeaderSize))
	return b
}

// Empty is the payload of requests that carry none ("N/A" in the spec).
type Empty struct{}

// Append appends nothing.
func (Empty) Append(b []byte) []byte { return b }

// U64 is "a single 64-bit integer".
type U64 uint64

// Append appends the native-endian u64.
func (v U64) Append(b []byte) []byte { return binary.NativeEndian.AppendUint64(b, uint64(v)) }

// VringState is "a vring state description", also the payload of SET/GET_VRING_BASE
// ("vring descriptor index/indices").
type VringState struct {
	Index uint32
	Num   uint32
}

// Append appends index and num.
func (v VringState) Append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint32(b, v.Index)
	return binary.NativeEndian.AppendUint32(b, v.Num)
}

// VringAddr is "a vring address description" (struct vhost_vring_addr): ring addresses in
// the front-end's address space.
type VringAddr struct {
	Index     uint32
	Flags     uint32 // VringFlagLog or 0
	DescUser  uint64
	UsedUser  uint64
	AvailUser uint64
	LogGuest  uint64
}

// Append appends the 40-byte struct.
func (v VringAddr) Append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint32(b, v.Index)
	b = binary.NativeEndian.AppendUint32(b, v.Flags)
	b = binary.NativeEndian.AppendUint64(b, v.DescUser)
	b = binary.NativeEndian.AppendUint64(b, v.UsedUser)
	b = binary.NativeEndian.AppendUint64(b, v.AvailUser)
	return binary.NativeEndian.AppendUint64(b, v.LogGuest)
}

// VringFile is the u64 of SET_VRING_KICK, SET_VRING_CALL and SET_VRING_ERR: the ring index
// in bits 0-7 and, in bit 8, that no file descriptor comes with it.
type VringFile struct {
	Index uint8
	NoFD  bool
}

// Append appends the u64.
func (v VringFile) Append(b []byte) []byte {
	u := uint64(v.Index)
	if v.NoFD {
		u |= vringNoFD
	}
	return binary.NativeEndian.AppendUint64(b, u)
}

// MemoryRegion is a "Memory region description".
type MemoryRegion struct {
	GuestAddr  uint64
	Size       uint64
	UserAddr   uint64
	MmapOffset uint64
}

func (r MemoryRegion) append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint64(b, r.GuestAddr)
	b = binary.NativeEndian.AppendUint64(b, r.Size)
	b = binary.NativeEndian.AppendUint64(b, r.UserAddr)
	return binary.NativeEndian.AppendUint64(b, r.MmapOffset)
}

func decodeMemoryRegion(b []byte) MemoryRegion {
	return MemoryRegion{
		GuestAddr:  binary.NativeEndian.Uint64(b[0:]),
		Size:       binary.NativeEndian.Uint64(b[8:]),
		UserAddr:   binary.NativeEndian.Uint64(b[16:]),
		MmapOffset: binary.NativeEndian.Uint64(b[24:]),
	}
}

// check rejects regions the back-end could not map or address: empty, wrapping around the
// guest or user address space, or reaching past the largest file offset.
func (r MemoryRegion) check() error {
	switch {
	case r.Size == 0:
		return malformed("region at guest %#x has size 0", r.GuestAddr)
	case r.Size > math.MaxInt:
		return malformed("region at guest %#x has size %#x", r.GuestAddr, r.Size)
	case r.GuestAddr+(r.Size-1) < r.GuestAddr:
		return malformed("region at guest %#x size %#x wraps the guest address space", r.GuestAddr, r.Size)
	case r.UserAddr+(r.Size-1) < r.UserAddr:
		return malformed("region at user %#x size %#x wraps the user address space", r.UserAddr, r.Size)
	case r.MmapOffset > math.MaxInt64-r.Size:
		return malformed("region at guest %#x: mmap offset %#x plus size %#x overflows", r.GuestAddr, r.MmapOffset, r.Size)
	}
	return nil
}

// overlaps reports whether r and o share a guest or a user address. Both must have passed
// check.
func (r MemoryRegion) overlaps(o MemoryRegion) bool {
	within := func(a, asz, b, bsz uint64) bool { return a <= b+(bsz-1) && b <= a+(asz-1) }
	return within(r.GuestAddr, r.Size, o.GuestAddr, o.Size) || within(r.UserAddr, r.Size, o.UserAddr, o.Size)
}

// MemoryTable is the "Multiple Memory regions description" of SET_MEM_TABLE. Only the
// regions that are sent are on the wire: nregions, padding, then nregions regions.
type MemoryTable struct {
	Regions []MemoryRegion
	padding uint32 // kept so that a decoded table re-encodes to the same bytes
}

// Append appends nregions, padding and the regions.
func (t MemoryTable) Append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint32(b, uint32(len(t.Regions)))
	b = binary.NativeEndian.AppendUint32(b, t.padding)
	for _, r := range t.Regions {
		b = r.append(b)
	}
	return b
}

// MemRegionMsg is the "Single memory region description" of ADD_MEM_REG and REM_MEM_REG.
type MemRegionMsg struct {
	Region  MemoryRegion
	padding uint64
}

// Append appends padding and the region.
func (m MemRegionMsg) Append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint64(b, m.padding)
	return m.Region.append(b)
}

// Config is the "Virtio device config space" payload of GET_CONFIG and SET_CONFIG. The
// size field on the wire is len(Data). A decoded Data aliases the message buffer and is
// valid only while that message is handled.
type Config struct {
	Offset uint32
	Flags  uint32 // ConfigFlagMigration or 0
	Data   []byte
}

// ConfigFlagMigration marks a SET_CONFIG that restores state during live migration, the
// only case in which read-only fields may be written.
const ConfigFlagMigration = 0x1

// Append appends offset, size, flags and the data.
func (c Config) Append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint32(b, c.Offset)
	b = binary.NativeEndian.AppendUint32(b, uint32(len(c.Data)))
	b = binary.NativeEndian.AppendUint32(b, c.Flags)
	return append(b, c.Data...)
}

// Log is the "Log description" of SET_LOG_BASE.
type Log struct {
	Size   uint64
	Offset uint64
}

// Append appends size and offset.
func (l Log) Append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint64(b, l.Size)
	return binary.NativeEndian.AppendUint64(b, l.Offset)
}

// Inflight is the "Inflight description" of GET/SET_INFLIGHT_FD.
type Inflight struct {
	MmapSize   uint64
	MmapOffset uint64
	NumQueues  uint16
	QueueSize  uint16
}

// Append appends the 20-byte struct.
func (in Inflight) Append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint64(b, in.MmapSize)
	b = binary.NativeEndian.AppendUint64(b, in.MmapOffset)
	b = binary.NativeEndian.AppendUint16(b, in.NumQueues)
	return binary.NativeEndian.AppendUint16(b, in.QueueSize)
}

// DeviceStateTransfer is the "Device state transfer parameters" of SET_DEVICE_STATE_FD.
type DeviceStateTransfer struct {
	Direction uint32
	Phase     uint32
}

// Append appends direction and phase.
func (d DeviceStateTransfer) Append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint32(b, d.Direction)
	return binary.NativeEndian.AppendUint32(b, d.Phase)
}

// Raw is the undecoded payload of a request this package does not act on. It aliases the
// message buffer.
type Raw []byte

// Append appends the bytes.
func (r Raw) Append(b []byte) []byte { return append(b, r...) }

// fdRule says how many file descriptors a request may carry.
type fdRule uint8

const (
	fdsNone fdRule = iota
	fdsOne
	fdsAtMostOne
)

func checkFDs(req Request, nfds int, rule fdRule) error {
	ok := false
	switch rule {
	case fdsNone:
		ok = nfds == 0
	case fdsOne:
		ok = nfds == 1
	case fdsAtMostOne:
		ok = nfds <= 1
	}
	if !ok {
		return malformed("%s carries %d file descriptors", req, nfds)
	}
	return nil
}

func checkSize(req Request, payload []byte, want int) error {
	if len(payload) != want {
		return malformed("%s payload is %d bytes, want %d", req, len(payload), want)
	}
	return nil
}

// DecodeRequest decodes and validates the payload of a request that arrived with nfds file
// descriptors. Sizes must be exactly what the request needs, the descriptor count must match
// the request (SET_MEM_TABLE: one per region; SET_VRING_KICK/CALL/ERR: one unless the NOFD
// bit is set), counts and fields must be within the spec's bounds. Requests this package
// does not act on decode to Raw with no check but the size bound. Decoded slices alias
// payload. Errors wrap ErrMalformed.
func DecodeRequest(h Header, payload []byte, nfds int) (Payload, error) {
	req := h.Request
	if len(payload) != int(h.Size) {
		return nil, malformed("%s payload is %d bytes, header says %d", req, len(payload), h.Size)
	}
	if len(payload) > MaxPayloadSize {
		return nil, overLimit(LimitPayload, req, uint64(len(payload)), MaxPayloadSize)
	}
	if nfds < 0 {
		return nil, malformed("%s carries %d file descriptors", req, nfds)
	}
	if nfds > MaxFDs {
		return nil, overLimit(LimitFDs, req, uint64(nfds), MaxFDs)
	}
	switch req {
	case ReqGetFeatures, ReqGetProtocolFeatures, ReqSetOwner, ReqResetOwner, ReqGetQueueNum,
		ReqResetDevice, ReqGetMaxMemSlots, ReqGetStatus, ReqCheckDeviceState:
		return Empty{}, firstErr(checkSize(req, payload, 0), checkFDs(req, nfds, fdsNone))
	case ReqSetBackendReqFD, ReqSetLogFD:
		return Empty{}, firstErr(checkSize(req, payload, 0), checkFDs(req, nfds, fdsOne))
	case ReqSetFeatures, ReqSetProtocolFeatures, ReqSendRARP, ReqSetStatus, ReqNetSetMTU:
		if err := firstErr(checkSize(req, payload, u64Size), checkFDs(req, nfds, fdsNone)); err != nil {
			return nil, err
		}
		return decodeU64(req, payload)
	case ReqSetVringNum, ReqSetVringBase, ReqGetVringBase, ReqSetVringEnable:
		if err := firstErr(checkSize(req, payload, vringStateSize), checkFDs(req, nfds, fdsNone)); err != nil {
			return nil, err
		}
		return decodeVringState(req, payload)
	case ReqSetVringAddr:
		if err := firstErr(checkSize(req, payload, vringAddrSize), checkFDs(req, nfds, fdsNone)); err != nil {
			return nil, err
		}
		return decodeVringAddr(payload)
	case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
		return decodeVringFile(req, payload, nfds)
	case ReqSetMemTable:
		return decodeMemoryTable(payload, nfds)
	case ReqAddMemReg, ReqRemMemReg:
		return decodeMemRegMsg(req, payload, nfds)
	case ReqGetConfig, ReqSetConfig:
		return decodeConfig(req, payload, nfds)
	case ReqSetLogBase:
		if err := firstErr(checkSize(req, payload, logSize), checkFDs(req, nfds, fdsAtMostOne)); err != nil {
			return nil, err
		}
		return Log{Size: binary.NativeEndian.Uint64(payload), Offset: binary.NativeEndian.Uint64(payload[8:])}, nil
	case ReqGetInflightFD, ReqSetInflightFD:
		rule := fdsNone
		if req == ReqSetInflightFD {
			rule = fdsOne
		}
		if err := firstErr(checkSize(req, payload, inflightSize), checkFDs(req, nfds, rule)); err != nil {
			return nil, err
		}
		return Inflight{
			MmapSize:   binary.NativeEndian.Uint64(payload),
			MmapOffset: binary.NativeEndian.Uint64(payload[8:]),
			NumQueues:  binary.NativeEndian.Uint16(payload[16:]),
			QueueSize:  binary.NativeEndian.Uint16(payload[18:]),
		}, nil
	case ReqSetDeviceStateFD:
		if err := firstErr(checkSize(req, payload, deviceStateSize), checkFDs(req, nfds, fdsOne)); err != nil {
			return nil, err
		}
		return DeviceStateTransfer{
			Direction: binary.NativeEndian.Uint32(payload),
			Phase:     binary.NativeEndian.Uint32(payload[4:]),
		}, nil
	}
	return Raw(payload), nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func decodeU64(req Request, b []byte) (Payload, error) {
	v := binary.NativeEndian.Uint64(b)
	switch req {
	case ReqSetStatus:
		// The virtio device status is one byte (virtio 1.2 §2.1).
		if v > math.MaxUint8 {
			return nil, malformed("%s status %#x does not fit a byte", req, v)
		}
	case ReqNetSetMTU:
		// The mtu of the config space (virtio 1.2 §5.1.4), widened to a u64.
		if v > math.MaxUint16 {
			return nil, malformed("%s mtu %d does not fit the 16-bit config field", req, v)
		}
		if err := virtio.CheckMTU(int(v)); err != nil {
			return nil, malformed("%s %v", req, err)
		}
	}
	return U64(v), nil
}

func decodeVringState(req Request, b []byte) (Payload, error) {
	s := VringState{Index: binary.NativeEndian.Uint32(b), Num: binary.NativeEndian.Uint32(b[4:])}
	if s.Index >= MaxQueues {
		return nil, malformed("%s ring index %d, limit %d", req, s.Index, MaxQueues-1)
	}
	switch req {
	case ReqSetVringNum:
		// The layout is known when the ring starts (queueSetup checks it
		// again); until then a size is refused only if no layout takes it.
		if err := virtio.CheckQueueSize(s.Num, true); err != nil {
			return nil, malformed("%s ring %d %v", req, s.Index, err)
		}
	case ReqSetVringEnable:
		if s.Num > 1 {
			return nil, malformed("%s ring %d enable value %d, want 0 or 1", req, s.Index, s.Num)
		}
	}
	return s, nil
}

func decodeVringAddr(b []byte) (Payload, error) {
	a := VringAddr{
		Index:     binary.NativeEndian.Uint32(b),
		Flags:     binary.NativeEndian.Uint32(b[4:]),
		DescUser:  binary.NativeEndian.Uint64(b[8:]),
		UsedUser:  binary.NativeEndian.Uint64(b[16:]),
		AvailUser: binary.NativeEndian.Uint64(b[24:]),
		LogGuest:  binary.NativeEndian.Uint64(b[32:]),
	}
	if a.Index >= MaxQueues {
		return nil, malformed("%s ring index %d, limit %d", ReqSetVringAddr, a.Index, MaxQueues-1)
	}
	if a.Flags&^VringFlagLog != 0 {
		return nil, malformed("%s ring %d has undefined flags %#x", ReqSetVringAddr, a.Index, a.Flags)
	}
	return a, nil
}

func decodeVringFile(req Request, b []byte, nfds int) (Payload, error) {
	if err := checkSize(req, b, u64Size); err != nil {
		return nil, err
	}
	u := binary.NativeEndian.Uint64(b)
	if u&^(vringIndexMask|vringNoFD) != 0 {
		return nil, malformed("%s payload %#x has bits beyond index and NOFD", req, u)
	}
	f := VringFile{Index: uint8(u & vringIndexMask), NoFD: u&vringNoFD != 0}
	rule := fdsOne
	if f.NoFD {
		rule = fdsNone
	}
	if err := checkFDs(req, nfds, rule); err != nil {
		return nil, fmt.Errorf("check descriptors of ring %d (nofd %t): %w", f.Index, f.NoFD, err)
	}
	return f, nil
}

func decodeMemoryTable(b []byte, nfds int) (Payload, error) {
	req := ReqSetMemTable
	if len(b) < 8 {
		return nil, malformed("%s payload is %d bytes, want at least 8", req, len(b))
	}
	n := binary.NativeEndian.Uint32(b)
	if n == 0 || n > MaxMemTableRegions {
		return nil, malformed("%s has %d regions, want 1 to %d", req, n, MaxMemTableRegions)
	}
	if err := checkSize(req, b, 8+int(n)*memoryRegionSize); err != nil {
		return nil, fmt.Errorf("check size of %d regions: %w", n, err)
	}
	if nfds != int(n) {
		return nil, malformed("%s has %d regions but carries %d file descriptors", req, n, nfds)
	}
	t := MemoryTable{Regions: make([]MemoryRegion, n), padding: binary.NativeEndian.Uint32(b[4:])}
	for i := range t.Regions {
		r := decodeMemoryRegion(b[8+i*memoryRegionSize:])
		if err := r.check(); err != nil {
			return nil, fmt.Errorf("check region %d: %w", i, err)
		}
		for j := range i {
			if r.overlaps(t.Regions[j]) {
				return nil, malformed("%s regions %d and %d overlap", req, j, i)
			}
		}
		t.Regions[i] = r
	}
	return t, nil
}

func decodeMemRegMsg(req Request, b []byte, nfds int) (Payload, error) {
	rule := fdsOne
	if req == ReqRemMemReg {
		// vhost-user.rst REM_MEM_REG: a back-end MAY accept one descriptor from older
		// front-ends and must close it unused.
		rule = fdsAtMostOne
	}
	if err := firstErr(checkSize(req, b, memRegMsgSize), checkFDs(req, nfds, rule)); err != nil {
		return nil, err
	}
	m := MemRegionMsg{padding: binary.NativeEndian.Uint64(b), Region: decodeMemoryRegion(b[8:])}
	if err := m.Region.check(); err != nil {
		return nil, err
	}
	return m, nil
}

func decodeConfig(req Request, b []byte, nfds int) (Payload, error) {
	if err := checkFDs(req, nfds, fdsNone); err != nil {
		return nil, err
	}
	if len(b) < configHeaderSize {
		return nil, malformed("%s payload is %d bytes, want at least %d", req, len(b), configHeaderSize)
	}
	c := Config{
		Offset: binary.NativeEndian.Uint32(b),
		Flags:  binary.NativeEndian.Uint32(b[8:]),
	}
	size := binary.NativeEndian.Uint32(b[4:])
	switch {
	case size == 0 || size > MaxConfigSize:
		return nil, malformed("%s size %d out of range [1, %d]", req, size, MaxConfigSize)
	case c.Offset > MaxConfigSize-size:
		return nil, malformed("%s offset %d size %d ends past %d", req, c.Offset, size, MaxConfigSize)
	case len(b) != configHeaderSize+int(size):
		return nil, malformed("%s payload is %d bytes, want %d for size %d", req, len(b), configHeaderSize+int(size), size)
	case c.Flags&^ConfigFlagMigration != 0:
		return nil, malformed("%s has undefined flags %#x", req, c.Flags)
	}
	c.Data = b[configHeaderSize:]
	return c, nil
}
