package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// How the plugin knows which TAPs are its own.
//
// GC gets no namespace, only the attachments that are still valid, so the
// plugin keeps a record of each attachment it made: one JSON file per
// attachment, DATADIR/NETWORK/CONTAINERID+IFNAME.json (DATADIR is the
// config's dataDir, /var/lib/cni/vmnet by default; a container ID has no
// '+', so the first one splits the name), written once the TAP is ready.
// It holds the namespace path, the TAP's and the bridge's names, and the
// result ADD printed. Every link the plugin makes also carries an alias
// (IFLA_IFALIAS, `ip link` shows it) naming its attachment, so DEL and GC
// delete only links that are provably theirs, and a link a crashed ADD
// left before its record was written is still found in the namespace.
// ADD, DEL and GC of one network take turns on DATADIR/NETWORK/lock.

// record is one attachment as the state directory keeps it.
type record struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	NetNS       string `json:"netns"`
	TAP         string `json:"tap"`
	Mode        string `json:"mode"`
	Peer        string `json:"peer,omitempty"`   // the previous plugin's interface
	Bridge      string `json:"bridge,omitempty"` // mode bridge
	// PeerQdisc is set when ADD added the ingress qdisc on the peer (DEL
	// removes it again once no filter is left on it).
	PeerQdisc bool `json:"peerQdisc,omitempty"`
	// Result is what ADD printed, as a CNI 1.1.0 result; a repeated ADD of
	// a standalone attachment prints it again instead of asking the IPAM
	// plugin for a second address.
	Result json.RawMessage `json:"result,omitempty"`
}

// store is the state directory of one network.
type store struct {
	dir string
}

func newStore(dataDir, network string) *store {
	return &store{dir: filepath.Join(dataDir, network)}
}

// lock takes the network's lock, creating the directory; the returned
// function releases it.
func (s *store) lock() (unlock func(), err error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(s.dir, "lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("state lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

func (s *store) path(containerID, ifName string) string {
	return filepath.Join(s.dir, containerID+"+"+ifName+".json")
}

// read returns the record of an attachment, or nil when there is none.
func (s *store) read(containerID, ifName string) (*record, error) {
	data, err := os.ReadFile(s.path(containerID, ifName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	r := &record{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("read state %s: %w", s.path(containerID, ifName), err)
	}
	return r, nil
}

// write replaces an attachment's record, atomically.
func (s *store) write(r *record) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	path := s.path(r.ContainerID, r.IfName)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// remove forgets an attachment; forgetting one that is not there is fine.
func (s *store) remove(containerID, ifName string) error {
	if err := os.Remove(s.path(containerID, ifName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}

// list returns every record of the network. A file that does not parse
// is reported, not skipped: GC must not forget a TAP it cannot read about.
func (s *store) list() ([]*record, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list state: %w", err)
	}
	var out []*record
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".json") || !strings.Contains(name, "+") {
			continue
		}
		id, ifName, _ := strings.Cut(strings.TrimSuffix(name, ".json"), "+")
		r, err := s.read(id, ifName)
		if err != nil {
			return nil, err
		}
		if r != nil {
			out = append(out, r)
		}
	}
	return out, nil
}
