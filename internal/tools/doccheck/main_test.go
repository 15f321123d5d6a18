package main

import (
	"bytes"
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// The program on a fixture: one name that exists, one that does not.
func TestRun(t *testing.T) {
	doc := filepath.Join(t.TempDir(), "fixture.md")
	src := "# Fixture\n\nThe device reads `virtio.Memory`,\nnot `virtio.NoSuchMemory`.\n"
	if err := os.WriteFile(doc, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-C", "../../..", "-pkgs", "./virtio/...", doc}, &stdout, &stderr)
	if !errors.Is(err, errMisses) {
		t.Fatalf("run = %v; want errMisses (stderr %q)", err, stderr.String())
	}
	want := doc + ":4: `virtio.NoSuchMemory` does not exist in github.com/vmnet-dev/vmnet/virtio\n"
	if stdout.String() != want {
		t.Errorf("stdout = %q; want %q", stdout.String(), want)
	}

	stdout.Reset()
	if err := os.WriteFile(doc, []byte("`virtio.Memory.Slice`\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"-C", "../../..", "-pkgs", "./virtio/...", doc}, &stdout, &stderr); err != nil || stdout.Len() != 0 {
		t.Errorf("run on a good doc = %v, stdout %q; want nil and nothing", err, stdout.String())
	}
	if err := run(context.Background(), []string{"-nosuchflag"}, &stdout, &stderr); !errors.As(err, new(usageError)) {
		t.Errorf("run with a bad flag = %v; want a usageError", err)
	}
}

func TestScan(t *testing.T) {
	pkgs := map[string]bool{"tap": true, "virtio": true, "ebpf": true}
	tests := []struct {
		name string
		src  string
		want []string // "line pkg.Name..."
	}{
		{"span", "see `virtio.Memory` and `tap.Device.Close`", []string{"1 virtio.Memory", "1 tap.Device.Close"}},
		{"in a call", "`tap.Open(tap.Options{Queues: 4})`", []string{"1 tap.Open", "1 tap.Options"}},
		{"span over lines", "a\n`virtio.New(virtio.Config{A,\nB}) tap.X`\n\n`tap.Y`", []string{"2 virtio.New", "2 virtio.Config", "3 tap.X", "5 tap.Y"}},
		{"outside spans", "virtio.Memory is prose", nil},
		{"not ours", "`unix.EBUSY`, `hclog.Logger`, `net.HardwareAddr`", nil},
		{"paths and flags", "`./backend/tap.go/x`, `-X main.tap.Y`, `$tap.Z`, `a.tap.W`, `tap.V@v1`", nil},
		{"double ticks", "``a `tap.X` b``", []string{"1 tap.X"}},
		{"escaped tick", "\\`tap.X` is not a span`", nil},
		{"go block", "x\n\n```go\nfunc F(d *tap.Device) // virtio.Queue\n```\n`ebpf.P`", []string{"4 tap.Device", "4 virtio.Queue", "6 ebpf.P"}},
		{"go block hides what it declares", "```go\ntap, err := ebpf.Get()\nvar virtio = 1\ntap.Close(); virtio.X\n```", []string{"2 ebpf.Get"}},
		{"other blocks", "```sh\ntap.X\n```\n```\nvirtio.Y\n```\n~~~go\nebpf.Z\n~~~", []string{"8 ebpf.Z"}},
		{"unclosed block runs to the end", "```go\nebpf.Z", []string{"2 ebpf.Z"}},
	}
	for _, tt := range tests {
		var got []string
		for _, r := range scan("f.md", tt.src, pkgs) {
			got = append(got, strconv.Itoa(r.line)+" "+r.String())
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: scan = %q; want %q", tt.name, got, tt.want)
		}
	}
}

// typecheck builds a package from source, without imports.
func typecheck(t *testing.T, path, src string) *types.Package {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "x.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := new(types.Config).Check(path, fset, []*ast.File{f}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheck(t *testing.T) {
	a := typecheck(t, "m/a/tap", `package tap
type Inner struct{ Field int }
func (*Inner) Promoted() {}
type Device struct{ Inner; Name string; hidden int }
func (d *Device) Close() error { return nil }
type Iface interface{ Run() }
var Default = &Device{}
func Open() {}
func unexported() {}
const Max = 1`)
	b := typecheck(t, "m/b/tap", `package tap
func OnlyInB() {}`)
	idx := index{"tap": {a, b}}
	tests := []struct {
		ref     string
		want    string
		notName bool
	}{
		{"tap.Device", "", false},
		{"tap.Device.Close", "", false},
		{"tap.Device.Name", "", false},
		{"tap.Device.Field", "", false},    // promoted field
		{"tap.Device.Promoted", "", false}, // promoted method on the pointer
		{"tap.Iface.Run", "", false},
		{"tap.Default.Close", "", false}, // through a variable's type
		{"tap.OnlyInB", "", false},       // two packages named tap: either will do
		{"tap.Gone", "`tap.Gone` does not exist in m/a/tap, m/b/tap", false},
		{"tap.Device.Open", "`tap.Device.Open` does not exist in m/a/tap, m/b/tap", false},
		{"tap.Open.X", "`tap.Open.X` does not exist in m/a/tap, m/b/tap", false},
		{"tap.Max.X", "`tap.Max.X` does not exist in m/a/tap, m/b/tap", false},
		{"tap.Device.hidden", "`tap.Device.hidden` is not exported (hidden) in m/a/tap, m/b/tap", false},
		{"tap.unexported", "`tap.unexported` is not exported (unexported) in m/a/tap, m/b/tap", false},
		{"tap.go", "", true},
	}
	for _, tt := range tests {
		parts := strings.Split(tt.ref, ".")
		why, goName := idx.check(ref{pkg: parts[0], names: parts[1:]})
		if why != tt.want || goName == tt.notName {
			t.Errorf("check(%s) = %q, %v; want %q, %v", tt.ref, why, goName, tt.want, !tt.notName)
		}
	}
}
