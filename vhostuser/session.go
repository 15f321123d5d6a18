package vhostuser

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/internal/droplog"
	"github.com/vmnet-dev/vmnet/virtio"
)

// serverProtocolFeatures are the protocol features the session implements itself.
const serverProtocolFeatures = ProtocolMQ | ProtocolReplyAck | ProtocolBackendReq |
	ProtocolResetDevice | ProtocolConfigureMemSlots | ProtocolStatus

// deviceProtocolFeatures are the ones a Device may add: the session only relays them.
// CONFIG is among them because a front-end may serve the config space itself, as QEMU
// does for virtio-net, and warns about a back-end that offers it.
const deviceProtocolFeatures = ProtocolMTU | ProtocolRARP | ProtocolConfig

// ring is the session's view of one vring (vhost-user.rst "Ring states"): it is started
// once it has a size, addresses, a kick eventfd, guest memory and is enabled, and stopped by
// GET_VRING_BASE, by disabling it, or to change anything while it runs.
type ring struct {
	size    uint16
	addr    VringAddr
	hasAddr bool
	base    QueueState
	kick    *os.File
	call    *os.File
	err     *os.File
	enabled bool
	started bool
	// log is the dirty log the device has for the ring while it is
	// started (QueueSetup.Log, DirtyLogger.SetQueueLog).
	log virtio.RingLog
}

func (r *ring) closeFiles() {
	for _, f := range []**os.File{&r.kick, &r.call, &r.err} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
}

// session is the protocol state of one front-end connection.
type session struct {
	srv *Server
	c   *conn
	dev Device
	log hclog.Logger

	features    uint64 // as acked by SET_FEATURES, FProtocolFeatures included
	featuresSet bool
	protocol    ProtocolFeatures
	status      uint8
	maps        []*mapping
	mem         *virtio.Memory
	rings       []ring
	backendReq  *os.File
	// logger is the device as a DirtyLogger, nil if it logs nothing: the
	// session then offers neither VHOST_F_LOG_ALL nor LOG_SHMFD.
	logger DirtyLogger
	// dirty is the front-end's log (SET_LOG_BASE), logFD the eventfd of
	// SET_LOG_FD, kept and never signalled. retired are logs a failed
	// switch could not take every ring off: unmapped at teardown, after
	// the rings stop.
	dirty   *logMapping
	logFD   *os.File
	retired []*logMapping
	// limitLogged has the limits this connection went past that were logged.
	limitLogged [numLimits]bool
	// failedWarn and pendingWarn thin out the warnings a front-end can
	// have logged with every message it sends (a request that fails, a
	// ring that a memory change leaves stopped): the first time, then at
	// most once a minute with the count, for the connection's life.
	// Stats.Rejected counts every failed request.
	failedWarn, pendingWarn droplog.Warner
}

// replyKind is what a request is answered with when it succeeds, and decides how a failure
// is reported (vhost-user.rst "Communication", "REPLY_ACK").
type replyKind uint8

const (
	replyNone     replyKind = iota // only an ack, and only if NEED_REPLY is set
	replyU64                       // a u64; non-zero reports failure
	replyConfig                    // config space; an empty payload reports failure
	replyInflight                  // an inflight description; all zero means none
	replyState                     // a vring state, with no way to report failure
)

func replyKindOf(req Request) replyKind {
	switch req {
	case ReqGetFeatures, ReqGetProtocolFeatures, ReqGetQueueNum, ReqGetMaxMemSlots, ReqGetStatus,
		ReqIOTLBMsg, ReqPostcopyEnd, ReqSetDeviceStateFD, ReqCheckDeviceState:
		return replyU64
	case ReqGetConfig:
		return replyConfig
	case ReqGetInflightFD:
		return replyInflight
	case ReqGetVringBase:
		return replyState
	}
	return replyNone
}

// failureReply is the reply that tells the front-end a request failed, nil if the request
// has no such form.
func failureReply(req Request) Payload {
	switch replyKindOf(req) {
	case replyU64:
		if req == ReqSetDeviceStateFD {
			// Bits 0-7 non-zero for the error, bit 8: no descriptor returned.
			return U64(0x101)
		}
		return U64(1)
	case replyConfig:
		return Empty{}
	case replyInflight:
		return Inflight{}
	}
	return nil
}

func newSession(srv *Server, c *conn) (*session, error) {
	n := srv.backend.NumQueues()
	if n < 1 || n > MaxQueues {
		return nil, fmt.Errorf("start session: device has %d queues, want 1 to %d", n, MaxQueues)
	}
	s := &session{srv: srv, c: c, dev: srv.backend, log: srv.log, rings: make([]ring, n)}
	s.logger, _ = srv.backend.(DirtyLogger)
	return s, nil
}

// run handles messages until the front-end disconnects (nil) or a message is bad enough to
// end the connection.
func (s *session) run() error {
	for {
		m, err := s.c.read()
		if err != nil {
			s.limited(err)
			if errors.Is(err, ErrMalformed) {
				s.srv.stats.rejected.Add(1)
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		err = s.handle(&m)
		m.closeFDs()
		if err != nil {
			return err
		}
	}
}

// handle decodes and executes one request and sends its reply. It returns an error only when
// the connection must end.
func (s *session) handle(m *message) error {
	req := m.Request
	s.srv.stats.count(req)
	if s.log.IsTrace() {
		s.log.Trace("message", "request", req, "flags", fmt.Sprintf("%#x", uint32(m.Flags)), "bytes", m.Size, "fd", len(m.fds))
	}
	p, err := DecodeRequest(m.Header, m.payload, len(m.fds))
	if err != nil {
		s.srv.stats.rejected.Add(1)
		s.limited(err)
		return fmt.Errorf("decode %s: %w", req, err)
	}
	reply, herr := s.dispatch(m, p)
	if herr == nil {
		switch {
		case reply != nil:
			return s.reply(req, reply)
		case m.NeedReply():
			return s.reply(req, U64(0))
		}
		return nil
	}

	s.srv.stats.rejected.Add(1)
	var fe *fatalError
	if errors.As(herr, &fe) {
		return fmt.Errorf("handle %s: %w", req, herr)
	}
	notSupported := errors.Is(herr, ErrNotSupported)
	switch {
	case notSupported:
		s.srv.logUnsupported(req, herr)
	case errors.Is(herr, ErrLimit):
		s.limited(herr)
	default:
		if n, ok := s.failedWarn.Next(); ok {
			s.log.Warn("request failed", "request", req, "error", herr, "times", n)
		}
	}
	if fr := failureReply(req); fr != nil {
		return s.reply(req, fr)
	}
	if replyKindOf(req) == replyNone && m.NeedReply() {
		return s.reply(req, U64(1))
	}
	if notSupported {
		return nil
	}
	// The front-end cannot be told; going on would leave it believing in a state the
	// back-end does not have (vhost-user.rst "Communication": the back-end may close).
	return fmt.Errorf("handle %s: %w", req, herr)
}

// reply sends a reply; a front-end that does not take it in time is counted.
func (s *session) reply(req Request, p Payload) error {
	err := s.c.reply(req, p)
	s.limited(err)
	return err
}

// limited counts a front-end going past a limit, if err says it did, and logs it: as a
// warning the first time per connection and limit, at debug level after that, so that a
// front-end repeating a refused request cannot flood the log.
func (s *session) limited(err error) {
	var le *LimitError
	if !errors.As(err, &le) || le.Limit < 0 || le.Limit >= numLimits {
		return
	}
	s.srv.stats.limited[le.Limit].Add(1)
	if s.limitLogged[le.Limit] {
		s.log.Debug("front-end over a limit", "limit", le.Limit, "error", err)
		return
	}
	s.limitLogged[le.Limit] = true
	s.log.Warn("front-end over a limit (logged once per connection and limit)", "limit", le.Limit, "error", err)
}

func (s *session) dispatch(m *message, p Payload) (Payload, error) {
	switch req := m.Request; req {
	case ReqGetFeatures:
		return U64(s.offeredFeatures()), nil
	case ReqSetFeatures:
		return nil, s.setFeatures(uint64(p.(U64)))
	case ReqGetProtocolFeatures:
		return U64(s.offeredProtocol()), nil
	case ReqSetProtocolFeatures:
		return nil, s.setProtocolFeatures(ProtocolFeatures(p.(U64)))
	case ReqSetOwner:
		return nil, nil
	case ReqResetOwner:
		// Deprecated; vhost-user.rst recommends ignoring it or disabling all rings.
		return nil, s.resetDevice()
	case ReqResetDevice:
		if err := s.need(req, ProtocolResetDevice); err != nil {
			return nil, err
		}
		return nil, s.resetDevice()
	case ReqSetMemTable:
		return nil, s.setMemTable(m, p.(MemoryTable))
	case ReqGetMaxMemSlots:
		return U64(s.srv.maxMemSlots), s.need(req, ProtocolConfigureMemSlots)
	case ReqAddMemReg:
		if err := s.need(req, ProtocolConfigureMemSlots); err != nil {
			return nil, err
		}
		return nil, s.addMemReg(m, p.(MemRegionMsg).Region)
	case ReqRemMemReg:
		if err := s.need(req, ProtocolConfigureMemSlots); err != nil {
			return nil, err
		}
		return nil, s.remMemReg(p.(MemRegionMsg).Region)
	case ReqSetVringNum:
		st := p.(VringState)
		return nil, s.updateRing(req, st.Index, func(r *ring) { r.size = uint16(st.Num) })
	case ReqSetVringAddr:
		return nil, s.setVringAddr(p.(VringAddr))
	case ReqSetVringBase:
		return nil, s.setVringBase(p.(VringState))
	case ReqGetVringBase:
		return s.getVringBase(p.(VringState))
	case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
		return nil, s.setVringFile(m, p.(VringFile))
	case ReqSetVringEnable:
		return nil, s.setVringEnable(p.(VringState))
	case ReqGetQueueNum:
		return U64(len(s.rings)), nil
	case ReqGetConfig:
		return s.getConfig(p.(Config))
	case ReqSetConfig:
		if err := s.need(req, ProtocolConfig); err != nil {
			return nil, err
		}
		c := p.(Config)
		return nil, s.dev.SetConfig(c.Offset, c.Data, c.Flags&ConfigFlagMigration != 0)
	case ReqSetStatus:
		if err := s.need(req, ProtocolStatus); err != nil {
			return nil, err
		}
		s.status = uint8(p.(U64))
		return nil, nil
	case ReqGetStatus:
		return U64(s.status), s.need(req, ProtocolStatus)
	case ReqSetBackendReqFD:
		if err := s.need(req, ProtocolBackendReq); err != nil {
			return nil, err
		}
		if s.backendReq != nil {
			s.backendReq.Close()
		}
		s.backendReq = os.NewFile(uintptr(m.takeFD(0)), "vhost-user backend channel")
		return nil, nil
	case ReqSendRARP:
		return nil, s.sendRARP(uint64(p.(U64)))
	case ReqNetSetMTU:
		if err := s.need(req, ProtocolMTU); err != nil {
			return nil, err
		}
		if d, ok := s.dev.(MTUSetter); ok {
			return nil, d.SetMTU(uint16(p.(U64)))
		}
		return nil, nil
	case ReqSetLogBase:
		if err := s.need(req, ProtocolLogShmfd); err != nil {
			return nil, err
		}
		if err := s.setLogBase(m, p.(Log)); err != nil {
			return nil, err
		}
		// vhost-user.rst: with LOG_SHMFD the back-end replies, with the
		// same request type. QEMU's vhost_user_set_log_base takes any
		// payload (and fails with EPROTO on another type); rust-vmm's
		// front-end (cloud-hypervisor) reads a log description back, so
		// the request's is echoed. A front-end that asked for an ack gets
		// the ack.
		if m.NeedReply() {
			return nil, nil
		}
		return p.(Log), nil
	case ReqSetLogFD:
		if err := s.need(req, ProtocolLogShmfd); err != nil {
			return nil, err
		}
		// The front-end's eventfd to be told the log changed; QEMU does not
		// send it, nor reads one: kept until replaced or the end of the
		// connection, not signalled.
		if s.logFD != nil {
			s.logFD.Close()
		}
		s.logFD = os.NewFile(uintptr(m.takeFD(0)), "vhost-user log eventfd")
		return nil, nil
	case ReqGetInflightFD, ReqSetInflightFD:
		return nil, fmt.Errorf("%s: INFLIGHT_SHMFD is %w", req, ErrNotSupported)
	}
	if int(m.Request) < len(requestNames) && requestNames[m.Request] != "" {
		return nil, fmt.Errorf("%s is %w", m.Request, ErrNotSupported)
	}
	return nil, fmt.Errorf("unknown request %d is %w", uint32(m.Request), ErrNotSupported)
}

// need fails a request whose protocol feature was not negotiated.
func (s *session) need(req Request, f ProtocolFeatures) error {
	if !s.protocol.Has(f) {
		return fmt.Errorf("%s without protocol feature %s is %w", req, f, ErrNotSupported)
	}
	return nil
}

func (s *session) offeredProtocol() ProtocolFeatures {
	p := serverProtocolFeatures | s.dev.ProtocolFeatures()&deviceProtocolFeatures
	if s.logger != nil {
		p |= ProtocolLogShmfd
	}
	return p
}

// offeredFeatures is GET_FEATURES: the device's, and the bits of the transport.
func (s *session) offeredFeatures() uint64 {
	f := uint64(s.dev.Features()) | FProtocolFeatures
	if s.logger != nil {
		f |= FLogAll
	}
	return f
}

// transportFeatures are the feature bits of vhost-user itself, which the device never sees.
const transportFeatures = FProtocolFeatures | FLogAll

func (s *session) setFeatures(v uint64) error {
	if extra := v &^ s.offeredFeatures(); extra != 0 {
		return fmt.Errorf("ack features %s that were not offered", virtio.Features(extra))
	}
	if s.featuresSet && v == s.features {
		return nil
	}
	if s.featuresSet && v^s.features == FLogAll {
		// Logging starts or stops (vhost-user.rst "Migration": QEMU's
		// vhost_dev_set_log), rings running or not: the device's features
		// stay, and each running ring takes its new log without stopping.
		return s.setLogAll(v)
	}
	if s.anyStarted() {
		return fmt.Errorf("change features from %#x to %#x while rings run", s.features, v)
	}
	if err := s.dev.SetFeatures(virtio.Features(v &^ transportFeatures)); err != nil {
		return fmt.Errorf("set device features %s: %w", virtio.Features(v&^transportFeatures), err)
	}
	s.features, s.featuresSet = v, true
	if v&FProtocolFeatures == 0 {
		// vhost-user.rst "Ring states": without protocol features every ring is enabled.
		// One that cannot start does not keep the others from starting.
		var errs []error
		for i := range s.rings {
			s.rings[i].enabled = true
			errs = append(errs, s.maybeStart(i))
		}
		return errors.Join(errs...)
	}
	return nil
}

func (s *session) setProtocolFeatures(v ProtocolFeatures) error {
	offered := s.offeredProtocol()
	if extra := v &^ offered; extra != 0 {
		return fmt.Errorf("ack protocol features %s that were not offered", extra)
	}
	s.protocol = v
	return nil
}

func (s *session) anyStarted() bool {
	for i := range s.rings {
		if s.rings[i].started {
			return true
		}
	}
	return false
}

func (s *session) packed() bool { return virtio.Features(s.features).Has(virtio.FRingPacked) }

// ringAt checks a ring index from the front-end.
func (s *session) ringAt(req Request, index uint32) (*ring, error) {
	if index >= uint32(len(s.rings)) {
		return nil, fmt.Errorf("address ring %d of %d with %s", index, len(s.rings), req)
	}
	return &s.rings[index], nil
}

// stop stops ring i if it runs and keeps where it stopped as its base.
func (s *session) stop(i int) error {
	r := &s.rings[i]
	if !r.started {
		return nil
	}
	st, err := s.dev.StopQueue(i)
	r.started, r.log = false, virtio.RingLog{}
	if err != nil {
		return &fatalError{fmt.Errorf("stop ring %d: %w", i, err)}
	}
	r.base = st
	s.log.Debug("ring stopped", "queue", i, "next_avail", st.NextAvail, "next_used", st.NextUsed)
	return nil
}

// maybeStart starts ring i if it is complete and enabled.
func (s *session) maybeStart(i int) error { return s.start(i, false) }

// start starts ring i if it is complete and enabled. With pending, a ring whose addresses
// the guest memory does not hold stays stopped without error, until a later memory change
// brings them back: a front-end that adds and removes regions one by one may remove the
// ring's region before it adds its replacement.
func (s *session) start(i int, pending bool) error {
	r := &s.rings[i]
	if r.started || !r.enabled || r.kick == nil || r.size == 0 || !r.hasAddr || s.mem == nil {
		return nil
	}
	q, err := s.queueSetup(i)
	if err != nil {
		if pending {
			if n, ok := s.pendingWarn.Next(); ok {
				s.log.Warn("ring stays stopped until guest memory holds it", "queue", i, "error", err, "times", n)
			}
			return nil
		}
		return fmt.Errorf("set up ring %d: %w", i, err)
	}
	if err := s.dev.StartQueue(i, q); err != nil {
		return fmt.Errorf("start ring %d: %w", i, err)
	}
	r.started, r.log = true, q.Log
	s.log.Debug("ring started", "queue", i, "size", q.Size, "packed", q.Packed, "next_avail", q.NextAvail)
	return nil
}

// updateRing applies change to a ring, stopping it first if it runs and starting it again
// if it is still complete.
func (s *session) updateRing(req Request, index uint32, change func(*ring)) error {
	r, err := s.ringAt(req, index)
	if err != nil {
		return err
	}
	if err := s.stop(int(index)); err != nil {
		return err
	}
	change(r)
	return s.maybeStart(int(index))
}

// queueSetup translates and checks the ring's addresses against the guest memory.
func (s *session) queueSetup(i int) (QueueSetup, error) {
	r := &s.rings[i]
	q := QueueSetup{
		Memory:    s.mem,
		Size:      r.size,
		Packed:    s.packed(),
		EventIdx:  virtio.Features(s.features).Has(virtio.FEventIdx),
		NextAvail: r.base.NextAvail,
		NextUsed:  r.base.NextUsed,
		Kick:      r.kick,
		Call:      r.call,
		Err:       r.err,
		Log:       s.ringLog(i),
	}
	layout := "split"
	if q.Packed {
		layout = "packed"
	}
	if err := virtio.CheckQueueSize(uint32(r.size), q.Packed); err != nil {
		return q, fmt.Errorf("%s ring %w", layout, err)
	}
	// The areas' sizes and alignments are the layout's (virtio.RingAreas), in QueueSetup's
	// order: descriptors, then available or driver area, then used or device area.
	user := [3]uint64{r.addr.DescUser, r.addr.AvailUser, r.addr.UsedUser}
	gpa := [3]*uint64{&q.DescAddr, &q.AvailAddr, &q.UsedAddr}
	for i, a := range virtio.RingAreas(r.size, q.Packed, q.EventIdx) {
		g, err := s.mem.UserToGuest(user[i])
		if err != nil {
			return q, fmt.Errorf("translate %s at user %#x: %w", a.Name, user[i], err)
		}
		if err := a.CheckAlign(g); err != nil {
			return q, err
		}
		if _, err := s.mem.Slice(g, a.Len); err != nil {
			return q, fmt.Errorf("check %s at guest %#x, %d bytes: %w", a.Name, g, a.Len, err)
		}
		*gpa[i] = g
	}
	return q, nil
}

func (s *session) setVringAddr(a VringAddr) error {
	r, err := s.ringAt(ReqSetVringAddr, a.Index)
	if err != nil {
		return err
	}
	if a.Flags&VringFlagLog != 0 && s.logger == nil {
		return fmt.Errorf("ring %d asks for used ring logging, which is %w", a.Index, ErrNotSupported)
	}
	old := r.addr
	same := r.hasAddr && old.DescUser == a.DescUser && old.UsedUser == a.UsedUser && old.AvailUser == a.AvailUser
	r.addr, r.hasAddr = a, true
	if err := s.checkLog(s.dirty, s.mem); err != nil {
		r.addr = old
		return err
	}
	if same && r.started {
		// Only the log flag or address changed (QEMU's vhost_dev_set_log):
		// the ring goes on, with its new log.
		return s.updateLogs()
	}
	r.addr = old
	return s.updateRing(ReqSetVringAddr, a.Index, func(r *ring) { r.addr, r.hasAddr = a, true })
}

// setVringBase decodes "vring descriptor index/indices".
func (s *session) setVringBase(st VringState) error {
	base := QueueState{NextAvail: uint16(st.Num)}
	if s.packed() {
		base.NextUsed = uint16(st.Num >> 16)
	} else if st.Num>>16 != 0 {
		return fmt.Errorf("split ring %d base %#x has reserved bits 16-31 set", st.Index, st.Num)
	}
	return s.updateRing(ReqSetVringBase, st.Index, func(r *ring) { r.base = base })
}

// getVringBase stops the ring and returns its base. The ring stays stopped until its next
// kick eventfd (vhost-user.rst "Ring states"), so the current one is dropped.
func (s *session) getVringBase(st VringState) (Payload, error) {
	r, err := s.ringAt(ReqGetVringBase, st.Index)
	if err != nil {
		return nil, err
	}
	if err := s.stop(int(st.Index)); err != nil {
		return nil, err
	}
	if r.kick != nil {
		r.kick.Close()
		r.kick = nil
	}
	num := uint32(r.base.NextAvail)
	if s.packed() {
		num |= uint32(r.base.NextUsed) << 16
	}
	return VringState{Index: st.Index, Num: num}, nil
}

func (s *session) setVringFile(m *message, f VringFile) error {
	if f.NoFD && m.Request == ReqSetVringKick {
		return fmt.Errorf("ring %d without a kick eventfd: polling is %w", f.Index, ErrNotSupported)
	}
	if _, err := s.ringAt(m.Request, uint32(f.Index)); err != nil {
		return err
	}
	var file *os.File
	if !f.NoFD {
		file = os.NewFile(uintptr(m.takeFD(0)), fmt.Sprintf("vhost-user ring %d %s", f.Index, m.Request))
	}
	stored := false
	err := s.updateRing(m.Request, uint32(f.Index), func(r *ring) {
		slot := &r.kick
		switch m.Request {
		case ReqSetVringCall:
			slot = &r.call
		case ReqSetVringErr:
			slot = &r.err
		}
		if *slot != nil {
			(*slot).Close()
		}
		*slot, stored = file, true
	})
	if !stored && file != nil {
		file.Close()
	}
	return err
}

func (s *session) setVringEnable(st VringState) error {
	return s.updateRing(ReqSetVringEnable, st.Index, func(r *ring) { r.enabled = st.Num == 1 })
}

func (s *session) getConfig(c Config) (Payload, error) {
	if err := s.need(ReqGetConfig, ProtocolConfig); err != nil {
		return nil, err
	}
	size := uint32(len(c.Data))
	data, err := s.dev.GetConfig(c.Offset, size)
	if err != nil {
		return nil, fmt.Errorf("read %d config bytes at %d: %w", size, c.Offset, err)
	}
	if len(data) != int(size) {
		return nil, fmt.Errorf("read %d config bytes at %d: device returned %d", size, c.Offset, len(data))
	}
	return Config{Offset: c.Offset, Flags: c.Flags, Data: data}, nil
}

func (s *session) sendRARP(u uint64) error {
	d, ok := s.dev.(Announcer)
	if !ok {
		return nil
	}
	// The first 6 bytes of the u64, in memory order, are the guest's MAC.
	b := U64(u).Append(make([]byte, 0, 8))
	return d.SendRARP(net.HardwareAddr(b[:6]))
}

// setMemTable maps a whole new table and replaces the old one.
func (s *session) setMemTable(m *message, t MemoryTable) error {
	// The new table alone is held to the limit: the old one stays mapped until the rings
	// have left it, so the peak is the two together.
	maps := make([]*mapping, 0, len(t.Regions))
	var used uint64
	for i, r := range t.Regions {
		mp, err := mapRegion(m.fds[i], r, ReqSetMemTable, used, s.srv.maxMemBytes)
		if err != nil {
			unmapAll(maps)
			return fmt.Errorf("map region %d of %d: %w", i, len(t.Regions), err)
		}
		maps = append(maps, mp)
		used += uint64(len(mp.data))
	}
	return s.swapMemory(maps, maps, s.maps)
}

// mapped is how many bytes of guest memory the connection has mapped.
func (s *session) mapped() uint64 {
	var n uint64
	for _, mp := range s.maps {
		n += uint64(len(mp.data))
	}
	return n
}

// addMemReg maps and adds a region. A region that is already in the table, exactly, is
// acknowledged and left as it is: QEMU before 8.0 keeps a memory table per vhost device,
// one per queue pair of a multi-queue net device, and each of them sends its own
// ADD_MEM_REG (and REM_MEM_REG) over the one connection (vhost_user_one_time_request
// did not list them).
func (s *session) addMemReg(m *message, r MemoryRegion) error {
	for _, mp := range s.maps {
		if mp.desc == r {
			s.log.Debug("region added again, already mapped", "guest_addr", r.GuestAddr, "bytes", r.Size)
			return nil
		}
	}
	if len(s.maps) >= s.srv.maxMemSlots {
		return fmt.Errorf("add region at guest %#x: %w", r.GuestAddr,
			&LimitError{Limit: LimitMemSlots, Request: ReqAddMemReg, Got: uint64(len(s.maps)) + 1, Max: uint64(s.srv.maxMemSlots)})
	}
	for _, mp := range s.maps {
		if r.overlaps(mp.desc) {
			return fmt.Errorf("add region at guest %#x user %#x size %#x: overlaps region at guest %#x user %#x size %#x",
				r.GuestAddr, r.UserAddr, r.Size, mp.desc.GuestAddr, mp.desc.UserAddr, mp.desc.Size)
		}
	}
	mp, err := mapRegion(m.fds[0], r, ReqAddMemReg, s.mapped(), s.srv.maxMemBytes)
	if err != nil {
		return err
	}
	maps := append(append(make([]*mapping, 0, len(s.maps)+1), s.maps...), mp)
	return s.swapMemory(maps, []*mapping{mp}, nil)
}

// remMemReg removes the region with the same guest address, user address and size; the
// mmap offset is ignored (vhost-user.rst REM_MEM_REG). Removing a region that is not in
// the table is acknowledged and changes nothing: it is the second queue pair's copy of a
// removal (see addMemReg).
func (s *session) remMemReg(r MemoryRegion) error {
	for i, mp := range s.maps {
		d := mp.desc
		if d.GuestAddr != r.GuestAddr || d.UserAddr != r.UserAddr || d.Size != r.Size {
			continue
		}
		maps := append(append(make([]*mapping, 0, len(s.maps)-1), s.maps[:i]...), s.maps[i+1:]...)
		return s.swapMemory(maps, nil, []*mapping{mp})
	}
	s.log.Debug("region removed again, not mapped", "guest_addr", r.GuestAddr, "bytes", r.Size)
	return nil
}

// ringLog is the dirty log ring i writes to: the front-end's, while
// VHOST_F_LOG_ALL is acked and the ring's addresses carry VHOST_VRING_F_LOG,
// its used area logged at log_guest_addr.
func (s *session) ringLog(i int) virtio.RingLog {
	r := &s.rings[i]
	if s.dirty == nil || s.features&FLogAll == 0 || r.addr.Flags&VringFlagLog == 0 {
		return virtio.RingLog{}
	}
	return virtio.RingLog{Log: s.dirty.log, UsedAddr: r.addr.LogGuest}
}

// updateLogs gives each running ring whose log changed its new one. The
// device returns once the ring writes to it alone; a failure leaves rings
// on logs the front-end no longer expects, and ends the connection.
func (s *session) updateLogs() error {
	for i := range s.rings {
		r := &s.rings[i]
		if !r.started {
			continue
		}
		l := s.ringLog(i)
		if l == r.log {
			continue
		}
		if err := s.logger.SetQueueLog(i, l); err != nil {
			return &fatalError{fmt.Errorf("set dirty log of ring %d: %w", i, err)}
		}
		r.log = l
		s.log.Debug("ring dirty log", "queue", i, "logging", l.Log != nil, "used_log_addr", l.UsedAddr)
	}
	return nil
}

// checkLog refuses a log that would not cover what the rings write while
// logging (VHOST_F_LOG_ALL acked): guest memory mem, and the used area of
// each ring with VHOST_VRING_F_LOG at its log address (vhost-user.rst:
// "the bit offset of the last byte of the ring must fall within the size
// supplied").
func (s *session) checkLog(l *logMapping, mem *virtio.Memory) error {
	if l == nil || s.features&FLogAll == 0 {
		return nil
	}
	if err := l.log.Covers(mem); err != nil {
		return fmt.Errorf("dirty log of %d bytes: %w", l.desc.Size, err)
	}
	for i := range s.rings {
		r := &s.rings[i]
		if !r.hasAddr || r.addr.Flags&VringFlagLog == 0 || r.size == 0 {
			continue
		}
		used := virtio.RingAreas(r.size, s.packed(), virtio.Features(s.features).Has(virtio.FEventIdx))[2]
		if err := l.log.CoversRange(r.addr.LogGuest, used.Len); err != nil {
			return fmt.Errorf("dirty log of %d bytes, ring %d's used area logged at guest %#x: %w", l.desc.Size, i, r.addr.LogGuest, err)
		}
	}
	return nil
}

// setLogAll is SET_FEATURES that only sets or clears VHOST_F_LOG_ALL.
func (s *session) setLogAll(v uint64) error {
	old := s.features
	s.features = v
	if err := s.checkLog(s.dirty, s.mem); err != nil {
		s.features = old
		return err
	}
	if v&FLogAll != 0 {
		s.log.Info("dirty logging started: the front-end migrates the guest", "log", s.dirty != nil)
	} else {
		s.log.Info("dirty logging stopped")
	}
	return s.updateLogs()
}

// setLogBase maps the front-end's new log, moves the rings that log onto
// it and unmaps the old one, which nothing uses any more.
func (s *session) setLogBase(m *message, l Log) error {
	if len(m.fds) != 1 {
		return fmt.Errorf("%s with LOG_SHMFD carries %d file descriptors, want the log's", ReqSetLogBase, len(m.fds))
	}
	lm, err := mapLog(m.fds[0], l, s.srv.maxMemBytes/virtio.LogPageSize)
	if err != nil {
		return err
	}
	// A log smaller than guest memory is refused, logging or not: QEMU
	// sizes its log to cover every region.
	if err := lm.log.Covers(s.mem); err != nil {
		lm.unmap()
		return fmt.Errorf("dirty log of %d bytes: %w", l.Size, err)
	}
	if err := s.checkLog(lm, s.mem); err != nil {
		lm.unmap()
		return err
	}
	old := s.dirty
	s.dirty = lm
	if err := s.updateLogs(); err != nil {
		// Rings may write to either log until they stop.
		s.retired = append(s.retired, old)
		return err
	}
	if err := old.unmap(); err != nil {
		s.log.Warn("unmap dirty log", "error", err)
	}
	s.log.Info("dirty log mapped", "bytes", l.Size, "offset", l.Offset, "pages", lm.log.Pages())
	return nil
}

// swapMemory switches to the memory of maps, of which added are new and removed are
// dropped from the current table. Running rings are stopped first, so that nothing uses
// removed when it is unmapped, and started again over the new memory. If the switch cannot
// happen, added are unmapped and nothing changes. Once it has happened, every ring that can
// start starts: one that cannot (its kick refused, say) stays stopped, and its error is
// returned, without keeping the rings after it stopped.
func (s *session) swapMemory(maps, added, removed []*mapping) error {
	mem, err := newMemory(maps)
	if err == nil {
		// While logging, memory the log does not cover is refused: QEMU
		// grows its log before it grows the memory table (vhost_commit).
		err = s.checkLog(s.dirty, mem)
	}
	for i := 0; err == nil && i < len(s.rings); i++ {
		err = s.stop(i)
	}
	if err != nil {
		unmapAll(added)
		return err
	}
	s.maps, s.mem = maps, mem
	s.retire(removed)
	var errs []error
	for i := range s.rings {
		errs = append(errs, s.start(i, true))
	}
	return errors.Join(errs...)
}

// retire unmaps mappings no ring uses any more.
func (s *session) retire(maps []*mapping) {
	for _, mp := range maps {
		if err := mp.unmap(); err != nil {
			s.log.Warn("unmap guest memory", "error", err)
		}
	}
}

func unmapAll(maps []*mapping) {
	for _, mp := range maps {
		mp.unmap()
	}
}

// resetDevice stops every ring, resets the device, and forgets the rings and acked
// features; the memory table and protocol features stay, since a front-end that adds regions
// one by one does not send them again (vhost-user.rst RESET_DEVICE: "ready to be
// reinitialized").
func (s *session) resetDevice() error {
	var errs []error
	for i := range s.rings {
		errs = append(errs, s.stop(i))
	}
	s.dev.Reset()
	for i := range s.rings {
		s.rings[i].closeFiles()
		s.rings[i] = ring{}
	}
	s.features, s.featuresSet, s.status = 0, false, 0
	return errors.Join(errs...)
}

// teardown releases everything of the connection: it stops the rings and resets the
// device before it unmaps the memory and closes the descriptors the rings used.
func (s *session) teardown() {
	for i := range s.rings {
		if err := s.stop(i); err != nil {
			s.log.Error("stop ring on teardown", "queue", i, "error", err)
		}
	}
	s.dev.Reset()
	for i := range s.rings {
		s.rings[i].closeFiles()
	}
	if s.backendReq != nil {
		s.backendReq.Close()
		s.backendReq = nil
	}
	if s.logFD != nil {
		s.logFD.Close()
		s.logFD = nil
	}
	for _, l := range append(s.retired, s.dirty) {
		if err := l.unmap(); err != nil {
			s.log.Warn("unmap dirty log", "error", err)
		}
	}
	s.dirty, s.retired = nil, nil
	s.retire(s.maps)
	s.maps, s.mem = nil, nil
}

// fatalError marks a failure after which the session cannot go on: the device may be in a
// state neither side knows.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }
