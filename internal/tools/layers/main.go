// Command layers checks that vmnet's packages import along its layers, and
// names every import that does not:
//
//   - No package imports one whose folder is above its own (backend/engine
//     importing backend): folders follow the dependency graph, so a
//     package's folder says what it may build on. A test kit may import
//     its parent, as net/http/httptest does net/http (virtio/virtiotest).
//   - No library package (internal/, virtio, offload, ebpf, vhostuser,
//     backend), nor its tests, imports anything under cmd/ or
//     integration/: the binaries and the end-to-end tests build on the
//     libraries, never the other way.
//   - The pure packages, virtio and offload, import no other package of
//     this module than each other (virtio/virtiotest, test support,
//     imports virtio alone), and nothing that opens devices, logs or runs
//     programs: netlink, go-hclog, cilium/ebpf, os/exec, directly or
//     through another package. Their own tests may.
//
// It reads the import graph from go list -deps -json and prints one line
// per bad import, then exits 1.
//
// Usage:
//
//	go run ./internal/tools/layers [-C dir] [patterns]
//
// It is a development tool, run by make lint.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	var usage usageError
	switch {
	case err == nil:
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "layers:", err)
		os.Exit(2)
	case errors.Is(err, errViolations):
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "layers:", err)
		os.Exit(1)
	}
}

// usageError is a bad command line.
type usageError struct{ error }

// errViolations is returned when an import breaks a rule; the imports are
// already printed.
var errViolations = errors.New("imports break the layers")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("layers", flag.ContinueOnError)
	fl.SetOutput(stderr)
	dir := fl.String("C", ".", "the module's root `dir`ectory")
	if err := fl.Parse(args); err != nil {
		return usageError{err}
	}
	patterns := fl.Args()
	if len(patterns) == 0 {
		patterns = []string{"./..."}
	}
	g, err := load(ctx, *dir, patterns)
	if err != nil {
		return err
	}
	vs := check(g, vmnet)
	for _, v := range vs {
		fmt.Fprintln(stdout, v)
	}
	if len(vs) > 0 {
		return errViolations
	}
	return nil
}
