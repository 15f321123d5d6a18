package tap

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmnet-dev/vmnet/offload"
	"github.com/vmnet-dev/vmnet/virtio"
)

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatalf("zero Options: %v", err)
	}
	if o.Name != DefaultName || o.Queues != 1 || o.VnetHdrSize != virtio.HdrLenV1 || o.Logger == nil {
		t.Errorf("defaults: got name %q queues %d vnet %d logger %v, want %q 1 12 non-nil", o.Name, o.Queues, o.VnetHdrSize, o.Logger, DefaultName)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   Options
		option string // "" when valid
	}{
		{"template", Options{Name: "vm%d"}, ""},
		{"literal", Options{Name: "tap-guest0"}, ""},
		{"fifteen bytes", Options{Name: "abcdefghijklmno"}, ""},
		{"sixteen bytes", Options{Name: "abcdefghijklmnop"}, "interface name"},
		{"slash", Options{Name: "a/b"}, "interface name"},
		{"colon", Options{Name: "a:b"}, "interface name"},
		{"space", Options{Name: "a b"}, "interface name"},
		{"tab", Options{Name: "a\tb"}, "interface name"},
		{"dot", Options{Name: "."}, "interface name"},
		{"dotdot", Options{Name: ".."}, "interface name"},
		{"two templates", Options{Name: "a%d%d"}, "interface name"},
		{"bad verb", Options{Name: "a%s"}, "interface name"},
		{"one queue", Options{Queues: 1}, ""},
		{"max queues", Options{Queues: MaxQueues}, ""},
		{"too many queues", Options{Queues: MaxQueues + 1}, "queues"},
		{"negative queues", Options{Queues: -1}, "queues"},
		{"legacy header", Options{VnetHdrSize: 10}, ""},
		{"hash header", Options{VnetHdrSize: 20}, ""},
		{"odd header", Options{VnetHdrSize: 11}, "vnet header size"},
		{"negative owner", Options{Owner: -2}, "owner"},
		{"negative group", Options{Group: -2}, "group"},
		{"tso without csum", Options{Offloads: offload.TunTSO4}, "offloads"},
		{"uso4 alone", Options{Offloads: offload.TunCsum | offload.TunUSO4}, "offloads"},
		{"ecn without tso", Options{Offloads: offload.TunCsum | offload.TunTSOECN}, "offloads"},
		{"all offloads", Options{Offloads: offload.TunCsum | offload.TunTSO4 | offload.TunTSO6 | offload.TunTSOECN | offload.TunUFO | offload.TunUSO4 | offload.TunUSO6}, ""},
		{"negative sndbuf", Options{SndBuf: -1}, "sndbuf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.opts.withDefaults()
			if tc.option == "" {
				if err != nil {
					t.Fatalf("got error %v, want none", err)
				}
				return
			}
			var oe *OptionError
			if !errors.As(err, &oe) {
				t.Fatalf("got %v, want *OptionError for %s", err, tc.option)
			}
			if oe.Option != tc.option {
				t.Errorf("got option %q, want %q (error %v)", oe.Option, tc.option, err)
			}
		})
	}
}

func TestValidateNameLiteral(t *testing.T) {
	if err := ValidateName("vmnet%d", false); err == nil {
		t.Error("a template where a literal name is needed: got nil error")
	}
	if err := ValidateName("vmnet0", false); err != nil {
		t.Errorf("vmnet0: got %v, want nil", err)
	}
}

func TestIffFlags(t *testing.T) {
	base := uint16(iffTAP | iffMultiQueue | iffNoPI | iffVnetHdr)
	for _, tc := range []struct {
		features uint32
		noNAPI   bool
		want     uint16
	}{
		{iffTAP | iffMultiQueue | iffNoPI | iffVnetHdr, false, base},
		{iffTAP | iffMultiQueue | iffNoPI | iffVnetHdr | iffNAPI, false, base | iffNAPI},
		{iffTAP | iffMultiQueue | iffNoPI | iffVnetHdr | iffNAPI, true, base},
	} {
		if got := iffFlags(tc.features, tc.noNAPI); got != tc.want {
			t.Errorf("iffFlags(%#x, %v): got %#x, want %#x", tc.features, tc.noNAPI, got, tc.want)
		}
	}
}

func TestCheckFeatures(t *testing.T) {
	all := uint32(iffTAP | iffMultiQueue | iffNoPI | iffVnetHdr)
	if err := checkFeatures(all); err != nil {
		t.Fatalf("all required features: got %v", err)
	}
	err := checkFeatures(all &^ (iffMultiQueue | iffVnetHdr))
	if !errors.Is(err, ErrNotSupported) {
		t.Fatalf("got %v, want ErrNotSupported", err)
	}
	for _, want := range []string{"IFF_MULTI_QUEUE", "IFF_VNET_HDR"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "IFF_TAP") {
		t.Errorf("error %q names IFF_TAP, which is present", err)
	}
}

func TestOpErrorMessage(t *testing.T) {
	err := &OpError{Device: "vmnet3", Queue: 2, Op: "TUNSETQUEUE", Err: errors.New("boom")}
	if got, want := err.Error(), "tap vmnet3 queue 2: TUNSETQUEUE: boom"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	err.Queue = -1
	if got, want := err.Error(), "tap vmnet3: TUNSETQUEUE: boom"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
