package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// pop3Message has a line starting with a dot, which RETR dot-stuffs, and
// bytes outside ASCII.
var pop3Message = []byte("From: bob@example.test\r\nSubject: pop3\r\n\r\nhello\r\n.dotted line\r\n\xc3\xa9t\xc3\xa9\r\n")

func startPOP3Dovecot(t *testing.T, opts testsrv.DovecotOptions) *testsrv.Dovecot {
	t.Helper()
	opts.POP3 = true
	if opts.Users == nil {
		opts.Users = map[string]string{"alice": "secret"}
	}
	return testsrv.StartDovecot(t, opts)
}

// retr proves that res is a logged-in POP3 session that loses nothing:
// STAT and RETR 1 through Buffered and Conn give back want byte for byte.
func retr(t *testing.T, res *Result, want []byte) {
	t.Helper()
	defer res.Conn.Close()
	res.Conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(io.MultiReader(bytes.NewReader(res.Buffered), res.Conn))
	io.WriteString(res.Conn, "STAT\r\n")
	if l, err := br.ReadString('\n'); err != nil || l != fmt.Sprintf("+OK 1 %d\r\n", len(want)) {
		t.Fatalf("STAT: %q, %v", l, err)
	}
	io.WriteString(res.Conn, "RETR 1\r\n")
	if l, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(l, "+OK") {
		t.Fatalf("RETR: %q, %v", l, err)
	}
	var got []byte
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("RETR: %v after %q", err, got)
		}
		if l == ".\r\n" {
			break
		}
		got = append(got, strings.TrimPrefix(l, ".")...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("RETR 1 = %q, want %q", got, want)
	}
}

func pop3Backend(d *testsrv.Dovecot) *routing.Backend {
	return &routing.Backend{Name: "dovecot", Addr: d.Addr, POP3Addr: d.POP3Addr, LoginTimeout: 5 * time.Second}
}

func TestPOP3Dovecot(t *testing.T) {
	t.Parallel()
	d := startPOP3Dovecot(t, testsrv.DovecotOptions{
		Users:           map[string]string{"alice": "secret", "bob": "sp ace pw"},
		MasterUser:      "proxymaster",
		MasterPassword:  "masterpw",
		MasterOnlyUsers: []string{"carol"},
	})
	d.AddMessage(t, "alice", "INBOX", pop3Message)
	d.AddMessage(t, "carol", "INBOX", pop3Message)
	b := pop3Backend(d)
	ctx := context.Background()

	res, err := LoginPOP3(ctx, b, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.TLS || res.Caps != nil {
		t.Errorf("TLS=%v Caps=%v", res.TLS, res.Caps)
	}
	if _, ok := res.Conn.(*net.TCPConn); !ok {
		t.Errorf("Conn is %T", res.Conn)
	}
	retr(t, res, pop3Message)
	line := d.WaitLog(t, "Login: user=<alice>", 5*time.Second)
	if !strings.Contains(line, "method=PLAIN") || !strings.Contains(line, "rip=127.0.0.1") {
		t.Errorf("login line %q", line)
	}

	res, err = LoginPOP3(ctx, b, Credentials{User: "bob", Secret: "sp ace pw"}, nil)
	if err != nil {
		t.Fatalf("password with a space: %v", err)
	}
	res.Conn.Close()

	_, err = LoginPOP3(ctx, b, Credentials{User: "alice", Secret: "wrong-pw"}, nil)
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: %v", err)
	}
	if strings.Contains(err.Error(), "wrong-pw") || !strings.Contains(err.Error(), "dovecot(pop3 "+d.POP3Addr+")") {
		t.Errorf("error %q", err)
	}

	// Master user: AUTH PLAIN with authzid opens carol's mailbox.
	res, err = LoginPOP3(ctx, b, Credentials{User: "proxymaster", Secret: "masterpw", AuthzID: "carol"}, nil)
	if err != nil {
		t.Fatalf("master user: %v", err)
	}
	retr(t, res, pop3Message)
	d.WaitLog(t, "Master user logging in as carol", 5*time.Second)
	if _, err := LoginPOP3(ctx, b, Credentials{User: "proxymaster", Secret: "wrong", AuthzID: "carol"}, nil); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("master user, wrong password: %v", err)
	}

	// NUL and line breaks can reach no backend.
	for _, pw := range []string{"a\x00b", "secret\r\nDELE 1"} {
		if _, err := LoginPOP3(ctx, b, Credentials{User: "alice", Secret: pw}, nil); err == nil {
			t.Errorf("password %q accepted", pw)
		}
	}

	// A backend without POP3.
	if _, err := LoginPOP3(ctx, &routing.Backend{Addr: d.Addr}, Credentials{User: "alice", Secret: "secret"}, nil); err == nil || errors.Is(err, ErrAuthFailed) || !strings.Contains(err.Error(), "no POP3") {
		t.Fatalf("no POP3Addr: %v", err)
	}
	if strings.Contains(d.Log(), "masterpw") || strings.Contains(d.Log(), "wrong-pw") {
		t.Error("the log contains a password")
	}
}

// relay forwards connections to a real POP3 server and records both
// directions in wire, client lines prefixed "C: " and server chunks "S: ".
// With hidePLAIN it takes PLAIN off the SASL line of CAPA answers: Dovecot
// itself cannot be configured so, as its USER/PASS goes through the PLAIN
// mechanism (auth_mechanisms without plain breaks USER/PASS too).
func relay(t *testing.T, addr string, hidePLAIN bool) (string, *testsrv.Buffer) {
	t.Helper()
	wire := &testsrv.Buffer{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	pipe := func(dst, src net.Conn, dir string, rewrite bool) {
		defer dst.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				p := buf[:n]
				if rewrite {
					p = bytes.ReplaceAll(p, []byte("\r\nSASL PLAIN "), []byte("\r\nSASL "))
				}
				fmt.Fprintf(wire, "%s: %s", dir, p)
				dst.Write(p)
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			go pipe(s, c, "C", false)
			go pipe(c, s, "S", hidePLAIN)
		}
	}()
	return ln.Addr().String(), wire
}

// TestPOP3UserPass: a backend whose SASL line lacks PLAIN gets USER and
// PASS; a master user login is refused there before any credential is
// sent, never sent as USER/PASS with the master's name.
func TestPOP3UserPass(t *testing.T) {
	t.Parallel()
	d := startPOP3Dovecot(t, testsrv.DovecotOptions{
		MasterUser:     "proxymaster",
		MasterPassword: "masterpw",
	})
	d.AddMessage(t, "alice", "INBOX", pop3Message)
	b := pop3Backend(d)
	var wire *testsrv.Buffer
	b.POP3Addr, wire = relay(t, d.POP3Addr, true)
	res, err := LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	retr(t, res, pop3Message)
	if !strings.Contains(wire.String(), "C: USER alice\r\nS: +OK\r\nC: PASS secret\r\nS: +OK Logged in.\r\n") {
		t.Errorf("no USER/PASS exchange in:\n%s", wire)
	}
	d.WaitLog(t, "Login: user=<alice>", 5*time.Second)
	if _, err := LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "nope"}, nil); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: %v", err)
	}

	_, err = LoginPOP3(context.Background(), b, Credentials{User: "proxymaster", Secret: "masterpw", AuthzID: "alice"}, nil)
	if err == nil || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("master user without SASL PLAIN: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if strings.Contains(d.Log(), "proxymaster") {
		t.Errorf("the master user reached the backend:\n%s", d.Log())
	}
}

// TestPOP3XCLIENT: Dovecot's pop3-login offers XCLIENT in its greeting to
// login_trusted_networks, and logs the forwarded address as rip.
func TestPOP3XCLIENT(t *testing.T) {
	t.Parallel()
	id := &IDInfo{ClientIP: "192.0.2.9", ClientPort: 4242, SessionID: "portico-s1", TTL: 4, ConnectedIP: "127.0.0.1", ConnectedPort: 110}
	d := startPOP3Dovecot(t, testsrv.DovecotOptions{})
	b := pop3Backend(d)
	b.ForwardID = true
	res, err := LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, id)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	line := d.WaitLog(t, "Login: user=<alice>", 5*time.Second)
	if !strings.Contains(line, "rip=192.0.2.9") || !strings.Contains(line, "session=<portico-s1>") {
		t.Errorf("login line %q", line)
	}

	// Without ForwardID nothing is forwarded.
	b.ForwardID = false
	res, err = LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, id)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	d.WaitLog(t, "rip=127.0.0.1, lip=127.0.0.1, mpid=", 5*time.Second)

	// A backend that does not trust us does not offer XCLIENT; the login
	// works, under the proxy's address.
	u := startPOP3Dovecot(t, testsrv.DovecotOptions{TrustedNetworks: []string{}})
	b = pop3Backend(u)
	b.ForwardID = true
	res, err = LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, id)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	line = u.WaitLog(t, "Login: user=<alice>", 5*time.Second)
	if !strings.Contains(line, "rip=127.0.0.1") {
		t.Errorf("login line %q", line)
	}
	if strings.Contains(u.Log(), "XCLIENT") || strings.Contains(u.Log(), "192.0.2.9") {
		t.Errorf("XCLIENT sent to an untrusting backend:\n%s", u.Log())
	}
}

func TestXCLIENTArgs(t *testing.T) {
	for _, tc := range []struct {
		id   IDInfo
		want string
	}{
		{IDInfo{ClientIP: "192.0.2.1", ClientPort: 1234, SessionID: "s1", TTL: 5}, "ADDR=192.0.2.1 PORT=1234 SESSION=s1 TTL=5"},
		{IDInfo{ClientIP: "::ffff:192.0.2.1"}, "ADDR=192.0.2.1"},
		{IDInfo{ClientIP: "fe80::1%eth0", ClientPort: 70000}, "ADDR=fe80::1"},
		{IDInfo{ClientIP: "not an ip", SessionID: "a b"}, ""},
		{IDInfo{SessionID: "x\r\nPASS y", TTL: -1}, ""},
		{IDInfo{SessionID: strings.Repeat("s", 65)}, ""},
	} {
		if got := xclientArgs(&tc.id); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.id, got, tc.want)
		}
	}
}

// TestPOP3XCLIENTRefused: a -ERR to XCLIENT does not stop the login, the
// credentials are sent only once it has arrived, and it shows in the
// error of a failed login.
func TestPOP3XCLIENTRefused(t *testing.T) {
	addr, done := startFake(t, func(f *fake) {
		f.send("+OK [XCLIENT] ready\r\n")
		if f.line() != "CAPA" {
			return
		}
		f.send("+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n")
		if l := f.line(); !strings.HasPrefix(l, "XCLIENT ADDR=192.0.2.9 ") {
			return
		}
		// Nothing may follow XCLIENT before its answer.
		f.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if l := f.line(); l != "" {
			return
		}
		f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		f.send("-ERR You are not from trusted IP\r\n")
		f.line()
		f.send("-ERR [AUTH] Authentication failed.\r\n")
	})
	b := &routing.Backend{POP3Addr: addr, ForwardID: true}
	_, err := LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, &IDInfo{ClientIP: "192.0.2.9", ClientPort: 1})
	if !errors.Is(err, ErrAuthFailed) || !strings.Contains(err.Error(), "XCLIENT was refused: -ERR You are not from trusted IP") {
		t.Fatalf("err = %v", err)
	}
	if rx := wait(t, done).received(); !strings.HasSuffix(rx, "AUTH PLAIN "+b64("\x00alice\x00secret")+"\r\n") {
		t.Errorf("backend received %q", rx)
	}
}

// TestPOP3STLS logs in over STLS to a Dovecot with a test certificate; a
// backend that does not offer STLS is refused before any credential.
func TestPOP3STLS(t *testing.T) {
	t.Parallel()
	cert, certFile, keyFile := testcert.Files(t, t.TempDir(), "backend.test", "127.0.0.1")
	d := startPOP3Dovecot(t, testsrv.DovecotOptions{
		Extra: fmt.Sprintf("ssl = yes\nssl_cert = <%s\nssl_key = <%s\n", certFile, keyFile),
	})
	d.AddMessage(t, "alice", "INBOX", pop3Message)
	b := pop3Backend(d)
	b.TLS = routing.StartTLS
	b.TLSConfig = &tls.Config{RootCAs: ptls.CertPool(cert)}
	res, err := LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.Conn.(*tls.Conn); !ok || !res.TLS {
		t.Errorf("Conn is %T, TLS=%v", res.Conn, res.TLS)
	}
	retr(t, res, pop3Message)
	if line := d.WaitLog(t, "Login: user=<alice>", 5*time.Second); !strings.Contains(line, "TLS") {
		t.Errorf("login line %q", line)
	}

	// A certificate we do not trust.
	b.TLSConfig = nil
	if _, err := LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("untrusted certificate: %v", err)
	}

	plain := startPOP3Dovecot(t, testsrv.DovecotOptions{})
	b = pop3Backend(plain)
	b.TLS = routing.StartTLS
	_, err = LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil)
	if err == nil || errors.Is(err, ErrAuthFailed) || !strings.Contains(err.Error(), "STLS not advertised") {
		t.Fatalf("backend without STLS: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if strings.Contains(plain.Log(), "user=<alice>") {
		t.Errorf("credentials reached a backend without STLS:\n%s", plain.Log())
	}
}

// TestPOP3STLSInjection: what a backend sends in cleartext after its +OK
// to STLS is not read as coming over TLS.
func TestPOP3STLSInjection(t *testing.T) {
	cert, pool := testCert(t)
	addr, done := startFake(t, func(f *fake) {
		f.send("+OK ready\r\n")
		f.line()
		f.send("+OK\r\nSTLS\r\nUSER\r\n.\r\n")
		if f.line() != "STLS" {
			return
		}
		f.send("+OK Begin TLS\r\n+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n")
		if !f.upgrade(cert) {
			return
		}
		if f.line() != "CAPA" {
			return
		}
		f.send("+OK\r\nUSER\r\n.\r\n")
		f.line()
		f.send("+OK\r\n")
		f.line()
		f.send("+OK Logged in.\r\n")
	})
	b := &routing.Backend{POP3Addr: addr, TLS: routing.StartTLS, TLSConfig: &tls.Config{RootCAs: pool}}
	res, err := LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	// The injected CAPA offered PLAIN; the real one over TLS did not.
	if rx := wait(t, done).received(); !strings.HasSuffix(rx, "CAPA\r\nUSER alice\r\nPASS secret\r\n") {
		t.Errorf("backend received %q", rx)
	}
}

// TestPOP3ProxyHeader logs in through Dovecot's POP3 haproxy listener:
// the client address travels in the header, and no XCLIENT is sent.
func TestPOP3ProxyHeader(t *testing.T) {
	t.Parallel()
	d := startPOP3Dovecot(t, testsrv.DovecotOptions{})
	d.AddMessage(t, "alice", "INBOX", pop3Message)
	id := &IDInfo{ClientIP: "127.0.0.2", ClientPort: 40123, ConnectedIP: "127.0.0.1", ConnectedPort: 110, SessionID: "portico-s2"}
	b := &routing.Backend{Addr: d.HAProxyAddr, POP3Addr: d.POP3HAProxyAddr, ProxyProtocol: true, ForwardID: true, LoginTimeout: 5 * time.Second}
	res, err := LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, id)
	if err != nil {
		t.Fatal(err)
	}
	retr(t, res, pop3Message)
	line := d.WaitLog(t, "Login: user=<alice>", 5*time.Second)
	if !strings.Contains(line, "rip=127.0.0.2") || strings.Contains(line, "portico-s2") {
		t.Errorf("login line %q (want the header's address, and no XCLIENT session)", line)
	}
}

// TestPOP3OAuthDovecot passes OAuth tokens through to Dovecot's oauth2
// passdb: a long one (past the 255 octets of an AUTH line) after the "+",
// and a refused one with the dummy answer to the error challenge.
func TestPOP3OAuthDovecot(t *testing.T) {
	t.Parallel()
	is := testsrv.StartIssuer(t)
	d := startPOP3Dovecot(t, testsrv.DovecotOptions{OAuth2IntrospectionURL: is.HTTPURL})
	d.AddMessage(t, "alice", "INBOX", pop3Message)
	b := pop3Backend(d)
	var wire *testsrv.Buffer
	b.POP3Addr, wire = relay(t, d.POP3Addr, false)
	short, long := testsrv.OpaqueToken(), testsrv.OpaqueToken()+strings.Repeat("x", 300)
	for _, tok := range []string{short, long} {
		is.SetOpaque(tok, map[string]any{"active": true, "username": "alice"})
	}
	for _, mech := range []string{"XOAUTH2", "OAUTHBEARER"} {
		for _, tok := range []string{short, long} {
			cred := Credentials{User: "alice", Secret: tok, Mechanism: mech, AllowCleartext: true}
			res, err := LoginPOP3(context.Background(), b, cred, nil)
			if err != nil {
				t.Fatalf("%s, token of %d bytes: %v", mech, len(tok), err)
			}
			retr(t, res, pop3Message)
		}
		cred := Credentials{User: "alice", Secret: "expired-token", Mechanism: mech, AllowCleartext: true}
		_, err := LoginPOP3(context.Background(), b, cred, nil)
		if !errors.Is(err, ErrAuthFailed) || strings.Contains(err.Error(), "expired-token") {
			t.Fatalf("%s, refused token: %v", mech, err)
		}
		// The token goes nowhere in clear without AllowCleartext.
		cred = Credentials{User: "alice", Secret: short, Mechanism: mech}
		if _, err := LoginPOP3(context.Background(), b, cred, nil); err == nil || errors.Is(err, ErrAuthFailed) {
			t.Fatalf("%s in cleartext: %v", mech, err)
		}
	}
	d.WaitLog(t, "method=OAUTHBEARER", 5*time.Second)
	// The long token followed the "+"; the refused ones got Dovecot's
	// error challenge, and our dummy answer.
	for _, want := range []string{
		"C: AUTH XOAUTH2\r\nS: + \r\nC: " + b64("user=alice\x01auth=Bearer "+long+"\x01\x01") + "\r\n",
		"C: AUTH XOAUTH2 " + b64("user=alice\x01auth=Bearer expired-token\x01\x01") + "\r\nS: + ",
		"C: \r\nS: -ERR",
		"C: AUTH OAUTHBEARER " + b64("n,a=alice,\x01auth=Bearer expired-token\x01\x01") + "\r\nS: + ",
		"C: AQ==\r\nS: -ERR",
	} {
		if !strings.Contains(wire.String(), want) {
			t.Errorf("no %q in:\n%s", want, wire)
		}
	}
}

// TestPOP3OAuthNotOffered: a backend without the client's mechanism is
// refused, never sent the token another way.
func TestPOP3OAuthNotOffered(t *testing.T) {
	addr, done := startFake(t, func(f *fake) {
		f.send("+OK ready\r\n")
		f.line()
		f.send("+OK\r\nUSER\r\nSASL PLAIN OAUTHBEARER\r\n.\r\n")
		f.line()
	})
	cred := Credentials{User: "alice", Secret: testToken, Mechanism: "XOAUTH2", AllowCleartext: true}
	_, err := LoginPOP3(context.Background(), &routing.Backend{POP3Addr: addr}, cred, nil)
	if err == nil || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("err = %v", err)
	}
	if rx := wait(t, done).received(); rx != "CAPA\r\n" {
		t.Errorf("backend received %q", rx)
	}
}

// TestPOP3Replies: how the login's answer is taken, and that what follows
// it in the same segment is handed back in Buffered.
func TestPOP3Replies(t *testing.T) {
	for _, tc := range []struct {
		reply      string
		authFailed bool
		ok         bool
		buffered   string
		is         error // the error wraps it
	}{
		{"+OK Logged in.\r\n", false, true, "", nil},
		{"+OK Logged in.\r\n+OK 2 320\r\n", false, true, "+OK 2 320\r\n", nil},
		{"-ERR [AUTH] Authentication failed.\r\n", true, false, "", nil},
		{"-ERR Authentication failed.\r\n", true, false, "", nil},
		{"-ERR [SYS/TEMP] Temporary authentication failure.\r\n", false, false, "", nil},
		{"-ERR [SYS/PERM] Mailbox is broken.\r\n", false, false, "", nil},
		{"-ERR [IN-USE] Mailbox locked.\r\n", false, false, "", ErrInUse},
		{"-ERR [LOGIN-DELAY] Wait 5 minutes.\r\n", false, false, "", ErrLoginDelay},
		{"* OK what\r\n", false, false, "", nil},
	} {
		addr, done := startFake(t, func(f *fake) {
			f.send("+OK ready\r\n")
			f.line()
			f.send("+OK\r\nSASL PLAIN\r\n.\r\n")
			f.line()
			f.send(tc.reply)
		})
		res, err := LoginPOP3(context.Background(), &routing.Backend{POP3Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
		wait(t, done)
		if tc.ok {
			if err != nil {
				t.Fatalf("%q: %v", tc.reply, err)
			}
			res.Conn.Close()
			if string(res.Buffered) != tc.buffered {
				t.Errorf("%q: Buffered %q", tc.reply, res.Buffered)
			}
			continue
		}
		if err == nil || errors.Is(err, ErrAuthFailed) != tc.authFailed || tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("%q: err = %v", tc.reply, err)
		}
	}
}

// TestPOP3BadGreetings: nothing is sent to what is not a POP3 server
// ready for us.
func TestPOP3BadGreetings(t *testing.T) {
	for _, g := range []string{
		"* OK [CAPABILITY IMAP4rev1] IMAP ready\r\n",
		"-ERR [SYS/TEMP] too many connections\r\n",
		"+OKAY\r\n",
		"220 smtp.example.test ESMTP\r\n",
		strings.Repeat("+OK ", 3000) + "\r\n",
	} {
		addr, done := startFake(t, func(f *fake) {
			f.send(g)
			time.Sleep(100 * time.Millisecond)
		})
		_, err := LoginPOP3(context.Background(), &routing.Backend{POP3Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
		if err == nil || errors.Is(err, ErrAuthFailed) {
			t.Errorf("greeting %.40q: err = %v", g, err)
		}
		if rx := wait(t, done).received(); rx != "" {
			t.Errorf("greeting %.40q: backend received %q", g, rx)
		}
	}
}

func TestPOP3CAPALimits(t *testing.T) {
	addr, done := startFake(t, func(f *fake) {
		f.send("+OK ready\r\n")
		f.line()
		f.send("+OK\r\n")
		for i := 0; i < 10000; i++ {
			f.send("X-CAP-" + strings.Repeat("y", 20) + "\r\n")
		}
	})
	_, err := LoginPOP3(context.Background(), &routing.Backend{POP3Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("err = %v", err)
	}
	wait(t, done)

	// A backend without CAPA (RFC 1939) gets USER and PASS.
	addr, done = startFake(t, func(f *fake) {
		f.send("+OK ready\r\n")
		f.line()
		f.send("-ERR unknown command\r\n")
		f.line()
		f.send("+OK\r\n")
		f.line()
		f.send("+OK Logged in.\r\n")
	})
	res, err := LoginPOP3(context.Background(), &routing.Backend{POP3Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	if rx := wait(t, done).received(); rx != "CAPA\r\nUSER alice\r\nPASS secret\r\n" {
		t.Errorf("backend received %q", rx)
	}
}

// TestPOP3SASLContinuation: PLAIN answered with a challenge is cancelled
// with "*", and the login fails as unavailable.
func TestPOP3SASLContinuation(t *testing.T) {
	addr, done := startFake(t, func(f *fake) {
		f.send("+OK ready\r\n")
		f.line()
		f.send("+OK\r\nSASL PLAIN\r\n.\r\n")
		f.line()
		f.send("+ more?\r\n")
		if f.line() == "*" {
			f.send("-ERR Authentication aborted by client.\r\n")
		}
	})
	_, err := LoginPOP3(context.Background(), &routing.Backend{POP3Addr: addr}, Credentials{User: "alice", Secret: "secret"}, nil)
	if err == nil || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("err = %v", err)
	}
	if rx := wait(t, done).received(); !strings.HasSuffix(rx, "\r\n*\r\n") {
		t.Errorf("backend received %q", rx)
	}
}

func TestPOP3Timeouts(t *testing.T) {
	// Never greets: bounded by LoginTimeout.
	silent, _ := silentBackend(t, false)
	cred := Credentials{User: "alice", Secret: "secret"}
	start := time.Now()
	_, err := LoginPOP3(context.Background(), &routing.Backend{POP3Addr: silent, LoginTimeout: 200 * time.Millisecond}, cred, nil)
	if err == nil || errors.Is(err, ErrAuthFailed) || time.Since(start) > 3*time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}

	// ctx cancellation ends a login that would otherwise wait 30s.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = LoginPOP3(ctx, &routing.Backend{POP3Addr: silent}, cred, nil)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}

	// Connection refused.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := dead.Addr().String()
	dead.Close()
	if _, err := LoginPOP3(context.Background(), &routing.Backend{POP3Addr: addr}, cred, nil); err == nil || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("refused: %v", err)
	}
}

// TestPOP3ImplicitTLS: a pop3s backend, the handshake done by dial.
func TestPOP3ImplicitTLS(t *testing.T) {
	cert, pool := testCert(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		io.WriteString(c, "+OK ready\r\n")
		r.ReadString('\n')
		io.WriteString(c, "+OK\r\nSASL PLAIN\r\n.\r\n")
		l, _ := r.ReadString('\n')
		if l == "AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00alice\x00secret"))+"\r\n" {
			io.WriteString(c, "+OK Logged in.\r\n")
		}
		r.ReadString('\n')
	}()
	b := &routing.Backend{Addr: "imap.invalid:993", POP3Addr: ln.Addr().String(), TLS: routing.ImplicitTLS, TLSConfig: &tls.Config{RootCAs: pool}}
	res, err := LoginPOP3(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	if !res.TLS {
		t.Error("TLS = false")
	}
}
