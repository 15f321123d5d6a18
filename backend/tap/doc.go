// Package tap owns vmnet's side of the kernel's TUN/TAP driver: multi-queue
// TAP devices, their queue files, what the running kernel's driver supports,
// and the link around a device (MAC, MTU, bridge, namespace, link state).
//
// A Device follows the TAP lifecycle of DPDK's rtap driver: TUNGETFEATURES
// first; IFF_TAP|IFF_MULTI_QUEUE|IFF_NO_PI|IFF_VNET_HDR, plus IFF_NAPI when
// the kernel offers it; a keep-alive file that holds the device and is
// detached from traffic; one file per queue pair, each non-blocking and
// close-on-exec; optional persistence; a kernel-assigned name and MAC.
//
// The TAP's limits are declared here once, for every other package to
// check against (CheckMTU, MaxQueues); its vnet header sizes are the
// guest's, virtio's (virtio.CheckHdrLen).
//
// What it owns: every file it opens (closed by Device.Close), and the
// network namespace handle of the device. What it never does: touch guest
// memory or know about virtqueues (package backend and its engine do),
// exit the process, log through a global logger, or change the namespace of
// a thread for longer than one open.
package tap
