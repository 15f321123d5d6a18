package main

import (
	"fmt"
	"sort"
	"strings"
)

// policy is where the rules apply, in folders relative to the module's
// root ("" is the root itself).
type policy struct {
	// libraries are the folders whose packages, tests included, import
	// nothing under barred.
	libraries []string
	barred    []string
	// pure are the packages held to the pure rule, and the module
	// packages each may import; the longest folder that holds a package
	// says which.
	pure []pureRule
	// impure are the import paths, with every package below them, that no
	// pure package reaches.
	impure []string
}

type pureRule struct {
	folder string
	may    []string
}

// vmnet is the policy of this module (STYLE.md, "The shape of the house";
// docs/contracts.md, "Who imports whom").
var vmnet = policy{
	libraries: []string{"internal", "virtio", "offload", "ebpf", "vhostuser", "backend"},
	barred:    []string{"cmd", "integration"},
	pure: []pureRule{
		{"virtio", []string{"virtio", "offload"}},
		{"offload", []string{"virtio", "offload"}},
		{"virtio/virtiotest", []string{"virtio"}},
	},
	impure: []string{
		"github.com/vishvananda/netlink",
		"github.com/hashicorp/go-hclog",
		"github.com/cilium/ebpf",
		"os/exec",
	},
}

// A violation is one import that breaks a rule.
type violation struct {
	from, to string   // module-relative for the module's packages
	test     bool     // only the tests of from import to
	via      []string // packages between from and to, for an indirect import
	why      string
}

func (v violation) String() string {
	from, to := shown(v.from), shown(v.to)
	if v.test {
		from += " (tests)"
	}
	imports := "imports"
	if len(v.via) > 0 {
		imports = "imports (through " + strings.Join(v.via, " -> ") + ")"
	}
	return fmt.Sprintf("%s %s %s: %s", from, imports, to, v.why)
}

// shown is how a message names the folder rel: "." for the module's root.
func shown(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}

// check applies p to every package of g's module and returns what breaks
// it, sorted.
func check(g *graph, p policy) []violation {
	var vs []violation
	for _, path := range g.modulePackages() {
		rel := g.rel(path)
		pkg := g.pkgs[path]
		for _, imp := range pkg.Imports {
			if !g.inModule(imp) {
				continue
			}
			to := g.rel(imp)
			if above(to, rel) && !testKit(rel, to) {
				vs = append(vs, violation{from: rel, to: to, why: "a folder above its own"})
			}
		}
		if under(rel, p.libraries...) {
			vs = append(vs, libraryImports(g, rel, pkg, p)...)
		}
		if may, ok := p.pureRule(rel); ok {
			vs = append(vs, pureImports(g, rel, pkg, may, p.impure)...)
		}
	}
	sort.Slice(vs, func(i, j int) bool {
		if vs[i].from != vs[j].from {
			return vs[i].from < vs[j].from
		}
		return vs[i].to < vs[j].to
	})
	return vs
}

// libraryImports is rule (b): a library's package and its tests import
// nothing under p.barred.
func libraryImports(g *graph, rel string, pkg *Package, p policy) []violation {
	var vs []violation
	seen := map[string]bool{}
	for _, list := range []struct {
		paths []string
		test  bool
	}{{pkg.Imports, false}, {pkg.TestImports, true}, {pkg.XTestImports, true}} {
		for _, imp := range list.paths {
			if seen[imp] || !g.inModule(imp) {
				continue
			}
			seen[imp] = true
			if to := g.rel(imp); under(to, p.barred...) {
				vs = append(vs, violation{from: rel, to: to, test: list.test,
					why: "a library imports nothing under " + strings.Join(p.barred, "/ or ") + "/"})
			}
		}
	}
	return vs
}

// pureImports is rule (c): a pure package imports only the module packages
// in may, and reaches none of impure, not even through the standard
// library or another module's packages. The module's own packages are
// not followed: each is checked on its own.
func pureImports(g *graph, rel string, pkg *Package, may, impure []string) []violation {
	var vs []violation
	for _, imp := range pkg.Imports {
		if g.inModule(imp) && !contains(may, g.rel(imp)) {
			vs = append(vs, violation{from: rel, to: g.rel(imp),
				why: "a pure package imports no module package but " + strings.Join(may, " and ")})
		}
	}
	// Breadth first, so each impure package is named with its shortest
	// chain.
	from := map[string]string{} // package -> the package that imported it first
	queue := []string{}
	for _, imp := range pkg.Imports {
		if _, ok := from[imp]; !ok && !g.inModule(imp) {
			from[imp] = ""
			queue = append(queue, imp)
		}
	}
	for len(queue) > 0 {
		path := queue[0]
		queue = queue[1:]
		if under(path, impure...) {
			var via []string
			for p := from[path]; p != ""; p = from[p] {
				via = append([]string{p}, via...)
			}
			vs = append(vs, violation{from: rel, to: path, via: via,
				why: "a pure package opens no devices, logs nothing and runs no programs"})
			continue
		}
		dep, ok := g.pkgs[path]
		if !ok {
			continue
		}
		for _, imp := range dep.Imports {
			if _, ok := from[imp]; !ok && !g.inModule(imp) {
				from[imp] = path
				queue = append(queue, imp)
			}
		}
	}
	return vs
}

// pureRule returns the module packages the package in folder rel may
// import, if it is pure.
func (p policy) pureRule(rel string) (may []string, ok bool) {
	best := -1
	for _, r := range p.pure {
		if under(rel, r.folder) && len(r.folder) > best {
			best, may, ok = len(r.folder), r.may, true
		}
	}
	return may, ok
}

// under reports whether path is one of folders or below one.
func under(path string, folders ...string) bool {
	for _, f := range folders {
		if path == f || strings.HasPrefix(path, f+"/") {
			return true
		}
	}
	return false
}

// above reports whether folder a is an ancestor of folder b.
func above(a, b string) bool {
	return a != b && (a == "" || strings.HasPrefix(b, a+"/"))
}

// testKit reports whether the package in folder rel is its parent's test
// kit (virtio/virtiotest for virtio, as net/http/httptest for net/http),
// which imports the parent it serves by design.
func testKit(rel, parent string) bool {
	i := strings.LastIndex(rel, "/")
	return i >= 0 && rel[:i] == parent && rel[i+1:] == lastElem(parent)+"test"
}

func lastElem(path string) string {
	return path[strings.LastIndex(path, "/")+1:]
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
