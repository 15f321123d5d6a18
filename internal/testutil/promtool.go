package testutil

import (
	"bytes"
	"os/exec"
	"testing"
)

// PromtoolCheckMetrics runs `promtool check metrics` (Debian's prometheus
// package) on a scrape in the text exposition format and fails t with
// what it says if it finds a problem. Without promtool it skips, or fails
// under CI.
func PromtoolCheckMetrics(t testing.TB, scrape []byte) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		Skip(t, "no promtool (Debian package prometheus, .ci/install-deps): %v", err)
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = bytes.NewReader(scrape)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
