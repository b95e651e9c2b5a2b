package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// testCert returns a self-signed certificate for backend.test and
// 127.0.0.1 and a pool trusting it.
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	cert, err := ptls.SelfSigned("backend.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return cert, ptls.CertPool(cert)
}

// memBackend starts imapserver + imapmemserver with user alice.
func memBackend(t *testing.T, password string, tlsCfg *tls.Config) string {
	t.Helper()
	mem := imapmemserver.New()
	u := imapmemserver.NewUser("alice", password)
	if err := u.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	mem.AddUser(u)
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		TLSConfig:    tlsCfg,
		InsecureAuth: tlsCfg == nil,
		Logger:       log.New(io.Discard, "", 0),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// selectInbox proves the returned connection is logged in and usable.
func selectInbox(t *testing.T, res *Result) {
	t.Helper()
	defer res.Conn.Close()
	res.Conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(res.Conn, "s1 SELECT INBOX\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(io.MultiReader(bytes.NewReader(res.Buffered), res.Conn))
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("select: %v", err)
		}
		if strings.HasPrefix(line, "s1 ") {
			if !strings.HasPrefix(line, "s1 OK") {
				t.Fatalf("select: %q", line)
			}
			return
		}
	}
}

func TestMemserverLogin(t *testing.T) {
	for _, pw := range []string{"secret", "sp ace\"quo\\te", "p\r\nb LOGOUT", "{5}", "\xc3\xa9t\xc3\xa9"} {
		addr := memBackend(t, pw, nil)
		// ForwardID: imapmemserver has no ID and would BYE on it.
		b := &routing.Backend{Addr: addr, ForwardID: true}
		res, err := Login(context.Background(), b, Credentials{User: "alice", Secret: pw}, &IDInfo{ClientIP: "192.0.2.1"})
		if err != nil {
			t.Fatalf("password %q: %v", pw, err)
		}
		if res.TLS || !hasCap(res.Caps, "IMAP4rev2") || hasCap(res.Caps, "UNAUTHENTICATE") {
			t.Errorf("TLS=%v caps=%v", res.TLS, res.Caps)
		}
		if _, ok := res.Conn.(*net.TCPConn); !ok {
			t.Errorf("Conn is %T", res.Conn)
		}
		selectInbox(t, res)

		_, err = Login(context.Background(), b, Credentials{User: "alice", Secret: pw + "x"}, nil)
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("wrong password: %v", err)
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("error contains the password: %v", err)
		}
	}
}

func TestMemserverStartTLS(t *testing.T) {
	cert, pool := testCert(t)
	addr := memBackend(t, "secret", &tls.Config{Certificates: []tls.Certificate{cert}})

	b := &routing.Backend{Addr: addr, TLS: routing.StartTLS, TLSConfig: &tls.Config{RootCAs: pool}}
	res, err := Login(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.Conn.(*tls.Conn); !ok || !res.TLS {
		t.Fatalf("Conn is %T, TLS=%v", res.Conn, res.TLS)
	}
	selectInbox(t, res)

	// System roots do not trust the self-signed certificate.
	b = &routing.Backend{Addr: addr, TLS: routing.StartTLS}
	if _, err := Login(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil); err == nil || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("untrusted certificate: %v", err)
	}
	// Plain mode: imapserver advertises LOGINDISABLED without TLS.
	b = &routing.Backend{Addr: addr}
	if _, err := Login(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil); err == nil || !strings.Contains(err.Error(), "LOGINDISABLED") {
		t.Fatalf("LOGINDISABLED: %v", err)
	}
}

// fake is a scripted raw-TCP backend for one connection. It records every
// byte it receives.
type fake struct {
	t  *testing.T
	c  net.Conn
	r  *bufio.Reader
	mu sync.Mutex
	rx bytes.Buffer
}

type recorder struct{ f *fake }

func (r recorder) Read(p []byte) (int, error) {
	n, err := r.f.c.Read(p)
	r.f.mu.Lock()
	r.f.rx.Write(p[:n])
	r.f.mu.Unlock()
	return n, err
}

// line reads one line, without CRLF; "" at EOF.
func (f *fake) line() string {
	s, _ := f.r.ReadString('\n')
	return strings.TrimSuffix(s, "\r\n")
}

func (f *fake) send(s string) { io.WriteString(f.c, s) }

// upgrade runs a TLS server handshake on the raw connection.
func (f *fake) upgrade(cert tls.Certificate) bool {
	tc := tls.Server(f.c, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err := tc.Handshake(); err != nil {
		return false
	}
	f.c = tc
	f.r = bufio.NewReader(recorder{f})
	return true
}

func (f *fake) received() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rx.String()
}

// startFake runs script on the first connection and returns the address and
// a channel that yields the fake once the script has returned.
func startFake(t *testing.T, script func(f *fake)) (string, <-chan *fake) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *fake, 1)
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			done <- nil
			return
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		f := &fake{t: t, c: c}
		f.r = bufio.NewReader(recorder{f})
		script(f)
		c.Close()
		done <- f
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), done
}

// silentBackend accepts connections and never greets. With hangUp it
// closes each at once, else it holds them open until the test ends. It
// returns its address and how many connections it accepted.
func silentBackend(t *testing.T, hangUp bool) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			if hangUp {
				c.Close()
			} else {
				defer c.Close()
			}
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), &n
}

func wait(t *testing.T, done <-chan *fake) *fake {
	t.Helper()
	select {
	case f := <-done:
		if f == nil {
			t.Fatal("fake backend: no connection")
		}
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("fake backend did not finish")
	}
	return nil
}

// serveLogin answers CAPABILITY and accepts AUTHENTICATE PLAIN with SASL-IR
// for alice/secret with the given tagged OK text.
func serveLogin(f *fake, okText string) {
	for {
		l := f.line()
		if l == "" {
			return
		}
		tag, cmd, _ := strings.Cut(l, " ")
		switch {
		case cmd == "CAPABILITY":
			f.send("* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID\r\n" + tag + " OK done\r\n")
		case strings.HasPrefix(cmd, "ID "):
			f.send(tag + " OK ID done\r\n")
		case strings.HasPrefix(cmd, "AUTHENTICATE PLAIN "):
			f.send(tag + " " + okText)
			return
		default:
			f.send(tag + " BAD what\r\n")
		}
	}
}

func TestWaitingLineBeforeGreeting(t *testing.T) {
	addr, done := startFake(t, func(f *fake) {
		f.send("* OK Waiting for authentication process to respond..\r\n")
		time.Sleep(50 * time.Millisecond)
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] Dovecot ready.\r\n")
		serveLogin(f, "OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
	})
	res, err := Login(context.Background(), &routing.Backend{Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	if strings.Join(res.Caps, " ") != "IMAP4rev1 IDLE" || len(res.Buffered) != 0 {
		t.Errorf("caps %q buffered %q", res.Caps, res.Buffered)
	}
	wait(t, done)
}

func TestBadGreetings(t *testing.T) {
	for _, g := range []string{
		"* BYE [UNAVAILABLE] shutting down\r\n",
		"* PREAUTH [CAPABILITY IMAP4rev1] logged in as nobody\r\n",
		"* OK Waiting for authentication process to respond..\r\n* BYE Internal error\r\n",
		"HTTP/1.1 400 Bad Request\r\n\r\n",
		"* BAD garbage\r\n",
	} {
		addr, done := startFake(t, func(f *fake) {
			f.send(g)
			// Answer CAPABILITY after a bare waiting line, then hang up.
			time.Sleep(100 * time.Millisecond)
		})
		_, err := Login(context.Background(), &routing.Backend{Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
		if err == nil || errors.Is(err, ErrAuthFailed) {
			t.Errorf("greeting %q: err = %v", g, err)
		}
		f := wait(t, done)
		if rx := f.received(); strings.Contains(rx, "LOGIN") || strings.Contains(rx, "AUTHENTICATE") {
			t.Errorf("greeting %q: credentials sent: %q", g, rx)
		}
	}
}

func TestTimeouts(t *testing.T) {
	// Never greets: bounded by LoginTimeout.
	addr, done := startFake(t, func(f *fake) { f.line() })
	start := time.Now()
	_, err := Login(context.Background(), &routing.Backend{Addr: addr, LoginTimeout: 200 * time.Millisecond}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}
	wait(t, done)

	// ctx cancellation ends a login that would otherwise wait 30s.
	addr, done = startFake(t, func(f *fake) { f.line() })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = Login(ctx, &routing.Backend{Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}
	wait(t, done)

	// Connection refused.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	if _, err := Login(context.Background(), &routing.Backend{Addr: dead}, Credentials{User: "alice", Secret: "secret"}, nil); err == nil || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("refused: %v", err)
	}
}

func TestStartTLSInjection(t *testing.T) {
	cert, pool := testCert(t)
	addr, done := startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n")
		l := f.line()
		tag, _, _ := strings.Cut(l, " ")
		if l != tag+" STARTTLS" {
			return
		}
		// Injected cleartext capabilities in the same write as the OK.
		f.send(tag + " OK Begin\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\n")
		if !f.upgrade(cert) {
			return
		}
		serveLogin(f, "OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
	})
	b := &routing.Backend{Addr: addr, TLS: routing.StartTLS, TLSConfig: &tls.Config{RootCAs: pool}}
	res, err := Login(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	f := wait(t, done)
	// The client asked again over TLS instead of trusting the injected list.
	if rx := f.received(); !strings.Contains(rx, "p2 CAPABILITY") {
		t.Errorf("no CAPABILITY after TLS in %q", rx)
	}
}

func TestStartTLSRefusals(t *testing.T) {
	for name, greeting := range map[string]string{
		"not advertised": "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] ready\r\n",
		"stripped":       "* OK [CAPABILITY IMAP4rev1] ready\r\n",
	} {
		addr, done := startFake(t, func(f *fake) {
			f.send(greeting)
			f.line()
		})
		b := &routing.Backend{Addr: addr, TLS: routing.StartTLS}
		_, err := Login(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil)
		if err == nil || !strings.Contains(err.Error(), "STARTTLS") {
			t.Errorf("%s: err = %v", name, err)
		}
		if rx := wait(t, done).received(); rx != "" {
			t.Errorf("%s: sent %q", name, rx)
		}
	}

	// STARTTLS answered NO.
	addr, done := startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
		f.send(strings.Fields(f.line())[0] + " NO not today\r\n")
		f.line()
	})
	_, err := Login(context.Background(), &routing.Backend{Addr: addr, TLS: routing.StartTLS}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err == nil || errors.Is(err, ErrAuthFailed) {
		t.Errorf("NO to STARTTLS: %v", err)
	}
	if rx := wait(t, done).received(); strings.Contains(rx, "secret") {
		t.Errorf("sent %q", rx)
	}
}

func TestLoginDisabledPlain(t *testing.T) {
	addr, done := startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n")
		f.line()
	})
	_, err := Login(context.Background(), &routing.Backend{Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err == nil || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("err = %v", err)
	}
	if rx := wait(t, done).received(); rx != "" {
		t.Errorf("sent %q", rx)
	}
}

func TestTLSVerification(t *testing.T) {
	cert, pool := testCert(t)
	script := func(f *fake) {
		if !f.upgrade(cert) {
			return
		}
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n")
		serveLogin(f, "OK [CAPABILITY IMAP4rev1] Logged in\r\n")
	}
	addr, done := startFake(t, script)
	_, err := Login(context.Background(), &routing.Backend{Addr: addr, TLS: routing.ImplicitTLS}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err == nil || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("self-signed accepted: %v", err)
	}
	wait(t, done)

	// Wrong name: the configured ServerName must match the certificate.
	addr, done = startFake(t, script)
	b := &routing.Backend{Addr: addr, TLS: routing.ImplicitTLS, TLSConfig: &tls.Config{RootCAs: pool, ServerName: "other.test"}}
	if _, err := Login(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil); err == nil {
		t.Fatal("wrong server name accepted")
	}
	wait(t, done)

	addr, done = startFake(t, script)
	b = &routing.Backend{Addr: addr, TLS: routing.ImplicitTLS, TLSConfig: &tls.Config{RootCAs: pool}}
	res, err := Login(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.Conn.(*tls.Conn); !ok || !res.TLS {
		t.Errorf("Conn %T TLS %v", res.Conn, res.TLS)
	}
	res.Conn.Close()
	wait(t, done)
}

func TestLoginReplies(t *testing.T) {
	tests := []struct {
		name     string
		reply    string // after "tag "
		authFail bool
		ok       bool
		is       error // the error wraps it
	}{
		{"wrong password", "NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", true, false, nil},
		{"no code", "NO bad password secret\r\n", true, false, nil},
		{"unavailable", "NO [UNAVAILABLE] Try later\r\n", false, false, nil},
		{"in use", "NO [INUSE] Mailbox locked\r\n", false, false, ErrInUse},
		{"bad", "BAD syntax\r\n", false, false, nil},
		{"bye", "BAD x\r\n* BYE go away\r\n", false, false, nil},
		{"ok", "OK [CAPABILITY IMAP4rev1] yes\r\n", false, true, nil},
	}
	for _, tc := range tests {
		addr, done := startFake(t, func(f *fake) {
			f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n")
			serveLogin(f, tc.reply)
		})
		res, err := Login(context.Background(), &routing.Backend{Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
		wait(t, done)
		if tc.ok {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			} else {
				res.Conn.Close()
			}
			continue
		}
		if err == nil || errors.Is(err, ErrAuthFailed) != tc.authFail || tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("%s: err = %v", tc.name, err)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: password in error: %v", tc.name, err)
		}
	}
}

func TestBufferedAfterOK(t *testing.T) {
	const extra = "* 3 EXISTS\r\n* OK [ALERT] hello\r\n"
	addr, done := startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n")
		serveLogin(f, "OK [CAPABILITY IMAP4rev1 IDLE UNAUTHENTICATE] Logged in\r\n"+extra)
	})
	res, err := Login(context.Background(), &routing.Backend{Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Conn.Close()
	wait(t, done)
	if string(res.Buffered) != extra {
		t.Errorf("Buffered = %q", res.Buffered)
	}
	if strings.Join(res.Caps, " ") != "IMAP4rev1 IDLE" {
		t.Errorf("Caps = %q", res.Caps)
	}
}

func TestPostLoginCapabilities(t *testing.T) {
	// OK without capabilities: Login asks, and keeps unsolicited responses
	// and the bytes after the CAPABILITY reply for the client.
	addr, done := startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n")
		serveLogin(f, "OK Logged in\r\n")
		l := f.line()
		tag, _, _ := strings.Cut(l, " ")
		f.send("* OK [ALERT] x\r\n* FLAGS (\\Seen {3}\r\nabc)\r\n* CAPABILITY IMAP4rev1 IDLE UNAUTHENTICATE\r\n" + tag + " OK done\r\n* 1 EXISTS\r\n")
	})
	res, err := Login(context.Background(), &routing.Backend{Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	wait(t, done)
	if strings.Join(res.Caps, " ") != "IMAP4rev1 IDLE" {
		t.Errorf("Caps = %q", res.Caps)
	}
	if want := "* OK [ALERT] x\r\n* FLAGS (\\Seen {3}\r\nabc)\r\n* 1 EXISTS\r\n"; string(res.Buffered) != want {
		t.Errorf("Buffered = %q, want %q", res.Buffered, want)
	}

	// Untagged CAPABILITY before the tagged OK (Gmail style).
	addr2, done2 := startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n")
		l := f.line()
		tag, _, _ := strings.Cut(l, " ")
		f.send("* CAPABILITY IMAP4rev1 MOVE\r\n" + tag + " OK Logged in\r\n")
	})
	res, err = Login(context.Background(), &routing.Backend{Addr: addr2}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	wait(t, done2)
	if strings.Join(res.Caps, " ") != "IMAP4rev1 MOVE" || len(res.Buffered) != 0 {
		t.Errorf("Caps = %q, Buffered = %q", res.Caps, res.Buffered)
	}
}

// readAString parses one astring the way a server would, answering "+" to
// synchronizing literals.
func readAString(f *fake, line string) (val, rest string, ok bool) {
	switch {
	case strings.HasPrefix(line, "\""):
		var b strings.Builder
		for i := 1; i < len(line); i++ {
			switch line[i] {
			case '\\':
				i++
				if i < len(line) {
					b.WriteByte(line[i])
				}
			case '"':
				return b.String(), line[i+1:], true
			default:
				b.WriteByte(line[i])
			}
		}
		return "", "", false
	case strings.HasPrefix(line, "{") && strings.HasSuffix(line, "}"):
		spec := line[1 : len(line)-1]
		sync := !strings.HasSuffix(spec, "+")
		n, err := strconv.Atoi(strings.TrimSuffix(spec, "+"))
		if err != nil {
			return "", "", false
		}
		if sync {
			f.send("+ Ready\r\n")
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(f.r, buf); err != nil {
			return "", "", false
		}
		return string(buf), f.line(), true
	default:
		atom, rest, _ := strings.Cut(line, " ")
		if rest != "" {
			rest = " " + rest
		}
		return atom, rest, atom != ""
	}
}

func TestCredentialEncoding(t *testing.T) {
	users := []string{"alice", "al ice@example.com", "\xc3\xa9l\xc3\xa8ve"}
	passwords := []string{
		"secret",
		"p\r\nb LOGOUT",
		"a\"b\\c",
		"{5}",
		"{5+}",
		"\xe9t\xe9\xff",
		"",
		"x\ry\nz",
		strings.Repeat("long ", 300),
	}
	capsets := map[string]string{
		"sync literal": "IMAP4rev1",
		"literal+":     "IMAP4rev1 LITERAL+",
		"literal-":     "IMAP4rev1 LITERAL-",
		"sasl-ir":      "IMAP4rev1 AUTH=PLAIN SASL-IR",
		"two-step":     "IMAP4rev1 AUTH=PLAIN",
	}
	for name, caps := range capsets {
		for _, user := range users {
			for _, pw := range passwords {
				var gotUser, gotPW, trailer string
				addr, done := startFake(t, func(f *fake) {
					f.send("* OK [CAPABILITY " + caps + "] ready\r\n")
					l := f.line()
					tag, cmd, _ := strings.Cut(l, " ")
					switch {
					case strings.HasPrefix(cmd, "LOGIN "):
						var rest string
						var ok bool
						if gotUser, rest, ok = readAString(f, strings.TrimPrefix(cmd, "LOGIN ")); !ok || !strings.HasPrefix(rest, " ") {
							f.send(tag + " BAD user\r\n")
							return
						}
						if gotPW, rest, ok = readAString(f, rest[1:]); !ok || rest != "" {
							f.send(tag + " BAD password\r\n")
							return
						}
					case strings.HasPrefix(cmd, "AUTHENTICATE PLAIN"):
						ir := strings.TrimPrefix(strings.TrimPrefix(cmd, "AUTHENTICATE PLAIN"), " ")
						if ir == "" {
							f.send("+ \r\n")
							ir = f.line()
						}
						dec, err := base64.StdEncoding.DecodeString(ir)
						parts := strings.Split(string(dec), "\x00")
						if err != nil || len(parts) != 3 || parts[0] != "" {
							f.send(tag + " BAD sasl\r\n")
							return
						}
						gotUser, gotPW = parts[1], parts[2]
					default:
						f.send(tag + " BAD unexpected\r\n")
						return
					}
					f.send(tag + " OK [CAPABILITY IMAP4rev1] Logged in\r\n")
					// Nothing may follow the command (no injected second command).
					f.c.SetReadDeadline(time.Now().Add(2 * time.Second))
					b, _ := io.ReadAll(f.r)
					trailer = string(b)
				})
				res, err := Login(context.Background(), &routing.Backend{Addr: addr}, Credentials{User: user, Secret: pw}, nil)
				if err != nil {
					t.Errorf("%s %q %q: %v", name, user, pw, err)
					wait(t, done)
					continue
				}
				res.Conn.Close() // EOF ends the fake's trailer read
				f := wait(t, done)
				if gotUser != user || gotPW != pw || trailer != "" {
					t.Errorf("%s: sent %q/%q as %q/%q, trailer %q; wire: %q", name, user, pw, gotUser, gotPW, trailer, f.received())
				}
			}
		}
	}
}

func TestNULRejected(t *testing.T) {
	_, err := Login(context.Background(), &routing.Backend{Addr: "127.0.0.1:1"}, Credentials{User: "alice", Secret: "se\x00cret"}, nil)
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("err = %v", err)
	}
}

func TestForwardID(t *testing.T) {
	var idLine string
	var pipelined bool
	addr, done := startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID] ready\r\n")
		l := f.line()
		tag, cmd, _ := strings.Cut(l, " ")
		idLine = cmd
		// The login came in the same write, before the ID reply.
		pipelined = f.r.Buffered() > 0
		// An untagged ID reply carrying a literal must be skipped whole.
		f.send("* ID (\"name\" {7}\r\np1 OK\r\n \"x\" \"y\")\r\n" + tag + " OK ID done\r\n")
		serveLogin(f, "OK [CAPABILITY IMAP4rev1] Logged in\r\n")
	})
	id := &IDInfo{
		ClientIP: "203.0.113.9", ClientPort: 5555, ConnectedIP: "192.0.2.1", ConnectedPort: 993,
		SessionID: "px-0001", TTL: 5,
		ClientFields: [][2]string{
			{"x-originating-ip", "6.6.6.6"},
			{"X-Session-ID", "evil"},
			{"x-proxy-ttl", "99"},
			{"name", "Thunder\"bird\\"},
			{"version", "1\r\n2\xff"},
			{"this-key-is-much-longer-than-thirty-bytes", "v"},
			{"bad key\r\n", "v"},
			{"os", strings.Repeat("a", 2000)},
		},
	}
	res, err := Login(context.Background(), &routing.Backend{Addr: addr, ForwardID: true}, Credentials{User: "alice", Secret: "secret"}, id)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	wait(t, done)
	want := `ID ("x-originating-ip" "203.0.113.9" "x-originating-port" "5555" "x-connected-ip" "192.0.2.1" ` +
		`"x-connected-port" "993" "x-session-id" "px-0001" "x-proxy-ttl" "5" "name" "Thunder\"bird\\" ` +
		`"version" "1??2?" "os" "` + strings.Repeat("a", 1024) + `")`
	if idLine != want {
		t.Errorf("ID line\n got %s\nwant %s", idLine, want)
	}
	if !pipelined {
		t.Error("the login did not follow ID in the same write")
	}

	// ForwardID off: no ID even though the backend supports it.
	addr, done = startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID] ready\r\n")
		serveLogin(f, "OK [CAPABILITY IMAP4rev1] Logged in\r\n")
	})
	res, err = Login(context.Background(), &routing.Backend{Addr: addr}, Credentials{User: "alice", Secret: "secret"}, id)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	if rx := wait(t, done).received(); strings.Contains(rx, " ID ") {
		t.Errorf("ID sent: %q", rx)
	}
}

func TestIDPairLimit(t *testing.T) {
	id := &IDInfo{ClientIP: "203.0.113.9"}
	for i := 0; i < 50; i++ {
		id.ClientFields = append(id.ClientFields, [2]string{"k" + strconv.Itoa(i), "v"})
	}
	s := idArgs(id)
	if n := strings.Count(s, `"`) / 4; n != maxIDPairs {
		t.Errorf("%d pairs in %s", n, s)
	}
	if got := idArgs(&IDInfo{ClientFields: [][2]string{{"x-a", "b"}}}); got != "NIL" {
		t.Errorf("empty ID = %s", got)
	}
}

// TestMasterUserLogin: with AuthzID set, the master user logs in for the
// user with AUTHENTICATE PLAIN; a backend without AUTH=PLAIN is refused
// before any credential is sent, never sent a LOGIN of the master user.
func TestMasterUserLogin(t *testing.T) {
	cred := Credentials{User: "master", Secret: "master-pw", AuthzID: "alice@example.test"}
	addr, done := startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n")
		serveLogin(f, "OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
	})
	res, err := Login(context.Background(), &routing.Backend{Addr: addr}, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	ir := base64.StdEncoding.EncodeToString([]byte("alice@example.test\x00master\x00master-pw"))
	if rx := wait(t, done).received(); !strings.Contains(rx, "AUTHENTICATE PLAIN "+ir+"\r\n") {
		t.Errorf("backend received %q, want PLAIN with authzid", rx)
	}

	addr, done = startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1] ready\r\n")
		f.line()
	})
	if _, err := Login(context.Background(), &routing.Backend{Addr: addr}, cred, nil); err == nil || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("master login without AUTH=PLAIN: %v, want a refusal that is not a failed login", err)
	}
	if rx := wait(t, done).received(); strings.Contains(rx, "master") {
		t.Errorf("credentials sent to a backend without AUTH=PLAIN: %q", rx)
	}
}
