package engine

import (
	"errors"
	"fmt"

	"github.com/vmnet-dev/vmnet/internal/memfault"
)

// ErrMemoryFault is matched by the error of a queue pair whose worker
// faulted on guest memory: a front-end that shrank the file behind a
// mapped region (SIGBUS) or unmapped it. The worker stops; the rings are
// unusable until the device is reset.
var ErrMemoryFault = memfault.ErrFault

// runGuarded runs the worker with faults on guest memory turned into an
// error instead of a crash of the whole process (internal/memfault).
func (qp *QueuePair) runGuarded(p *poller) error {
	err := memfault.Guard(func() error { return qp.run(p) })
	if errors.Is(err, memfault.ErrFault) {
		qp.ctr.Add(MemoryFaults, 1)
		qp.ctr.warn[warnMemoryFault].Error(qp.log, "queue pair stopped until the device is reset", err)
		return fmt.Errorf("queue pair %d: %w", qp.cfg.Index, err)
	}
	return err
}
