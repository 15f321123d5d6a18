package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strings"
)

// Package is the part of go list -json's output the rules read.
type Package struct {
	ImportPath   string
	Module       *Module
	Imports      []string
	TestImports  []string
	XTestImports []string
	DepOnly      bool // listed as a dependency, not matched by the patterns
}

// Module is a package's module, as go list reports it.
type Module struct {
	Path string
	Main bool
}

// graph is the packages go list reported, dependencies included, and the
// path of the main module.
type graph struct {
	module string
	pkgs   map[string]*Package
}

// load runs go list -deps -json on patterns in dir and reads the import
// graph from its output.
func load(ctx context.Context, dir string, patterns []string) (*graph, error) {
	args := append([]string{"list", "-deps", "-json=ImportPath,Module,Imports,TestImports,XTestImports,DepOnly", "--"}, patterns...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go list %s: %w: %s", strings.Join(patterns, " "), err, strings.TrimSpace(stderr.String()))
	}
	return parse(&stdout)
}

// parse reads the stream of JSON objects go list -json prints.
func parse(r io.Reader) (*graph, error) {
	g := &graph{pkgs: map[string]*Package{}}
	dec := json.NewDecoder(r)
	for {
		var p Package
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read go list output: %w", err)
		}
		if p.Module != nil && p.Module.Main {
			if g.module != "" && g.module != p.Module.Path {
				return nil, fmt.Errorf("read go list output: two main modules, %s and %s", g.module, p.Module.Path)
			}
			g.module = p.Module.Path
		}
		g.pkgs[p.ImportPath] = &p
	}
	if g.module == "" {
		return nil, errors.New("read go list output: no package of the main module")
	}
	return g, nil
}

// modulePackages returns the import paths of the main module's packages
// the patterns matched, sorted.
func (g *graph) modulePackages() []string {
	var paths []string
	for path, p := range g.pkgs {
		if g.inModule(path) && !p.DepOnly {
			paths = append(paths, path)
		}
	}
	sort.Strings(paths)
	return paths
}

// inModule reports whether path is a package of the main module: by
// what go list said of it, or by its path for a package it did not list.
func (g *graph) inModule(path string) bool {
	if p, ok := g.pkgs[path]; ok && p.Module != nil {
		return p.Module.Main
	}
	return path == g.module || strings.HasPrefix(path, g.module+"/")
}

// rel is path's folder relative to the module's root.
func (g *graph) rel(path string) string {
	if path == g.module {
		return ""
	}
	return strings.TrimPrefix(path, g.module+"/")
}
