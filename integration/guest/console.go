package guest

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Markers of the console protocol that /init (init.sh) speaks. Command
// lines go to the guest base64-encoded on one line, so any script survives
// the tty; output comes back base64-encoded between BEGIN and DONE, so
// kernel messages or a stray line without a newline cannot be mistaken for
// it. Markers are searched anywhere in a line for the same reason.
const (
	markCmd       = "__VMNET_CMD__"
	markReady     = "__VMNET_READY__"
	markInitError = "__VMNET_INIT_ERROR__"
	markStart     = "__VMNET_START__"
	markBegin     = "__VMNET_BEGIN__"
	markDone      = "__VMNET_DONE__"
)

// result is one finished command as the guest reported it.
type result struct {
	id     uint64
	rc     int
	output []byte
	err    error // the frame could not be decoded
}

// console parses the guest's serial output. It is fed by one reader
// goroutine and read by the VM's methods.
type console struct {
	mu         sync.Mutex
	ready      chan struct{} // closed at the READY marker
	uptime     string        // guest uptime at READY, seconds
	readyAt    time.Time
	initErrors []string
	results    map[uint64]result
	started    map[uint64]time.Time // commands the guest said it runs
	notify     chan struct{}        // a result arrived (capacity 1)

	// frame being collected
	inFrame bool
	frameID uint64
	frame   strings.Builder
	noise   int // lines inside a frame that were not base64
}

func newConsole() *console {
	return &console{
		ready:   make(chan struct{}),
		results: map[uint64]result{},
		started: map[uint64]time.Time{},
		notify:  make(chan struct{}, 1),
	}
}

// feed reads the serial stream until EOF or a read error.
func (c *console) feed(r io.Reader) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			c.line(strings.TrimRight(line, "\r\n"))
		}
		if err != nil {
			return
		}
	}
}

func (c *console) line(l string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.inFrame:
		if i := strings.Index(l, markDone); i >= 0 {
			c.finish(l[i+len(markDone):])
			return
		}
		if i := strings.Index(l, markBegin); i >= 0 {
			// A frame cut short (the guest's shell was killed); start over.
			c.begin(l[i+len(markBegin):])
			return
		}
		if isBase64Line(l) {
			c.frame.WriteString(l)
		} else {
			c.noise++
		}
	case strings.Contains(l, markBegin):
		c.begin(l[strings.Index(l, markBegin)+len(markBegin):])
	case strings.Contains(l, markStart):
		if id, err := strconv.ParseUint(strings.TrimSpace(l[strings.Index(l, markStart)+len(markStart):]), 10, 64); err == nil {
			c.started[id] = time.Now()
		}
	case strings.Contains(l, markReady):
		select {
		case <-c.ready:
		default:
			c.uptime = strings.TrimSpace(l[strings.Index(l, markReady)+len(markReady):])
			c.readyAt = time.Now()
			close(c.ready)
		}
	case strings.Contains(l, markInitError):
		c.initErrors = append(c.initErrors, strings.TrimSpace(l[strings.Index(l, markInitError)+len(markInitError):]))
	}
}

// adopt marks the console ready as the guest's console of another QEMU
// was at readyAt: a guest migrated here serves commands without booting.
func (c *console) adopt(readyAt time.Time, uptime string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.ready:
	default:
		c.readyAt, c.uptime = readyAt, uptime
		close(c.ready)
	}
}

func (c *console) begin(rest string) {
	c.inFrame = false
	id, err := strconv.ParseUint(strings.TrimSpace(rest), 10, 64)
	if err != nil {
		return
	}
	c.inFrame, c.frameID, c.noise = true, id, 0
	c.frame.Reset()
}

func (c *console) finish(rest string) {
	c.inFrame = false
	f := strings.Fields(rest)
	if len(f) != 3 {
		return
	}
	id, err1 := strconv.ParseUint(f[0], 10, 64)
	rc, err2 := strconv.Atoi(f[1])
	size, err3 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || err3 != nil || id != c.frameID {
		return
	}
	r := result{id: id, rc: rc}
	r.output, r.err = base64.StdEncoding.DecodeString(c.frame.String())
	switch {
	case r.err != nil:
		r.err = fmt.Errorf("decode output of command %d (%d foreign lines in it): %w", id, c.noise, r.err)
	case len(r.output) != size:
		// A line lost to kernel messages decodes cleanly but short.
		r.err = fmt.Errorf("decode output of command %d (%d foreign lines in it): got %d bytes, want %d", id, c.noise, len(r.output), size)
	}
	c.results[id] = r
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// take removes and returns the result of command id, dropping results of
// earlier commands that nobody waits for any more.
func (c *console) take(id uint64) (result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.results {
		if k < id {
			delete(c.results, k)
		}
	}
	for k := range c.started {
		if k < id {
			delete(c.started, k)
		}
	}
	r, ok := c.results[id]
	if ok {
		delete(c.results, id)
		delete(c.started, id)
	}
	return r, ok
}

// startedAt reports when the guest said it started command id.
func (c *console) startedAt(id uint64) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.started[id]
	return at, ok
}

func (c *console) bootInfo() (readyAt time.Time, uptime string, initErrors []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readyAt, c.uptime, append([]string(nil), c.initErrors...)
}

func isBase64Line(l string) bool {
	if l == "" {
		return false
	}
	for i := 0; i < len(l); i++ {
		b := l[i]
		if !(b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '+' || b == '/' || b == '=') {
			return false
		}
	}
	return true
}

// commandLine encodes one command for the guest. timeout is whole seconds
// after which the guest kills the command; 0 means none.
func commandLine(id uint64, timeout int, script string) string {
	return fmt.Sprintf("%s %d %d %s\n", markCmd, id, timeout, base64.StdEncoding.EncodeToString([]byte(script)))
}

// logWriter copies everything written to it to an optional file and keeps
// the last bytes in memory for error messages and test failures.
type logWriter struct {
	mu   sync.Mutex
	w    io.Writer // nil: memory only
	tail []byte
	max  int
}

func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w != nil {
		// A failing log file must not stall the console.
		_, _ = l.w.Write(p)
	}
	l.tail = append(l.tail, p...)
	if over := len(l.tail) - l.max; over > 0 {
		l.tail = append(l.tail[:0], l.tail[over:]...)
	}
	return len(p), nil
}

func (l *logWriter) last(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return tail(string(l.tail), n)
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// prefixWriter starts every line it passes on with prefix.
type prefixWriter struct {
	prefix string
	w      io.Writer
	mid    bool // inside a line
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var out []byte
	for _, c := range b {
		if !p.mid {
			out = append(out, p.prefix...)
			p.mid = true
		}
		out = append(out, c)
		if c == '\n' {
			p.mid = false
		}
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
