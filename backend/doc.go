// Package backend is vmnet's virtio-net device over a multi-queue TAP:
// what a Go VMM embeds, and what vmnet-helper serves over vhost-user. A
// Device offers features from what the TAP's kernel supports, applies the
// ones the driver acked (the vnet header size, TUNSETOFFLOAD), builds the
// driver's virtqueues, and runs one engine.QueuePair per queue pair on
// its own TAP queue file.
//
// An embedding VMM follows the driver (virtio 1.2 §3.1):
//
//	dev, err := backend.New(backend.Options{TAP: t, ControlQueue: true}) // the PCI function is made
//	offer := dev.Features()                                             // device_features
//	err = dev.SetFeatures(acked)                                        // FEATURES_OK
//	err = dev.Activate(mem, queues)                                     // DRIVER_OK
//	states := dev.Reset()                                               // device_status = 0
//	dev.Close()                                                         // the function goes away
//
// Activate takes guest memory and every queue's size, areas and eventfds,
// and decides from the acked features alone what the driver laid out:
// split or packed rings, the event index, how many pairs, where the
// control queue is. With Options.ControlQueue the device serves the
// control queue too (VQ_PAIRS_SET, GUEST_OFFLOADS_SET, MAC, RX mode,
// ANNOUNCE, and RSS_CONFIG and HASH_CONFIG: the guest's RSS steers the TAP
// through vmnet's RSS program, received frames report their hash); the
// config space's link status follows the TAP's
// administrative state, watched over netlink until Close; the TAP's
// steering program is set by New (Options.Steering, SetSteering).
// VhostUser adapts the same device to a vhost-user server, whose
// front-end starts rings one at a time and serves the control queue
// itself. For live migration (migrate.go) the device marks every page it
// writes in a dirty log the VMM gives it (StartDirtyLog; over vhost-user
// the front-end's log, ring by ring), and CtrlState and RestoreCtrlState
// carry what the driver set through the control queue across Reset and
// Activate with QueueConfig.Resume. docs/embedding.md has the whole
// picture and Example a runnable embedding.
//
// Ownership: the TAP is the caller's, and outlives the Device; the caller
// keeps the eventfd files it passes (QueueConfig.Kick and Call,
// Options.ConfigInterrupt): the device works on duplicates, which it
// closes when the queue stops or the device closes. The device owns its
// queue pairs, its control queue goroutine, its netlink watch and, where
// it offers RSS, the RSS and flow-hash programs it switches the TAP
// between. Guest
// memory must stay mapped from Activate until Reset or Close returns.
//
// It never exits the process, logs per packet or touches memory outside
// the regions it was given.
package backend
