package backend

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// TestMain keeps the examples, which make a TAP in a network namespace
// and cannot skip themselves, from failing where that needs privileges
// the tests do not have: without root they are skipped, loudly (and
// under CI=true they run, and fail, as a privileged test does there).
func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 && !testutil.InCI() {
		fmt.Fprintln(os.Stderr, "SKIP examples of package backend: they make a TAP and need root")
		if err := flag.Set("test.skip", "^Example"); err != nil {
			fmt.Fprintln(os.Stderr, "cannot skip the examples:", err)
		}
	}
	os.Exit(m.Run())
}
