package tap

import (
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// MaxQueues is the most queue pairs a device can have: tun.c allows
// MAX_TAP_QUEUES (256) files per device, attached or detached, and the
// keep-alive file is one of them.
const MaxQueues = maxTapQueues - 1

// DefaultName is the name template used when Options.Name is empty.
const DefaultName = "vmnet%d"

// Options say how to create or open a TAP device. The zero value creates a
// non-persistent "vmnet%d" with one queue pair, a 12-byte vnet header, NAPI
// when the kernel offers it, no offloads, in the caller's network namespace.
type Options struct {
	// Name is the interface name, or a template with one "%d" that the
	// kernel fills in (dev_alloc_name). Empty means DefaultName. At most 15
	// bytes; no '/', ':' or white space.
	Name string

	// Queues is the number of queue pairs, one TAP fd each. 0 means 1; at
	// most MaxQueues.
	Queues int

	// VnetHdrSize is the virtio-net header size on every fd, one that
	// virtio.CheckHdrLen takes (10, 12 or 20). 0 means 12, the virtio 1.x
	// header.
	VnetHdrSize int

	// Persist keeps the device after its last fd is closed (TUNSETPERSIST).
	Persist bool

	// Owner and Group let that uid or gid attach queues without
	// CAP_NET_ADMIN (TUNSETOWNER, TUNSETGROUP). 0 leaves them unset: root
	// needs no grant.
	Owner, Group int

	// NoNAPI turns IFF_NAPI off even when the kernel offers it.
	NoNAPI bool

	// Offloads is the TUNSETOFFLOAD set applied at open. The zero value
	// asks the kernel for plain frames; the engine later applies what the
	// guest acked.
	Offloads offload.TunFlags

	// SndBuf is TUNSETSNDBUF in bytes. 0 keeps the kernel's default
	// (INT_MAX: never block a writer on socket memory).
	SndBuf int

	// NetNS names the network namespace the device lives in: a name under
	// /run/netns or an absolute path such as /proc/PID/ns/net. Empty means
	// the caller's namespace. The caller's threads never change namespace
	// for longer than one open.
	NetNS string

	// DeferQueues leaves the queue fds closed at Create and Open; the
	// caller opens them with OpenQueue. The zero value opens them all.
	DeferQueues bool

	// Logger receives the device's log lines. nil means no logging.
	Logger hclog.Logger
}

// withDefaults returns o with the zero values replaced by what they stand
// for, after validating it.
func (o Options) withDefaults() (Options, error) {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Queues == 0 {
		o.Queues = 1
	}
	if o.VnetHdrSize == 0 {
		o.VnetHdrSize = virtio.HdrLenV1
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if err := ValidateName(o.Name, true); err != nil {
		return o, err
	}
	if o.Queues < 1 || o.Queues > MaxQueues {
		return o, &OptionError{Option: "queues", Value: o.Queues, Reason: "want 1 to 255 (tun.c MAX_TAP_QUEUES is 256 files and the keep-alive fd is one)"}
	}
	if err := checkVnetHdrSize(o.VnetHdrSize); err != nil {
		return o, err
	}
	if o.Owner < 0 {
		return o, &OptionError{Option: "owner", Value: o.Owner, Reason: "want a uid >= 0"}
	}
	if o.Group < 0 {
		return o, &OptionError{Option: "group", Value: o.Group, Reason: "want a gid >= 0"}
	}
	if !o.Offloads.Valid() {
		return o, &OptionError{Option: "offloads", Value: o.Offloads, Reason: "every offload needs csum, uso4 and uso6 go together, tso_ecn needs tso4 or tso6"}
	}
	if o.SndBuf < 0 {
		return o, &OptionError{Option: "sndbuf", Value: o.SndBuf, Reason: "want a size > 0, or 0 for the kernel default"}
	}
	return o, nil
}

// checkVnetHdrSize refuses a vnet header size no guest negotiates
// (virtio.CheckHdrLen), as an *OptionError.
func checkVnetHdrSize(size int) error {
	if err := virtio.CheckHdrLen(size); err != nil {
		return &OptionError{Option: "vnet header size", Value: size, Reason: err.Error()}
	}
	return nil
}

// ValidateName checks an interface name the way the kernel's dev_valid_name
// does, so a bad name is refused before anything is created. With template
// set, the name may contain one "%d".
func ValidateName(name string, template bool) error {
	bad := func(reason string) error {
		return &OptionError{Option: "interface name", Value: quote(name), Reason: reason}
	}
	switch {
	case name == "":
		return bad("empty")
	case len(name) > 15:
		return bad("longer than 15 bytes (IFNAMSIZ)")
	case name == "." || name == "..":
		return bad("reserved")
	case strings.ContainsAny(name, "/:"):
		return bad("contains '/' or ':'")
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f {
			return bad("contains white space or a control character")
		}
	}
	if n := strings.Count(name, "%"); n > 0 {
		if !template {
			return bad("contains '%'")
		}
		if n != 1 || !strings.Contains(name, "%d") {
			return bad("a template takes exactly one %d")
		}
		// dev_alloc_name needs room for at least one digit.
		if len(name)-2+1 > 15 {
			return bad("template leaves no room for a number")
		}
	}
	return nil
}

// IsTemplate reports whether name asks the kernel to pick the number.
func IsTemplate(name string) bool { return strings.Contains(name, "%d") }

func quote(s string) string { return "\"" + s + "\"" }

// iffFlags computes the TUNSETIFF flags for a device with these options on
// a kernel that reported features.
func iffFlags(features uint32, noNAPI bool) uint16 {
	flags := uint32(iffTAP | iffMultiQueue | iffNoPI | iffVnetHdr)
	if !noNAPI && features&iffNAPI != 0 {
		flags |= iffNAPI
	}
	return uint16(flags)
}

// requiredFeatures are the TUNGETFEATURES bits vmnet cannot work without.
var requiredFeatures = []struct {
	bit  uint32
	name string
}{
	{iffTAP, "IFF_TAP"},
	{iffMultiQueue, "IFF_MULTI_QUEUE"},
	{iffNoPI, "IFF_NO_PI"},
	{iffVnetHdr, "IFF_VNET_HDR"},
}

// checkFeatures returns a MissingFeaturesError naming every required flag
// the kernel did not report.
func checkFeatures(have uint32) error {
	var missing []string
	for _, f := range requiredFeatures {
		if have&f.bit == 0 {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return &MissingFeaturesError{Have: have, Missing: missing}
	}
	return nil
}
