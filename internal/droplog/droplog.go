// Package droplog rate-limits the log lines of what a guest can cause in a
// loop (dropped frames, refused commands): the engine's queue pairs and
// the device's control queue share it. The drops themselves are counted by
// the callers, always; only the log lines are limited.
package droplog

import "github.com/hashicorp/go-hclog"

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
