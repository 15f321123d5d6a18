// Command vmnet-cni is a CNI plugin (type "vmnet") that gives a VM in a
// Kubernetes pod, or any CNI-run sandbox, a correctly configured TAP: it
// makes a TAP in the container's network namespace with the queues,
// virtio-net header size, owner, group, MTU, MAC, offloads and steering
// program the configuration asks for, and connects it to the interface
// the previous plugin of the chain made there (tc redirect both ways, or
// an in-namespace bridge), or runs standalone with a delegated IPAM
// plugin. It speaks CNI 1.1 (ADD, DEL, CHECK, STATUS, GC, VERSION) and
// the older versions libcni negotiates, through containernetworking/cni's
// skel. See docs/kubernetes.md and docs/cni/*.conflist.
//
// The files split the plugin by concern: config.go reads and checks the
// configuration, add.go, del.go, check.go, gc.go and status.go are the
// commands, device.go makes the TAP, connect.go wires it to the previous
// interface, state.go keeps the record of attachments GC works from, and
// netns.go reaches into the container's namespace.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// supportedVersions are the CNI versions the plugin speaks: all that
// libcni knows. Chaining needs 0.3.0 or later (prevResult), CHECK 0.4.0,
// STATUS and GC 1.1.0; skel refuses each verb below its version.
var supportedVersions = version.All

const about = "vmnet-cni: multi-queue TAP devices for VMs (github.com/vmnet-dev/vmnet)"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		// The CNI error, as JSON on stdout, is the runtime's answer.
		if perr := err.Print(); perr != nil {
			os.Stderr.WriteString("vmnet-cni: write error: " + perr.Error() + "\n")
		}
		os.Exit(1)
	}
}

// run is the plugin minus the process. skel reads CNI_COMMAND and the
// other CNI_* variables and the configuration on stdin itself, checks the
// versions and calls the command; results go to stdout, logs to stderr.
// The commands are methods of plugin, which tests call with a
// skel.CmdArgs of their own.
func run(ctx context.Context, stdout, stderr io.Writer) *types.Error {
	p := &plugin{ctx: ctx, stdout: stdout, stderr: stderr}
	return skel.PluginMainFuncsWithError(p.funcs(), supportedVersions, about)
}
