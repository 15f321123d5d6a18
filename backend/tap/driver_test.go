package tap

import (
	"testing"

	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// CheckDriver passes on a kernel that makes vmnet's TAPs (one that could
// not is checkFeatures' case, tested with made-up flags).
func TestCheckDriver(t *testing.T) {
	testutil.RequireTUN(t)
	if err := CheckDriver(); err != nil {
		t.Fatalf("CheckDriver: %v", err)
	}
}
