package fdpass

import (
	"errors"

	"golang.org/x/sys/unix"
)

// isTransient reports accept errors that pass on their own: the process
// or system is out of descriptors or memory, or the client left first.
func isTransient(err error) bool {
	for _, e := range []error{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.ECONNABORTED, unix.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
