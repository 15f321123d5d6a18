package testutil

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// CPUTime is the CPU time this process has used so far, user and system
// (getrusage RUSAGE_SELF): every thread's, the Go runtime's included.
func CPUTime(t testing.TB) time.Duration {
	t.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// CPUShare measures the share of one CPU this process uses over the next
// d: 0.05 is 5%. A worker that spins shows 1 or more.
func CPUShare(t testing.TB, d time.Duration) float64 {
	t.Helper()
	c0, w0 := CPUTime(t), time.Now()
	time.Sleep(d)
	return float64(CPUTime(t)-c0) / float64(time.Since(w0))
}
