package main

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// The program on a module of its own (testdata/mod), one break of each rule.
func TestRun(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-C", "testdata/mod"}, &stdout, &stderr)
	if !errors.Is(err, errViolations) {
		t.Fatalf("run = %v; want errViolations (stderr %q)", err, stderr.String())
	}
	want := "a/b imports a: a folder above its own\n" +
		"internal/x (tests) imports integration/h: a library imports nothing under cmd/ or integration/\n" +
		"virtio imports os/exec: a pure package opens no devices, logs nothing and runs no programs\n"
	if stdout.String() != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout.String(), want)
	}

	stdout.Reset()
	if err := run(context.Background(), []string{"-C", "testdata/mod", "./offload", "./internal/..."}, &stdout, &stderr); !errors.Is(err, errViolations) || stdout.String() != want[strings.Index(want, "internal/x"):strings.Index(want, "virtio")] {
		t.Errorf("run on ./offload ./internal/... = %v, stdout %q; want errViolations and the internal/x line", err, stdout.String())
	}
	stdout.Reset()
	if err := run(context.Background(), []string{"-C", "testdata/mod", "./offload"}, &stdout, &stderr); err != nil || stdout.Len() != 0 {
		t.Errorf("run on ./offload = %v, stdout %q; want nil and nothing", err, stdout.String())
	}
	if err := run(context.Background(), []string{"-nosuchflag"}, &stdout, &stderr); !errors.As(err, new(usageError)) {
		t.Errorf("run with a bad flag = %v; want a usageError", err)
	}
	if err := run(context.Background(), []string{"-C", "testdata/mod", "./nosuchpackage"}, &stdout, &stderr); err == nil || errors.Is(err, errViolations) {
		t.Errorf("run on a missing package = %v; want go list's error", err)
	}
}

const mod = "example.com/m"

// pkg is a package of the module at folder rel ("" is the root), importing
// imports; a path with a dot or a slash in its first element is kept as
// it is, anything else is a folder of the module. "test:" and "xtest:"
// before a path make it an import of the package's tests.
func pkg(rel string, imports ...string) *Package {
	p := &Package{ImportPath: modPath(rel), Module: &Module{Path: mod, Main: true}}
	for _, imp := range imports {
		list := &p.Imports
		if s, ok := strings.CutPrefix(imp, "test:"); ok {
			imp, list = s, &p.TestImports
		} else if s, ok := strings.CutPrefix(imp, "xtest:"); ok {
			imp, list = s, &p.XTestImports
		}
		*list = append(*list, modPath(imp))
	}
	return p
}

func modPath(s string) string {
	first, _, _ := strings.Cut(s, "/")
	switch {
	case s == "":
		return mod
	case strings.Contains(first, ".") || isStd(s):
		return s
	}
	return mod + "/" + s
}

// isStd is enough of the standard library for these tests.
func isStd(s string) bool {
	switch s {
	case "os", "os/exec", "net", "net/http", "fmt", "unsafe", "testing":
		return true
	}
	return false
}

// other is a package outside the module.
func other(path string, imports ...string) *Package {
	p := &Package{ImportPath: path, Imports: imports}
	if !isStd(path) {
		p.Module = &Module{Path: path}
	}
	return p
}

func graphOf(pkgs ...*Package) *graph {
	g := &graph{module: mod, pkgs: map[string]*Package{}}
	for _, p := range pkgs {
		g.pkgs[p.ImportPath] = p
	}
	return g
}

// vmnetGraph is the module's import graph as it is, tests included.
func vmnetGraph() []*Package {
	return []*Package{
		pkg("virtio", "fmt", "net", "unsafe", "test:testing"),
		pkg("offload", "virtio", "xtest:internal/frametest"),
		pkg("virtio/virtiotest", "virtio", "unsafe"),
		pkg("ebpf", "github.com/cilium/ebpf", "test:backend/tap", "test:internal/testutil"),
		pkg("vhostuser", "virtio", "github.com/hashicorp/go-hclog"),
		pkg("internal/stats"), pkg("internal/frametest"), pkg("internal/netns", "os/exec"),
		pkg("internal/testutil", "internal/frametest", "internal/netns", "github.com/cilium/ebpf"),
		pkg("backend/tap", "offload", "virtio", "github.com/vishvananda/netlink", "test:internal/testutil"),
		pkg("backend/engine", "offload", "virtio", "internal/stats", "test:backend/tap", "test:virtio/virtiotest"),
		pkg("backend", "backend/engine", "backend/tap", "ebpf", "vhostuser", "virtio", "xtest:backend", "xtest:internal/netns"),
		pkg("integration/harness", "backend/engine", "internal/netns"),
		pkg("integration", "test:integration/harness"),
		pkg("cmd/vmnet-helper", "backend", "backend/tap", "os/exec", "test:internal/testutil"),
		other("fmt"), other("net"), other("unsafe"), other("os/exec", "os"), other("os"), other("testing"),
		other("github.com/cilium/ebpf"), other("github.com/hashicorp/go-hclog"), other("github.com/vishvananda/netlink"),
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		add  []*Package // added to vmnetGraph, replacing a package of the same path
		want []string
	}{
		{"the tree as it is", nil, nil},
		{"engine imports the device", []*Package{pkg("backend/engine", "backend", "virtio")},
			[]string{"backend/engine imports backend: a folder above its own"}},
		{"two folders up", []*Package{pkg("backend/tap/x", "backend")},
			[]string{"backend/tap/x imports backend: a folder above its own"}},
		{"the module's root", []*Package{pkg(""), pkg("ebpf", "")},
			[]string{"ebpf imports .: a folder above its own"}},
		{"a test kit imports its parent", []*Package{pkg("backend/tap/taptest", "backend/tap")}, nil},
		{"not a test kit", []*Package{pkg("virtio/ring", "virtio")},
			[]string{"virtio/ring imports virtio: a folder above its own"}},
		{"a sibling, a child", []*Package{pkg("backend/fdpass", "backend/tap"), pkg("integration", "integration/harness")}, nil},
		{"only tests import above", []*Package{pkg("backend/tap", "virtio", "xtest:backend")}, nil},
		{"library imports integration", []*Package{pkg("internal/testutil", "integration/harness")},
			[]string{"internal/testutil imports integration/harness: a library imports nothing under cmd/ or integration/"}},
		{"library's tests import cmd", []*Package{pkg("vhostuser", "virtio", "test:cmd/vmnet-helper/x", "xtest:integration/guest")},
			[]string{
				"vhostuser (tests) imports cmd/vmnet-helper/x: a library imports nothing under cmd/ or integration/",
				"vhostuser (tests) imports integration/guest: a library imports nothing under cmd/ or integration/",
			}},
		{"cmd and integration import each other", []*Package{pkg("integration/demo", "integration/harness", "cmd/x"), pkg("cmd/x", "integration/harness")}, nil},
		{"not a library", []*Package{pkg("tools/x", "cmd/vmnet-helper")}, nil},
		{"virtio imports the TAP", []*Package{pkg("virtio", "backend/tap")},
			[]string{"virtio imports backend/tap: a pure package imports no module package but virtio and offload"}},
		{"offload imports internal", []*Package{pkg("offload", "virtio", "internal/stats")},
			[]string{"offload imports internal/stats: a pure package imports no module package but virtio and offload"}},
		{"virtiotest imports offload", []*Package{pkg("virtio/virtiotest", "virtio", "offload")},
			[]string{"virtio/virtiotest imports offload: a pure package imports no module package but virtio"}},
		{"virtio logs", []*Package{pkg("virtio", "github.com/hashicorp/go-hclog")},
			[]string{"virtio imports github.com/hashicorp/go-hclog: a pure package opens no devices, logs nothing and runs no programs"}},
		{"offload below cilium/ebpf", []*Package{pkg("offload", "virtio", "github.com/cilium/ebpf/asm"), other("github.com/cilium/ebpf/asm")},
			[]string{"offload imports github.com/cilium/ebpf/asm: a pure package opens no devices, logs nothing and runs no programs"}},
		{"a name that only starts the same", []*Package{pkg("offload", "virtio", "github.com/cilium/ebpfx"), other("github.com/cilium/ebpfx")}, nil},
		{"virtio runs a program through another package", []*Package{
			pkg("virtio", "example.org/run"), other("example.org/run", "net/http"), other("net/http", "os/exec", "net")},
			[]string{"virtio imports (through example.org/run -> net/http) os/exec: a pure package opens no devices, logs nothing and runs no programs"}},
		{"through a module package is that package's own", []*Package{pkg("offload", "virtio", "ebpf")},
			[]string{"offload imports ebpf: a pure package imports no module package but virtio and offload"}},
		{"pure tests may", []*Package{pkg("virtio", "fmt", "test:os/exec", "xtest:backend/tap")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := graphOf(append(vmnetGraph(), tt.add...)...)
			var got []string
			for _, v := range check(g, vmnet) {
				got = append(got, v.String())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("check:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestParse(t *testing.T) {
	out := `{"ImportPath": "fmt", "Imports": ["errors"], "DepOnly": true}
{"ImportPath": "github.com/x/y", "Module": {"Path": "github.com/x/y"}, "DepOnly": true}
{"ImportPath": "example.com/m/b", "Module": {"Path": "example.com/m", "Main": true}, "DepOnly": true}
{"ImportPath": "example.com/m/a", "Module": {"Path": "example.com/m", "Main": true}, "Imports": ["fmt"], "TestImports": ["testing"], "XTestImports": ["example.com/m/a"]}
`
	g, err := parse(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if g.module != mod || len(g.pkgs) != 4 {
		t.Fatalf("parse: module %q, %d packages; want %q and 4", g.module, len(g.pkgs), mod)
	}
	if got := g.modulePackages(); !reflect.DeepEqual(got, []string{"example.com/m/a"}) {
		t.Errorf("modulePackages = %q; want [example.com/m/a]", got)
	}
	a := g.pkgs["example.com/m/a"]
	if !reflect.DeepEqual(a.TestImports, []string{"testing"}) || !reflect.DeepEqual(a.XTestImports, []string{"example.com/m/a"}) {
		t.Errorf("a's test imports: %q, %q", a.TestImports, a.XTestImports)
	}
	if g.inModule("github.com/x/y") || !g.inModule("example.com/m/b") || !g.inModule("example.com/m/c") || g.rel("example.com/m/a") != "a" || g.rel(mod) != "" {
		t.Error("inModule or rel is wrong")
	}

	for _, bad := range []string{
		`{"ImportPath": "fmt"}`,
		`{"ImportPath": "a", "Module": {"Path": "a", "Main": true}}{"ImportPath": "b", "Module": {"Path": "b", "Main": true}}`,
		`{"ImportPath": `,
	} {
		if _, err := parse(strings.NewReader(bad)); err == nil {
			t.Errorf("parse(%q) = nil error; want one", bad)
		}
	}
}
