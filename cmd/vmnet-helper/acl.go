package main

import (
	"fmt"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vmnet-dev/vmnet/backend/tap"
)

// The access list says which bridges a caller may attach a TAP to and
// which TAP names it may ask for. It reads qemu-bridge-helper's
// bridge.conf format, so an existing /etc/qemu/bridge.conf can be
// included as it is, and extends it:
//
//	allow NAME|all [user U|group G]      a bridge the caller may use
//	deny  NAME|all [user U|group G]
//	allow-tap NAME|TEMPLATE|all [user U|group G]   a TAP name (exec, serve-fds)
//	deny-tap  NAME|TEMPLATE|all [user U|group G]
//	include PATH                          another file; relative to this one's folder
//	# comment                             (whole lines only)
//
// A rule without a subject applies to every caller; U and G are names or
// numbers. Nothing is allowed unless a rule allows it, and a matching deny
// wins over any allow, wherever it stands. Unlike qemu-bridge-helper,
// which ignores an include it cannot read and any words after the name,
// both are errors here: a file that is not read as written is refused.

// defaultACL is where the access list lives unless --acl or
// VMNET_HELPER_ACL say otherwise (which they may not when vmnet-helper
// runs setuid or with file capabilities). Packagers may set it at build
// time: -ldflags "-X main.defaultACL=/etc/vmnet/bridge.conf".
var defaultACL = "/etc/vmnet/bridge.conf"

// aclEnv names the environment variable that overrides defaultACL.
const aclEnv = "VMNET_HELPER_ACL"

// Limits on what an access list may make the helper read.
const (
	aclMaxDepth = 8       // nested includes
	aclMaxFile  = 1 << 20 // bytes in one file
	aclMaxRules = 10000   // rules in all files
)

type aclKind int

const (
	kindBridge aclKind = iota
	kindTap
)

func (k aclKind) String() string {
	if k == kindTap {
		return "TAP name"
	}
	return "bridge"
}

// aclSubject is who a rule is about: everyone, a uid or a gid.
type aclSubject struct {
	kind string // "", "user" or "group"
	id   uint32
}

type aclRule struct {
	allow   bool
	kind    aclKind
	name    string // "all", an interface name, or (TAP rules) a template
	subject aclSubject
	where   string // file:line, for messages
}

// idLookup resolves user and group names in subjects; tests replace it.
type idLookup struct {
	user  func(name string) (uint32, error)
	group func(name string) (uint32, error)
}

var systemIDs = idLookup{
	user: func(name string) (uint32, error) {
		u, err := user.Lookup(name)
		if err != nil {
			return 0, err
		}
		n, err := strconv.ParseUint(u.Uid, 10, 32)
		return uint32(n), err
	},
	group: func(name string) (uint32, error) {
		g, err := user.LookupGroup(name)
		if err != nil {
			return 0, err
		}
		n, err := strconv.ParseUint(g.Gid, 10, 32)
		return uint32(n), err
	},
}

// aclError is a problem in an access list, with where it is.
type aclError struct {
	where string
	msg   string
	err   error
}

func (e *aclError) Error() string {
	s := "access list " + e.where + ": " + e.msg
	if e.err != nil {
		s += ": " + e.err.Error()
	}
	return s
}

func (e *aclError) Unwrap() error { return e.err }

// parseACL parses one file's text. It returns its rules and the include
// paths (made absolute against the file's folder), in order. It never
// panics; every error is an *aclError naming file and line.
func parseACL(data []byte, file string, ids idLookup) (rules []aclRule, includes []string, err error) {
	if len(data) > aclMaxFile {
		return nil, nil, &aclError{where: file, msg: fmt.Sprintf("%d bytes, more than %d", len(data), aclMaxFile)}
	}
	for i, line := range strings.Split(string(data), "\n") {
		where := fmt.Sprintf("%s:%d", file, i+1)
		bad := func(format string, args ...any) error {
			return &aclError{where: where, msg: fmt.Sprintf(format, args...)}
		}
		line = strings.TrimRight(line, "\r")
		for _, r := range line {
			if r != '\t' && (r < ' ' || r == 0x7f) {
				return nil, nil, bad("control character %q", r)
			}
		}
		words := strings.Fields(line)
		if len(words) == 0 || strings.HasPrefix(words[0], "#") {
			continue
		}
		verb := words[0]
		if verb == "include" {
			path := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "include"))
			if path == "" {
				return nil, nil, bad("include without a path")
			}
			if !filepath.IsAbs(path) {
				path = filepath.Join(filepath.Dir(file), path)
			}
			includes = append(includes, filepath.Clean(path))
			continue
		}
		var r aclRule
		switch verb {
		case "allow":
			r = aclRule{allow: true, kind: kindBridge}
		case "deny":
			r = aclRule{kind: kindBridge}
		case "allow-tap":
			r = aclRule{allow: true, kind: kindTap}
		case "deny-tap":
			r = aclRule{kind: kindTap}
		default:
			return nil, nil, bad("unknown command %q (want allow, deny, allow-tap, deny-tap or include)", clipWord(verb))
		}
		r.where = where
		if len(words) < 2 {
			return nil, nil, bad("%s without a name", verb)
		}
		r.name = words[1]
		if r.name != "all" {
			if err := tap.ValidateName(r.name, r.kind == kindTap); err != nil {
				return nil, nil, &aclError{where: where, msg: verb, err: err}
			}
		}
		switch len(words) {
		case 2:
		case 4:
			if r.subject, err = parseSubject(words[2], words[3], ids); err != nil {
				return nil, nil, &aclError{where: where, msg: verb + " " + r.name, err: err}
			}
		default:
			return nil, nil, bad("%s %s: want nothing or \"user U\" or \"group G\" after the name, got %q",
				verb, r.name, clipWord(strings.Join(words[2:], " ")))
		}
		rules = append(rules, r)
		if len(rules) > aclMaxRules {
			return nil, nil, bad("more than %d rules", aclMaxRules)
		}
	}
	return rules, includes, nil
}

func parseSubject(kind, who string, ids idLookup) (aclSubject, error) {
	var lookup func(string) (uint32, error)
	switch kind {
	case "user":
		lookup = ids.user
	case "group":
		lookup = ids.group
	default:
		return aclSubject{}, fmt.Errorf("%q: want user or group", clipWord(kind))
	}
	if n, err := strconv.ParseUint(who, 10, 32); err == nil {
		return aclSubject{kind: kind, id: uint32(n)}, nil
	}
	id, err := lookup(who)
	if err != nil {
		return aclSubject{}, fmt.Errorf("%s %q: %w", kind, clipWord(who), err)
	}
	return aclSubject{kind: kind, id: id}, nil
}

func clipWord(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// caller is who asks: a uid and every gid it has, primary first.
type caller struct {
	uid  uint32
	gids []uint32
}

func (c caller) String() string { return fmt.Sprintf("uid %d", c.uid) }

func (s aclSubject) matches(c caller) bool {
	switch s.kind {
	case "user":
		return c.uid == s.id
	case "group":
		for _, g := range c.gids {
			if g == s.id {
				return true
			}
		}
		return false
	}
	return true
}

// nameMatches reports whether a rule's name covers the name asked for.
// A template rule ("vm%d") covers the template itself and every name the
// kernel could make of it ("vm0", "vm17"); a plain rule covers only that
// name, never a template (the kernel could pick any number).
func nameMatches(rule, name string) bool {
	if rule == "all" || rule == name {
		return true
	}
	if !tap.IsTemplate(rule) || tap.IsTemplate(name) {
		return false
	}
	prefix, suffix, _ := strings.Cut(rule, "%d")
	if len(name) <= len(prefix)+len(suffix) || !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) {
		return false
	}
	digits := name[len(prefix) : len(name)-len(suffix)]
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return false
		}
	}
	return true
}

// acl is a loaded access list: the rules of a file and its includes.
type acl struct {
	path  string
	rules []aclRule
}

// deniedError says the access list does not let c use name.
type deniedError struct {
	acl  string
	kind aclKind
	name string
	who  caller
	rule string // the deny rule's file:line, or "" when no allow matched
}

func (e *deniedError) Error() string {
	why := "no rule allows it"
	if e.rule != "" {
		why = "denied at " + e.rule
	}
	return fmt.Sprintf("access denied: %s may not use %s %q (%s; access list %s)", e.who, e.kind, e.name, why, e.acl)
}

// check returns nil when c may use the bridge or TAP name, a
// *deniedError otherwise.
func (a *acl) check(kind aclKind, name string, c caller) error {
	allowed := false
	for _, r := range a.rules {
		if r.kind != kind || !r.subject.matches(c) || !nameMatches(r.name, name) {
			continue
		}
		if !r.allow {
			return &deniedError{acl: a.path, kind: kind, name: name, who: c, rule: r.where}
		}
		allowed = true
	}
	if !allowed {
		return &deniedError{acl: a.path, kind: kind, name: name, who: c}
	}
	return nil
}
