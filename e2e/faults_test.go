package e2e

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing"
)

const authFailed = "NO [AUTHENTICATIONFAILED] Authentication failed"

func last(lines []string) string { return lines[len(lines)-1] }

// TestWrongPasswordAndUnknownUser: both get the same answer, no sooner than
// the failure delay, and the client may retry on the same connection.
func TestWrongPasswordAndUnknownUser(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.dialRaw(t, true)

	start := time.Now()
	wrong := last(c.cmd("a1", `LOGIN "`+aliceUser+`" "wrong password"`))
	wrongTook := time.Since(start)
	start = time.Now()
	unknown := last(c.cmd("a2", `LOGIN "nobody@example.test" "whatever"`))
	unknownTook := time.Since(start)
	if wrong != "a1 "+authFailed || unknown != "a2 "+authFailed {
		t.Fatalf("wrong password: %q, unknown user: %q", wrong, unknown)
	}
	for _, d := range []time.Duration{wrongTook, unknownTook} {
		if d < 300*time.Millisecond {
			t.Errorf("failure answered after %v, before the failure delay", d)
		}
	}
	// Third try on the same connection succeeds (the limit is 3 failures).
	c.write("a3 LOGIN {" + strconv.Itoa(len(aliceUser)) + "+}\r\n" + aliceUser + " {" + strconv.Itoa(len(alicePass)) + "+}\r\n" + alicePass + "\r\n")
	r := c.until("a3")
	if !strings.HasPrefix(last(r), "a3 OK [CAPABILITY ") {
		t.Fatalf("login after failures: %q", r)
	}
	if got := last(c.cmd("a4", "SELECT INBOX")); !strings.HasPrefix(got, "a4 OK") {
		t.Fatalf("SELECT through splice: %q", got)
	}
}

// TestLoginBeforeSTARTTLS: credentials in clear are refused without asking
// Redis or a backend.
func TestLoginBeforeSTARTTLS(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.dialRaw(t, false)
	caps := c.cmd("c", "CAPABILITY")
	if !strings.Contains(caps[0], "STARTTLS") || !strings.Contains(caps[0], "LOGINDISABLED") || strings.Contains(caps[0], "AUTH=") {
		t.Fatalf("capabilities before TLS: %q", caps[0])
	}
	before := e.redisCommands(t)
	if got := last(c.cmd("a", `LOGIN "`+aliceUser+`" "x"`)); !strings.HasPrefix(got, "a NO [PRIVACYREQUIRED]") {
		t.Fatalf("LOGIN before STARTTLS: %q", got)
	}
	if got := last(c.cmd("b", "AUTHENTICATE PLAIN AGFsaWNlAHg=")); !strings.HasPrefix(got, "b NO [PRIVACYREQUIRED]") {
		t.Fatalf("AUTHENTICATE before STARTTLS: %q", got)
	}
	if n := e.redisCommands(t) - before; n != 1 { // the INFO above
		t.Fatalf("Redis saw %d commands during cleartext login attempts", n-1)
	}
	// After STARTTLS the capabilities are fresh and login works.
	c.startTLS(e)
	caps = c.cmd("c2", "CAPABILITY")
	if strings.Contains(caps[0], "STARTTLS") || strings.Contains(caps[0], "LOGINDISABLED") || !strings.Contains(caps[0], "AUTH=PLAIN") {
		t.Fatalf("capabilities after STARTTLS: %q", caps[0])
	}
	if got := last(c.cmd("l", `LOGIN "`+bobUser+`" "`+bobPass+`"`)); !strings.HasPrefix(got, "l OK") {
		t.Fatalf("LOGIN after STARTTLS: %q", got)
	}
}

// TestSTARTTLSInjection: commands sent in clear behind STARTTLS are never
// executed (CVE-2011-0411).
func TestSTARTTLSInjection(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.dialRaw(t, false)
	before := e.redisCommands(t)
	c.write("a STARTTLS\r\nb LOGIN \"" + bobUser + "\" \"" + bobPass + "\"\r\n")
	if got := c.line(); got != "a OK Begin TLS negotiation now" {
		t.Fatalf("STARTTLS: %q", got)
	}
	// The injected line went into the TLS handshake, which fails.
	tc := tls.Client(c.conn, e.tlsConfig())
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err == nil {
		c.br.Reset(tc)
		c.conn = tc
		// Even if a handshake worked, b must never be answered.
		c.write("x NOOP\r\n")
		if l := c.line(); strings.HasPrefix(l, "b ") {
			t.Fatalf("injected command executed: %q", l)
		}
	}
	if n := e.redisCommands(t) - before; n != 1 {
		t.Fatalf("Redis saw %d commands: the injected LOGIN ran", n-1)
	}
}

// TestRedisDown: NO [UNAVAILABLE] within the lookup timeout; the client can
// go on using the same connection.
func TestRedisDown(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.dialRaw(t, true)
	e.redis.Stop()
	start := time.Now()
	got := last(c.cmd("a", `LOGIN "`+aliceUser+`" "x"`))
	if !strings.HasPrefix(got, "a NO [UNAVAILABLE]") {
		t.Fatalf("Redis down: %q", got)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("answer took %v, lookup timeout is 1s", d)
	}
	if got := last(c.cmd("b", "NOOP")); got != "b OK NOOP completed" {
		t.Fatalf("connection unusable after UNAVAILABLE: %q", got)
	}
}

// TestBackendDown covers a backend that refuses connections and one that
// accepts but never greets.
func TestBackendDown(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()

	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()

	silent := silentServer(t)
	e.router.Defaults.LoginTimeout = time.Second
	for _, tc := range []struct{ name, addr string }{{"refused", closedAddr}, {"never-greets", silent.Addr().String()}} {
		t.Run(tc.name, func(t *testing.T) {
			user := tc.name + "@example.test"
			if err := e.router.SetRoute(ctx, user, routing.Record{Addr: tc.addr}); err != nil {
				t.Fatal(err)
			}
			c := e.dialRaw(t, true)
			start := time.Now()
			got := last(c.cmd("a", `LOGIN "`+user+`" "pw"`))
			if !strings.HasPrefix(got, "a NO [UNAVAILABLE]") {
				t.Fatalf("%s: %q", tc.name, got)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("%s: answer took %v", tc.name, d)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
