package guest

import (
	"bytes"
	"strconv"
	"testing"
)

// readNewc parses a newc archive the way the kernel's initramfs unpacker
// does, enough to check what writeTo produced.
func readNewc(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("header field %d at %d: %v", i, off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off%4 != 0 {
			t.Fatalf("entry at offset %d: not 4-byte aligned", off)
		}
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("entry at offset %d: magic %q, want 070701", off, b[off:off+6])
		}
		mode, size, major, minor, namesize := field(1), field(6), field(9), field(10), field(11)
		nameStart := off + 110
		name := string(b[nameStart : nameStart+int(namesize)-1])
		if b[nameStart+int(namesize)-1] != 0 {
			t.Fatalf("entry %s: name not NUL-terminated", name)
		}
		dataStart := align(nameStart + int(namesize))
		data := b[dataStart : dataStart+int(size)]
		off = align(dataStart + int(size))
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Errorf("trailer ends at %d, want the end of the archive at %d", off, len(b))
			}
			return out
		}
		out = append(out, cpioEntry{Name: name, Mode: mode, Data: data, Major: major, Minor: minor})
	}
}

func TestCPIOArchive(t *testing.T) {
	a := newCPIOArchive()
	a.file("/usr/bin/iperf3", 0o755, []byte("ELF..."))
	a.symlink("bin/sh", "/bin/busybox")
	a.charDev("dev/console", 0o600, 5, 1)
	a.file("init", 0o755, []byte("#!/bin/sh\n")) // 10 bytes: needs padding
	a.dir("tmp", 0o1777)

	var buf bytes.Buffer
	if err := a.writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	got := readNewc(t, buf.Bytes())
	want := []cpioEntry{
		{Name: "bin", Mode: modeDir | 0o755},
		{Name: "bin/sh", Mode: modeSymlink | 0o777, Data: []byte("/bin/busybox")},
		{Name: "dev", Mode: modeDir | 0o755},
		{Name: "dev/console", Mode: modeChar | 0o600, Major: 5, Minor: 1},
		{Name: "init", Mode: modeFile | 0o755, Data: []byte("#!/bin/sh\n")},
		{Name: "tmp", Mode: modeDir | 0o1777},
		{Name: "usr", Mode: modeDir | 0o755},
		{Name: "usr/bin", Mode: modeDir | 0o755},
		{Name: "usr/bin/iperf3", Mode: modeFile | 0o755, Data: []byte("ELF...")},
	}
	if len(got) != len(want) {
		t.Fatalf("entries: got %d %v, want %d", len(got), got, len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Name != w.Name || g.Mode != w.Mode || !bytes.Equal(g.Data, w.Data) || g.Major != w.Major || g.Minor != w.Minor {
			t.Errorf("entry %d: got %s mode %o data %q dev %d:%d, want %s mode %o data %q dev %d:%d",
				i, g.Name, g.Mode, g.Data, g.Major, g.Minor, w.Name, w.Mode, w.Data, w.Major, w.Minor)
		}
	}

	// Same inputs, same bytes: the cache key relies on reproducible images.
	var again bytes.Buffer
	if err := a.writeTo(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Errorf("two writes of one archive differ")
	}
}
