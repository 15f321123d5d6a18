package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// PromtoolCheckMetrics runs `promtool check metrics` (Debian's prometheus
// package) on a scrape in the text exposition format and fails t with
// what it says if it finds a problem. Without promtool it skips, or fails
// under CI.
func PromtoolCheckMetrics(t testing.TB, scrape []byte) {
	t.Helper()
	promtool(t, scrape, "check", "metrics")
}

// PromtoolCheckRules runs `promtool check rules` on a rule file's
// contents, as PromtoolCheckMetrics does.
func PromtoolCheckRules(t testing.TB, rules []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(path, rules, 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, nil, "check", "rules", path)
}

func promtool(t testing.TB, stdin []byte, args ...string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		Skip(t, "no promtool (Debian package prometheus, .ci/install-deps): %v", err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool %v: %v\n%s", args, err, out)
	}
}
