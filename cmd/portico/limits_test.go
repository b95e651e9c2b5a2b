package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
)

// TestLimitsCommand drives a running `portico serve` into its
// failed-login limits and out of them with `portico limits show|clear`:
// an address blocked after three failures still lets in a user who
// logged in from it before (a known address), a user blocked at that
// address is let in again once cleared, and the command explains what it
// refuses.
func TestLimitsCommand(t *testing.T) {
	bin := binary(t)
	const user, pass = "alice@example.com", "alice-pw"
	r := testsrv.StartRedis(t)
	mem, err := membackend.Start("127.0.0.1:0", membackend.User{Name: user, Password: pass})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	dir := t.TempDir()
	imaps := freeAddr(t)
	p := writeConfig(t, dir, `
listeners:
  - {name: imaps, mode: imaps, address: "`+imaps+`"}
`+certFiles(t, dir)+`limits:
  auth_failure_delay: 10ms
  max_auth_failures: 100
  brute_force:
    ip: {delay_after: 3, block_after: 3}
    user_ip: {delay_after: 2, block_after: 2}
    delay: 1ms
    max_delay: 5ms
    password_hash_key: {env: PORTICO_TEST_BF_KEY}
routing:
  static: [{user: `+user+`, backend: mem}]
  redis: {addrs: ["`+r.Addr+`"]}
  health: {disabled: true}
backends:
  - {name: mem, address: "`+mem.Addr()+`"}
`)
	t.Setenv("PORTICO_TEST_BF_KEY", "a-long-enough-test-key-for-hmac") // serve inherits it
	var env []string
	limitsCmd := func(wantCode int, args ...string) string {
		t.Helper()
		out, code := run(t, bin, env, append([]string{"limits"}, append(args, "-config", p)...)...)
		if code != wantCode {
			t.Fatalf("portico limits %s: exit %d, want %d\n%s", strings.Join(args, " "), code, wantCode, out)
		}
		return out
	}
	_, stderr := startServe(t, bin, p, imaps, 10*time.Second)

	c := dialIMAP(t, imaps)
	login := func(tag, u, pw, want string) {
		t.Helper()
		if l := c.cmd(tag, "LOGIN "+u+" "+pw); !strings.HasPrefix(l, tag+" "+want) {
			t.Fatalf("login %s: %q, want %s\n%s", u, l, want, stderr)
		}
	}
	// Alice logs in: 127.0.0.1 becomes known for her.
	login("a", user, pass, "OK")
	c = dialIMAP(t, imaps)
	for i, u := range []string{"bob@example.com", "carol@example.com", "dave@example.com"} {
		login(string(rune('b'+i)), u, "guess", "NO [AUTHENTICATIONFAILED]")
	}
	out := limitsCmd(0, "show", "127.0.0.1")
	if !regexp.MustCompile(`^127\.0\.0\.1/32: 3\.0 failures \(delay from 3, block at 3, 3 forgotten per 30m\); blocked until \S+ \(\S+ left\)\n$`).MatchString(out) {
		t.Errorf("show 127.0.0.1:\n%s", out)
	}
	// Blocked for strangers, not for alice.
	login("e", "erin@example.com", "guess", "NO [AUTHENTICATIONFAILED]")
	login("f", user, pass, "OK")

	// Two wrong passwords block alice at this address, the right one too.
	c = dialIMAP(t, imaps)
	login("g", user, "typo1", "NO [AUTHENTICATIONFAILED]")
	login("h", user, "typo2", "NO [AUTHENTICATIONFAILED]")
	login("i", user, pass, "NO [AUTHENTICATIONFAILED]")
	out = limitsCmd(0, "show", "Alice@Example.com")
	for _, want := range []string{
		"alice@example.com: 2.0 failures (delay from 10, block at 50, 50 forgotten per 1h); not blocked\n",
		"  from 127.0.0.1/32: 2.0 failures (delay from 2, block at 2, 2 forgotten per 15m); blocked until ",
		"  known address 127.0.0.1/32 until ",
		"  recent wrong passwords: 2 (kept as keyed hashes)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("show alice: no %q in\n%s", want, out)
		}
	}
	if out := limitsCmd(0, "clear", user); !strings.Contains(out, "alice@example.com: cleared") {
		t.Errorf("clear alice: %s", out)
	}
	login("j", user, pass, "OK")

	if out := limitsCmd(0, "clear", "127.0.0.1"); !strings.HasPrefix(out, "127.0.0.1/32: cleared") {
		t.Errorf("clear 127.0.0.1: %s", out)
	}
	if out := limitsCmd(0, "show", "127.0.0.1"); !strings.HasPrefix(out, "127.0.0.1/32: 0.0 failures") || !strings.Contains(out, "not blocked") {
		t.Errorf("show after clear: %s", out)
	}
	c = dialIMAP(t, imaps)
	login("k", "erin@example.com", "guess", "NO [AUTHENTICATIONFAILED]")

	// What it refuses, and why.
	if out := limitsCmd(1, "show", "10.0.0.0/8"); !strings.Contains(out, "addresses are counted one by one for IPv4") {
		t.Errorf("show 10.0.0.0/8: %s", out)
	}
	if out := limitsCmd(1, "show", "bad user"); !strings.Contains(out, `user name "bad user"`) {
		t.Errorf("show 'bad user': %s", out)
	}
	limitsCmd(2, "show")
	limitsCmd(2, "unblock", "127.0.0.1")
	// No password reached the log.
	for _, pw := range []string{pass, "typo1", "typo2", "guess"} {
		if strings.Contains(stderr.String(), pw) {
			t.Errorf("the log holds %q", pw)
		}
	}
}
