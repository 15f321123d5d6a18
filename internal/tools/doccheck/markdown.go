package main

import (
	"regexp"
	"strings"
)

// ref is a qualified Go identifier written in a markdown file: pkg.Name,
// or pkg.Type.Method, pkg.Type.Field and so on down a chain of selectors.
type ref struct {
	file  string
	line  int
	pkg   string   // the package as written: the last element of its import path
	names []string // Name, then each selector after it
}

func (r ref) String() string { return r.pkg + "." + strings.Join(r.names, ".") }

// qualified matches a dotted chain of identifiers: pkg.Name, pkg.T.M.
var qualified = regexp.MustCompile(`[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+`)

// declared matches what a Go snippet declares with := or var, which hides
// a package of that name in the rest of the snippet: `tap, err :=
// fdpass.Get(...)` then `tap.Close()`.
var declared = regexp.MustCompile(`(?:^|[^\w.])((?:[A-Za-z_]\w*\s*,\s*)*[A-Za-z_]\w*)\s*:=|\bvar\s+([A-Za-z_]\w*)`)

// scan returns the references to packages in pkgs that a markdown file
// makes in its code spans and in its go code blocks. It reads CommonMark
// closely enough for our docs: fenced blocks open with ``` or ~~~ and an
// info string and run to a closing fence or the end of the file, code
// spans may run over the lines of one paragraph.
func scan(file, src string, pkgs map[string]bool) []ref {
	var refs []ref
	lines := strings.Split(src, "\n")
	var (
		para      []string // the paragraph being read
		paraStart int
		fence     string // the open fence's marker; "" outside a block
		fenceGo   bool
		block     []string
		blockLine int
	)
	endPara := func() {
		refs = append(refs, spans(file, paraStart, strings.Join(para, "\n"), pkgs)...)
		para = para[:0]
	}
	for i, l := range lines {
		n := i + 1
		trimmed := strings.TrimLeft(l, " ")
		indent := len(l) - len(trimmed)
		if fence != "" {
			if indent < 4 && strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, fence[:1]+" \t") == "" {
				if fenceGo {
					refs = append(refs, goBlock(file, blockLine, strings.Join(block, "\n"), pkgs)...)
				}
				fence, block = "", block[:0]
				continue
			}
			block = append(block, l)
			continue
		}
		if marker := fenceMarker(trimmed); indent < 4 && marker != "" {
			endPara()
			fence = marker
			info := strings.Fields(strings.TrimLeft(trimmed, marker[:1]))
			fenceGo = len(info) > 0 && info[0] == "go"
			blockLine = n + 1
			continue
		}
		if strings.TrimSpace(l) == "" {
			endPara()
			continue
		}
		if len(para) == 0 {
			paraStart = n
		}
		para = append(para, l)
	}
	if fence != "" && fenceGo {
		refs = append(refs, goBlock(file, blockLine, strings.Join(block, "\n"), pkgs)...)
	}
	endPara()
	return refs
}

// fenceMarker returns the run of three or more backticks or tildes that
// opens a fenced code block at the start of s, or "".
func fenceMarker(s string) string {
	if !strings.HasPrefix(s, "```") && !strings.HasPrefix(s, "~~~") {
		return ""
	}
	end := len(s) - len(strings.TrimLeft(s, s[:1]))
	if s[0] == '`' && strings.Contains(s[end:], "`") {
		return "" // a code span, not a fence (CommonMark §4.5)
	}
	return s[:end]
}

// spans returns the references in the code spans of one paragraph that
// starts on line first.
func spans(file string, first int, text string, pkgs map[string]bool) []ref {
	var refs []ref
	for i := 0; i < len(text); {
		if text[i] == '\\' {
			i += 2
			continue
		}
		if text[i] != '`' {
			i++
			continue
		}
		n := ticks(text, i)
		open := i + n
		end := -1
		for j := open; j < len(text); {
			if text[j] != '`' {
				j++
				continue
			}
			if m := ticks(text, j); m == n {
				end = j
				break
			} else {
				j += m
			}
		}
		if end < 0 {
			i = open // a lone run of backticks is literal
			continue
		}
		line := first + strings.Count(text[:open], "\n")
		refs = append(refs, find(file, line, text[open:end], pkgs, nil)...)
		i = end + n
	}
	return refs
}

// ticks returns the number of backticks at text[i:].
func ticks(text string, i int) int {
	n := 0
	for i+n < len(text) && text[i+n] == '`' {
		n++
	}
	return n
}

// goBlock returns the references in a go code block that starts on line
// first, minus those through a name the block declares itself.
func goBlock(file string, first int, text string, pkgs map[string]bool) []ref {
	hidden := map[string]bool{}
	for _, m := range declared.FindAllStringSubmatch(text, -1) {
		for _, name := range strings.Split(m[1]+","+m[2], ",") {
			if name = strings.TrimSpace(name); name != "" {
				hidden[name] = true
			}
		}
	}
	return find(file, first, text, pkgs, hidden)
}

// find returns the references in text, which starts on line first,
// skipping those through a hidden name.
func find(file string, first int, text string, pkgs, hidden map[string]bool) []ref {
	var refs []ref
	for _, m := range qualified.FindAllStringIndex(text, -1) {
		s, e := m[0], m[1]
		if s > 0 && strings.ContainsRune("./-$", rune(text[s-1])) {
			continue // a path, or a selector on something else
		}
		if e < len(text) && strings.ContainsRune("/@", rune(text[e])) {
			continue // a path or a module version
		}
		parts := strings.Split(text[s:e], ".")
		if !pkgs[parts[0]] || hidden[parts[0]] {
			continue
		}
		refs = append(refs, ref{file: file, line: first + strings.Count(text[:s], "\n"), pkg: parts[0], names: parts[1:]})
	}
	return refs
}
