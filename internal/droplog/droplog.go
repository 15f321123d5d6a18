// Package droplog thins out the log lines of what a guest or a front-end
// can make happen over and over: dropped frames and refused commands
// (Limiter, at debug level), and faults an operator should hear of, an
// interrupt that cannot be sent or a ring that broke (Warner, at warn or
// error level). The engine's queue pairs, the device's control queue and
// its config interrupt share it. The events themselves are counted by the
// callers, always; only the log lines are limited, so that neither the
// guest nor the front-end decides how much the helper logs.
package droplog

import (
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Limiter logs the first eight drops, then every 1024th, at debug level.
// Its zero value with Log set is ready; it is not safe for concurrent use
// (each worker has its own).
type Limiter struct {
	Log hclog.Logger
	n   uint64
}

// Next counts a drop and reports whether to log it, so that a caller can
// skip building the error of a drop nobody will see.
func (l *Limiter) Next() bool {
	l.n++
	return (l.n <= 8 || l.n%1024 == 0) && l.Log.IsDebug()
}

// Emit logs a drop Next said to log.
func (l *Limiter) Emit(what string, err error) {
	l.Log.Debug(what, "error", err, "drops", l.n)
}

// Drop counts a drop and logs it if Next says so.
func (l *Limiter) Drop(what string, err error) {
	if l.Next() {
		l.Emit(what, err)
	}
}

// Interval is the least time between two lines of one Warner: a fault
// that goes on is logged the first time, then at most once a minute.
const Interval = time.Minute

// Warner thins out the lines of one fault a guest or front-end can repeat
// as often as it likes (a call eventfd that cannot be signalled, a ring it
// broke on every restart): the first time, then at most once per
// Interval, each line saying how many times it happened in all. It holds
// no logger, so that it can live as long as what it guards (a queue
// pair's counters outlive restarts of the pair) while loggers come and go.
// Its zero value is ready; it is safe for concurrent use.
type Warner struct {
	n    atomic.Uint64
	next atomic.Int64 // clock() when the next line may go
}

// epoch and clock give Warner a monotonic time that fits an atomic.Int64;
// tests move clock on.
var (
	epoch = time.Now()
	clock = func() int64 { return int64(time.Since(epoch)) }
)

// Next counts the fault and reports whether to log it, with the count to
// log ("times"): at most one caller per Interval is told to. It costs
// no allocation and no system call.
func (w *Warner) Next() (times uint64, log bool) {
	times = w.n.Add(1)
	now := clock()
	next := w.next.Load()
	if now < next {
		return times, false
	}
	// Of callers racing past the interval, the one that moves it logs.
	return times, w.next.CompareAndSwap(next, now+int64(Interval))
}

// Warn counts the fault and logs it at warn level if Next says so.
func (w *Warner) Warn(log hclog.Logger, msg string, err error) {
	if n, ok := w.Next(); ok {
		log.Warn(msg, "error", err, "times", n)
	}
}

// Error counts the fault and logs it at error level if Next says so.
func (w *Warner) Error(log hclog.Logger, msg string, err error) {
	if n, ok := w.Next(); ok {
		log.Error(msg, "error", err, "times", n)
	}
}
