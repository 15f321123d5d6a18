// Command vmnet-demo is `make demo`: it boots a Linux guest under QEMU
// whose virtio-net NIC is served by vmnet-helper over vhost-user, with the
// helper's TAP in a network namespace of its own, measures ping and iperf3
// both ways, prints a short table, and removes everything it made (the
// namespace, the TAP, QEMU, the helper), on failure and on Ctrl-C too.
//
// It needs root (network namespaces, TAP devices) and the packages of
// .ci/install-deps; `make demo` installs them and builds the helper first.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	var o options
	flag.StringVar(&o.helper, "helper", "bin/vmnet-helper", "the vmnet-helper binary")
	flag.IntVar(&o.queues, "queues", 2, "queue pairs, and the guest's vCPUs (1 to 4)")
	flag.DurationVar(&o.iperfTime, "time", 5*time.Second, "how long each iperf3 run lasts")
	flag.BoolVar(&o.verbose, "v", false, "log the helper's and the guest's progress to stderr")
	flag.StringVar(&o.steering, "steering", "auto", "the helper's --steering: auto, kernel or hash")
	flag.Parse()
	if flag.NArg() > 0 || o.queues < 1 || o.queues > 4 || o.iperfTime < time.Second {
		flag.Usage()
		os.Exit(2)
	}
	// Until the cleanup is done, SIGINT and SIGTERM only cancel ctx: a
	// second Ctrl-C must not cut the cleanup short.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout, os.Stderr)
	interrupted := ctx.Err() != nil
	stop()
	if err != nil {
		if interrupted && errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "vmnet-demo: interrupted; cleaned up")
			os.Exit(130)
		}
		fmt.Fprintf(os.Stderr, "vmnet-demo: %v\n", err)
		os.Exit(1)
	}
}
