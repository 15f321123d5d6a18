// Command doccheck checks that the Go names the docs write exist: every
// qualified identifier in a code span or a go code block of README.md and
// docs/**/*.md whose package is one of this module's (pkg.Name,
// pkg.Type.Method, pkg.Type.Field) must name an exported declaration of
// that package. It prints file:line: and what is wrong for each that does
// not, and exits 1 if there is any.
//
// Names of the standard library and of other modules (unix.EBUSY,
// hclog.Logger) are not checked, unless their package shares its name with
// one of ours; a name two of our packages share is checked against both.
// A package the docs name that no longer exists (netdev.Device after the
// package is gone) is not ours either, and goes unseen.
//
// Usage:
//
//	go run ./internal/tools/doccheck [-v] [-C dir] [-pkgs patterns] [file.md ...]
//
// It is a development tool, run by make lint.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	var usage usageError
	switch {
	case err == nil:
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "doccheck:", err)
		os.Exit(2)
	case errors.Is(err, errMisses):
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "doccheck:", err)
		os.Exit(1)
	}
}

// usageError is a bad command line.
type usageError struct{ error }

// errMisses is returned when a doc names something that does not exist;
// the misses are already printed.
var errMisses = errors.New("docs name what does not exist")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("doccheck", flag.ContinueOnError)
	fl.SetOutput(stderr)
	dir := fl.String("C", ".", "the module's root `dir`ectory")
	pkgPatterns := fl.String("pkgs", "./...", "the module's packages, as `patterns` for go list")
	verbose := fl.Bool("v", false, "print every reference checked, found or not")
	if err := fl.Parse(args); err != nil {
		return usageError{err}
	}
	files := fl.Args()
	if len(files) == 0 {
		var err error
		if files, err = docFiles(*dir); err != nil {
			return err
		}
	}

	idx, warnings, err := load(ctx, *dir, strings.Fields(*pkgPatterns))
	if err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintln(stderr, "doccheck: warning:", w)
	}
	pkgs := idx.names()
	misses := 0
	for _, f := range files {
		name := f
		if !filepath.IsAbs(f) {
			f = filepath.Join(*dir, f)
		}
		src, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		for _, r := range scan(name, string(src), pkgs) {
			why, goName := idx.check(r)
			switch {
			case why != "":
				fmt.Fprintf(stdout, "%s:%d: %s\n", r.file, r.line, why)
				misses++
			case *verbose && goName:
				fmt.Fprintf(stdout, "%s:%d: `%s` ok\n", r.file, r.line, r)
			case *verbose:
				fmt.Fprintf(stdout, "%s:%d: `%s` skipped: not a Go name\n", r.file, r.line, r)
			}
		}
	}
	if misses > 0 {
		return errMisses
	}
	return nil
}

// docFiles returns README.md and every .md file under docs/ in dir,
// relative to dir, sorted.
func docFiles(dir string) ([]string, error) {
	files := []string{"README.md"}
	err := filepath.WalkDir(filepath.Join(dir, "docs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".md") {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("find docs: %w", err)
	}
	sort.Strings(files[1:])
	return files, nil
}
