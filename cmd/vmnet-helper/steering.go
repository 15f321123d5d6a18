package main

import (
	"github.com/vmnet-dev/vmnet/ebpf"
)

// parseSteering reads --steering; auto is accepted only where allowAuto
// (vhost-user, where the device resolves it: backend.SetSteering).
func parseSteering(cmd, s string, allowAuto bool) (ebpf.Steering, error) {
	st, err := ebpf.ParseSteering(s)
	if err != nil || st == ebpf.SteeringAuto && !allowAuto {
		want := "kernel or hash"
		if allowAuto {
			want = "auto, kernel or hash"
		}
		return "", usagef("%s: --steering %q: want %s", cmd, s, want)
	}
	return st, nil
}
