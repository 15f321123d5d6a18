package guest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// kernelPackage is a Debian kernel image package resolved from apt's lists.
type kernelPackage struct {
	Name    string // linux-image-6.1.0-56-amd64
	Version string // 6.1.192-2
}

// resolveKernel asks apt which versioned image package the meta-package
// (linux-image-amd64, linux-image-cloud-amd64) currently depends on, and
// that package's candidate version. It needs apt's lists (apt-get update).
func resolveKernel(ctx context.Context, meta string) (kernelPackage, error) {
	out, err := command(ctx, "", "apt-cache", "depends", "--important", meta)
	if err != nil {
		return kernelPackage{}, fmt.Errorf("resolve %s: %w", meta, err)
	}
	var pkg kernelPackage
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			pkg.Name = f[1]
			break
		}
	}
	if pkg.Name == "" {
		return kernelPackage{}, fmt.Errorf("resolve %s: no linux-image dependency in apt-cache output %q", meta, out)
	}
	out, err = command(ctx, "", "apt-cache", "show", "--no-all-versions", pkg.Name)
	if err != nil {
		return kernelPackage{}, fmt.Errorf("resolve version of %s: %w", pkg.Name, err)
	}
	sc = bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Version: "); ok {
			pkg.Version = strings.TrimSpace(v)
			break
		}
	}
	if pkg.Version == "" {
		return kernelPackage{}, fmt.Errorf("resolve version of %s: no Version in apt-cache output", pkg.Name)
	}
	return pkg, nil
}

// aptLists is where apt keeps the package lists; apt-get update replaces
// files in it, which changes the directory's mtime.
const aptLists = "/var/lib/apt/lists"

// resolveKernelCached is resolveKernel, remembered in cacheDir until apt's
// lists change. apt-cache parses every list on each call when its binary
// cache is off, as in Debian's container images: seconds of CPU.
func resolveKernelCached(ctx context.Context, cacheDir, meta string) (kernelPackage, error) {
	type resolved struct {
		Lists   int64 `json:"lists_mtime_ns"`
		Name    string
		Version string
	}
	fi, err := os.Stat(aptLists)
	if err != nil {
		return resolveKernel(ctx, meta)
	}
	memo := filepath.Join(cacheDir, "resolved-"+sanitize(meta)+".json")
	if b, err := os.ReadFile(memo); err == nil {
		var r resolved
		if json.Unmarshal(b, &r) == nil && r.Lists == fi.ModTime().UnixNano() && r.Name != "" && r.Version != "" {
			return kernelPackage{Name: r.Name, Version: r.Version}, nil
		}
	}
	pkg, err := resolveKernel(ctx, meta)
	if err != nil {
		return pkg, err
	}
	b, err := json.Marshal(resolved{Lists: fi.ModTime().UnixNano(), Name: pkg.Name, Version: pkg.Version})
	if err != nil {
		return pkg, fmt.Errorf("encode resolved kernel: %w", err)
	}
	// Best effort: a memo that cannot be written costs time, not correctness.
	if err := os.MkdirAll(cacheDir, 0o755); err == nil {
		tmp := fmt.Sprintf("%s.%d.tmp", memo, os.Getpid())
		if os.WriteFile(tmp, b, 0o644) == nil {
			_ = os.Rename(tmp, memo)
		}
	}
	return pkg, nil
}

// extractKernel downloads pkg into dir and unpacks it there (dpkg -x).
// It returns the unpacked tree's root.
func extractKernel(ctx context.Context, pkg kernelPackage, dir string) (string, error) {
	// The download runs as whoever we are: apt's sandbox user may not be able
	// to write into dir.
	if _, err := command(ctx, dir, "apt-get", "download", "-q",
		"-o", "APT::Sandbox::User=root", pkg.Name+"="+pkg.Version); err != nil {
		return "", fmt.Errorf("download %s=%s: %w", pkg.Name, pkg.Version, err)
	}
	debs, err := filepath.Glob(filepath.Join(dir, pkg.Name+"_*.deb"))
	if err != nil || len(debs) != 1 {
		return "", fmt.Errorf("find downloaded %s in %s: got %d .deb files", pkg.Name, dir, len(debs))
	}
	root := filepath.Join(dir, "root")
	if _, err := command(ctx, "", "dpkg", "-x", debs[0], root); err != nil {
		return "", fmt.Errorf("unpack %s: %w", debs[0], err)
	}
	if err := os.Remove(debs[0]); err != nil {
		return "", fmt.Errorf("remove %s: %w", debs[0], err)
	}
	return root, nil
}

// kernelTree is an unpacked kernel package: the bzImage and its modules.
type kernelTree struct {
	Release   string            // uname -r, e.g. 6.1.0-56-amd64
	Vmlinuz   string            // path of the bzImage
	Builtin   map[string]bool   // modules built into the image, by module name
	ModuleDir string            // lib/modules/<release>
	Modules   map[string]string // module name -> path of its .ko[.xz|.zst|.gz]
}

func openKernelTree(root string) (*kernelTree, error) {
	vmlinuz, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil || len(vmlinuz) != 1 {
		return nil, fmt.Errorf("find vmlinuz in %s: got %d matches", root, len(vmlinuz))
	}
	t := &kernelTree{
		Release: strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-"),
		Vmlinuz: vmlinuz[0],
		Builtin: map[string]bool{},
		Modules: map[string]string{},
	}
	// Debian moved modules under /usr in later releases; accept both.
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		p := filepath.Join(root, d, t.Release)
		if _, err := os.Stat(p); err == nil {
			t.ModuleDir = p
			break
		}
	}
	if t.ModuleDir == "" {
		return nil, fmt.Errorf("find modules of %s under %s: not found", t.Release, root)
	}
	builtin, err := os.ReadFile(filepath.Join(t.ModuleDir, "modules.builtin"))
	if err != nil {
		return nil, fmt.Errorf("read modules.builtin of %s: %w", t.Release, err)
	}
	for _, l := range strings.Fields(string(builtin)) {
		t.Builtin[moduleName(l)] = true
	}
	err = filepath.WalkDir(filepath.Join(t.ModuleDir, "kernel"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && moduleName(p) != "" {
			t.Modules[moduleName(p)] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list modules of %s: %w", t.Release, err)
	}
	return t, nil
}

// moduleName turns a module path into the kernel's module name:
// "kernel/drivers/char/hw_random/virtio-rng.ko.xz" -> "virtio_rng".
// It returns "" for a path that is no module.
func moduleName(p string) string {
	b := filepath.Base(p)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if n, ok := strings.CutSuffix(b, ext); ok {
			return strings.ReplaceAll(n, "-", "_")
		}
	}
	return ""
}

// errBuiltin says a module is part of the kernel image and needs no loading.
var errBuiltin = errors.New("built into the kernel")

// readModule returns the uncompressed ELF object of module name.
func (t *kernelTree) readModule(ctx context.Context, name string) ([]byte, error) {
	p, ok := t.Modules[name]
	if !ok {
		if t.Builtin[name] {
			return nil, fmt.Errorf("read module %s: %w", name, errBuiltin)
		}
		return nil, fmt.Errorf("read module %s: not in %s", name, t.ModuleDir)
	}
	switch {
	case strings.HasSuffix(p, ".ko"):
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read module %s: %w", name, err)
		}
		return b, nil
	case strings.HasSuffix(p, ".ko.gz"):
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("read module %s: %w", name, err)
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress module %s: %w", name, err)
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			return nil, fmt.Errorf("decompress module %s: %w", name, err)
		}
		return b, nil
	case strings.HasSuffix(p, ".ko.xz"):
		return commandBytes(ctx, "xz", "-dc", p)
	default: // .ko.zst
		return commandBytes(ctx, "zstd", "-dcq", p)
	}
}

// moduleDepends reads the "depends=" entry of a module's .modinfo section,
// the list that depmod turns into modules.dep.
func moduleDepends(obj []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		return nil, fmt.Errorf("parse module ELF: %w", err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("parse module ELF: no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// loadableModule is a module to insmod in the guest, in load order.
type loadableModule struct {
	Name string
	Obj  []byte
}

// resolveModules returns wanted and everything they depend on, dependencies
// first, leaving out modules built into the image (listed in builtin).
func (t *kernelTree) resolveModules(ctx context.Context, wanted []string) (mods []loadableModule, builtin []string, err error) {
	state := map[string]int{} // 1: visiting, 2: done
	var visit func(name string, from string) error
	visit = func(name, from string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("resolve module %s: dependency cycle through %s", name, from)
		case 2:
			return nil
		}
		state[name] = 1
		obj, err := t.readModule(ctx, name)
		if errors.Is(err, errBuiltin) {
			builtin = append(builtin, name)
			state[name] = 2
			return nil
		}
		if err != nil {
			return err
		}
		deps, err := moduleDepends(obj)
		if err != nil {
			return fmt.Errorf("resolve module %s: %w", name, err)
		}
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(moduleName(d+".ko"), name); err != nil {
				return err
			}
		}
		state[name] = 2
		mods = append(mods, loadableModule{Name: name, Obj: obj})
		return nil
	}
	for _, w := range wanted {
		if err := visit(moduleName(w+".ko"), "the wanted list"); err != nil {
			return nil, nil, err
		}
	}
	return mods, builtin, nil
}

// command runs name with args in dir and returns its standard output; the
// error carries the tail of standard error.
func command(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("run %s: %w: %s", name, err, tail(stderr.String(), 2048))
	}
	return string(out), nil
}

func commandBytes(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := command(ctx, "", name, args...)
	return []byte(out), err
}

// extractVmlinux unpacks the ELF kernel inside a bzImage and reports
// whether it can be booted directly through its PVH entry point
// (XEN_ELFNOTE_PHYS32_ENTRY), which QEMU supports for -kernel. Under TCG
// that skips the decompressor, seconds of emulated xz for Debian's kernel.
// The payload's place comes from the boot protocol header
// (Documentation/arch/x86/boot.rst: setup_sects at 0x1f1, payload_offset
// at 0x248, payload_length at 0x24c).
func extractVmlinux(ctx context.Context, bzImage string) ([]byte, error) {
	b, err := os.ReadFile(bzImage)
	if err != nil {
		return nil, fmt.Errorf("read kernel image: %w", err)
	}
	if len(b) < 0x250 || string(b[0x202:0x206]) != "HdrS" {
		return nil, errors.New("read kernel image: not a bzImage (no HdrS)")
	}
	setupSects := int(b[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(le32(b[0x248:]))
	n := int(le32(b[0x24c:]))
	if off+n > len(b) || n < 8 {
		return nil, fmt.Errorf("read kernel image: payload %d+%d outside %d bytes", off, n, len(b))
	}
	payload := b[off : off+n]
	var elfBytes []byte
	switch {
	case bytes.HasPrefix(payload, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		elfBytes, err = pipe(ctx, payload, "xz", "-dc", "--single-stream")
	case bytes.HasPrefix(payload, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		elfBytes, err = pipe(ctx, payload, "zstd", "-dcq")
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(payload)); err == nil {
			zr.Multistream(false)
			elfBytes, err = io.ReadAll(zr)
		}
	default:
		return nil, fmt.Errorf("read kernel image: payload compression % x not handled", payload[:6])
	}
	if err != nil {
		return nil, fmt.Errorf("decompress kernel payload: %w", err)
	}
	if !hasPVHEntry(elfBytes) {
		return nil, errors.New("read kernel image: no PVH entry note")
	}
	return elfBytes, nil
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// hasPVHEntry looks for the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18) in
// the program's PT_NOTE segments (xen/include/public/elfnote.h).
func hasPVHEntry(obj []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		return false
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		notes, err := io.ReadAll(p.Open())
		if err != nil {
			return false
		}
		for len(notes) >= 12 {
			namesz, descsz, typ := le32(notes), le32(notes[4:]), le32(notes[8:])
			name := notes[12:]
			nameEnd := 12 + align4(int(namesz))
			end := nameEnd + align4(int(descsz))
			if end > len(notes) || int(namesz) > len(name) {
				break
			}
			if typ == 18 && string(bytes.TrimRight(name[:namesz], "\x00")) == "Xen" {
				return true
			}
			notes = notes[end:]
		}
	}
	return false
}

func align4(n int) int { return (n + 3) &^ 3 }

// pipe runs name with in as standard input and returns standard output.
func pipe(ctx context.Context, in []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("run %s: %w: %s", name, err, tail(stderr.String(), 1024))
	}
	return out, nil
}
