// Package cni holds the end-to-end tests of vmnet-cni, the CNI plugin in
// cmd/vmnet-cni, driven by the ecosystem's own tools: libcni
// (github.com/containernetworking/cni/libcni) runs the example conflists
// of docs/cni/ as they are written, with the reference plugins of Debian's
// containernetworking-plugins package (ptp, bridge, host-local in
// /usr/lib/cni) before vmnet in the chain, inside network namespaces the
// tests make (one standing in for the node, one per pod). Then a real
// guest: QEMU as an unprivileged uid opens the TAPs by name in the pod's
// namespace and carries ping and iperf3 through the chained interfaces.
// BenchmarkReferenceTap measures the same guest on the reference tap
// plugin (built from github.com/containernetworking/plugins) beside
// vmnet's two modes, for docs/kubernetes.md.
//
// The tests build vmnet-cni into a temporary CNI bin directory; the
// package has no code of its own.
package cni
