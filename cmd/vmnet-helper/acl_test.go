package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeIDs knows the users alice (1000) and groups kvm (108).
var fakeIDs = idLookup{
	user: func(name string) (uint32, error) {
		if name == "alice" {
			return 1000, nil
		}
		return 0, errors.New("unknown user")
	},
	group: func(name string) (uint32, error) {
		if name == "kvm" {
			return 108, nil
		}
		return 0, errors.New("unknown group")
	},
}

func mustACL(t *testing.T, text string) *acl {
	t.Helper()
	rules, includes, err := parseACL([]byte(text), "/etc/vmnet/bridge.conf", fakeIDs)
	if err != nil {
		t.Fatal(err)
	}
	if len(includes) != 0 {
		t.Fatalf("unexpected includes %v", includes)
	}
	return &acl{path: "/etc/vmnet/bridge.conf", rules: rules}
}

func TestACLCheck(t *testing.T) {
	alice := caller{uid: 1000, gids: []uint32{1000}}
	bob := caller{uid: 1001, gids: []uint32{1001, 108}}
	root := caller{uid: 0, gids: []uint32{0}}
	a := mustACL(t, `
# QEMU's bridge.conf lines
allow br0
	allow   virbr0  
deny br1
allow br1
allow br2 user alice
allow br3 group kvm
deny br0 user 1002
allow-tap vm%d user alice
allow-tap fixed0
deny-tap vm%d-x
allow-tap all group kvm
deny-tap eth0
`)
	for _, tc := range []struct {
		kind aclKind
		name string
		who  caller
		ok   bool
		why  string
	}{
		{kindBridge, "br0", alice, true, ""},
		{kindBridge, "virbr0", root, true, ""},
		{kindBridge, "br1", root, false, "denied at /etc/vmnet/bridge.conf:5"},
		{kindBridge, "br2", alice, true, ""},
		{kindBridge, "br2", bob, false, "no rule allows it"},
		{kindBridge, "br3", bob, true, ""},
		{kindBridge, "br3", alice, false, "no rule allows it"},
		{kindBridge, "br0", caller{uid: 1002, gids: []uint32{1002}}, false, "denied at /etc/vmnet/bridge.conf:9"},
		{kindBridge, "br9", root, false, "no rule allows it"},
		{kindTap, "br0", root, false, "no rule allows it"}, // bridge rules say nothing of TAP names
		{kindTap, "vm%d", alice, true, ""},
		{kindTap, "vm7", alice, true, ""},
		{kindTap, "vm", alice, false, "no rule allows it"},
		{kindTap, "vmx", alice, false, "no rule allows it"},
		{kindTap, "vm%d", bob, true, ""}, // allow-tap all group kvm
		{kindTap, "fixed0", root, true, ""},
		{kindTap, "fixed%d", root, false, "no rule allows it"},
		{kindTap, "eth0", bob, false, "denied at /etc/vmnet/bridge.conf:14"},
		{kindTap, "anything", bob, true, ""},
	} {
		err := a.check(tc.kind, tc.name, tc.who)
		if tc.ok {
			if err != nil {
				t.Errorf("%s %q for %s: got %v, want allowed", tc.kind, tc.name, tc.who, err)
			}
			continue
		}
		var de *deniedError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s %q for %s: got %v, want denied with %q", tc.kind, tc.name, tc.who, err, tc.why)
		}
	}
}

func TestACLParseErrors(t *testing.T) {
	for _, tc := range []struct {
		text, want string
	}{
		{"allow", ":1: allow without a name"},
		{"\n\npermit br0", `:3: unknown command "permit"`},
		{"allow br0 extra", `want nothing or "user U" or "group G"`},
		{"allow br0 user", `want nothing or "user U"`},
		{"allow br0 owner alice", `"owner": want user or group`},
		{"allow br0 user mallory", `user "mallory": unknown user`},
		{"allow br0 group wheel", `group "wheel": unknown group`},
		{"allow abcdefghijklmnop", "longer than 15 bytes"},
		{"allow br%d", "contains '%'"},
		{"allow-tap vm%d%d", "exactly one %d"},
		{"deny ../etc", "'/'"},
		{"include", "include without a path"},
		{"allow br0\x00", "control character"},
		{"allow br0\x1b[2J", "control character"},
	} {
		_, _, err := parseACL([]byte(tc.text), "/etc/vmnet/bridge.conf", fakeIDs)
		var ae *aclError
		if !errors.As(err, &ae) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/etc/vmnet/bridge.conf:") {
			t.Errorf("%q: got %v, want an access list error at file:line containing %q", tc.text, err, tc.want)
		}
	}
	if _, _, err := parseACL(make([]byte, aclMaxFile+1), "big", fakeIDs); err == nil {
		t.Error("oversized file: got nil error")
	}
}

func TestACLIncludesAndTrust(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	write("qemu.conf", "allow br0\n", 0o644)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	write("sub/deny.conf", "deny br0 user 1000\n", 0o644)
	main := write("main.conf", "include qemu.conf\ninclude "+filepath.Join(dir, "sub/deny.conf")+"\n", 0o644)
	a, err := loadACL(main, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.check(kindBridge, "br0", caller{uid: 0}); err != nil {
		t.Errorf("br0 for root through an include: %v", err)
	}
	if err := a.check(kindBridge, "br0", caller{uid: 1000}); err == nil {
		t.Error("br0 for uid 1000: allowed, want the included deny to win")
	}

	for _, tc := range []struct {
		name string
		file string
		want string
	}{
		{"missing include", write("a.conf", "include nosuch.conf\n", 0o644), "no such file"},
		{"include loop", write("b.conf", "include b.conf\n", 0o644), "include loop"},
		{"writable by others", write("c.conf", "allow br0\n", 0o666), "writable by group or others"},
		{"include of a writable file", write("d.conf", "include c.conf\n", 0o644), "writable by group or others"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := loadACL(tc.file, false); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	t.Run("symbolic link", func(t *testing.T) {
		link := filepath.Join(dir, "link.conf")
		os.Symlink(main, link)
		if _, err := loadACL(link, false); !errors.Is(err, errUntrusted) {
			t.Errorf("got %v, want a refusal of the link", err)
		}
		linkdir := filepath.Join(dir, "linkdir")
		os.Symlink(dir, linkdir)
		if _, err := loadACL(filepath.Join(linkdir, "main.conf"), false); !errors.Is(err, errUntrusted) {
			t.Errorf("through a linked folder: got %v, want a refusal", err)
		}
	})
	t.Run("deep nesting", func(t *testing.T) {
		for i := 0; i <= aclMaxDepth+1; i++ {
			write("n"+string(rune('a'+i))+".conf", "include n"+string(rune('a'+i+1))+".conf\n", 0o644)
		}
		write("n"+string(rune('a'+aclMaxDepth+2))+".conf", "allow br0\n", 0o644)
		if _, err := loadACL(filepath.Join(dir, "na.conf"), false); err == nil || !strings.Contains(err.Error(), "nested deeper") {
			t.Errorf("got %v, want a nesting error", err)
		}
	})
}

func TestACLPath(t *testing.T) {
	env := func(v string) func(string) string { return func(string) string { return v } }
	for _, tc := range []struct {
		flag, env string
		secure    bool
		want      string
		err       string
	}{
		{"", "", false, defaultACL, ""},
		{"/f", "/e", false, "/f", ""},
		{"", "/e", false, "/e", ""},
		{"", "", true, defaultACL, ""},
		{"/f", "", true, "", "--acl is refused"},
		{"", "/e", true, "", aclEnv + " is refused"},
	} {
		got, err := aclPath(tc.flag, env(tc.env), tc.secure)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("aclPath(%q, %q, %v): got %q, %v; want an error containing %q", tc.flag, tc.env, tc.secure, got, err, tc.err)
			}
		} else if err != nil || got != tc.want {
			t.Errorf("aclPath(%q, %q, %v): got %q, %v; want %q", tc.flag, tc.env, tc.secure, got, err, tc.want)
		}
	}
}

// FuzzParseACL: no panic; errors are *aclError with a place; every rule
// parsed has a name the kernel would accept (or "all"), and checking any
// name against the rules never panics.
func FuzzParseACL(f *testing.F) {
	for _, s := range []string{
		"allow br0\ndeny br1\n",
		"# comment\n  allow\tvirbr0  \ninclude /etc/qemu/bridge.conf\n",
		"allow-tap vm%d user alice\ndeny-tap all group kvm\n",
		"allow br0 user 4294967296\n",
		"deny all\nallow all\n",
	} {
		f.Add([]byte(s), "vm3")
	}
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		rules, includes, err := parseACL(data, "/etc/vmnet/fuzz.conf", fakeIDs)
		if err != nil {
			var ae *aclError
			if !errors.As(err, &ae) || !strings.HasPrefix(ae.where, "/etc/vmnet/fuzz.conf") {
				t.Fatalf("error %v is not an aclError with a place", err)
			}
			return
		}
		for _, r := range rules {
			if r.name == "" || (r.name != "all" && r.kind == kindBridge && strings.Contains(r.name, "%")) {
				t.Fatalf("rule %+v: bad name", r)
			}
		}
		for _, inc := range includes {
			if !filepath.IsAbs(inc) {
				t.Fatalf("include %q not made absolute", inc)
			}
		}
		a := &acl{path: "fuzz.conf", rules: rules}
		for _, k := range []aclKind{kindBridge, kindTap} {
			err := a.check(k, name, caller{uid: 1000, gids: []uint32{108}})
			var de *deniedError
			if err != nil && !errors.As(err, &de) {
				t.Fatalf("check: %v is not a deniedError", err)
			}
		}
	})
}
