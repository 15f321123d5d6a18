package tap

import (
	"context"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LinkState is what a guest's link status follows: whether the host side
// has the TAP administratively up, and whether the kernel reports carrier
// (tun.c turns carrier on while a queue file is attached).
type LinkState struct {
	Up      bool
	Carrier bool
}

// WatchLink calls fn with the device's link state now, before it returns,
// and again each time the kernel announces a change to it (RTM_NEWLINK in
// the device's namespace), until ctx ends. Later calls run on the watching
// goroutine, one at a time. WatchLink returns once the subscription is in place, or an
// error naming the device if it cannot be made; it owns the netlink socket
// it opens and closes it when ctx ends.
func (d *Device) WatchLink(ctx context.Context, fn func(LinkState)) error {
	d.mu.Lock()
	ns, name, closed := d.ns, d.name, d.closed
	d.mu.Unlock()
	if closed {
		return d.opErr(-1, "watch link", net.ErrClosed)
	}
	updates := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	var nsOpt = &ns
	if !ns.IsOpen() {
		nsOpt = nil
	}
	errs := make(chan error, 1)
	err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		Namespace: nsOpt,
		ErrorCallback: func(err error) {
			select {
			case errs <- err:
			default:
			}
		},
	})
	if err != nil {
		close(done)
		return d.opErr(-1, "subscribe to RTNLGRP_LINK", err)
	}
	// Looked up once subscribed: a change in between comes as an update.
	info, err := lookup(ns, name)
	if err != nil {
		close(done)
		for range updates {
		}
		return err
	}
	last := LinkState{Up: info.Up, Carrier: info.Carrier}
	fn(last)
	go func() {
		// The subscription's reader closes updates once done closes its
		// socket; draining until then leaves no goroutine behind.
		defer func() {
			for range updates {
			}
		}()
		for {
			select {
			case <-ctx.Done():
				close(done)
				return
			case err := <-errs:
				d.log.Warn("link watch", "error", err)
			case u, ok := <-updates:
				if !ok {
					// The socket failed (the namespace went away): the
					// last state stands.
					<-ctx.Done()
					close(done)
					return
				}
				if int(u.Index) != info.Index {
					continue
				}
				st := linkStateOf(u.Link.Attrs())
				if u.Header.Type == unix.RTM_DELLINK {
					st = LinkState{}
				}
				if st != last {
					last = st
					fn(st)
				}
			}
		}
	}()
	return nil
}

// linkStateOf reads the state from a link's attributes, as RTM_GETLINK
// and RTM_NEWLINK report them.
func linkStateOf(a *netlink.LinkAttrs) LinkState {
	return LinkState{
		Up:      a.Flags&net.FlagUp != 0,
		Carrier: a.OperState == netlink.OperUp || a.RawFlags&unix.IFF_LOWER_UP != 0,
	}
}

// String is "up, carrier" and the like, for logs.
func (s LinkState) String() string {
	up, carrier := "down", "no carrier"
	if s.Up {
		up = "up"
	}
	if s.Carrier {
		carrier = "carrier"
	}
	return fmt.Sprintf("%s, %s", up, carrier)
}
