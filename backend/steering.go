package backend

import (
	"errors"
	"fmt"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/ebpf"
)

// SetSteering sets how t spreads the frames it sends to the guest across
// its queues (TUNSETSTEERINGEBPF), and returns the steering in effect:
//   - ebpf.SteeringHash loads the flow-hash program and attaches it: each
//     flow stays on one queue for its whole life, whichever queue the
//     guest answers on;
//   - ebpf.SteeringKernel detaches any program (also one a persistent TAP
//     kept from an earlier user), leaving the choice to tun.c's flow table,
//     which moves a flow to the queue the guest last sent it on;
//   - ebpf.SteeringQueue(n) ("queue:n") attaches a program that sends
//     every frame to the n-th attached queue, for debugging;
//   - ebpf.SteeringAuto is hash on a TAP with several queues and kernel on
//     one with a single queue, and falls back to kernel, with one warning
//     on log, where the program cannot be loaded for lack of privileges
//     (errors.Is(err, ebpf.ErrPermission)).
//
// The TAP holds the program once attached: it stays until the TAP is
// closed or its steering set again. log may be nil.
func SetSteering(t *tap.Device, mode ebpf.Steering, log hclog.Logger) (ebpf.Steering, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if mode != ebpf.SteeringAuto {
		return mode, attachSteering(t, mode)
	}
	mode = ebpf.SteeringKernel
	if t.NumQueues() > 1 {
		mode = ebpf.SteeringHash
	}
	err := attachSteering(t, mode)
	if errors.Is(err, ebpf.ErrPermission) {
		log.Warn("queue steering falls back to the kernel's: the eBPF program needs CAP_BPF", "error", err)
		return ebpf.SteeringKernel, attachSteering(t, ebpf.SteeringKernel)
	}
	if err == nil {
		log.Debug("queue steering", "steering", mode)
	}
	return mode, err
}

func attachSteering(t *tap.Device, mode ebpf.Steering) error {
	switch mode {
	case ebpf.SteeringKernel:
		if err := t.SetSteeringEBPF(-1); err != nil {
			return fmt.Errorf("steering %s: %w", mode, err)
		}
		return nil
	case ebpf.SteeringHash:
	default:
		q, ok := mode.Queue()
		if !ok {
			return fmt.Errorf("steering %q: want auto, kernel, hash or queue:N", mode)
		}
		if q >= t.NumQueues() {
			return fmt.Errorf("steering %s: the TAP has %d queues", mode, t.NumQueues())
		}
	}
	var p *ebpf.Program
	var err error
	if q, ok := mode.Queue(); ok {
		p, err = ebpf.LoadQueueProgram(q)
	} else {
		p, err = ebpf.LoadHashProgram()
	}
	if err != nil {
		return fmt.Errorf("steering %s: %w", mode, err)
	}
	// The TAP holds its own reference once attached.
	defer p.Close()
	if err := t.SetSteeringEBPF(p.FD()); err != nil {
		return fmt.Errorf("steering %s: %w", mode, err)
	}
	return nil
}
