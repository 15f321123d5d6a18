// Package harness is the host side of vmnet's end-to-end runs, shared by
// the integration tests and the demo (cmd in integration/demo): it runs
// vmnet-helper as a child process and reads its counters (as JSON from the
// /stats of its --metrics, or as the text SIGUSR1 prints) and its
// /metrics, runs iperf3
// servers and other commands in a network namespace, builds QEMU's
// vhost-user options, speaks QEMU's machine protocol (QMP: a live
// migration's migrate-incoming, migrate and query-migrate), and parses
// what the helper, ping, iperf3, ethtool and DPDK's testpmd print.
//
// It owns the processes it starts and nothing else: the caller creates and
// deletes network namespaces (NewNetNS returns the function that deletes
// one), and boots guests with integration/guest. It never calls
// testing.T, so a plain program can use it; the tests wrap it.
package harness
