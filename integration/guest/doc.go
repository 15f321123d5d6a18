// Package guest boots real Linux guests under QEMU for vmnet's end-to-end
// tests, so that a test can put a virtio-net NIC on any back-end (QEMU's
// own TAP, a vmnet vhost-user socket, TAP fds handed over by vmnet) and
// drive the guest side from Go.
//
// What it owns:
//
//   - The guest image. BuildImage takes the kernel that Debian's
//     linux-image-amd64 currently depends on (apt-get download, dpkg -x),
//     unpacks its ELF kernel for a direct PVH boot, picks the virtio-net
//     driver stack from its modules in dependency order (read from each
//     module's .modinfo, skipping what modules.builtin says is built in),
//     and writes a gzip'd newc initramfs with static busybox, iperf3 and
//     ethtool (with the libraries ldd names) and an /init that configures
//     interfaces from the kernel command line (vmnet.ip, vmnet.mtu,
//     vmnet.gw). Images are cached by kernel package version and a hash of
//     the init script, modules and tool binaries; concurrent builders
//     rename finished images into place, so the first one wins.
//   - The QEMU process. Start runs qemu-system-x86_64 with -accel tcg on
//     q35 (no KVM is assumed), optionally in a named network namespace and
//     with guest RAM on a shared memfd for vhost-user; Stop kills it and
//     reaps it. Everything about NICs comes from Config.Args. Config.QMP
//     adds a QMP socket, Config.Incoming makes the QEMU a live migration's
//     destination, and Adopt hands it the source's console once the guest
//     has moved.
//   - The console protocol. /init serves one command at a time on the
//     serial console: the script goes in base64 on one line, its output
//     comes back in base64 between markers with the exit status and length
//     (see console.go and init.sh), so kernel messages and tty settings
//     cannot corrupt it. Run returns the output and status; the console,
//     QEMU's messages and a readable transcript of every Run go to the log.
//   - Test policy. Require and Skip skip loudly when QEMU or the image
//     cannot be had, and fail instead when CI=true: in CI a skipped guest
//     test must not count as a pass.
//
// What it never does: it installs no packages (.ci/install-deps does), it
// creates no network namespaces, TAP devices or vhost-user back-ends (the
// tests do), and it never uses KVM.
package guest
