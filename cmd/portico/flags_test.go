package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// TestParseArgs: flags are accepted before, between and after the
// positional arguments, "--" ends them, and every usage error names the
// flag or argument at fault.
func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    []string // the positional arguments
		hold    time.Duration
		backend string
		err     string // the message printed before the usage, "" for none
	}{
		{args: []string{"alice", "imap1"}, want: []string{"alice", "imap1"}},
		{args: []string{"-hold", "30s", "alice", "imap1"}, want: []string{"alice", "imap1"}, hold: 30 * time.Second},
		{args: []string{"alice", "imap1", "-hold", "30s"}, want: []string{"alice", "imap1"}, hold: 30 * time.Second},
		{args: []string{"alice", "-hold=30s", "imap1", "-backend", "b"}, want: []string{"alice", "imap1"}, hold: 30 * time.Second, backend: "b"},
		{args: []string{"--hold", "30s", "alice", "imap1"}, want: []string{"alice", "imap1"}, hold: 30 * time.Second},
		{args: []string{"alice", "--", "-imap1"}, want: []string{"alice", "-imap1"}},
		{args: []string{"--", "-alice", "-hold"}, want: []string{"-alice", "-hold"}},
		{args: []string{"alice", "-", "-hold", "1s"}, want: []string{"alice", "-"}, hold: time.Second},
		{args: []string{"alice"}, err: "portico test: missing BACKEND"},
		{args: nil, err: "portico test: missing USER"},
		{args: []string{"-hold", "1s"}, err: "portico test: missing USER"},
		{args: []string{"alice", "imap1", "x"}, err: `portico test: unexpected argument "x"`},
		{args: []string{"alice", "imap1", "-hold", "1s", "x"}, err: `portico test: unexpected argument "x"`},
		{args: []string{"alice", "imap1", "-foo"}, err: "flag provided but not defined: -foo"},
		{args: []string{"alice", "imap1", "-hold"}, err: "flag needs an argument: -hold"},
		{args: []string{"alice", "-hold", "soon", "imap1"}, err: `invalid value "soon" for flag -hold`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			fs := newFlagSet("test", "[-hold D] [-backend B] USER BACKEND")
			var out strings.Builder
			fs.SetOutput(&out)
			hold := fs.Duration("hold", 0, "")
			backend := fs.String("backend", "", "")
			pos, help, err := parseArgs(fs, tc.args, "USER", "BACKEND")
			if help {
				t.Fatal("help")
			}
			if tc.err != "" {
				if err != errUsage {
					t.Fatalf("err %v, want a usage error", err)
				}
				if first, _, _ := strings.Cut(out.String(), "\n"); !strings.HasPrefix(first, tc.err) {
					t.Fatalf("printed %q, want %q first", out.String(), tc.err)
				}
				if !strings.Contains(out.String(), "Usage: portico test ") {
					t.Fatalf("no usage printed: %q", out.String())
				}
				return
			}
			if err != nil || !slices.Equal(pos, tc.want) || *hold != tc.hold || *backend != tc.backend {
				t.Fatalf("got %q, -hold %v, -backend %q, err %v; want %q, %v, %q", pos, *hold, *backend, err, tc.want, tc.hold, tc.backend)
			}
			if out.Len() != 0 {
				t.Fatalf("printed %q", out.String())
			}
		})
	}
	t.Run("optional", func(t *testing.T) {
		fs := newFlagSet("test", "[USER]")
		fs.SetOutput(&strings.Builder{})
		if pos, _, err := parseArgs(fs, nil, "[USER]"); err != nil || len(pos) != 0 {
			t.Fatalf("%q %v", pos, err)
		}
		if pos, _, err := parseArgs(fs, []string{"bob"}, "[USER]"); err != nil || !slices.Equal(pos, []string{"bob"}) {
			t.Fatalf("%q %v", pos, err)
		}
	})
	t.Run("help", func(t *testing.T) {
		for _, args := range [][]string{{"-h"}, {"alice", "-h"}, {"alice", "imap1", "--help"}} {
			fs := newFlagSet("test", "USER BACKEND")
			fs.SetOutput(&strings.Builder{})
			if _, help, err := parseArgs(fs, args, "USER", "BACKEND"); !help || err != nil {
				t.Errorf("%q: help %v, err %v", args, help, err)
			}
		}
	})
}
