package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// QMP is a client of QEMU's machine protocol on a unix socket (QEMU's
// -qmp unix:PATH,server=on,wait=off): one JSON object per line, commands
// answered in order, events in between (docs/interop/qmp-spec.rst).
type QMP struct {
	c   net.Conn
	r   *bufio.Reader
	mu  sync.Mutex // one command at a time
	evs []QMPEvent // events read while waiting for replies
}

// QMPEvent is an asynchronous message from QEMU.
type QMPEvent struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// DialQMP connects to the socket at path, retrying until QEMU has made it
// or ctx ends, reads the greeting and leaves capabilities negotiation
// mode.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var c net.Conn
	for {
		var err error
		var d net.Dialer
		if c, err = d.DialContext(ctx, "unix", path); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to QMP at %s: %w (last: %v)", path, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	q := &QMP{c: c, r: bufio.NewReader(c)}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	line, err := q.r.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &greeting)
	}
	if err != nil || greeting.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("read QMP greeting at %s: %v (got %q)", path, err, line)
	}
	c.SetDeadline(time.Time{})
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// Close closes the connection.
func (q *QMP) Close() error { return q.c.Close() }

// Execute runs command with args (nil for none) and decodes its return
// value into ret (nil to drop it). A QMP error is an error naming its
// class and description.
func (q *QMP) Execute(ctx context.Context, command string, args, ret any) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	msg := map[string]any{"execute": command}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("QMP %s: %w", command, err)
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	q.c.SetDeadline(dl)
	defer q.c.SetDeadline(time.Time{})
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("QMP %s: %w", command, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("QMP %s: read reply: %w", command, err)
		}
		var m struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &m); err != nil {
			return fmt.Errorf("QMP %s: reply %q: %w", command, line, err)
		}
		switch {
		case m.Event != "":
			var ev QMPEvent
			if json.Unmarshal(line, &ev) == nil {
				q.evs = append(q.evs, ev)
			}
		case m.Error != nil:
			return fmt.Errorf("QMP %s: %s: %s", command, m.Error.Class, m.Error.Desc)
		default:
			if ret == nil || m.Return == nil {
				return nil
			}
			if err := json.Unmarshal(m.Return, ret); err != nil {
				return fmt.Errorf("QMP %s: decode %s: %w", command, m.Return, err)
			}
			return nil
		}
	}
}

// Events returns and forgets the events read so far.
func (q *QMP) Events() []QMPEvent {
	q.mu.Lock()
	defer q.mu.Unlock()
	evs := q.evs
	q.evs = nil
	return evs
}

// MigrationInfo is what query-migrate says (qapi/migration.json
// MigrationInfo), the fields the tests use. Times are in milliseconds.
type MigrationInfo struct {
	Status    string `json:"status"`
	TotalTime int64  `json:"total-time"`
	Downtime  int64  `json:"downtime"`
	SetupTime int64  `json:"setup-time"`
	ErrorDesc string `json:"error-desc"`
	RAM       *struct {
		Transferred    int64 `json:"transferred"`
		Total          int64 `json:"total"`
		DirtySyncCount int64 `json:"dirty-sync-count"`
	} `json:"ram"`
}

// QueryMigrate runs query-migrate.
func (q *QMP) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var mi MigrationInfo
	err := q.Execute(ctx, "query-migrate", nil, &mi)
	return mi, err
}

// WaitMigration polls query-migrate every 50 ms until the migration
// completes, fails or is cancelled, or ctx ends.
func (q *QMP) WaitMigration(ctx context.Context) (MigrationInfo, error) {
	for {
		mi, err := q.QueryMigrate(ctx)
		if err != nil {
			return mi, err
		}
		switch mi.Status {
		case "completed":
			return mi, nil
		case "failed", "cancelled":
			return mi, fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return mi, fmt.Errorf("migration still %s: %w", mi.Status, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Status is query-status: QEMU's run state ("running", "inmigrate",
// "postmigrate", "paused", ...).
func (q *QMP) Status(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := q.Execute(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	if st.Status == "" {
		return "", errors.New("QMP query-status: no status")
	}
	return st.Status, nil
}
