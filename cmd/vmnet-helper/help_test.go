package main

import (
	"errors"
	"flag"
	"strings"
	"testing"
)

// Every command's --help prints its usage and each of its flags with its
// default, on standard output, and exits 0; a flag it does not take
// prints its usage, not the whole program's, on standard error.
func TestCommandHelp(t *testing.T) {
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			words := strings.Fields(c.name)
			shown := c.name
			if c.shown != "" {
				shown = c.shown
			}
			for _, h := range []string{"--help", "-h"} {
				out, errOut, err := runHelper(append(words, h)...)
				if err != nil || errOut != "" {
					t.Fatalf("%s %s: got %v, stderr %q; want usage on stdout and no error", c.name, h, err, errOut)
				}
				if !strings.HasPrefix(out, "usage: vmnet-helper "+shown) || strings.Contains(out, "commands:") {
					t.Errorf("%s %s: got\n%s\nwant the usage of %s alone", c.name, h, out, c.name)
				}
				for _, want := range append([]string{"\nflags:\n", "  --log-level string", "(default info)"}, c.about...) {
					if !strings.Contains(out, want) {
						t.Errorf("%s %s: usage lacks %q:\n%s", c.name, h, want, out)
					}
				}
				// One line per flag, each flag of the synopsis among them.
				flags := out[strings.Index(out, "\nflags:\n")+len("\nflags:\n"):]
				for _, l := range strings.Split(strings.TrimSuffix(flags, "\n"), "\n") {
					if !strings.HasPrefix(l, "  --") {
						t.Errorf("%s %s: flag line %q, want one line per flag", c.name, h, l)
					}
				}
				for _, w := range strings.Fields(strings.Join(c.synopsis, " ")) {
					w = strings.Trim(w, "[]|")
					if name, _, _ := strings.Cut(w, "="); strings.HasPrefix(name, "--") && name != "--" &&
						!strings.Contains(flags, "  "+name+" ") {
						t.Errorf("%s %s: the synopsis names %s, the flags do not", c.name, h, name)
					}
				}
			}
			out, errOut, err := runHelper(append(words, "--no-such-flag")...)
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), "no-such-flag") {
				t.Errorf("%s --no-such-flag: got %v, want a usage error naming the flag", c.name, err)
			}
			if out != "" || !strings.HasPrefix(errOut, "usage: vmnet-helper "+shown) || strings.Contains(errOut, "commands:") {
				t.Errorf("%s --no-such-flag: stdout %q, stderr\n%s\nwant the command's usage on stderr", c.name, out, errOut)
			}
		})
	}
}

// The whole program's usage lists every command, and tap's its own.
func TestUsage(t *testing.T) {
	out, _, err := runHelper("help")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range commands {
		shown := c.name
		if c.shown != "" {
			shown = c.shown
		}
		if !strings.Contains(out, "\n  "+shown+" "+c.synopsis[0]+"\n") {
			t.Errorf("usage lacks %s's synopsis:\n%s", c.name, out)
		}
	}
	out, _, err = runHelper("tap", "--help")
	if err != nil || !strings.Contains(out, "vmnet-helper tap delete [--netns NAME] NAME") || strings.Contains(out, "vhost-user") {
		t.Errorf("tap --help: got %v:\n%s\nwant tap's commands alone", err, out)
	}
}

func TestCommandUsageDefaults(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Bool("on", true, "a flag on by default")
	fs.Bool("off", false, "a flag off by default")
	fs.Int("n", 0, "a `count`")
	fs.String("s", "", "no default")
	got := commandUsage(fs)
	want := "usage: vmnet-helper x [FLAGS]\n\nflags:\n" +
		"  --n count   a count (default 0)\n" +
		"  --off       a flag off by default\n" +
		"  --on        a flag on by default (default true)\n" +
		"  --s string  no default\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
