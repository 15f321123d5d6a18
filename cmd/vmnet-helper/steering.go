package main

import (
	"errors"
	"fmt"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/ebpf"
)

// steeringAuto is vhost-user's default: hash steering on a multi-queue
// TAP, tun.c's own on a single queue or where the program cannot load.
const steeringAuto ebpf.Steering = "auto"

// parseSteering reads --steering; auto is accepted only where allowAuto.
func parseSteering(cmd, s string, allowAuto bool) (ebpf.Steering, error) {
	if allowAuto && ebpf.Steering(s) == steeringAuto {
		return steeringAuto, nil
	}
	st, err := ebpf.ParseSteering(s)
	if err != nil {
		want := "kernel or hash"
		if allowAuto {
			want = "auto, kernel or hash"
		}
		return "", usagef("%s: --steering %q: want %s", cmd, s, want)
	}
	return st, nil
}

// applySteering sets how dev spreads frames across its queues: the hash
// program (loaded here, held by the TAP from then on), or none, which
// also detaches a program a persistent TAP kept from an earlier user. For
// auto it falls back to the kernel's steering, with a warning, when the
// program cannot be loaded for lack of privileges.
func applySteering(dev *tap.Device, mode ebpf.Steering, log hclog.Logger) error {
	if mode == steeringAuto {
		mode = ebpf.SteeringKernel
		if dev.NumQueues() > 1 {
			mode = ebpf.SteeringHash
		}
		err := setSteering(dev, mode)
		if errors.Is(err, ebpf.ErrPermission) {
			log.Warn("queue steering falls back to the kernel's: the eBPF program needs CAP_BPF", "error", err)
			return setSteering(dev, ebpf.SteeringKernel)
		}
		if err == nil {
			log.Debug("queue steering", "steering", mode)
		}
		return err
	}
	return setSteering(dev, mode)
}

func setSteering(dev *tap.Device, mode ebpf.Steering) error {
	if mode != ebpf.SteeringHash {
		if err := dev.SetSteeringEBPF(-1); err != nil {
			return fmt.Errorf("steering %s: %w", mode, err)
		}
		return nil
	}
	p, err := ebpf.LoadHashProgram()
	if err != nil {
		return fmt.Errorf("steering hash: %w", err)
	}
	// The TAP holds its own reference once attached.
	defer p.Close()
	if err := dev.SetSteeringEBPF(p.FD()); err != nil {
		return fmt.Errorf("steering hash: %w", err)
	}
	return nil
}
