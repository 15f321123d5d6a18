package integration

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkLiveMigration migrates a guest five times between two QEMUs
// (A to B, back, and so on) on vmnet-helper vhost-user with one and two
// queue pairs, and the same on QEMU's own tap netdev (vhost=off) for
// comparison, under the same load as TestVhostUserLiveMigration: pings
// every 50 ms and an iperf3 TCP stream, guest to host and host to guest in
// turn. It logs every migration and reports the medians of what an
// operator watches: migration time and downtime (QMP query-migrate), pings
// lost, the longest silence between replies, and the stream's megabytes on
// the destination's TAP in the 3 s after the switch-over. Each case runs
// once, whatever b.N; about 2 minutes each on a 2-CPU machine.
//
//	go test -run '^$' -bench LiveMigration -benchtime 1x ./integration/
func BenchmarkLiveMigration(b *testing.B) {
	const migrations = 5
	for _, o := range []migOptions{
		{backend: vmnetBackend, queues: 1},
		{backend: vmnetBackend, queues: 2},
		{backend: tapBackend, queues: 1},
		{backend: tapBackend, queues: 2},
	} {
		name := fmt.Sprintf("%s/%d_pairs", strings.ReplaceAll(string(o.backend), " ", "_"), o.queues)
		b.Run(name, func(b *testing.B) {
			r := newMigRig(b, o)
			r.boot(b)
			r.run(b, time.Minute, "ping -c 1 -W 5 "+hostAddr)
			b.ResetTimer()
			var ms []migration
			for i := range migrations {
				m := r.migrate(b, i%2 == 1, false)
				b.Logf("%s, migration %d: %s", o.backend, i+1, m)
				ms = append(ms, m)
			}
			b.StopTimer()
			med := func(f func(migration) float64) float64 {
				v := make([]float64, len(ms))
				for i, m := range ms {
					v[i] = f(m)
				}
				slices.Sort(v)
				return v[len(v)/2]
			}
			b.ReportMetric(med(func(m migration) float64 { return m.total.Seconds() }), "migration-s")
			b.ReportMetric(med(func(m migration) float64 { return float64(m.downtime.Milliseconds()) }), "downtime-ms")
			b.ReportMetric(med(func(m migration) float64 { return float64(m.pingsLost) }), "pings-lost")
			b.ReportMetric(med(func(m migration) float64 { return float64(m.silence.Milliseconds()) }), "silence-ms")
			b.ReportMetric(med(func(m migration) float64 { return float64(m.afterBytes) / 1e6 }), "MB-after")
			b.ReportMetric(0, "ns/op")
		})
	}
}
