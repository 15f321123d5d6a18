package guest

import (
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// cpioEntry is one member of an initramfs: a directory, a regular file, a
// symlink or a character device. Data is the file content or the link target.
type cpioEntry struct {
	Name  string // path without a leading slash, e.g. "bin/busybox"
	Mode  uint32 // type and permission bits as in st_mode
	Data  []byte
	Major uint32 // device numbers, character devices only
	Minor uint32
}

// st_mode type bits (linux/stat.h).
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeChar    = 0o020000
)

// cpioArchive collects entries and writes them in the "newc" format that the
// kernel unpacks into rootfs (Documentation/driver-api/early-userspace/
// buffer-format.rst). Parent directories are added implicitly; the kernel
// does not create missing parents itself.
type cpioArchive struct {
	entries map[string]cpioEntry
}

func newCPIOArchive() *cpioArchive {
	return &cpioArchive{entries: map[string]cpioEntry{}}
}

func (a *cpioArchive) add(e cpioEntry) {
	e.Name = strings.TrimPrefix(path.Clean("/"+e.Name), "/")
	for dir := path.Dir(e.Name); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if _, ok := a.entries[dir]; !ok {
			a.entries[dir] = cpioEntry{Name: dir, Mode: modeDir | 0o755}
		}
	}
	a.entries[e.Name] = e
}

func (a *cpioArchive) dir(name string, perm uint32) {
	a.add(cpioEntry{Name: name, Mode: modeDir | perm})
}

func (a *cpioArchive) file(name string, perm uint32, data []byte) {
	a.add(cpioEntry{Name: name, Mode: modeFile | perm, Data: data})
}

func (a *cpioArchive) symlink(name, target string) {
	a.add(cpioEntry{Name: name, Mode: modeSymlink | 0o777, Data: []byte(target)})
}

func (a *cpioArchive) charDev(name string, perm, major, minor uint32) {
	a.add(cpioEntry{Name: name, Mode: modeChar | perm, Major: major, Minor: minor})
}

// has reports whether name is already in the archive.
func (a *cpioArchive) has(name string) bool {
	_, ok := a.entries[strings.TrimPrefix(path.Clean("/"+name), "/")]
	return ok
}

// writeTo writes the entries sorted by name, so every directory precedes
// its contents and the same inputs give the same bytes, then the trailer.
func (a *cpioArchive) writeTo(w io.Writer) error {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	cw := &cpioWriter{w: w}
	for i, n := range names {
		if err := cw.write(a.entries[n], uint32(i+1)); err != nil {
			return err
		}
	}
	return cw.write(cpioEntry{Name: "TRAILER!!!"}, 0)
}

type cpioWriter struct {
	w   io.Writer
	off int64
}

func (cw *cpioWriter) write(e cpioEntry, ino uint32) error {
	nlink := uint32(1)
	if e.Mode&0o170000 == modeDir {
		nlink = 2
	}
	// All owned by root, mtime 0: the image is reproducible.
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.Mode, 0, 0, nlink, 0, len(e.Data), 0, 0, e.Major, e.Minor, len(e.Name)+1, 0)
	if err := cw.put([]byte(hdr)); err != nil {
		return fmt.Errorf("write cpio header of %s: %w", e.Name, err)
	}
	if err := cw.put(append([]byte(e.Name), 0)); err != nil {
		return fmt.Errorf("write cpio name of %s: %w", e.Name, err)
	}
	if err := cw.pad(); err != nil {
		return err
	}
	if err := cw.put(e.Data); err != nil {
		return fmt.Errorf("write cpio data of %s: %w", e.Name, err)
	}
	return cw.pad()
}

func (cw *cpioWriter) put(b []byte) error {
	n, err := cw.w.Write(b)
	cw.off += int64(n)
	return err
}

// pad aligns to 4 bytes, as newc requires after the name and after the data.
func (cw *cpioWriter) pad() error {
	if r := cw.off % 4; r != 0 {
		if err := cw.put(make([]byte, 4-r)); err != nil {
			return fmt.Errorf("write cpio padding: %w", err)
		}
	}
	return nil
}
