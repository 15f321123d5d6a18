package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/hashicorp/go-hclog"

	"github.com/vmnet-dev/vmnet/backend/tap"
	"github.com/vmnet-dev/vmnet/ebpf"
	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

// netConf is the plugin's configuration as the runtime hands it over:
// the conflist's entry with "name", "cniVersion" and, when chained,
// "prevResult" injected. Pointers tell a field that was left out (a
// default applies) from one written with a zero value (refused).
type netConf struct {
	types.PluginConf

	Queues     *int   `json:"queues,omitempty"`
	MultiQueue *bool  `json:"multiQueue,omitempty"`
	VnetHdr    *int   `json:"vnetHdr,omitempty"`
	Owner      *int64 `json:"owner,omitempty"`
	Group      *int64 `json:"group,omitempty"`
	MTU        *int   `json:"mtu,omitempty"`
	MAC        string `json:"mac,omitempty"`
	Offloads   string `json:"offloads,omitempty"`
	Steering   string `json:"steering,omitempty"`
	Mode       string `json:"mode,omitempty"`
	TapName    string `json:"tapName,omitempty"`
	Bridge     string `json:"bridge,omitempty"`
	DataDir    string `json:"dataDir,omitempty"`
	LogLevel   string `json:"logLevel,omitempty"`
	// VMInterface adds the guest's interface to the result, as
	// tc-redirect-tap does for firecracker-go-sdk.
	VMInterface bool `json:"vmInterface,omitempty"`

	// OldValidAttachments is the GC list under the name CNI 1.1.0's spec
	// text first gave it; libcni sends both (containernetworking/cni#1101).
	OldValidAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
}

// The modes: how the TAP is joined to the interface the previous plugin
// made in the container's namespace.
const (
	// modeTCRedirect: a tc filter on each side's ingress redirects every
	// frame to the other's egress (tc-redirect-tap's wiring), no bridge.
	modeTCRedirect = "tc-redirect"
	// modeBridge: a bridge in the container's namespace with the TAP and
	// the previous interface as its ports (KubeVirt's managed TAP).
	modeBridge = "bridge"
	// modeNone: the TAP alone; standalone, or when something else wires it.
	modeNone = "none"
)

// defaultDataDir holds the plugin's record of its attachments (state.go).
const defaultDataDir = "/var/lib/cni/vmnet"

// config is a netConf checked and with every default resolved: what the
// commands act on. Values that depend on the container's namespace (the
// MTU and MAC of the previous interface) are resolved by ADD.
type config struct {
	netConf *netConf

	queues      int
	multiQueue  bool
	vnetHdr     int
	owner       int // 0: unset
	group       int // 0: unset
	mtu         int // 0: the previous interface's, else the kernel's
	mac         net.HardwareAddr
	offloads    string // "auto" or a TunFlags list, resolved at ADD (the kernel decides auto)
	offloadSet  offload.TunFlags
	steering    ebpf.Steering
	mode        string // "" until ADD knows whether it is chained
	tapName     string // "" derives it from CNI_IFNAME (tapNameFor)
	bridge      string // "" derives it from CNI_IFNAME (bridgeNameFor)
	dataDir     string
	logLevel    hclog.Level
	vmInterface bool
	ipam        string
	valid       []types.GCAttachment
	cniVersion  string
	networkName string
}

// knownFields are the top-level keys a configuration may carry: the
// spec's, the ones runtimes inject, and the plugin's own. Any other key is
// refused (a misspelt "queue" must not leave a VM on one queue), except
// namespaced keys ("cni.dev/...", "example.com.x"), which belong to
// runtimes and other tools.
var knownFields = map[string]bool{
	"cniVersion": true, "cniVersions": true, "name": true, "type": true, "capabilities": true,
	"ipam": true, "dns": true, "prevResult": true, "runtimeConfig": true, "args": true,
	"queues": true, "multiQueue": true, "vnetHdr": true, "owner": true, "group": true,
	"mtu": true, "mac": true, "offloads": true, "steering": true, "mode": true,
	"tapName": true, "bridge": true, "dataDir": true, "logLevel": true, "vmInterface": true,
}

// configError is a configuration the plugin refuses, before it changes
// anything: CNI error 7 with the field named first.
func configError(field, format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, field+": "+fmt.Sprintf(format, args...), "")
}

// parseConfig decodes and checks the configuration on stdin. Every error
// is a *types.Error whose code says what kind of mistake it is: 6 for
// JSON that does not parse, 2 for an unknown field, 7 for a bad value,
// each naming the field.
func parseConfig(data []byte) (*config, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode network configuration: "+err.Error(), "")
	}
	var unknown []string
	for k := range keys {
		if !knownFields[k] && !strings.ContainsAny(k, "/.") {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, types.NewError(types.ErrUnsupportedField,
			fmt.Sprintf("unknown field %q (value %s): not a vmnet setting", unknown[0], keys[unknown[0]]), "")
	}
	n := &netConf{}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(n); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, configError(te.Field, "want a JSON %s, got %s", jsonKind(te.Type.Kind().String()), te.Value)
		}
		return nil, types.NewError(types.ErrDecodingFailure, "decode network configuration: "+err.Error(), "")
	}
	c := &config{
		netConf:     n,
		queues:      1,
		vnetHdr:     virtio.HdrLenV1,
		dataDir:     defaultDataDir,
		logLevel:    hclog.Warn,
		ipam:        n.IPAM.Type,
		cniVersion:  n.CNIVersion,
		networkName: n.Name,
		offloads:    "none",
		vmInterface: n.VMInterface,
	}
	c.valid = append(append(c.valid, n.ValidAttachments...), n.OldValidAttachments...)

	if n.Queues != nil {
		if *n.Queues < 1 || *n.Queues > tap.MaxQueues {
			return nil, configError("queues", "%d: want 1 to %d", *n.Queues, tap.MaxQueues)
		}
		c.queues = *n.Queues
	}
	c.multiQueue = c.queues > 1
	if n.MultiQueue != nil {
		if !*n.MultiQueue && c.queues > 1 {
			return nil, configError("multiQueue", "false with queues %d: only a multi-queue TAP has more than one queue", c.queues)
		}
		c.multiQueue = *n.MultiQueue
	}
	if n.VnetHdr != nil {
		if err := virtio.CheckHdrLen(*n.VnetHdr); err != nil {
			return nil, configError("vnetHdr", "%d: want %d, %d or %d", *n.VnetHdr, virtio.HdrLenLegacy, virtio.HdrLenV1, virtio.HdrLenHash)
		}
		c.vnetHdr = *n.VnetHdr
	}
	var err error
	if c.owner, err = checkID("owner", n.Owner); err != nil {
		return nil, err
	}
	if c.group, err = checkID("group", n.Group); err != nil {
		return nil, err
	}
	if n.MTU != nil {
		if tap.CheckMTU(*n.MTU) != nil {
			return nil, configError("mtu", "%d: want %d to %d", *n.MTU, tap.MinMTU, tap.MaxMTU)
		}
		c.mtu = *n.MTU
	}
	if n.MAC != "" {
		mac, err := net.ParseMAC(n.MAC)
		if err == nil {
			err = virtio.CheckUnicastMAC(mac)
		}
		if err != nil {
			return nil, configError("mac", "%q: want a unicast Ethernet address such as 02:00:00:12:34:56", n.MAC)
		}
		c.mac = mac
	}
	switch n.Offloads {
	case "", "none":
	case "auto":
		c.offloads = "auto"
	default:
		o, err := offload.ParseTunFlags(n.Offloads)
		if err != nil {
			return nil, configError("offloads", "%q: want auto, none or a list such as csum,tso4,tso6: %v", n.Offloads, err)
		}
		if !o.Valid() {
			return nil, configError("offloads", "%q: every offload needs csum, uso4 and uso6 go together, tso_ecn needs tso4 or tso6", n.Offloads)
		}
		c.offloads, c.offloadSet = o.String(), o
	}
	st := ebpf.SteeringAuto
	if n.Steering != "" {
		if st, err = ebpf.ParseSteering(n.Steering); err != nil {
			return nil, configError("steering", "%q: want auto, kernel, hash or queue:N", n.Steering)
		}
	}
	if st == ebpf.SteeringHash && !c.multiQueue {
		return nil, configError("steering", "hash spreads flows over the queues of a multi-queue TAP; this one has a single queue")
	}
	c.steering = st
	switch n.Mode {
	case "", modeTCRedirect, modeBridge, modeNone:
		c.mode = n.Mode
	default:
		return nil, configError("mode", "%q: want %s, %s or %s", n.Mode, modeTCRedirect, modeBridge, modeNone)
	}
	if n.TapName != "" {
		if err := tap.ValidateName(n.TapName, true); err != nil {
			return nil, configError("tapName", "%v", err)
		}
		c.tapName = n.TapName
	}
	if n.Bridge != "" {
		if c.mode != modeBridge {
			return nil, configError("bridge", "names the bridge of mode %q; mode is %q", modeBridge, n.Mode)
		}
		if err := tap.ValidateName(n.Bridge, false); err != nil {
			return nil, configError("bridge", "%v", err)
		}
		c.bridge = n.Bridge
	}
	if n.DataDir != "" {
		if !filepath.IsAbs(n.DataDir) {
			return nil, configError("dataDir", "%q: want an absolute path", n.DataDir)
		}
		c.dataDir = filepath.Clean(n.DataDir)
	}
	if n.LogLevel != "" {
		if c.logLevel = hclog.LevelFromString(n.LogLevel); c.logLevel == hclog.NoLevel {
			return nil, configError("logLevel", "%q: want trace, debug, info, warn or error", n.LogLevel)
		}
	}
	if c.ipam != "" && c.mode != "" && c.mode != modeNone {
		return nil, configError("ipam", "a standalone vmnet hands the IPAM plugin's addresses to the guest; mode %q connects to a previous plugin's interface, which has its own", c.mode)
	}
	if err := version.ParsePrevResult(&n.PluginConf); err != nil {
		return nil, configError("prevResult", "%v", err)
	}
	return c, nil
}

// checkID reads an owner or group: a uid or gid the kernel can store
// (uid_t, with (uid_t)-1 meaning none), 0 and absent for unset.
func checkID(field string, v *int64) (int, error) {
	if v == nil {
		return 0, nil
	}
	if *v < 0 || *v >= 1<<32-1 {
		return 0, configError(field, "%d: want an id from 0 to %d", *v, uint32(1<<32-2))
	}
	return int(*v), nil
}

// jsonKind names a Go kind as JSON calls it, for type errors.
func jsonKind(kind string) string {
	switch {
	case strings.HasPrefix(kind, "int"), strings.HasPrefix(kind, "uint"), strings.HasPrefix(kind, "float"):
		return "number"
	case kind == "bool":
		return "boolean"
	case kind == "slice", kind == "array":
		return "array"
	case kind == "map", kind == "struct":
		return "object"
	}
	return kind
}

// tapNameFor is the TAP's name when tapName is not set, from the
// interface name the runtime gave (CNI_IFNAME): KubeVirt's names for
// a network binding with domainAttachmentType tap, which virt-launcher
// then opens (pkg/network/link GenerateTapDeviceName: "tap0" for the
// primary network's eth0, "tap<hash>" for a secondary network's
// "pod<hash>"). So a leading "eth" or "pod" becomes "tap"; any other name
// gets "tap" in front; the result is cut to 15 bytes (IFNAMSIZ).
func tapNameFor(ifName string) string {
	var name string
	switch {
	case strings.HasPrefix(ifName, "eth"), strings.HasPrefix(ifName, "pod"):
		name = "tap" + ifName[3:]
	default:
		name = "tap" + ifName
	}
	return truncName(name)
}

// bridgeNameFor is the in-namespace bridge's name when bridge is not set:
// "br-" and the interface name without KubeVirt's "pod" prefix, cut to 15
// bytes. (KubeVirt's own bridge binding uses "k6t-"; this one differs so
// both can be tried side by side.)
func bridgeNameFor(ifName string) string {
	return truncName("br-" + strings.TrimPrefix(ifName, "pod"))
}

func truncName(s string) string {
	if len(s) > 15 {
		return s[:15]
	}
	return s
}

// The CNI_ARGS keys tc-redirect-tap reads, taken here too so that vmnet
// drops into its chains unchanged (firecracker-containerd and the
// Firecracker guides pass them): the TAP's name, owner and group, over
// the configuration's. Other keys are the runtime's or other plugins'.
const (
	argTapName = "TC_REDIRECT_TAP_NAME"
	argTapUID  = "TC_REDIRECT_TAP_UID"
	argTapGID  = "TC_REDIRECT_TAP_GID"
)

// applyArgs applies CNI_ARGS ("K=V;K=V"); a bad value is CNI error 4
// naming the variable and key.
func (c *config) applyArgs(cniArgs string) error {
	if cniArgs == "" {
		return nil
	}
	bad := func(format string, args ...any) error {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS "+fmt.Sprintf(format, args...), "")
	}
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return bad("%q: want KEY=VALUE pairs separated by ';'", kv)
		}
		switch k {
		case argTapName:
			if err := tap.ValidateName(v, true); err != nil {
				return bad("%s: %v", k, err)
			}
			c.tapName = v
		case argTapUID, argTapGID:
			n, err := strconv.ParseInt(v, 10, 64)
			if err == nil {
				_, err = checkID(k, &n)
			}
			if err != nil {
				return bad("%s=%q: want an id from 0 to %d", k, v, uint32(1<<32-2))
			}
			if k == argTapUID {
				c.owner = int(n)
			} else {
				c.group = int(n)
			}
		}
	}
	return nil
}
