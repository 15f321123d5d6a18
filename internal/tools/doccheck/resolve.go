package main

import (
	"context"
	"fmt"
	"go/token"
	"go/types"
	"path"
	"strings"

	"golang.org/x/tools/go/packages"
)

// index is the module's packages by the last element of their import
// path, the name docs write them by; two packages can share one.
type index map[string][]*types.Package

// load type-checks the packages that patterns match in dir, from source,
// and indexes them. Packages main are left out: nothing refers to their
// names. A package that does not type-check is indexed as far as it does
// and reported in warnings: its declarations still count.
func load(ctx context.Context, dir string, patterns []string) (index, []string, error) {
	cfg := &packages.Config{
		Context: ctx,
		Mode:    packages.NeedName | packages.NeedImports | packages.NeedTypes | packages.NeedSyntax,
		Dir:     dir,
	}
	pkgs, err := packages.Load(cfg, patterns...)
	if err != nil {
		return nil, nil, fmt.Errorf("load %s: %w", strings.Join(patterns, " "), err)
	}
	idx := index{}
	var warnings []string
	for _, p := range pkgs {
		for _, e := range p.Errors {
			warnings = append(warnings, fmt.Sprintf("%s: %v", p.PkgPath, e))
		}
		if p.Name == "main" || p.Types == nil {
			continue
		}
		last := path.Base(p.PkgPath)
		idx[last] = append(idx[last], p.Types)
	}
	return idx, warnings, nil
}

// names returns the set of names the index knows packages by.
func (idx index) names() map[string]bool {
	m := map[string]bool{}
	for n := range idx {
		m[n] = true
	}
	return m
}

// check returns what is wrong with r, or "" if some package of its name
// has it. A lowercase name that none of them declares is taken for
// something other than Go, a file name such as tap.go: check reports it
// as not Go, and nothing wrong.
func (idx index) check(r ref) (why string, goName bool) {
	var paths []string
	unexported := ""
	for _, p := range idx[r.pkg] {
		switch miss := resolve(p, r.names); miss {
		case "":
			return "", true
		case "missing":
			paths = append(paths, p.Path())
		default:
			unexported = miss
			paths = append(paths, p.Path())
		}
	}
	switch {
	case unexported != "":
		return fmt.Sprintf("`%s` is not exported (%s) in %s", r, unexported, strings.Join(paths, ", ")), true
	case !token.IsExported(r.names[0]):
		return "", false
	}
	return fmt.Sprintf("`%s` does not exist in %s", r, strings.Join(paths, ", ")), true
}

// resolve looks names up in p, each after the first through the type of
// the one before: a method or a field, promoted ones included. It returns
// "" when all exist and are exported, "missing" when one does not exist,
// and the first unexported name otherwise.
func resolve(p *types.Package, names []string) string {
	obj := p.Scope().Lookup(names[0])
	for i, name := range names {
		if i > 0 {
			var t types.Type
			switch o := obj.(type) {
			case *types.TypeName, *types.Var:
				t = o.Type()
			default:
				return "missing" // a function or constant has no selectors
			}
			obj, _, _ = types.LookupFieldOrMethod(t, true, p, name)
		}
		if obj == nil {
			return "missing"
		}
		if !obj.Exported() {
			return name
		}
	}
	return ""
}
