// Package fdpass hands TAP queue files from a privileged process to the one
// that runs a guest, over a unix socket with SCM_RIGHTS.
//
// It holds three things:
//
//   - The descriptor transport (scm.go): Send writes one message with files
//     attached, Recv reads one and the files that came with it, and PeerOf
//     reads who is on the other end (SO_PEERCRED, SO_PEERGROUPS). The
//     qemu-bridge-helper protocol (one byte, one fd) is Send with a
//     one-byte payload.
//   - The serve-fds protocol (proto.go): one request line from the client
//     ("vmnet-fds/1 name=vm%d queues=2 bridge=br0"), one reply line from
//     the server ("ok name=vm0 queues=2 vnet-hdr=12" with the queue files
//     attached, or "error REASON" with none), on a SOCK_SEQPACKET socket so
//     each message arrives whole or not at all.
//   - Both ends of that protocol: Get is the client a hypervisor launcher
//     or a Go VMM calls; Serve and ServeConn run the server side around a
//     Handler that decides and creates (vmnet-helper serve-fds is one).
//
// Ownership: files returned by Recv and Get belong to the caller; files in
// a Grant belong to the server until ServeConn has sent them, and
// ServeConn closes them whether or not the send worked. Every path that
// fails closes every descriptor that arrived with the message, so a
// malformed message never leaks one.
//
// What it never does: create TAP devices, read an ACL, or decide who may
// have what (the Handler does); exit the process; log through a global
// logger.
package fdpass
