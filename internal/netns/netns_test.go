package netns_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/vmnet-dev/vmnet/internal/netns"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// Namespaces made at once all come up with their loopback up, and each
// delete function removes its own.
func TestAddConcurrent(t *testing.T) {
	testutil.RequireRoot(t)
	const n = 4
	dels := make([]func() error, n)
	errs := make([]error, n)
	names := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		names[i] = fmt.Sprintf("vmnet-netns-test-%d-%d", os.Getpid(), i)
		wg.Go(func() { dels[i], errs[i] = netns.Add(context.Background(), names[i]) })
	}
	wg.Wait()
	for i, name := range names {
		if errs[i] != nil {
			t.Fatalf("add %s: %v", name, errs[i])
		}
		out, err := exec.Command("ip", "netns", "exec", name, "ip", "-o", "link", "show", "lo").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "UP") {
			t.Errorf("loopback of %s: %v %s, want it up", name, err, out)
		}
	}
	for i, name := range names {
		if err := dels[i](); err != nil {
			t.Errorf("delete %s: %v", name, err)
		}
		if _, err := os.Stat("/run/netns/" + name); !os.IsNotExist(err) {
			t.Errorf("%s after delete: %v, want it gone", name, err)
		}
	}
}
