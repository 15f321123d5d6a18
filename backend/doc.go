// Package backend owns vmnet's side of the kernel: multi-queue TAP devices
// and their queue files, and (in later files) the queue-pair engine that
// moves frames between virtqueues and those files.
//
// A Device follows the TAP lifecycle of DPDK's rtap driver: TUNGETFEATURES
// first; IFF_TAP|IFF_MULTI_QUEUE|IFF_NO_PI|IFF_VNET_HDR, plus IFF_NAPI when
// the kernel offers it; a keep-alive file that holds the device and is
// detached from traffic; one file per queue pair, each non-blocking and
// close-on-exec; optional persistence; a kernel-assigned name and MAC.
//
// What it owns: every file it opens (closed by Device.Close), and the
// network namespace handle of the device. What it never does: exit the
// process, log through a global logger, or change the namespace of a
// thread for longer than one open.
package backend
