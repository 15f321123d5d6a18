package tap

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vmnet-dev/vmnet/offload"
)

// DriverFeatures is what the running kernel's TUN driver offers, probed once per
// process and cached.
type DriverFeatures struct {
	// Flags is the raw TUNGETFEATURES mask (IFF_* bits).
	Flags uint32

	// NAPI and NAPIFrags report IFF_NAPI and IFF_NAPI_FRAGS.
	NAPI, NAPIFrags bool

	// Offloads lists each TUN_F_* flag that TUNSETOFFLOAD accepted on a
	// probe device (together with csum, which every offload needs).
	Offloads offload.TunFlags

	// OffloadsProbed is false when no probe device could be created (no
	// CAP_NET_ADMIN); Offloads is then empty, not a verdict.
	OffloadsProbed bool
}

// Supports reports whether the kernel accepted every flag in o.
func (f DriverFeatures) Supports(o offload.TunFlags) bool { return f.Offloads&o == o }

// String is a one-line summary for logs and `vmnet-helper tap show`.
func (f DriverFeatures) String() string {
	var flags []string
	for _, n := range []struct {
		bit  uint32
		name string
	}{
		{iffTUN, "tun"}, {iffTAP, "tap"}, {iffNAPI, "napi"}, {iffNAPIFrags, "napi_frags"},
		{iffNoCarrier, "no_carrier"}, {iffNoPI, "no_pi"}, {iffVnetHdr, "vnet_hdr"},
		{iffMultiQueue, "multi_queue"}, {iffTUNExcl, "tun_excl"},
	} {
		if f.Flags&n.bit != 0 {
			flags = append(flags, n.name)
		}
	}
	off := f.Offloads.String()
	if !f.OffloadsProbed {
		off = "unknown"
	}
	return fmt.Sprintf("flags=%s (%#x) offloads=%s", strings.Join(flags, ","), f.Flags, off)
}

// offloadProbes are the TUNSETOFFLOAD sets tried, each with the flags the
// kernel requires beside it (tun.c set_offload).
var offloadProbes = []struct {
	want, with offload.TunFlags
}{
	{offload.TunCsum, 0},
	{offload.TunTSO4, offload.TunCsum},
	{offload.TunTSO6, offload.TunCsum},
	{offload.TunTSOECN, offload.TunCsum | offload.TunTSO4},
	{offload.TunUFO, offload.TunCsum},
	{offload.TunUSO4 | offload.TunUSO6, offload.TunCsum},
	{offload.TunUDPTunnelGSO, offload.TunCsum | offload.TunTSO4},
	{offload.TunUDPTunnelGSOCsum, offload.TunCsum | offload.TunTSO4 | offload.TunUDPTunnelGSO},
}

var probe struct {
	sync.Mutex
	done bool
	f    DriverFeatures
}

// Probe asks the kernel what its TUN driver supports: TUNGETFEATURES on
// /dev/net/tun, then each TUNSETOFFLOAD flag on a throw-away TAP device in
// the caller's network namespace. The first successful result is cached
// for the life of the process.
func Probe() (DriverFeatures, error) {
	probe.Lock()
	defer probe.Unlock()
	if probe.done {
		return probe.f, nil
	}
	f, err := probeKernel()
	if err != nil {
		return DriverFeatures{}, err
	}
	if f.OffloadsProbed {
		probe.done = true
		probe.f = f
	}
	return f, nil
}

func probeKernel() (DriverFeatures, error) {
	var f DriverFeatures
	fd, err := openTunFd()
	if err != nil {
		return f, &OpError{Device: tunDevice, Queue: -1, Op: "open", Err: err}
	}
	defer unix.Close(fd)
	if f.Flags, err = tunGetFeatures(fd); err != nil {
		return f, &OpError{Device: tunDevice, Queue: -1, Op: "TUNGETFEATURES", Err: err}
	}
	f.NAPI = f.Flags&iffNAPI != 0
	f.NAPIFrags = f.Flags&iffNAPIFrags != 0

	// Without IFF_MULTI_QUEUE the probe device is an ordinary one-queue TAP
	// that disappears with this fd.
	name, err := tunSetIff(fd, "vmnetprobe%d", iffTAP|iffNoPI|iffVnetHdr)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return f, nil
		}
		return f, &OpError{Device: "vmnetprobe%d", Queue: -1, Op: "TUNSETIFF", Err: err}
	}
	for _, p := range offloadProbes {
		if err := tunSetOffload(fd, p.want|p.with); err == nil {
			f.Offloads |= p.want
		} else if !errors.Is(err, unix.EINVAL) {
			return f, &OpError{Device: name, Queue: -1, Op: "TUNSETOFFLOAD", Err: err}
		}
	}
	f.OffloadsProbed = true
	return f, nil
}
