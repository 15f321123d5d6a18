// Package memfault turns a fault on memory another process controls into
// an error instead of a crash of the whole program.
//
// Guest memory comes from files the front-end (or the VMM) shares; a
// front-end that shrinks such a file after vmnet mapped it makes the next
// load or store there raise SIGBUS, which kills a Go program unless the
// goroutine asked for a panic instead (runtime/debug.SetPanicOnFault).
// Guard asks for it around one function and recovers that panic alone:
// every other panic is a bug and still crashes. Faults inside system calls
// never get here: the kernel answers EFAULT.
package memfault

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// ErrFault is matched by the error Guard returns for a fault.
var ErrFault = errors.New("guest memory fault")

// Guard runs fn on the calling goroutine; a memory fault in it ends fn
// and comes back as an error matching ErrFault, with the address. State
// fn was changing is left as the fault found it: the caller must treat
// what fn worked on as unusable.
func Guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		fault, ok := r.(interface{ Addr() uintptr })
		if !ok {
			panic(r)
		}
		err = fmt.Errorf("%w at %#x", ErrFault, fault.Addr())
	}()
	return fn()
}
