package virtio

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// Features is a set of virtio feature bits: bit N of the 64-bit word the
// device offers and the driver acknowledges is Features(1) << N.
type Features uint64

// Transport feature bits, virtio 1.2 §6 "Reserved Feature Bits".
const (
	FIndirectDesc     Features = 1 << 28
	FEventIdx         Features = 1 << 29
	FVersion1         Features = 1 << 32
	FAccessPlatform   Features = 1 << 33
	FRingPacked       Features = 1 << 34
	FInOrder          Features = 1 << 35
	FOrderPlatform    Features = 1 << 36
	FSRIOV            Features = 1 << 37
	FNotificationData Features = 1 << 38
	FNotifConfigData  Features = 1 << 39
	FRingReset        Features = 1 << 40
)

// Network device feature bits, virtio 1.2 §5.1.3; NotfCoal and the guest USO
// bits arrived in virtio 1.3 §5.1.3.
const (
	NetFCsum              Features = 1 << 0
	NetFGuestCsum         Features = 1 << 1
	NetFCtrlGuestOffloads Features = 1 << 2
	NetFMTU               Features = 1 << 3
	NetFMAC               Features = 1 << 5
	NetFGuestTSO4         Features = 1 << 7
	NetFGuestTSO6         Features = 1 << 8
	NetFGuestECN          Features = 1 << 9
	NetFGuestUFO          Features = 1 << 10
	NetFHostTSO4          Features = 1 << 11
	NetFHostTSO6          Features = 1 << 12
	NetFHostECN           Features = 1 << 13
	NetFHostUFO           Features = 1 << 14
	NetFMrgRxbuf          Features = 1 << 15
	NetFStatus            Features = 1 << 16
	NetFCtrlVQ            Features = 1 << 17
	NetFCtrlRx            Features = 1 << 18
	NetFCtrlVLAN          Features = 1 << 19
	NetFCtrlRxExtra       Features = 1 << 20
	NetFGuestAnnounce     Features = 1 << 21
	NetFMQ                Features = 1 << 22
	NetFCtrlMACAddr       Features = 1 << 23
	NetFNotfCoal          Features = 1 << 53
	NetFGuestUSO4         Features = 1 << 54
	NetFGuestUSO6         Features = 1 << 55
	NetFHostUSO           Features = 1 << 56
	NetFHashReport        Features = 1 << 57
	NetFGuestHdrLen       Features = 1 << 59
	NetFRSS               Features = 1 << 60
	NetFRSCExt            Features = 1 << 61
	NetFStandby           Features = 1 << 62
	NetFSpeedDuplex       Features = 1 << 63
)

// featureNames are the spec names without their VIRTIO_ (net) or VIRTIO_F_
// (transport) prefix.
var featureNames = [64]string{
	0:  "NET_F_CSUM",
	1:  "NET_F_GUEST_CSUM",
	2:  "NET_F_CTRL_GUEST_OFFLOADS",
	3:  "NET_F_MTU",
	5:  "NET_F_MAC",
	7:  "NET_F_GUEST_TSO4",
	8:  "NET_F_GUEST_TSO6",
	9:  "NET_F_GUEST_ECN",
	10: "NET_F_GUEST_UFO",
	11: "NET_F_HOST_TSO4",
	12: "NET_F_HOST_TSO6",
	13: "NET_F_HOST_ECN",
	14: "NET_F_HOST_UFO",
	15: "NET_F_MRG_RXBUF",
	16: "NET_F_STATUS",
	17: "NET_F_CTRL_VQ",
	18: "NET_F_CTRL_RX",
	19: "NET_F_CTRL_VLAN",
	20: "NET_F_CTRL_RX_EXTRA",
	21: "NET_F_GUEST_ANNOUNCE",
	22: "NET_F_MQ",
	23: "NET_F_CTRL_MAC_ADDR",
	28: "INDIRECT_DESC",
	29: "EVENT_IDX",
	32: "VERSION_1",
	33: "ACCESS_PLATFORM",
	34: "RING_PACKED",
	35: "IN_ORDER",
	36: "ORDER_PLATFORM",
	37: "SR_IOV",
	38: "NOTIFICATION_DATA",
	39: "NOTIF_CONFIG_DATA",
	40: "RING_RESET",
	53: "NET_F_NOTF_COAL",
	54: "NET_F_GUEST_USO4",
	55: "NET_F_GUEST_USO6",
	56: "NET_F_HOST_USO",
	57: "NET_F_HASH_REPORT",
	59: "NET_F_GUEST_HDRLEN",
	60: "NET_F_RSS",
	61: "NET_F_RSC_EXT",
	62: "NET_F_STANDBY",
	63: "NET_F_SPEED_DUPLEX",
}

// Has reports whether every bit of x is set in f.
func (f Features) Has(x Features) bool { return f&x == x }

// String lists the set bits in ascending order, joined by "|", each by its
// spec name or as "bit(N)" when the spec defines no such bit here.
func (f Features) String() string { return f.join("|") }

func (f Features) join(sep string) string {
	if f == 0 {
		return "0"
	}
	var sb strings.Builder
	for f != 0 {
		n := bits.TrailingZeros64(uint64(f))
		f &^= 1 << n
		if sb.Len() > 0 {
			sb.WriteString(sep)
		}
		if name := featureNames[n]; name != "" {
			sb.WriteString(name)
		} else {
			sb.WriteString("bit(")
			sb.WriteString(strconv.Itoa(n))
			sb.WriteByte(')')
		}
	}
	return sb.String()
}

// DependencyError reports a feature acknowledged without any of the features
// it requires.
type DependencyError struct {
	Feature  Features // the single offending bit
	Requires Features // at least one of these must be set as well
}

func (e *DependencyError) Error() string {
	return fmt.Sprintf("feature %s requires %s", e.Feature, e.Requires.join(" or "))
}

// NotOfferedError reports feature bits a driver acknowledged that the device
// never offered.
type NotOfferedError struct {
	Bits Features
}

func (e *NotOfferedError) Error() string {
	return fmt.Sprintf("features %s acknowledged but not offered", e.Bits)
}

type dependency struct {
	feature  Features
	requires Features // any one of them
}

// netDependencies is virtio 1.2 §5.1.3.1 "Feature bit requirements" in spec
// order, with the virtio 1.3 additions (GUEST_USO4/6, NOTF_COAL) and two
// rules the spec words as SHOULD NOT in virtio 1.3 §5.1.4.2 and Linux
// virtnet_validate_features enforces: HASH_REPORT and CTRL_RX_EXTRA without
// CTRL_VQ. Without the control queue neither can ever be switched on.
var netDependencies = []dependency{
	{NetFGuestTSO4, NetFGuestCsum},
	{NetFGuestTSO6, NetFGuestCsum},
	{NetFGuestECN, NetFGuestTSO4 | NetFGuestTSO6},
	{NetFGuestUFO, NetFGuestCsum},
	{NetFGuestUSO4, NetFGuestCsum},
	{NetFGuestUSO6, NetFGuestCsum},
	{NetFHostTSO4, NetFCsum},
	{NetFHostTSO6, NetFCsum},
	{NetFHostECN, NetFHostTSO4 | NetFHostTSO6},
	{NetFHostUFO, NetFCsum},
	{NetFHostUSO, NetFCsum},
	{NetFCtrlRx, NetFCtrlVQ},
	{NetFCtrlVLAN, NetFCtrlVQ},
	{NetFGuestAnnounce, NetFCtrlVQ},
	{NetFMQ, NetFCtrlVQ},
	{NetFCtrlMACAddr, NetFCtrlVQ},
	{NetFNotfCoal, NetFCtrlVQ},
	{NetFRSCExt, NetFHostTSO4 | NetFHostTSO6},
	{NetFRSS, NetFCtrlVQ},
	{NetFHashReport, NetFCtrlVQ},
	{NetFCtrlRxExtra, NetFCtrlVQ},
}

// modernOnly are the bits above VERSION_1. The legacy interface carries
// feature bits 0:31 only (virtio 1.2 §4.1.4, "Legacy Interfaces: A Note on
// PCI Device Layout"), and what these bits describe (packed rings, the hash
// header, RSS) has no legacy layout, so a driver that did not acknowledge
// VERSION_1 cannot have them.
const modernOnly = ^Features(1<<33 - 1)

// ValidateNet checks a network device feature set against the dependency
// rules of virtio 1.2 §5.1.3.1 and returns a *DependencyError for the first
// rule it breaks, in spec order, then for the lowest bit above VERSION_1 set
// without VERSION_1.
func ValidateNet(f Features) error {
	if err := checkDependencies(f, ^Features(0)); err != nil {
		return err
	}
	if !f.Has(FVersion1) {
		if m := f & modernOnly; m != 0 {
			return &DependencyError{Feature: m & -m, Requires: FVersion1}
		}
	}
	return nil
}

// checkDependencies applies the rules of netDependencies whose feature is in
// scope.
func checkDependencies(f, scope Features) error {
	for _, d := range netDependencies {
		if d.feature&scope != 0 && f&d.feature != 0 && f&d.requires == 0 {
			return &DependencyError{Feature: d.feature, Requires: d.requires}
		}
	}
	return nil
}

// Negotiate checks the features a driver acknowledged against those the
// device offered: the driver "MUST NOT accept a feature which the device did
// not offer, and MUST NOT accept a feature which requires another feature
// which was not accepted" (virtio 1.2 §2.2.1). On error the device must not
// set FEATURES_OK (§2.2.2).
func Negotiate(offered, acked Features) (Features, error) {
	if extra := acked &^ offered; extra != 0 {
		return 0, &NotOfferedError{Bits: extra}
	}
	if err := ValidateNet(acked); err != nil {
		return 0, err
	}
	return acked, nil
}
