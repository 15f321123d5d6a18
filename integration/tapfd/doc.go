// Package tapfd holds the end-to-end tests of vmnet-helper's modes that
// hand TAP descriptors to a hypervisor instead of running vmnet's own
// data path: QEMU 7.2 (TCG) running vmnet-helper as its bridge helper
// (-netdev tap,helper= and -netdev bridge,helper=), and QEMU launched by
// `vmnet-helper exec` with a multi-queue TAP's descriptors (-netdev
// tap,fds=). The tests build vmnet-helper as `make build` does and boot
// real guests with integration/guest; it holds no code of its own.
package tapfd
