// Package offload is vmnet's checksum and segmentation offload logic: which
// offloads a guest may be offered and what the TAP must be told once it
// acked them, whether a transmit header the guest wrote keeps the
// negotiated rules, and the software fallbacks for frames the TAP cannot
// take as they are.
//
// It owns
//   - negotiation: the offload feature bits to offer for what TUNSETOFFLOAD
//     accepted (Offer), the user's --offloads list (ParseOfferList), and the
//     TUNSETOFFLOAD set for what the guest acked at FEATURES_OK or later
//     through VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET (TunFlagsFor, GuestOffloads);
//   - transmit header validation with one Reason per broken rule, usable as
//     a counter index (ValidateTX);
//   - which frames need a software fallback on a given TAP (TXCaps), and the
//     fallbacks themselves: the Internet checksum (Checksum), completing a
//     partial checksum (PartialCsum, CompleteCsum), and TCP, UDP (USO) and
//     IP fragmentation (UFO) segmentation into the caller's buffers
//     (Segment).
//
// It never opens, reads or writes a file descriptor, makes a system call,
// starts a goroutine, logs, or allocates on a path taken per frame. It
// never writes to a frame it was given: guest transmit buffers are
// device-readable, and "a device MUST NOT write to a device-readable
// buffer" (virtio 1.2 §2.7.4.1). Completed checksums and segments go to
// memory the caller owns. Headers and frames come from the guest and are
// not trusted: anything malformed is an error naming the numbers involved,
// never a panic or an access outside the slices given.
package offload
