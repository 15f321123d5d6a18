package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/backend/fdpass"
	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/internal/metrics"
)

// serve-fds listens on a unix socket (SOCK_SEQPACKET) and answers each
// client's request for a TAP (backend/fdpass has the protocol) with the
// TAP's queue files, when the access list lets the client's uid or gids
// (SO_PEERCRED, SO_PEERGROUPS) use the TAP name and bridge it asks for.
// The list is read again for every request, so an edit applies at once.
// TAPs are made non-persistent: each disappears when the client closes
// its files. After the socket is bound the server keeps only
// CAP_NET_ADMIN, with no_new_privs.

type serveFdsConfig struct {
	socket, acl, group string
	mode               os.FileMode
	maxQueues          int
	timeout            time.Duration
	metrics            metricsFlag
	// taps, with --metrics, exports each TAP handed out while it lives.
	taps *metrics.Collector
}

func runServeFds(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve-fds")
	var lf logFlags
	var c serveFdsConfig
	lf.register(fs)
	fs.StringVar(&c.socket, "socket", "", "unix socket to listen on (required)")
	fs.StringVar(&c.acl, "acl", "", "access list (default "+defaultACL+")")
	fs.StringVar(&c.group, "socket-group", "", "group (name or gid) to give the socket")
	mode := fs.String("socket-mode", "0660", "permissions of the socket, octal")
	fs.IntVar(&c.maxQueues, "max-queues", 16, "most queues one request may ask for (1 to 253)")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "how long one client may take")
	c.metrics.register(fs)
	log, err := parseCommand(fs, args, stderr, &lf)
	if err != nil {
		return err
	}
	if c.socket == "" {
		return usagef("serve-fds: --socket PATH missing")
	}
	m, err := strconv.ParseUint(*mode, 8, 32)
	if err != nil || m > 0o777 {
		return usagef("serve-fds: --socket-mode %q: want octal permissions like 0660", *mode)
	}
	c.mode = os.FileMode(m)
	if c.maxQueues < 1 || c.maxQueues > fdpass.MaxFiles {
		return usagef("serve-fds: --max-queues %d: want 1 to %d", c.maxQueues, fdpass.MaxFiles)
	}
	if c.timeout <= 0 {
		return usagef("serve-fds: --timeout %s: want a positive duration", c.timeout)
	}
	if err := c.metrics.check("serve-fds"); err != nil {
		return err
	}
	gid := -1
	if c.group != "" {
		if gid, err = lookupGroupID(c.group); err != nil {
			return usagef("serve-fds: --socket-group %q: %v", c.group, err)
		}
	}
	if secureExec() {
		return usagef("serve-fds: refused when vmnet-helper runs setuid or with file capabilities: start it as root or from a service manager that grants CAP_NET_ADMIN")
	}
	if c.acl, err = aclPath(c.acl, os.Getenv, false); err != nil {
		return err
	}
	if c.acl, err = filepath.Abs(c.acl); err != nil {
		return fmt.Errorf("serve-fds: %w", err)
	}
	// A broken list is a startup error, not a surprise for the first client.
	if _, err := loadACL(c.acl, false); err != nil {
		return err
	}
	if err := requireNetAdmin("serve-fds"); err != nil {
		return err
	}
	if _, err := tap.Probe(); err != nil {
		return fmt.Errorf("serve-fds: %w", err)
	}
	l, ino, err := listenSeqpacket(c.socket, c.mode, gid)
	if err != nil {
		return fmt.Errorf("serve-fds: %w", err)
	}
	defer removeOwnSocket(c.socket, ino, log)
	ms, err := c.metrics.listen()
	if err != nil {
		l.Close()
		return fmt.Errorf("serve-fds: %w", err)
	}
	defer ms.stop()
	if err := keepOnlyNetAdmin(); err != nil {
		l.Close()
		return err
	}
	if ms != nil {
		c.taps = metrics.NewCollector()
		ms.serve(c.taps, log)
	}
	fmt.Fprintln(stdout, c.socket)
	log.Info("serving TAP descriptors", "socket", c.socket, "acl", c.acl, "max_queues", c.maxQueues)
	return fdpass.Serve(ctx, l, c.handler(log), fdpass.ServerOptions{Timeout: c.timeout, Logger: log.Named("serve-fds")})
}

// handler decides and makes one client's TAP.
func (c serveFdsConfig) handler(log hclog.Logger) fdpass.Handler {
	return func(ctx context.Context, peer fdpass.Peer, req fdpass.Request) (fdpass.Grant, error) {
		if req.Queues > c.maxQueues {
			return fdpass.Grant{}, fmt.Errorf("queues %d: this server grants at most %d", req.Queues, c.maxQueues)
		}
		a, err := loadACL(c.acl, false)
		if err != nil {
			log.Error("cannot read access list", "error", err)
			return fdpass.Grant{}, errors.New("the server cannot read its access list; ask its administrator")
		}
		who := caller{uid: peer.UID, gids: append([]uint32{peer.GID}, peer.Groups...)}
		if err := a.check(kindTap, req.Name, who); err != nil {
			return fdpass.Grant{}, err
		}
		if req.Bridge != "" {
			if err := a.check(kindBridge, req.Bridge, who); err != nil {
				return fdpass.Grant{}, err
			}
		}
		return makeGrant(req, log, c.taps)
	}
}

// makeGrant makes the TAP a request asks for; with taps, its link state
// and kernel counters are exported for as long as it lives.
func makeGrant(req fdpass.Request, log hclog.Logger, taps *metrics.Collector) (g fdpass.Grant, err error) {
	cfg := tap.LinkConfig{Up: true}
	if req.Bridge != "" {
		br, err := tap.LookupBridge(req.Bridge, "")
		if err != nil {
			return g, err
		}
		cfg.Bridge, cfg.MTU = br.Name, br.MTU
	}
	dev, err := tap.Create(tap.Options{Name: req.Name, Queues: req.Queues, VnetHdrSize: req.VnetHdr, Logger: log})
	if err != nil {
		return g, fmt.Errorf("create tap: %w", err)
	}
	// The client's duplicates hold the TAP once this returns.
	defer dev.Close()
	defer func() {
		if err != nil {
			for _, f := range g.Files {
				f.Close()
			}
			g.Files = nil
		}
	}()
	if req.Bridge != "" {
		info, err := dev.Info()
		if err != nil {
			return g, err
		}
		cfg.MAC = portMAC(info.MAC)
	}
	if err := tap.ConfigureLink(dev.Name(), "", cfg); err != nil {
		return g, err
	}
	g.Name, g.VnetHdr = dev.Name(), dev.VnetHdrSize()
	for i := 0; i < dev.NumQueues(); i++ {
		f, err := dev.Queue(i).Dup()
		if err != nil {
			return g, err
		}
		g.Files = append(g.Files, f)
	}
	if taps != nil {
		info, err := dev.Info()
		if err != nil {
			return g, err
		}
		taps.AddTAP(info, "")
	}
	return g, nil
}

// listenSeqpacket binds the socket with the permissions it will keep: the
// umask is set around bind, since chmod by path could be redirected
// between bind and chmod. A stale socket left by a dead server is
// replaced; anything else at the path (a file, a symbolic link, a live
// server) is an error and is left alone. The folder must be one only
// root can change, or sticky. It returns the socket's inode, so that
// only that socket is removed at exit.
func listenSeqpacket(path string, mode os.FileMode, gid int) (*net.UnixListener, uint64, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, 0, err
	}
	dir := filepath.Dir(abs)
	di, err := os.Lstat(dir)
	if err != nil {
		return nil, 0, fmt.Errorf("socket folder: %w", err)
	}
	if err := checkTrusted(dir, di, false, true); err != nil {
		return nil, 0, fmt.Errorf("socket folder: %w", err)
	}
	if fi, err := os.Lstat(abs); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, 0, fmt.Errorf("%s exists and is not a socket (%s); not replacing it", abs, fi.Mode().Type())
		}
		if c, err := net.Dial("unixpacket", abs); err == nil {
			c.Close()
			return nil, 0, fmt.Errorf("%s: another server is listening there", abs)
		}
		if err := os.Remove(abs); err != nil {
			return nil, 0, fmt.Errorf("remove stale socket: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, 0, err
	}
	old := unix.Umask(int(0o777 &^ mode))
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: abs, Net: "unixpacket"})
	unix.Umask(old)
	if err != nil {
		return nil, 0, err
	}
	// Close must not unlink: removeOwnSocket does, after checking.
	l.SetUnlinkOnClose(false)
	fi, err := os.Lstat(abs)
	if err != nil {
		l.Close()
		return nil, 0, err
	}
	ino := fi.Sys().(*syscall.Stat_t).Ino
	if gid >= 0 {
		if err := unix.Fchownat(unix.AT_FDCWD, abs, -1, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			l.Close()
			os.Remove(abs)
			return nil, 0, fmt.Errorf("give %s to group %d: %w", abs, gid, err)
		}
	}
	return l, ino, nil
}

// removeOwnSocket removes path if it is still the socket this server
// bound.
func removeOwnSocket(path string, ino uint64, log hclog.Logger) {
	fi, err := os.Lstat(path)
	if err != nil {
		return
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Ino == ino && fi.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(path); err != nil {
			log.Warn("cannot remove socket", "socket", path, "error", err)
		}
	}
}

func lookupGroupID(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("want a gid >= 0")
		}
		return n, nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}
