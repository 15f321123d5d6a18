package hostile_test

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/vmnet-dev/vmnet/backend/engine"
	"github.com/vmnet-dev/vmnet/internal/testutil"
	"github.com/vmnet-dev/vmnet/vhostuser"
)

// What every case must leave: after it, the helper idles below this share
// of a CPU, and logs at most this many lines at warn level and above.
const (
	maxCPU      = 0.05
	maxWarnings = 10
)

// hostileCase is one attack, named for what it attacks.
type hostileCase struct {
	name string
	run  func(a *attack)
}

// row is what the summary table says of a case.
type row struct {
	name, outcome, counted string
	warnings               int
	fds, goroutines, maps  int
	cpuDuring, cpuAfter    float64 // cpuDuring < 0: not measured
}

// TestHostileFrontEnds runs every case against one helper, each followed
// by a well-behaved front-end on a fresh connection, and logs what each
// case did.
func TestHostileFrontEnds(t *testing.T) {
	r := newRig(t)
	t.Run("baseline", func(t *testing.T) {
		if err := r.wellBehaved(); err != nil {
			t.Fatalf("a well-behaved front-end before any attack: %v", err)
		}
		r.baseFds = testutil.SettledFds(t)
		r.baseGoroutines = settledGoroutines()
		r.baseMaps = memfdMaps()
	})
	if t.Failed() {
		return
	}
	var rows []row
	for _, c := range hostileCases {
		t.Run(c.name, func(t *testing.T) { rows = append(rows, r.run(t, c)) })
	}
	t.Log("\n" + table(rows, r))
}

// run runs one case and checks what it left.
func (r *rig) run(t *testing.T, c hostileCase) row {
	st0, ctr0 := r.srv.Stats(), r.counters()
	_, logAt := r.log.since(0)
	a := &attack{t: t, r: r, cpuDuring: -1}
	defer func() {
		if t.Failed() {
			log, _ := r.log.since(logAt)
			t.Logf("outcome: %s\nhelper log:\n%s", strings.Join(a.notes, "; "), head(log, 40))
		}
	}()
	func() {
		defer a.finish()
		c.run(a)
		if a.live && !t.Failed() {
			a.idle()
		}
	}()
	if err := r.wellBehaved(); err != nil {
		t.Errorf("a well-behaved front-end after the attack: %v", err)
	}
	res := row{name: c.name, outcome: strings.Join(a.notes, "; "), cpuDuring: a.cpuDuring}
	res.fds = settle(func() int { return testutil.OpenFds(t) }, r.baseFds, 3*time.Second)
	res.goroutines = settle(runtime.NumGoroutine, r.baseGoroutines, 3*time.Second)
	res.maps = settle(memfdMaps, r.baseMaps, 3*time.Second)
	res.cpuAfter = testutil.CPUShare(t, time.Second)
	log, _ := r.log.since(logAt)
	res.warnings = warnings(log)
	res.counted = counted(st0, r.srv.Stats(), ctr0, r.counters())

	if res.fds > r.baseFds {
		t.Errorf("open fds: got %d, want at most %d as before the case", res.fds, r.baseFds)
	}
	if res.goroutines > r.baseGoroutines {
		t.Errorf("goroutines: got %d, want at most %d as before the case", res.goroutines, r.baseGoroutines)
	}
	if res.maps > r.baseMaps {
		t.Errorf("memfd mappings: got %d, want at most %d as before the case", res.maps, r.baseMaps)
	}
	if res.cpuAfter > maxCPU {
		t.Errorf("CPU over the second after the case: got %.1f%%, want under %.0f%%", 100*res.cpuAfter, 100*maxCPU)
	}
	if res.cpuDuring > maxCPU {
		t.Errorf("CPU while the attacking front-end stayed connected: got %.1f%%, want under %.0f%%", 100*res.cpuDuring, 100*maxCPU)
	}
	if res.warnings > maxWarnings {
		t.Errorf("helper log: got %d lines at warn and above, want at most %d:\n%s", res.warnings, maxWarnings, head(log, 20))
	}
	if t.Failed() {
		t.Logf("counted: %s", res.counted)
	}
	return res
}

// counted says what the server's and the queue pairs' counters of
// refusals and drops added.
func counted(st0, st1 vhostuser.Stats, c0, c1 [2]engine.Snapshot) string {
	var out []string
	if n := st1.Rejected - st0.Rejected; n > 0 {
		out = append(out, fmt.Sprintf("rejected=%d", n))
	}
	if n := st1.Unknown - st0.Unknown; n > 0 {
		out = append(out, fmt.Sprintf("unknown=%d", n))
	}
	var lim vhostuser.LimitStats
	for i := range lim {
		lim[i] = st1.Limited[i] - st0.Limited[i]
	}
	for d, v := range lim.All() {
		if v > 0 {
			out = append(out, fmt.Sprintf("limited.%s=%d", d.Name, v))
		}
	}
	for p := range c1 {
		var diff engine.Snapshot
		for k := range diff {
			diff[k] = c1[p][k] - c0[p][k]
		}
		for d, v := range diff.All() {
			if d.Drop && v > 0 {
				out = append(out, fmt.Sprintf("q%d.%s=%d", p, d.Name, v))
			}
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, " ")
}

func table(rows []row, r *rig) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "case\toutcome\tcounted\twarn lines\tfds (base %d)\tgoroutines (base %d)\tmemfd maps (base %d)\tCPU during\tCPU after\n",
		r.baseFds, r.baseGoroutines, r.baseMaps)
	for _, x := range rows {
		during := "-"
		if x.cpuDuring >= 0 {
			during = fmt.Sprintf("%.1f%%", 100*x.cpuDuring)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%.1f%%\n", x.name, x.outcome, x.counted, x.warnings,
			x.fds, x.goroutines, x.maps, during, 100*x.cpuAfter)
	}
	w.Flush()
	return b.String()
}

// head is the first n lines of s.
func head(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) <= n {
		return s
	}
	return strings.Join(lines[:n], "") + fmt.Sprintf("... (%d lines more)\n", len(lines)-n)
}

// attack is one case's front-end and what it saw.
type attack struct {
	t         *testing.T
	r         *rig
	fe        *frontEnd
	sess      *session
	notes     []string
	cleanups  []func()
	live      bool // the attacker stays connected: measure the CPU meanwhile
	cpuDuring float64
}

// note records a step of the outcome.
func (a *attack) note(format string, args ...any) {
	a.notes = append(a.notes, fmt.Sprintf(format, args...))
}

// cleanup runs fn when the case ends, after the attacker hung up.
func (a *attack) cleanup(fn func()) { a.cleanups = append(a.cleanups, fn) }

func (a *attack) finish() {
	if a.sess != nil {
		a.sess.close()
	} else if a.fe != nil {
		a.fe.close()
	}
	for i := len(a.cleanups) - 1; i >= 0; i-- {
		a.cleanups[i]()
	}
}

// idle measures the CPU the process uses while the attacker stays
// connected, after what it did.
func (a *attack) idle() {
	a.t.Helper()
	a.cpuDuring = max(a.cpuDuring, testutil.CPUShare(a.t, 250*time.Millisecond))
}

// conn is the attacker's connection, dialed on first use.
func (a *attack) conn() *frontEnd {
	a.t.Helper()
	if a.fe == nil {
		fe, err := dial(a.r.path)
		if err != nil {
			a.t.Fatal(err)
		}
		a.fe = fe
	}
	return a.fe
}

// open sets up a session on the attacker's connection; the case cannot
// go on without it.
func (a *attack) open(o sessionOptions) *session {
	a.t.Helper()
	s, err := a.r.open(a.conn(), o)
	if err != nil {
		a.fe = nil
		a.t.Fatalf("set up the attacking session: %v", err)
	}
	a.sess = s
	return s
}

// want records what a step got, and fails the case if it is not want
// ("" takes anything).
func (a *attack) want(step, got, want string) {
	a.t.Helper()
	a.note("%s: %s", step, got)
	if want != "" && got != want {
		a.t.Errorf("%s: got %q, want %q", step, got, want)
	}
}

// answer names what an exchange came to: "ack 0", "ack 1", "closed", or
// the error.
func answer(v uint64, err error) string {
	switch {
	case err == nil:
		return fmt.Sprintf("ack %d", v)
	case isClosed(err):
		return "closed"
	}
	return err.Error()
}

func isClosed(err error) bool {
	return errors.Is(err, errClosed) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// ack sends req with NEED_REPLY and checks the answer.
func (a *attack) ack(step string, want string, req vhostuser.Request, p vhostuser.Payload, fds ...int) string {
	a.t.Helper()
	got := answer(a.conn().ack(req, p, fds...))
	a.want(step, got, want)
	return got
}

// send sends a request without asking for a reply; a failure to write is
// noted (the back-end may have hung up already).
func (a *attack) send(req vhostuser.Request, flags vhostuser.Flags, p vhostuser.Payload, fds ...int) {
	a.t.Helper()
	if err := a.conn().send(req, flags, p, fds...); err != nil {
		a.note("send %s: %s", req, answer(0, err))
	}
}

// sendRaw writes bytes as they are.
func (a *attack) sendRaw(b []byte, fds ...int) {
	a.t.Helper()
	if err := a.conn().sendRaw(b, fds...); err != nil {
		a.note("send: %s", answer(0, err))
	}
}

// probe asks GET_QUEUE_NUM: "kept" if the back-end still serves the
// connection, "closed" if it hung up.
func (a *attack) probe(want string) {
	a.t.Helper()
	n, err := a.conn().callU64(vhostuser.ReqGetQueueNum, vhostuser.Empty{})
	got := answer(n, err)
	if err == nil && n == numRings {
		got = "kept"
	}
	a.want("then", got, want)
}

// closed waits for the back-end to hang up, for cases that leave it
// waiting for more bytes.
func (a *attack) closed(d time.Duration) {
	a.t.Helper()
	got := "closed"
	if !a.conn().waitClosed(d) {
		got = fmt.Sprintf("still open after %v", d)
	}
	a.want("then", got, "closed")
}

// waitCounter waits up to d for counter k of pair p to grow by at least
// n from what it was at from, and says what it got.
func (a *attack) waitCounter(p int, k engine.Counter, from uint64, n uint64, d time.Duration) {
	a.t.Helper()
	var got uint64
	for deadline := time.Now().Add(d); ; {
		got = a.r.dev.Counters(p).Load(k) - from
		if got >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	a.want(fmt.Sprintf("q%d.%s", p, k), fmt.Sprint(got), fmt.Sprint(n))
}

// file keeps f open until the case ends.
func (a *attack) file(f *os.File) *os.File {
	a.cleanup(func() { f.Close() })
	return f
}

// fd keeps fd open until the case ends.
func (a *attack) fd(fd int) int {
	a.cleanup(func() { syscall.Close(fd) })
	return fd
}
