package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// POP3 sessions through the same Server as IMAP: the pre-auth commands,
// the shared login path worded for POP3, the hand-off and the splice, and
// kicks at response boundaries. The backend is a small POP3 server in
// the transaction state (pop3Backend); Server.LoginPOP3 stands in for
// upstream.LoginPOP3, which has tests of its own against Dovecot.

// pop3Harness is a harness with a pop3s and a pop3 (STLS) listener and
// alice routed to a pop3Backend.
type pop3Harness struct {
	*harness
	pop3s, pop3, pop3Clear string
	backend                *pop3Backend
	logins                 atomic.Int64
	lastCred               atomic.Pointer[upstream.Credentials]
}

func newPOP3Harness(t *testing.T, tune func(*proxy.Limits), setup ...func(*proxy.Server)) *pop3Harness {
	t.Helper()
	ph := &pop3Harness{}
	h := newHarnessWith(t, tune, func(s *proxy.Server) {
		s.LoginPOP3 = ph.login
		for _, f := range setup {
			f(s)
		}
	})
	ph.harness = h
	ph.backend = &pop3Backend{messages: [][]byte{
		[]byte("Subject: one\r\n\r\nhello\r\n.dotted line\r\n..\r\n"),
		bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n"), 1<<14), // 1 MiB
	}}
	fs := startFakeServer(t, ph.backend.handle)
	t.Cleanup(fs.close)
	h.router.add("alice@example.test", &routing.Backend{Name: "pop", Addr: h.mem.Addr(), POP3Addr: fs.addr()})
	h.router.add("nopop@example.test", &routing.Backend{Name: "imap-only", Addr: h.mem.Addr()})
	ph.pop3s = h.serve(proxy.Listener{Name: "pop3s", Mode: proxy.POP3S})
	ph.pop3 = h.serve(proxy.Listener{Name: "pop3", Mode: proxy.POP3})
	ph.pop3Clear = h.serve(proxy.Listener{
		Name: "pop3-clear", Mode: proxy.POP3,
		CleartextLogin: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	})
	return ph
}

// login is the Server's LoginPOP3: alice's password opens the backend's
// transaction state at once.
func (ph *pop3Harness) login(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error) {
	ph.logins.Add(1)
	ph.lastCred.Store(&cred)
	if b.POP3Addr == "" {
		return nil, fmt.Errorf("upstream: %s serves no POP3", b)
	}
	switch cred.Secret {
	case alicePW:
	case "locked":
		return nil, fmt.Errorf("-ERR [IN-USE] locked: %w", upstream.ErrInUse)
	case "delay":
		return nil, fmt.Errorf("-ERR [LOGIN-DELAY] wait: %w", upstream.ErrLoginDelay)
	default:
		return nil, upstream.ErrAuthFailed
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", b.POP3Addr)
	if err != nil {
		return nil, err
	}
	return &upstream.Result{Conn: c}, nil
}

func (ph *pop3Harness) clientTLS() *tls.Config {
	c := ph.harness.clientTLS.Clone()
	c.NextProtos = []string{"pop3"}
	return c
}

func (ph *pop3Harness) dialPOP3S(t *testing.T) *client {
	t.Helper()
	c := ph.dial(t, ph.pop3s)
	c.upgrade(ph.clientTLS())
	c.expect("+OK Portico ready.")
	return c
}

// capa sends CAPA and returns the listed capabilities.
func (c *client) capa() []string {
	c.t.Helper()
	c.send("CAPA\r\n")
	c.expect("+OK Capability list follows")
	var caps []string
	for {
		l := c.line()
		if l == "." {
			return caps
		}
		caps = append(caps, l)
	}
}

func (ph *pop3Harness) loginPOP3(t *testing.T) *client {
	t.Helper()
	c := ph.dialPOP3S(t)
	c.send("USER alice\r\n")
	c.expect("+OK Send PASS.")
	c.send("PASS " + alicePW + "\r\n")
	c.expect("+OK Logged in.")
	return c
}

// pop3Backend serves the POP3 transaction state over a fixed mailbox.
// The second message goes out in slices with pauses, so that a kick can
// arrive in the middle of it.
type pop3Backend struct {
	messages [][]byte
	quits    atomic.Int64
}

func (b *pop3Backend) handle(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		switch strings.ToUpper(verb) {
		case "STAT":
			fmt.Fprintf(c, "+OK %d %d\r\n", len(b.messages), len(b.messages[0])+len(b.messages[1]))
		case "LIST":
			if arg != "" {
				fmt.Fprintf(c, "+OK %s %d\r\n", arg, len(b.messages[0]))
				continue
			}
			fmt.Fprintf(c, "+OK 2 messages\r\n1 %d\r\n2 %d\r\n.\r\n", len(b.messages[0]), len(b.messages[1]))
		case "RETR":
			n, _ := strconv.Atoi(arg)
			if n < 1 || n > len(b.messages) {
				fmt.Fprintf(c, "-ERR No such message\r\n")
				continue
			}
			msg := stuff(b.messages[n-1])
			fmt.Fprintf(c, "+OK %d octets\r\n", len(b.messages[n-1]))
			for len(msg) > 0 {
				k := min(len(msg), 64<<10)
				if _, err := c.Write(msg[:k]); err != nil {
					return
				}
				msg = msg[k:]
				if n == 2 {
					time.Sleep(20 * time.Millisecond)
				}
			}
			c.Write([]byte(".\r\n"))
		case "NOOP":
			fmt.Fprintf(c, "+OK\r\n")
		case "QUIT":
			b.quits.Add(1)
			fmt.Fprintf(c, "+OK Bye\r\n")
			return
		default:
			fmt.Fprintf(c, "-ERR Unknown command\r\n")
		}
	}
}

// stuff byte-stuffs a message body for the wire (RFC 1939 §3).
func stuff(msg []byte) []byte {
	var out bytes.Buffer
	for _, l := range bytes.SplitAfter(msg, []byte("\n")) {
		if len(l) > 0 && l[0] == '.' {
			out.WriteByte('.')
		}
		out.Write(l)
	}
	return out.Bytes()
}

// readMultiline reads a multi-line body up to its terminator and returns
// it unstuffed.
func (c *client) readMultiline() []byte {
	c.t.Helper()
	var out bytes.Buffer
	for {
		l := c.line()
		if l == "." {
			return out.Bytes()
		}
		out.WriteString(strings.TrimPrefix(l, "."))
		out.WriteString("\r\n")
	}
}

func TestPOP3Capabilities(t *testing.T) {
	ph := newPOP3Harness(t, nil)
	// Before STLS, on a listener that requires TLS: no way to log in is
	// listed, STLS is.
	c := ph.dial(t, ph.pop3)
	c.expect("+OK Portico ready.")
	caps := strings.Join(c.capa(), ",")
	if !strings.Contains(caps, "STLS") || strings.Contains(caps, "USER") || strings.Contains(caps, "SASL") {
		t.Errorf("CAPA before TLS: %s", caps)
	}
	c.send("STLS\r\n")
	c.expect("+OK Begin TLS negotiation now")
	c.upgrade(ph.clientTLS())
	caps = strings.Join(c.capa(), ",")
	if strings.Contains(caps, "STLS") || !strings.Contains(caps, "USER") || !strings.Contains(caps, "SASL PLAIN LOGIN") ||
		!strings.Contains(caps, "RESP-CODES") || !strings.Contains(caps, "AUTH-RESP-CODE") {
		t.Errorf("CAPA after STLS: %s", caps)
	}
	c.send("STLS\r\n")
	c.expect("-ERR STLS not available")
	c.send("AUTH\r\n")
	c.expect("+OK Mechanisms follow")
	if got := c.readMultiline(); string(got) != "PLAIN\r\nLOGIN\r\n" {
		t.Errorf("AUTH lists %q", got)
	}
	c.send("QUIT\r\n")
	c.expect("+OK Logging out.")
	c.expectCloseNotify()

	// pop3s: TLS from the start; the cleartext-login network: no STLS
	// needed.
	c = ph.dialPOP3S(t)
	if caps := strings.Join(c.capa(), ","); strings.Contains(caps, "STLS") || !strings.Contains(caps, "USER") {
		t.Errorf("CAPA on pop3s: %s", caps)
	}
	c = ph.dial(t, ph.pop3Clear)
	c.expect("+OK Portico ready.")
	if caps := strings.Join(c.capa(), ","); !strings.Contains(caps, "STLS") || !strings.Contains(caps, "USER") {
		t.Errorf("CAPA on the cleartext network: %s", caps)
	}
}

func TestPOP3LoginAndSplice(t *testing.T) {
	ph := newPOP3Harness(t, nil)
	c := ph.loginPOP3(t)
	if cred := ph.lastCred.Load(); cred.User != "alice@example.test" || cred.Secret != alicePW {
		t.Errorf("backend credentials %+v", cred)
	}
	c.send("STAT\r\n")
	c.expect("+OK 2 " + strconv.Itoa(len(ph.backend.messages[0])+len(ph.backend.messages[1])))
	// Pipelined, as RFC 2449 PIPELINING allows.
	c.send("LIST\r\nRETR 1\r\nRETR 2\r\n")
	c.expectPrefix("+OK 2 messages")
	c.readMultiline()
	c.expectPrefix("+OK ")
	if got := c.readMultiline(); !bytes.Equal(got, ph.backend.messages[0]) {
		t.Errorf("RETR 1: %q", got)
	}
	c.expectPrefix("+OK ")
	if got := c.readMultiline(); !bytes.Equal(got, ph.backend.messages[1]) {
		t.Errorf("RETR 2: %d bytes, not the message", len(got))
	}
	c.send("QUIT\r\n")
	c.expect("+OK Bye")
	c.expectEOF()
	c.c.Close()
	waitFor(t, func() bool { return len(ph.srv.Sessions()) == 0 })

	// STLS, then USER and PASS; and AUTH PLAIN with and without an
	// initial response, AUTH LOGIN.
	c = ph.dial(t, ph.pop3)
	c.expect("+OK Portico ready.")
	c.send("STLS\r\n")
	c.expect("+OK Begin TLS negotiation now")
	c.upgrade(ph.clientTLS())
	c.send("USER alice@example.test\r\nPASS " + alicePW + "\r\n")
	c.expect("+OK Send PASS.")
	c.expect("+OK Logged in.")
	c.send("NOOP\r\n")
	c.expect("+OK")

	plain := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + alicePW))
	c = ph.dialPOP3S(t)
	c.send("AUTH PLAIN " + plain + "\r\n")
	c.expect("+OK Logged in.")

	c = ph.dialPOP3S(t)
	c.send("auth plain\r\n")
	c.expect("+ ")
	c.send(plain + "\r\n")
	c.expect("+OK Logged in.")

	c = ph.dialPOP3S(t)
	c.send("AUTH LOGIN\r\n")
	c.expect("+ VXNlcm5hbWU6")
	c.send(base64.StdEncoding.EncodeToString([]byte("alice")) + "\r\n")
	c.expect("+ UGFzc3dvcmQ6")
	c.send(base64.StdEncoding.EncodeToString([]byte(alicePW)) + "\r\n")
	c.expect("+OK Logged in.")
	if strings.Contains(ph.logs.String(), alicePW) {
		t.Errorf("the password reached the log")
	}
}

func TestPOP3Refusals(t *testing.T) {
	ph := newPOP3Harness(t, func(l *proxy.Limits) { l.MaxAuthFailures = 2 })
	// In clear, on a listener that requires TLS: refused before anything
	// is asked of routing.
	c := ph.dial(t, ph.pop3)
	c.expect("+OK Portico ready.")
	calls := ph.router.calls.Load()
	c.send("USER alice\r\n")
	c.expect("-ERR [AUTH] TLS is required to log in; use STLS")
	c.send("PASS " + alicePW + "\r\n")
	c.expect("-ERR [AUTH] TLS is required to log in; use STLS")
	c.expect("-ERR Too many failed logins")
	c.expectEOF()
	c = ph.dial(t, ph.pop3)
	c.expect("+OK Portico ready.")
	c.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00"+alicePW)) + "\r\n")
	c.expect("-ERR [AUTH] TLS is required to log in; use STLS")
	if ph.router.calls.Load() != calls || ph.logins.Load() != 0 {
		t.Errorf("credentials sent in clear reached routing or a backend")
	}

	// A wrong password and an unknown user look alike.
	c = ph.dialPOP3S(t)
	c.send("USER alice\r\nPASS wrong\r\n")
	c.expect("+OK Send PASS.")
	c.expect("-ERR [AUTH] Authentication failed")
	c.send("PASS " + alicePW + "\r\n") // USER must come again
	c.expect("-ERR Send USER first")
	c.send("USER nobody\r\nPASS " + alicePW + "\r\n")
	c.expect("+OK Send PASS.")
	c.expect("-ERR [AUTH] Authentication failed")
	c.expect("-ERR Too many failed logins")
	c.expectCloseNotify()

	// Routing and backend failures: SYS/TEMP, the client may retry.
	c = ph.dialPOP3S(t)
	c.send("USER broken\r\nPASS x\r\n")
	c.expect("+OK Send PASS.")
	c.expect("-ERR [SYS/TEMP] Service temporarily unavailable, try again later")
	c.send("USER nopop\r\nPASS " + alicePW + "\r\n")
	c.expect("+OK Send PASS.")
	c.expect("-ERR [SYS/TEMP] Service temporarily unavailable, try again later")

	// Transaction commands before login, unknown commands, an ALPACA-style
	// HTTP request: -ERR, then the connection closes.
	c = ph.dialPOP3S(t)
	c.send("STAT\r\n")
	c.expect("-ERR Log in first")
	c.send("GET / HTTP/1.1\r\nHost: mail.example.test\r\n")
	c.expect("-ERR Unknown command")
	c.expect("-ERR Unknown command")
	c.expect("-ERR Too many invalid commands")
	c.expectCloseNotify()

	// A line past the limit.
	c = ph.dialPOP3S(t)
	c.send("USER " + strings.Repeat("a", 20000) + "\r\n")
	c.expect("-ERR Line too long")
	c.expect("-ERR Closing connection")

	// SASL: cancelled, bad base64, an unknown mechanism.
	c = ph.dialPOP3S(t)
	c.send("AUTH PLAIN\r\n")
	c.expect("+ ")
	c.send("*\r\n")
	c.expect("-ERR Authentication cancelled")
	c.send("AUTH PLAIN !!!\r\n")
	c.expect("-ERR Invalid base64 in initial response")
	c.send("AUTH CRAM-MD5\r\n")
	c.expect("-ERR Unsupported authentication mechanism")
	c.send("QUIT\r\n")
	c.expect("+OK Logging out.")
}

// What a client pipelines behind STLS goes to the TLS handshake, never to
// the command loop (the STARTTLS command injection of CVE-2011-0411).
func TestPOP3STLSInjection(t *testing.T) {
	ph := newPOP3Harness(t, nil)
	c := ph.dial(t, ph.pop3Clear)
	c.expect("+OK Portico ready.")
	c.send("STLS\r\nUSER alice\r\nPASS " + alicePW + "\r\n")
	c.expect("+OK Begin TLS negotiation now")
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, _ := c.br.ReadString('\n')
	if rest != "" {
		t.Errorf("injected commands were answered: %q", rest)
	}
	if ph.router.calls.Load() != 0 {
		t.Errorf("injected commands reached routing")
	}
}

// ALPN: a POP3 listener accepts "pop3" and no protocol, and refuses a
// client that names another (a browser sent there: ALPACA).
func TestPOP3ALPN(t *testing.T) {
	ph := newPOP3Harness(t, nil)
	for _, tc := range []struct {
		protos []string
		ok     bool
	}{{nil, true}, {[]string{"pop3"}, true}, {[]string{"http/1.1"}, false}, {[]string{"imap"}, false}} {
		cfg := ph.clientTLS()
		cfg.NextProtos = tc.protos
		raw, err := net.Dial("tcp", ph.pop3s)
		if err != nil {
			t.Fatal(err)
		}
		tc2 := tls.Client(raw, cfg)
		tc2.SetDeadline(time.Now().Add(5 * time.Second))
		err = tc2.Handshake()
		if (err == nil) != tc.ok {
			t.Errorf("ALPN %v: handshake error %v", tc.protos, err)
		}
		if err == nil && tc2.ConnectionState().NegotiatedProtocol != strings.Join(tc.protos, "") {
			t.Errorf("ALPN %v: negotiated %q", tc.protos, tc2.ConnectionState().NegotiatedProtocol)
		}
		tc2.Close()
	}
}

// A kicked POP3 session ends between two responses: a RETR under way is
// delivered whole, then the client reads -ERR [SYS/TEMP] and the end.
func TestPOP3KickAtResponseBoundary(t *testing.T) {
	ph := newPOP3Harness(t, nil)
	c := ph.loginPOP3(t)
	c.send("RETR 2\r\n")
	c.expectPrefix("+OK ")
	// The message comes in 16 slices 20 ms apart: kick in the middle.
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	head := make([]byte, 100<<10)
	if _, err := io.ReadFull(c.br, head); err != nil {
		t.Fatal(err)
	}
	if n := ph.srv.KickUser("alice@example.test", "moving you"); n != 1 {
		t.Fatalf("KickUser found %d sessions", n)
	}
	rest := c.readToEOF()
	got := append(head, rest...)
	want := append(stuff(ph.backend.messages[1]), ".\r\n-ERR [SYS/TEMP] moving you\r\n"...)
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("client got %d bytes, want %d; first difference at %d: %q", len(got), len(want), i, got[i:min(len(got), i+80)])
	}
	waitFor(t, func() bool { return len(ph.srv.Sessions()) == 0 })
	if !strings.Contains(ph.logs.String(), "outcome=kicked") {
		t.Errorf("no kicked session in the log")
	}

	// Idle, between commands: the line at once.
	c = ph.loginPOP3(t)
	c.send("NOOP\r\n")
	c.expect("+OK")
	ph.srv.KickUser("alice@example.test", "")
	c.expect("-ERR [SYS/TEMP] Session ended by the administrator")
	c.expectEOF()
}

// The per-user session limit is RFC 3206's IN-USE in POP3.
func TestPOP3SessionLimitInUse(t *testing.T) {
	ph := newPOP3Harness(t, func(l *proxy.Limits) { l.MaxSessionsPerUser = 1 })
	first := ph.loginPOP3(t)
	c := ph.dialPOP3S(t)
	c.send("USER alice\r\nPASS " + alicePW + "\r\n")
	c.expect("+OK Send PASS.")
	c.expect("-ERR [IN-USE] Too many sessions of this user")
	first.send("QUIT\r\n")
	first.expect("+OK Bye")

	// The backend's own IN-USE and LOGIN-DELAY are passed on, and the
	// client may try again on the connection.
	c = ph.dialPOP3S(t)
	c.send("USER alice\r\nPASS locked\r\n")
	c.expect("+OK Send PASS.")
	c.expect("-ERR [IN-USE] Mailbox in use, try again later")
	c.send("USER alice\r\nPASS delay\r\n")
	c.expect("+OK Send PASS.")
	c.expect("-ERR [LOGIN-DELAY] Logged in too recently, try again later")
	c.send("USER alice\r\nPASS wrong\r\n")
	c.expect("+OK Send PASS.")
	c.expect("-ERR [AUTH] Authentication failed")
}

// Shutdown says -ERR to POP3 clients that have not logged in.
func TestPOP3Shutdown(t *testing.T) {
	ph := newPOP3Harness(t, nil)
	c := ph.dialPOP3S(t)
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ph.srv.Shutdown(ctx)
		close(done)
	}()
	c.expect("-ERR [SYS/TEMP] Server shutting down")
	<-done
}

// An Authenticator decides POP3 logins as it does IMAP ones, told the
// protocol; its credentials are the ones used upstream.
func TestPOP3Authenticator(t *testing.T) {
	master := upstream.Credentials{User: "master", Secret: alicePW, AuthzID: "alice@example.test"}
	auth := &fakeAuth{results: map[string]proxy.AuthResult{
		"alice@example.test proxy-pw": {OK: true, Upstream: master},
		"closed@example.test pw":      {Close: true},
	}}
	ph := newPOP3Harness(t, nil, func(s *proxy.Server) { s.Authenticator = auth })
	c := ph.dialPOP3S(t)
	c.send("USER alice\r\nPASS proxy-pw\r\n")
	c.expect("+OK Send PASS.")
	c.expect("+OK Logged in.")
	if cred := ph.lastCred.Load(); *cred != master {
		t.Errorf("upstream credentials %+v, want the Authenticator's", cred)
	}
	c = ph.dialPOP3S(t)
	c.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00closed\x00pw")) + "\r\n")
	c.expect("-ERR [AUTH] Authentication failed")
	c.expect("-ERR Authentication failed")
	c.expectCloseNotify()
	auth.mu.Lock()
	defer auth.mu.Unlock()
	if len(auth.asked) != 2 || auth.asked[0].Protocol != "pop3" || auth.asked[0].Mechanism != "LOGIN" ||
		auth.asked[1].Protocol != "pop3" || auth.asked[1].Mechanism != "PLAIN" {
		t.Errorf("the Authenticator was asked %+v", auth.asked)
	}
}

// AUTH XOAUTH2 and OAUTHBEARER over POP3: offered after TLS only, the
// token passed through to the backend's mechanism, and a refused token
// answered as RFC 7628 wants, the error challenge first.
func TestPOP3OAuth(t *testing.T) {
	ph := newPOP3Harness(t, nil, func(s *proxy.Server) {
		s.OAuth = proxy.OAuth{Enabled: true, Scope: "mail", CleartextBackends: true}
	})
	c := ph.dial(t, ph.pop3)
	c.expect("+OK Portico ready.")
	if caps := strings.Join(c.capa(), ","); strings.Contains(caps, "XOAUTH2") {
		t.Errorf("OAuth offered before TLS: %s", caps)
	}
	c = ph.dialPOP3S(t)
	if caps := strings.Join(c.capa(), ","); !strings.Contains(caps, "SASL PLAIN LOGIN XOAUTH2 OAUTHBEARER") {
		t.Errorf("CAPA: %s", caps)
	}
	xoauth2 := func(token string) string {
		return base64.StdEncoding.EncodeToString([]byte("user=alice@example.test\x01auth=Bearer " + token + "\x01\x01"))
	}
	c.send("AUTH XOAUTH2 " + xoauth2(alicePW) + "\r\n")
	c.expect("+OK Logged in.")
	if cred := ph.lastCred.Load(); cred.Mechanism != "XOAUTH2" || cred.Secret != alicePW || cred.User != "alice@example.test" {
		t.Errorf("backend credentials %+v", cred)
	}

	c = ph.dialPOP3S(t)
	c.send("AUTH XOAUTH2 " + xoauth2("expired") + "\r\n")
	l := c.expectPrefix("+ ")
	if js, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(l, "+ ")); !strings.Contains(string(js), `"status":"invalid_token"`) {
		t.Errorf("error challenge %q", js)
	}
	c.send("\r\n")
	c.expect("-ERR [AUTH] Authentication failed")
	ob := base64.StdEncoding.EncodeToString([]byte("n,a=alice@example.test,\x01auth=Bearer " + alicePW + "\x01\x01"))
	c.send("AUTH OAUTHBEARER " + ob + "\r\n")
	c.expect("+OK Logged in.")
	if strings.Contains(ph.logs.String(), alicePW) {
		t.Errorf("a token reached the log")
	}
}

// eventLog is an Observer that keeps the login events.
type eventLog struct {
	mu     sync.Mutex
	logins []proxy.LoginEvent
}

func (l *eventLog) Handshake(time.Duration) {}

func (l *eventLog) Login(ev proxy.LoginEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.logins = append(l.logins, ev)
}

// A login event says which protocol it was, so that metrics tell a POP3
// login from an IMAP one with the same mechanism.
func TestPOP3LoginEventProtocol(t *testing.T) {
	events := &eventLog{}
	ph := newPOP3Harness(t, nil, func(s *proxy.Server) { s.Observer = events })
	c := ph.loginPOP3(t)
	c.send("QUIT\r\n")
	c.expect("+OK Bye")
	events.mu.Lock()
	defer events.mu.Unlock()
	if len(events.logins) != 1 || events.logins[0].Protocol != "pop3" || events.logins[0].Result != proxy.LoginOK {
		t.Errorf("login events %+v, want one ok with protocol pop3", events.logins)
	}
}
