package engine

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// poller is one queue pair's epoll instance. The worker blocks in
// epoll_wait on its own thread, the way vhost-net's worker thread sleeps,
// instead of parking goroutines in the runtime's poller: one wait covers
// both kicks, the TAP fd and the stop signal, and the TAP fd leaves the set
// while the RX ring has no buffers.
type poller struct {
	fd     int
	events [8]unix.EpollEvent
}

func newPoller() (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	return &poller{fd: fd}, nil
}

// add watches fd for input, tagging its events with tag.
func (p *poller) add(fd int, tag int32, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: tag}
	if err := unix.EpollCtl(p.fd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add fd %d: %w", fd, err)
	}
	return nil
}

// remove stops watching fd.
func (p *poller) remove(fd int) error {
	if err := unix.EpollCtl(p.fd, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return fmt.Errorf("epoll_ctl del fd %d: %w", fd, err)
	}
	return nil
}

// wait blocks up to msec milliseconds (-1: forever) and returns the ready
// events.
func (p *poller) wait(msec int) ([]unix.EpollEvent, error) {
	for {
		n, err := unix.EpollWait(p.fd, p.events[:], msec)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("epoll_wait: %w", err)
		}
		return p.events[:n], nil
	}
}

func (p *poller) close() error { return unix.Close(p.fd) }
