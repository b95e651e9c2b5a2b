package main

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testsrv"
)

// imapConn is a hand-driven client for the fleet test.
type imapConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialIMAP(t *testing.T, addr string) *imapConn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"imap"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	ic := &imapConn{t: t, c: c, br: bufio.NewReader(c)}
	ic.line()
	return ic
}

func (c *imapConn) line() string {
	c.t.Helper()
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (%q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

func (c *imapConn) cmd(tag, line string) string {
	c.t.Helper()
	io.WriteString(c.c, tag+" "+line+"\r\n")
	for {
		if l := c.line(); strings.HasPrefix(l, tag+" ") {
			return l
		}
	}
}

// TestFleetOperations drives a running `portico serve` with the admin
// subcommands against real Redis and two Dovecots: route set/get/explain,
// sessions, move of a user in IDLE (BYE, reconnect, new backend), drain and
// undrain, kick, backend list.
func TestFleetOperations(t *testing.T) {
	bin := binary(t)
	const user, pass = "alice@example.test", "alice-pw"
	r := testsrv.StartRedis(t)
	d1 := testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: map[string]string{user: pass}})
	d2 := testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: map[string]string{user: pass}})
	dir := t.TempDir()
	imaps := freeAddr(t)
	cfg := `
listeners:
  - {name: imaps, mode: imaps, address: "` + imaps + `"}
` + certFiles(t, dir) + `routing:
  redis: {addrs: ["` + r.Addr + `"]}
  health: {interval: 1s, timeout: 500ms}
backends:
  - {name: d1, address: "` + d1.Addr + `", forward_id: true}
  - {name: d2, address: "` + d2.Addr + `", forward_id: true}
backend_defaults: {security: starttls}
fleet: {heartbeat: 1s}
`
	p := writeConfig(t, dir, cfg)
	admin := func(args ...string) string {
		t.Helper()
		out, code := run(t, bin, nil, append(args[:1:1], append([]string{"-config", p}, args[1:]...)...)...)
		if code != 0 {
			t.Fatalf("portico %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}
	adminSub := func(sub string, args ...string) string {
		t.Helper()
		out, code := run(t, bin, nil, append([]string{sub, args[0], "-config", p}, args[1:]...)...)
		if code != 0 {
			t.Fatalf("portico %s %s: exit %d\n%s", sub, strings.Join(args, " "), code, out)
		}
		return out
	}

	if out := adminSub("route", "set", "-backend", "d1", user); !strings.Contains(out, "d1") {
		t.Fatalf("route set: %s", out)
	}
	if out := adminSub("route", "get", user); !strings.Contains(out, "d1") {
		t.Fatalf("route get: %s", out)
	}
	if out := adminSub("route", "explain", user); !strings.Contains(out, "result: d1") {
		t.Fatalf("route explain: %s", out)
	}

	serve, stderr := startServe(t, bin, p, imaps, 10*time.Second)

	// A session in IDLE on d1.
	c := dialIMAP(t, imaps)
	if l := c.cmd("a", "LOGIN "+user+" "+pass); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login: %q\n%s", l, stderr)
	}
	c.cmd("b", "SELECT INBOX")
	io.WriteString(c.c, "i IDLE\r\n")
	if l := c.line(); !strings.HasPrefix(l, "+") {
		t.Fatalf("IDLE: %q", l)
	}
	d1.WaitLog(t, "Login: user=<"+user+">", 5*time.Second)

	// The registry lists it fleet-wide.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(admin("sessions", user), "d1") {
		if time.Now().After(deadline) {
			t.Fatalf("session not listed:\n%s", admin("sessions", user))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out := admin("sessions"); !strings.Contains(out, user) || !strings.Contains(out, "\n1 session(s)") {
		t.Errorf("sessions (all):\n%s", out)
	}
	if out := admin("sessions", "-count"); out != "1 session(s)\n" {
		t.Errorf("sessions -count: %q", out)
	}
	if out := admin("sessions", "-limit", "1"); !strings.Contains(out, user) {
		t.Errorf("sessions -limit 1:\n%s", out)
	}

	// move: the IDLE client gets a BYE, reconnects and lands on d2.
	if out := admin("move", "-hold", "10s", user, "d2"); !strings.Contains(out, "moved to d2") {
		t.Fatalf("move: %s", out)
	}
	var rest []string
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			break
		}
		rest = append(rest, strings.TrimRight(l, "\r\n"))
	}
	if len(rest) == 0 || !strings.HasPrefix(rest[len(rest)-1], "* BYE [UNAVAILABLE]") {
		t.Fatalf("IDLE client after move got %q", rest)
	}
	c2 := dialIMAP(t, imaps)
	if l := c2.cmd("a", "LOGIN "+user+" "+pass); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login after move: %q", l)
	}
	d2.WaitLog(t, "Login: user=<"+user+">", 5*time.Second)
	if out := admin("kick", user); !strings.Contains(out, "kick sent") {
		t.Fatalf("kick: %s", out)
	}
	if l := c2.line(); !strings.HasPrefix(l, "* BYE [UNAVAILABLE]") {
		t.Fatalf("kicked client got %q", l)
	}

	// drain: no new logins on d2 (the user's backend) until undrained.
	adminSub("backend", "drain", "d2")
	if out := adminSub("backend", "list"); !strings.Contains(out, "drained since") {
		t.Fatalf("backend list: %s", out)
	}
	deadline = time.Now().Add(3 * time.Second)
	for {
		c3 := dialIMAP(t, imaps)
		l := c3.cmd("a", "LOGIN "+user+" "+pass)
		if strings.HasPrefix(l, "a NO [UNAVAILABLE]") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("login to a drained backend: %q", l)
		}
		time.Sleep(100 * time.Millisecond)
	}
	adminSub("backend", "undrain", "d2")
	deadline = time.Now().Add(3 * time.Second)
	for {
		c4 := dialIMAP(t, imaps)
		l := c4.cmd("a", "LOGIN "+user+" "+pass)
		if strings.HasPrefix(l, "a OK") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("login after undrain: %q", l)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if strings.Contains(stderr.String(), pass) {
		t.Fatal("a password reached the log")
	}

	// A clean stop takes the proxy's sessions out of the registry at once,
	// not three heartbeats later.
	deadline = time.Now().Add(3 * time.Second)
	for admin("sessions", "-count") == "0 session(s)\n" {
		if time.Now().After(deadline) {
			t.Fatal("the last login never reached the registry")
		}
		time.Sleep(50 * time.Millisecond)
	}
	serve.Process.Signal(syscall.SIGTERM)
	serve.Wait()
	if n := admin("sessions", "-count"); n != "0 session(s)\n" {
		t.Errorf("sessions -count right after a clean stop: %q", n)
	}
}
