//go:build race

package virtio_test

// raceEnabled trims the longest tests under the race detector, which slows
// them tenfold.
const raceEnabled = true
