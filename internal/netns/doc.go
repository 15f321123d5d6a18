// Package netns makes and deletes the named network namespaces vmnet's
// tests and demo run in, through ip netns add and del, one process at a
// time across the machine (see Add for why).
//
// It owns the lock file /run/vmnet-netns.lock and the ip commands it runs,
// nothing else: what goes into a namespace is the caller's. It never calls
// testing.T, so a plain program (the demo) can use it;
// internal/testutil.NetNS wraps it for tests and
// integration/harness.NewNetNS for the demo and the end-to-end tests.
package netns
