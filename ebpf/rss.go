package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/virtio"
)

// RSSMaxTable is the longest indirection table the RSS program holds: what
// a device that steers with it offers as rss_max_indirection_table_length
// (virtio 1.2 §5.1.4.1 wants at least 128).
const RSSMaxTable = 256

// RSSConfig is what the RSS program steers by: the driver's
// VIRTIO_NET_CTRL_MQ_RSS_CONFIG (virtio 1.2 §5.1.6.5.7), with queues
// numbered as the TAP numbers its attached queues.
type RSSConfig struct {
	// Hasher holds the enabled hash types and the key's table.
	Hasher *virtio.Hasher
	// Table is the indirection table: the queue of a frame whose hash
	// is h is Table[h % len(Table)]. Its length is a power of two, 1 to
	// RSSMaxTable.
	Table []uint16
	// Unclassified is the queue of a frame the enabled types give no
	// hash (not IP, or no enabled type fits).
	Unclassified uint16
}

// check says whether the program can hold c.
func (c *RSSConfig) check() error {
	n := len(c.Table)
	if c.Hasher == nil {
		return errors.New("rss config: no hasher")
	}
	if n == 0 || n > RSSMaxTable || n&(n-1) != 0 {
		return fmt.Errorf("rss config: indirection table of %d entries, want a power of two up to %d", n, RSSMaxTable)
	}
	return nil
}

// RSSQueue is the queue the RSS program returns for frame under c,
// computed in Go: the receive queue of virtio 1.2 §5.1.6.5.7.3. tun.c
// takes it modulo the attached queues, as it does the hash program's.
func RSSQueue(c RSSConfig, frame []byte) uint16 {
	h, r := c.Hasher.Hash(frame)
	if r == virtio.HashReportNone {
		return c.Unclassified
	}
	return c.Table[h&uint32(len(c.Table)-1)]
}

// RSSProgram is the RSS steering program (TUNSETSTEERINGEBPF) and its
// configuration map: the Toeplitz hash of virtio.Hasher, computed in the
// kernel from the same lookup table, and the indirection table. The map
// holds two configurations and the number of the one in use: Configure
// writes the other, then switches, so the program never reads half of
// one, and the program stays attached while the driver changes its
// configuration.
//
// The RSSProgram owns the program's and the map's file descriptors until
// Close; a TAP it is attached to keeps the program, and the program the
// map.
type RSSProgram struct {
	prog *cebpf.Program
	cfg  *cebpf.Map

	mu     sync.Mutex
	value  []byte // the map's value as last written
	active uint32 // the slot the program reads
}

// The configuration map's one value: the slot in use, then two slots.
//
//	slot: u32 hash types, u32 table mask, u32 unclassified queue, u32 pad,
//	      u16 table[RSSMaxTable], u32 toeplitz[virtio.RSSInputMax][256]
const (
	cfgActive     = 0
	cfgSlots      = 8
	slotTypes     = 0
	slotMask      = 4
	slotUnclass   = 8
	slotTable     = 16
	slotToeplitz  = slotTable + 2*RSSMaxTable
	slotSize      = slotToeplitz + 4*256*virtio.RSSInputMax
	cfgValueSize  = cfgSlots + 2*slotSize
	rssProgName   = "vmnet_rss"
	rssMapName    = "vmnet_rss_cfg"
	queueProgName = "vmnet_queue"
)

// LoadRSSProgram loads the RSS program with a configuration that sends
// every frame to queue 0, until Configure.
func LoadRSSProgram() (*RSSProgram, error) { return loadRSS(false) }

// loadRSS loads the program; hashOnly makes it return the hash it
// computed instead of a queue (and the unclassified queue when it
// computes none), for tests that compare every bit with Go's.
func loadRSS(hashOnly bool) (*RSSProgram, error) {
	m, err := cebpf.NewMap(&cebpf.MapSpec{
		Name:       rssMapName,
		Type:       cebpf.Array,
		KeySize:    4,
		ValueSize:  cfgValueSize,
		MaxEntries: 1,
	})
	if err != nil {
		return nil, loadErr("create rss config map", err)
	}
	p, err := cebpf.NewProgram(&cebpf.ProgramSpec{
		Name:         rssProgName,
		Type:         cebpf.SocketFilter,
		Instructions: rssInstructions(m, hashOnly),
		License:      "Dual MIT/GPL",
	})
	if err != nil {
		m.Close()
		return nil, loadErr("load rss steering program", err)
	}
	return &RSSProgram{prog: p, cfg: m, value: make([]byte, cfgValueSize)}, nil
}

// loadErr makes err an ErrPermission where the kernel refused for lack of
// privileges.
func loadErr(what string, err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%s: %w: %w", what, ErrPermission, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// FD is the program's file descriptor, for tap.Device.SetSteeringEBPF;
// valid until Close.
func (p *RSSProgram) FD() int { return p.prog.FD() }

// Configure makes c the program's configuration: written into the slot
// the program does not read, then made the one it reads, with the
// program attached all along.
func (p *RSSProgram) Configure(c RSSConfig) error {
	if err := c.check(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	next := 1 - p.active
	s := p.value[cfgSlots+int(next)*slotSize:][:slotSize]
	le := binary.LittleEndian
	le.PutUint32(s[slotTypes:], uint32(c.Hasher.Types()))
	le.PutUint32(s[slotMask:], uint32(len(c.Table)-1))
	le.PutUint32(s[slotUnclass:], uint32(c.Unclassified))
	for i := range RSSMaxTable {
		// Entries past the table are never read (the mask), but are kept
		// to the table's pattern.
		le.PutUint16(s[slotTable+2*i:], c.Table[i%len(c.Table)])
	}
	t := c.Hasher.Table()
	for i := range t {
		for v, w := range t[i] {
			le.PutUint32(s[slotToeplitz+4*(256*i+v):], w)
		}
	}
	// The slot in use is written with the bytes it holds, so the first
	// update changes only the other slot, the second only the number.
	if err := p.cfg.Update(uint32(0), p.value, cebpf.UpdateExist); err != nil {
		return fmt.Errorf("configure rss program: %w", err)
	}
	le.PutUint32(p.value[cfgActive:], next)
	if err := p.cfg.Update(uint32(0), p.value, cebpf.UpdateExist); err != nil {
		le.PutUint32(p.value[cfgActive:], p.active)
		return fmt.Errorf("configure rss program: %w", err)
	}
	p.active = next
	return nil
}

// Run runs the program on frame in the kernel (BPF_PROG_TEST_RUN) and
// returns what it returned: the queue, before tun.c takes it modulo the
// attached queues.
func (p *RSSProgram) Run(frame []byte) (uint32, error) {
	ret, err := p.prog.Run(&cebpf.RunOptions{Data: frame})
	if err != nil {
		return 0, fmt.Errorf("run rss steering program: %w", err)
	}
	return ret, nil
}

// Close releases the program and the map. A TAP the program is attached
// to keeps both.
func (p *RSSProgram) Close() error {
	return errors.Join(p.prog.Close(), p.cfg.Close())
}

// LoadQueueProgram loads a program that sends every frame to queue q of
// the TAP's attached queues (SteeringQueue).
func LoadQueueProgram(q int) (*Program, error) {
	if q < 0 || q > 0xffff {
		return nil, fmt.Errorf("queue program: queue %d, want 0 to 65535", q)
	}
	p, err := cebpf.NewProgram(&cebpf.ProgramSpec{
		Name:         queueProgName,
		Type:         cebpf.SocketFilter,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, int32(q)), asm.Return()},
		License:      "Dual MIT/GPL",
	})
	if err != nil {
		return nil, loadErr("load queue steering program", err)
	}
	return &Program{prog: p}, nil
}
