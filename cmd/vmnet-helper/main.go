// Command vmnet-helper sets up TAP devices for virtual machines and serves
// them to hypervisors. See README.md and docs/ for its modes.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var ce *childExit
	if errors.As(err, &ce) {
		os.Exit(ce.code)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmnet-helper: %v\n", err)
		var ue *usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
