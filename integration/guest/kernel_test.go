package guest

import (
	"os"
	"testing"
)

func TestModuleName(t *testing.T) {
	cases := []struct{ path, want string }{
		{"kernel/drivers/net/virtio_net.ko", "virtio_net"},
		{"kernel/drivers/char/hw_random/virtio-rng.ko.xz", "virtio_rng"},
		{"kernel/net/core/failover.ko.zst", "failover"},
		{"kernel/net/packet/af_packet.ko.gz", "af_packet"},
		{"modules.builtin", ""},
		{"kernel/drivers/net/virtio_net.o", ""},
	}
	for _, tc := range cases {
		if got := moduleName(tc.path); got != tc.want {
			t.Errorf("moduleName(%q): got %q, want %q", tc.path, got, tc.want)
		}
	}
}

func TestSanitize(t *testing.T) {
	if got, want := sanitize("linux-image-6.1.0-56-amd64_1:6.1.192-2+b1"), "linux-image-6.1.0-56-amd64_1_6.1.192-2+b1"; got != want {
		t.Errorf("sanitize: got %q, want %q", got, want)
	}
}

func TestExtractVmlinuxRejectsNonBzImage(t *testing.T) {
	p := t.TempDir() + "/vmlinuz"
	if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := extractVmlinux(t.Context(), p); err == nil {
		t.Errorf("extractVmlinux of zeros: got no error")
	}
}
