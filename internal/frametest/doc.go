// Package frametest builds and reads the Ethernet frames vmnet's tests send
// and check: Ethernet with 802.1Q/802.1ad tags, IPv4 with options and
// fragments, IPv6 with extension headers, TCP with options, UDP, ICMP,
// ICMPv6 and ARP, with complete checksums or with the partial checksum a
// guest leaves for the device to finish (NEEDS_CSUM).
//
// It is written apart from the code it tests: its checksums are RFC 1071
// the slow way, a word at a time, so that offload's fast Checksum can be
// checked against them, and its parser shares nothing with offload's or
// the engine's. It imports only the standard library, so that any
// package's own tests can use it, offload's and virtio's included. It
// panics on a Spec that describes no frame: that is a bug in the test.
package frametest
