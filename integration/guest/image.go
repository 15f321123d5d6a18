package guest

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

//go:embed init.sh
var initScript []byte

// imageFormat changes whenever the builder lays out the image differently,
// so that caches made by an older builder are not reused.
const imageFormat = "vmnet-guest-2"

// defaultModules are the drivers a guest always loads; their dependencies
// (virtio, virtio_ring, virtio_pci_modern_dev, virtio_pci_legacy_dev,
// failover, net_failover) are found from each module's .modinfo.
var defaultModules = []string{"virtio_pci", "virtio_net"}

// defaultTools are the host executables copied into every guest, with the
// shared libraries ldd names for them. busybox provides the shell, ip,
// ping, nc and the other applets.
var defaultTools = []string{"busybox", "iperf3", "ethtool"}

// ImageOptions says which guest image to build. The zero value builds the
// default image into the default cache.
type ImageOptions struct {
	// CacheDir holds built images. "" means $VMNET_GUEST_CACHE, else
	// $XDG_CACHE_HOME/vmnet/guest, else ~/.cache/vmnet/guest.
	CacheDir string
	// KernelPackage is the Debian meta-package whose versioned image
	// package is used; "" means linux-image-amd64. linux-image-cloud-amd64
	// also works: it has virtio_net.
	KernelPackage string
	// Modules are loaded in addition to virtio_pci and virtio_net, with
	// their dependencies, in dependency order. Modules built into the
	// kernel are skipped.
	Modules []string
	// Tools are host executables (names looked up in PATH, /usr/sbin and
	// /sbin, or absolute paths) copied to the same path in the guest, with
	// their shared libraries, in addition to busybox, iperf3 and ethtool.
	Tools []string
	// Logger receives build progress; nil means no logging.
	Logger hclog.Logger
}

// Image is a built guest: a Debian kernel and a busybox initramfs whose
// /init serves the command protocol on the console. Its files are owned by
// the cache and must not be changed.
type Image struct {
	Dir           string   `json:"-"`              // cache entry holding the files below
	Kernel        string   `json:"-"`              // for -kernel: ELF vmlinux if PVH, else the bzImage
	Initrd        string   `json:"-"`              // gzip'd newc cpio, for -initrd
	KernelPackage string   `json:"kernel_package"` // linux-image-6.1.0-56-amd64
	KernelVersion string   `json:"kernel_version"` // the package version, 6.1.192-2
	KernelRelease string   `json:"kernel_release"` // uname -r in the guest, 6.1.0-56-amd64
	Modules       []string `json:"modules"`        // loaded by /init, in this order
	Builtin       []string `json:"builtin"`        // wanted but built into the kernel
	Tools         []string `json:"tools"`          // guest paths of the copied executables
	Key           string   `json:"key"`            // hash of everything the image is made of
	PVH           bool     `json:"pvh"`            // Kernel is booted through its PVH entry
}

const (
	manifestName = "image.json"
	kernelName   = "kernel"
	initrdName   = "initrd.gz"
)

// DefaultCacheDir returns where images are cached when ImageOptions.CacheDir
// is empty.
func DefaultCacheDir() (string, error) {
	if d := os.Getenv("VMNET_GUEST_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir() // $XDG_CACHE_HOME, else ~/.cache
	if err != nil {
		return "", fmt.Errorf("find the cache directory: %w", err)
	}
	return filepath.Join(d, "vmnet", "guest"), nil
}

var (
	imagesMu sync.Mutex
	images   = map[string]*Image{}
)

// BuildImage returns the image that opts describe, building it unless the
// cache already holds one made from the same kernel package version, init
// script, modules and tool binaries. Concurrent builds, in this process or
// others, are safe: each builds into a private directory and renames it
// into place; the first rename wins and the others use its result. Within a
// process the result is remembered, so later calls cost nothing.
func BuildImage(ctx context.Context, opts ImageOptions) (*Image, error) {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.CacheDir == "" {
		d, err := DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		opts.CacheDir = d
	}
	if opts.KernelPackage == "" {
		opts.KernelPackage = "linux-image-amd64"
	}
	memo := strings.Join([]string{opts.CacheDir, opts.KernelPackage,
		strings.Join(opts.Modules, ","), strings.Join(opts.Tools, ",")}, "\x00")

	imagesMu.Lock()
	defer imagesMu.Unlock()
	if img, ok := images[memo]; ok {
		return img, nil
	}
	img, err := buildImage(ctx, opts)
	if err != nil {
		return nil, err
	}
	images[memo] = img
	return img, nil
}

func buildImage(ctx context.Context, opts ImageOptions) (*Image, error) {
	log := opts.Logger.Named("guest-image")
	pkg, err := resolveKernelCached(ctx, opts.CacheDir, opts.KernelPackage)
	if err != nil {
		return nil, err
	}
	tools, err := collectTools(ctx, append(slices.Clone(defaultTools), opts.Tools...))
	if err != nil {
		return nil, err
	}
	modules := append(slices.Clone(defaultModules), opts.Modules...)

	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00", imageFormat, pkg.Name, pkg.Version, strings.Join(modules, ","))
	h.Write(initScript)
	for _, f := range tools {
		fmt.Fprintf(h, "\x00%s\x00%d\x00", f.guestPath, len(f.data))
		h.Write(f.data)
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	dir := filepath.Join(opts.CacheDir, sanitize(pkg.Name+"_"+pkg.Version)+"-"+key)

	if img, err := loadImage(dir); err == nil {
		log.Debug("using cached image", "dir", dir)
		return img, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}

	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("create image cache: %w", err)
	}
	removeStaleBuilds(opts.CacheDir, log)
	tmp, err := os.MkdirTemp(opts.CacheDir, ".build-")
	if err != nil {
		return nil, fmt.Errorf("create image build directory: %w", err)
	}
	defer os.RemoveAll(tmp)

	start := time.Now()
	log.Info("building guest image", "kernel", pkg.Name, "version", pkg.Version, "dir", dir)
	root, err := extractKernel(ctx, pkg, tmp)
	if err != nil {
		return nil, err
	}
	tree, err := openKernelTree(root)
	if err != nil {
		return nil, err
	}
	mods, builtin, err := tree.resolveModules(ctx, modules)
	if err != nil {
		return nil, err
	}

	out := filepath.Join(tmp, "image")
	if err := os.Mkdir(out, 0o755); err != nil {
		return nil, fmt.Errorf("create image directory: %w", err)
	}
	img := &Image{
		KernelPackage: pkg.Name,
		KernelVersion: pkg.Version,
		KernelRelease: tree.Release,
		Builtin:       builtin,
		Key:           key,
	}
	for _, m := range mods {
		img.Modules = append(img.Modules, m.Name)
	}
	for _, t := range tools {
		if t.executable {
			img.Tools = append(img.Tools, t.guestPath)
		}
	}
	// Prefer the unpacked ELF kernel (PVH boot); keep the bzImage when the
	// kernel cannot be booted that way.
	if vmlinux, err := extractVmlinux(ctx, tree.Vmlinuz); err == nil {
		if err := os.WriteFile(filepath.Join(out, kernelName), vmlinux, 0o644); err != nil {
			return nil, fmt.Errorf("write kernel: %w", err)
		}
		img.PVH = true
	} else {
		log.Warn("booting the compressed kernel, slower under TCG", "error", err)
		if err := copyFile(tree.Vmlinuz, filepath.Join(out, kernelName)); err != nil {
			return nil, err
		}
	}
	if err := writeInitrd(ctx, filepath.Join(out, initrdName), mods, tools); err != nil {
		return nil, err
	}
	manifest, err := json.MarshalIndent(img, "", "\t")
	if err != nil {
		return nil, fmt.Errorf("encode image manifest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, manifestName), manifest, 0o644); err != nil {
		return nil, fmt.Errorf("write image manifest: %w", err)
	}
	if err := os.Rename(out, dir); err != nil {
		// Another builder got there first; its image is as good as ours.
		if img, lerr := loadImage(dir); lerr == nil {
			return img, nil
		}
		return nil, fmt.Errorf("move image into the cache: %w", err)
	}
	log.Info("built guest image", "dir", dir, "modules", img.Modules, "duration", time.Since(start).Round(time.Millisecond))
	return loadImage(dir)
}

// loadImage reads a finished cache entry. A missing entry gives an error
// satisfying errors.Is(err, os.ErrNotExist).
func loadImage(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		return nil, fmt.Errorf("read image manifest: %w", err)
	}
	img := &Image{}
	if err := json.Unmarshal(b, img); err != nil {
		return nil, fmt.Errorf("decode image manifest %s: %w", dir, err)
	}
	img.Dir = dir
	img.Kernel = filepath.Join(dir, kernelName)
	img.Initrd = filepath.Join(dir, initrdName)
	for _, f := range []string{img.Kernel, img.Initrd} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("check cached image: %w", err)
		}
	}
	return img, nil
}

// removeStaleBuilds deletes build directories left by killed builders. An
// hour is far longer than any build takes.
func removeStaleBuilds(cache string, log hclog.Logger) {
	stale, _ := filepath.Glob(filepath.Join(cache, ".build-*"))
	for _, d := range stale {
		if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > time.Hour {
			if err := os.RemoveAll(d); err != nil {
				log.Warn("cannot remove stale build directory", "dir", d, "error", err)
			}
		}
	}
}

// guestFile is a host file to copy into the initramfs.
type guestFile struct {
	guestPath  string // absolute path in the guest
	hostPath   string
	data       []byte
	executable bool // a tool rather than one of its libraries
}

// collectTools reads each tool and the shared libraries that ldd resolves
// for it (the dynamic loader included). Libraries are copied to the path
// ldd prints, with the content of the file that path resolves to, so the
// guest needs no symlinks. busybox always lands at /bin/busybox, where the
// applet links point.
func collectTools(ctx context.Context, names []string) ([]guestFile, error) {
	var files []guestFile
	seen := map[string]bool{}
	add := func(guestPath, hostPath string, executable bool) error {
		if seen[guestPath] {
			return nil
		}
		seen[guestPath] = true
		data, err := os.ReadFile(hostPath)
		if err != nil {
			return fmt.Errorf("read guest file: %w", err)
		}
		files = append(files, guestFile{guestPath: guestPath, hostPath: hostPath, data: data, executable: executable})
		return nil
	}
	for _, name := range names {
		host, err := lookTool(name)
		if err != nil {
			return nil, err
		}
		guestPath := host
		if filepath.Base(name) == "busybox" {
			guestPath = "/bin/busybox"
		}
		if err := add(guestPath, host, true); err != nil {
			return nil, err
		}
		libs, err := sharedLibraries(ctx, host)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			if err := add(l, l, false); err != nil {
				return nil, err
			}
		}
	}
	return files, nil
}

func lookTool(name string) (string, error) {
	if filepath.IsAbs(name) {
		return name, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("find guest tool %s: not installed (run .ci/install-deps): %w", name, exec.ErrNotFound)
}

// sharedLibraries lists the libraries ldd resolves for an executable; a
// static executable has none.
func sharedLibraries(ctx context.Context, exe string) ([]string, error) {
	static, err := isStatic(exe)
	if err != nil || static {
		return nil, err
	}
	out, err := command(ctx, "", "ldd", exe)
	if err != nil {
		return nil, fmt.Errorf("list libraries of %s: %w", exe, err)
	}
	var libs []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if _, right, ok := strings.Cut(line, "=>"); ok {
			line = strings.TrimSpace(right)
		}
		if strings.HasPrefix(line, "not found") {
			return nil, fmt.Errorf("list libraries of %s: a library is missing: %s", exe, sc.Text())
		}
		if p, _, _ := strings.Cut(line, " "); strings.HasPrefix(p, "/") {
			libs = append(libs, p)
		}
	}
	return libs, nil
}

// isStatic reports whether exe has no program interpreter (PT_INTERP).
func isStatic(exe string) (bool, error) {
	f, err := elf.Open(exe)
	if err != nil {
		return false, fmt.Errorf("inspect %s: %w", exe, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// writeInitrd lays out the guest's root file system and writes it as a
// gzip'd newc cpio archive.
func writeInitrd(ctx context.Context, dst string, mods []loadableModule, tools []guestFile) error {
	a := newCPIOArchive()
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "root", "etc", "usr/bin", "usr/sbin", "bin", "sbin"} {
		a.dir(d, 0o755)
	}
	a.dir("tmp", 0o1777)
	// The kernel opens /dev/console for init's stdio before /init can mount
	// devtmpfs.
	a.charDev("dev/console", 0o600, 5, 1)
	a.file("init", 0o755, initScript)
	a.file("etc/hostname", 0o644, []byte("vmnet-guest\n"))
	a.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	a.file("etc/group", 0o644, []byte("root:x:0:\n"))

	var order strings.Builder
	for _, m := range mods {
		a.file("lib/modules/vmnet/"+m.Name+".ko", 0o644, m.Obj)
		order.WriteString(m.Name + "\n")
	}
	a.file("etc/vmnet/modules", 0o644, []byte(order.String()))

	busybox := ""
	for _, f := range tools {
		perm := uint32(0o644)
		if f.executable || strings.Contains(filepath.Base(f.guestPath), "ld-linux") {
			perm = 0o755
		}
		a.file(f.guestPath, perm, f.data)
		if f.guestPath == "/bin/busybox" {
			busybox = f.hostPath
		}
	}
	if busybox == "" {
		return errors.New("write initrd: busybox is not among the tools")
	}
	// Applets that a real tool provides keep the tool.
	applets, err := command(ctx, "", busybox, "--list-full")
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	for _, p := range strings.Fields(applets) {
		if !a.has(p) {
			a.symlink(p, "/bin/busybox")
		}
	}

	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("create initrd: %w", err)
	}
	zw := gzip.NewWriter(f)
	if err := a.writeTo(zw); err != nil {
		f.Close()
		return fmt.Errorf("write initrd: %w", err)
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return fmt.Errorf("compress initrd: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close initrd: %w", err)
	}
	return nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", filepath.Base(src), err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		return fmt.Errorf("copy %s: %w", filepath.Base(src), err)
	}
	return nil
}

// sanitize keeps a package name and version usable as a file name (the
// epoch's colon, for one).
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_', r == '+':
			return r
		}
		return '_'
	}, s)
}
