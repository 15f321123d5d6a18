//go:build race

package engine

// raceEnabled: the race detector's instrumentation makes some buffers
// escape to the heap, so allocation counts do not hold.
const raceEnabled = true
