package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
)

// defaultConfig is the config path the documentation's examples use; the
// tests put their own file in its place.
const defaultConfig = "/etc/portico/portico.yaml"

// documentedCommands returns the portico command lines of the
// documentation, in order, without their comments: the lines of README.md's
// code blocks that start with "portico ", and the comment lines of the
// example config that do.
func documentedCommands(t *testing.T) []string {
	t.Helper()
	var cmds []string
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	inBlock := false
	for _, l := range strings.Split(string(readme), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "```") {
			inBlock = !inBlock
		} else if inBlock && strings.HasPrefix(l, "portico ") {
			cmds = append(cmds, withoutComment(l))
		}
	}
	example, err := os.ReadFile("../../config/portico.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(example), "\n") {
		if c, ok := strings.CutPrefix(strings.TrimSpace(l), "#"); ok && strings.HasPrefix(strings.TrimSpace(c), "portico ") {
			cmds = append(cmds, withoutComment(strings.TrimSpace(c)))
		}
	}
	return cmds
}

func withoutComment(l string) string {
	if i := strings.Index(l, " #"); i >= 0 {
		l = l[:i]
	}
	return strings.TrimSpace(l)
}

// TestDocumentedCommands runs every portico command line of README.md and
// of the example config as written (with the test's config file in place
// of /etc/portico/portico.yaml, or added as -config at the end where a
// line leaves it out) against a real Redis and a running `portico serve`,
// in the order they appear. Each must exit 0, so that the documentation
// cannot drift from the command line again. A line of a command this test
// does not know must at least parse: it may fail, but not with a usage
// error (exit 2).
func TestDocumentedCommands(t *testing.T) {
	bin := binary(t)
	r := testsrv.StartRedis(t)
	var addrs []string
	for range 2 {
		be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice@example.com", Password: "alice-pw"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { be.Close() })
		addrs = append(addrs, be.Addr())
	}
	dir := t.TempDir()
	imaps := freeAddr(t)
	// The names are the README's: backends imap1 and imap2 in pool main.
	p := writeConfig(t, dir, `
pid_file: `+filepath.Join(dir, "portico.pid")+`
listeners:
  - {name: imaps, mode: imaps, address: "`+imaps+`"}
`+certFiles(t, dir)+`routing:
  default_domain: example.com
  redis: {addrs: ["`+r.Addr+`"]}
  pools:
    - {name: main, backends: [imap1, imap2], policy: assign}
  domain_pools: {example.com: main}
backends:
  - {name: imap1, address: "`+addrs[0]+`"}
  - {name: imap2, address: "`+addrs[1]+`", weight: 2}
fleet: {move_hold: 5s}
`)

	lines := documentedCommands(t)
	// The command lines of issue 7, flags between and after the arguments.
	lines = append(lines,
		"portico route set -config "+defaultConfig+" mover@example.test -backend imap1",
		"portico move -config "+defaultConfig+" mover@example.test imap2 -hold 30s",
		"portico backend drain -config "+defaultConfig+" imap1 -deadline 2h -window 10m",
		"portico backend undrain imap1 -config "+defaultConfig,
		"portico route -config "+defaultConfig+" delete mover@example.test",
	)
	for _, want := range []string{"serve", "route", "backend", "move", "sessions", "limits"} {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "portico "+want+" ") }) {
			t.Errorf("no `portico %s` example found in README.md", want)
		}
	}
	known := map[string]bool{}
	for _, c := range commands {
		known[c.name] = true
	}
	var serve func()
	for _, line := range lines {
		args := shellWords(line)[1:]
		for i, a := range args {
			if a == defaultConfig {
				args[i] = p
			}
		}
		switch sub := args[0]; {
		case !known[sub]:
			t.Errorf("%s: no command %q", line, sub)
		case sub == "serve":
			cmd, stderr, _ := startBinary(t, bin, args...)
			if err := testsrv.WaitDial(imaps, 10*time.Second); err != nil {
				t.Fatalf("%s: did not listen: %v\n%s", line, err, stderr)
			}
			serve = func() {
				cmd.Process.Signal(syscall.SIGTERM)
				if err := cmd.Wait(); err != nil {
					t.Errorf("%s: exit: %v\n%s", line, err, stderr)
				}
			}
		case sub == "upgrade":
			// TestUpgrade runs it against a serve and a second binary;
			// here, as written, it parses.
			if out, code := run(t, bin, nil, append(args, "-h")...); code != 0 {
				t.Errorf("%s -h: exit %d\n%s", line, code, out)
			}
		case sub == "reload":
			if serve == nil {
				t.Fatalf("%s: comes before any portico serve", line)
			}
			fallthrough
		case sub == "check-config" || sub == "version" || sub == "certs" ||
			sub == "route" || sub == "backend" || sub == "kick" || sub == "move" || sub == "sessions" || sub == "limits":
			if sub != "check-config" && sub != "version" && !slices.Contains(args, p) {
				args = append(args, "-config", p)
			}
			if out, code := run(t, bin, nil, args...); code != 0 {
				t.Errorf("%s: exit %d\n%s", line, code, out)
			}
		default:
			// A command that runs against something else (a load test, the
			// demo): as written, it parses.
			if out, code := runWithin(t, 5*time.Second, bin, nil, args...); code == 2 {
				t.Errorf("%s: usage error\n%s", line, out)
			}
		}
	}
	if serve == nil {
		t.Fatal("README.md has no `portico serve` example")
	}
	serve()
}

// TestReadmeAlertRules: the alert rules the README suggests load in the
// real `promtool check rules`, and name only metrics its metric table
// documents.
func TestReadmeAlertRules(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	_, after, ok := strings.Cut(text, "**Alerts worth setting**")
	if !ok {
		t.Fatal("README has no alert rules")
	}
	_, block, _ := strings.Cut(after, "```yaml\n")
	block, _, _ = strings.Cut(block, "```")
	file := filepath.Join(t.TempDir(), "alerts.yml")
	if err := os.WriteFile(file, []byte(block), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testsrv.LookPath(t, "promtool"), "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s\n%s", err, out, block)
	}
	for _, name := range regexp.MustCompile(`portico_[a-z_]+`).FindAllString(block, -1) {
		name = strings.TrimSuffix(name, "_bucket")
		if !strings.Contains(text, "| `"+name+"`") && !strings.Contains(text, "`"+name+"`, `") {
			t.Errorf("alert rule uses %s, which the README's metric table does not list", name)
		}
	}
}
