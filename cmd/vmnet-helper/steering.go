package main

import (
	"github.com/vmnet-dev/vmnet/ebpf"
)

// parseSteering reads --steering; auto is accepted only where allowAuto
// (vhost-user, where the device resolves it: backend.SetSteering), and
// queue:N only for one of the TAP's queues.
func parseSteering(cmd, s string, allowAuto bool, queues int) (ebpf.Steering, error) {
	st, err := ebpf.ParseSteering(s)
	if err != nil || st == ebpf.SteeringAuto && !allowAuto {
		want := "kernel, hash or queue:N"
		if allowAuto {
			want = "auto, kernel, hash or queue:N"
		}
		return "", usagef("%s: --steering %q: want %s", cmd, s, want)
	}
	if q, ok := st.Queue(); ok && q >= queues {
		return "", usagef("%s: --steering %s: the TAP has %d queues", cmd, st, queues)
	}
	return st, nil
}
