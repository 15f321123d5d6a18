// Package metrics exports vmnet's counters to Prometheus for vmnet-helper
// (a Go VMM embedding vmnet builds its own collector from the same tables:
// docs/operations.md): a Collector of the devices
// (backend.Device), vhost-user servers (vhostuser.Server) and handed-out
// TAPs a process adds to it, the same counters as JSON (Snapshot, served
// on /stats), and an http.Handler serving both.
//
// Every metric is derived from the tables where its counters are declared
// (engine.Counter, backend.CtrlCounter, tap.LinkCounter, the vhost-user
// server's and its limits'), by the Prometheus conventions: the vmnet_
// namespace, _total on counters, tx for the guest's frames to the TAP as
// the counters say. Label values come from bounded sets: TAP names, queue
// pair numbers, request and limit names from their enums, feature and
// offload names from their fixed lists.
//
// It stays out of the data path: a scrape reads the counters' atomics and
// asks the kernel for each TAP's link over netlink, so a queue pair does
// no more work per packet for being exported. It owns no listener and no
// goroutine: the caller serves Handler where it likes (vmnet-helper's
// --metrics). What the caller adds it never closes; a device or TAP must
// be removed from the Collector before it is closed.
package metrics
