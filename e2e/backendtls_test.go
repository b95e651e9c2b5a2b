package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

const fakePass = "fake-backend-pw"

// fakeBackend speaks just enough IMAP to test how Portico reaches a
// backend over TLS. It records every command line it receives, marked
// with whether TLS protected it.
type fakeBackend struct {
	t    *testing.T
	ln   net.Listener
	mode routing.TLSMode
	cert tls.Certificate
	// clientCAs, when set, makes the backend require a client certificate
	// signed by one of them.
	clientCAs *x509.CertPool
	// noStartTLS leaves STARTTLS out of the cleartext capabilities: a
	// downgrade by a man in the middle.
	noStartTLS bool
	// inject sends a forged CAPABILITY in cleartext right behind the
	// STARTTLS OK, in the same segment.
	inject bool

	wg   sync.WaitGroup
	mu   sync.Mutex
	cmds []string // "tls: a LOGIN ..." or "clear: a LOGIN ..."
}

func startFakeBackend(t *testing.T, f *fakeBackend) *fakeBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.t, f.ln = t, ln
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				f.serve(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); f.wg.Wait() })
	return f
}

func (f *fakeBackend) addr() string { return f.ln.Addr().String() }

func (f *fakeBackend) tlsConfig() *tls.Config {
	cfg := &tls.Config{Certificates: []tls.Certificate{f.cert}}
	if f.clientCAs != nil {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = f.clientCAs
	}
	return cfg
}

func (f *fakeBackend) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmds...)
}

// credentialsSent reports whether a LOGIN or AUTHENTICATE reached the
// backend, and whether one did in clear.
func (f *fakeBackend) credentialsSent() (any, inClear bool) {
	for _, c := range f.received() {
		prot, line, _ := strings.Cut(c, ": ")
		_, rest, _ := strings.Cut(line, " ")
		verb, _, _ := strings.Cut(rest, " ")
		if v := strings.ToUpper(verb); v == "LOGIN" || v == "AUTHENTICATE" {
			any = true
			inClear = inClear || prot == "clear"
		}
	}
	return any, inClear
}

func (f *fakeBackend) serve(c net.Conn) {
	var nc net.Conn = c
	secure := false
	if f.mode == routing.ImplicitTLS {
		tc := tls.Server(c, f.tlsConfig())
		if tc.Handshake() != nil {
			return
		}
		nc, secure = tc, true
	}
	caps := func() string {
		switch {
		case secure && f.inject:
			// Only LOGIN: a client that believed the injected
			// AUTH=PLAIN would send AUTHENTICATE instead.
			return "IMAP4rev1"
		case secure || f.mode == routing.Plain:
			return "IMAP4rev1 SASL-IR AUTH=PLAIN"
		case f.noStartTLS:
			return "IMAP4rev1 SASL-IR AUTH=PLAIN"
		}
		return "IMAP4rev1 STARTTLS LOGINDISABLED"
	}
	br := bufio.NewReader(nc)
	send := func(s string) { io.WriteString(nc, s) }
	send("* OK [CAPABILITY " + caps() + "] fake ready\r\n")
	loggedIn := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		prot := "clear"
		if secure {
			prot = "tls"
		}
		f.mu.Lock()
		f.cmds = append(f.cmds, prot+": "+line)
		f.mu.Unlock()
		tag, rest, _ := strings.Cut(line, " ")
		verb, args, _ := strings.Cut(rest, " ")
		switch strings.ToUpper(verb) {
		case "CAPABILITY":
			send("* CAPABILITY " + caps() + "\r\n" + tag + " OK done\r\n")
		case "STARTTLS":
			if secure || f.noStartTLS {
				send(tag + " BAD no\r\n")
				continue
			}
			if f.inject {
				send(tag + " OK Begin\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
			} else {
				send(tag + " OK Begin TLS negotiation now\r\n")
			}
			tc := tls.Server(c, f.tlsConfig())
			if tc.Handshake() != nil {
				return
			}
			nc, secure = tc, true
			br = bufio.NewReader(tc)
		case "LOGIN":
			if secure || f.mode == routing.Plain {
				if strings.Contains(args, fakePass) {
					loggedIn = true
					send(tag + " OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
				} else {
					send(tag + " NO [AUTHENTICATIONFAILED] wrong\r\n")
				}
			} else {
				send(tag + " NO [PRIVACYREQUIRED] no\r\n")
			}
		case "AUTHENTICATE":
			ir := ""
			if _, v, ok := strings.Cut(args, " "); ok {
				ir = v
			} else {
				send("+ \r\n")
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				ir = strings.TrimRight(l, "\r\n")
			}
			b, _ := base64.StdEncoding.DecodeString(ir)
			if strings.HasSuffix(string(b), "\x00"+fakePass) && secure {
				loggedIn = true
				send(tag + " OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
			} else {
				send(tag + " NO [AUTHENTICATIONFAILED] wrong\r\n")
			}
		case "NOOP":
			if loggedIn {
				send(tag + " OK NOOP done by the fake backend\r\n")
			} else {
				send(tag + " BAD not logged in\r\n")
			}
		case "LOGOUT":
			send("* BYE bye\r\n" + tag + " OK done\r\n")
			return
		default:
			send(tag + " BAD unknown\r\n")
		}
	}
}

// expiredCert is a self-signed certificate for localhost that expired an
// hour ago.
func expiredCert(t *testing.T) tls.Certificate {
	t.Helper()
	now := time.Now()
	c, err := ptls.SelfSignedValid(now.Add(-48*time.Hour), now.Add(-time.Hour), "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func selfSigned(t *testing.T, hosts ...string) tls.Certificate {
	t.Helper()
	c, err := ptls.SelfSigned(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pemFiles writes c as cert and key files and returns them.
func pemFiles(t *testing.T, c tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := ptls.WritePEM(c, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func clientTLS(t *testing.T, o ptls.ClientOptions) *tls.Config {
	t.Helper()
	cfg, err := ptls.ClientConfig(o)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestBackendTLS(t *testing.T) {
	baseline := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, baseline) }) // runs last

	backendCert := selfSigned(t, "localhost", "127.0.0.1")
	caFile, _ := pemFiles(t, backendCert)
	strangerFile, _ := pemFiles(t, selfSigned(t, "localhost", "127.0.0.1"))
	otherName := selfSigned(t, "other.test")
	otherNameFile, _ := pemFiles(t, otherName)
	expired := expiredCert(t)
	expiredFile, _ := pemFiles(t, expired)
	proxyClient := selfSigned(t, "portico.test")
	proxyCertFile, proxyKeyFile := pemFiles(t, proxyClient)
	wrongPin := ptls.PinSHA256(selfSigned(t, "localhost").Leaf)

	type scenario struct {
		name    string
		fake    *fakeBackend
		tlsMode routing.TLSMode
		opts    ptls.ClientOptions
		ok      bool   // the login goes through
		reason  string // in the log line when !ok
	}
	implicit := func(c tls.Certificate) *fakeBackend {
		return &fakeBackend{mode: routing.ImplicitTLS, cert: c}
	}
	scenarios := []scenario{
		{name: "unknownca", fake: implicit(backendCert), tlsMode: routing.ImplicitTLS,
			opts: ptls.ClientOptions{CAFile: strangerFile}, reason: "unknown authority"},
		{name: "wrongname", fake: implicit(otherName), tlsMode: routing.ImplicitTLS,
			opts: ptls.ClientOptions{CAFile: otherNameFile}, reason: "name mismatch"},
		{name: "expired", fake: implicit(expired), tlsMode: routing.ImplicitTLS,
			opts: ptls.ClientOptions{CAFile: expiredFile, ServerName: "localhost"}, reason: "expired"},
		{name: "pinmismatch", fake: implicit(backendCert), tlsMode: routing.ImplicitTLS,
			opts: ptls.ClientOptions{CAFile: caFile, ServerName: "localhost", PinSHA256: []string{wrongPin}}, reason: "pin mismatch"},
		{name: "pinmatch", fake: implicit(backendCert), tlsMode: routing.ImplicitTLS, ok: true,
			opts: ptls.ClientOptions{InsecureSkipVerify: true, PinSHA256: []string{wrongPin, ptls.PinSHA256(backendCert.Leaf)}}},
		{name: "verified", fake: implicit(backendCert), tlsMode: routing.ImplicitTLS, ok: true,
			opts: ptls.ClientOptions{CAFile: caFile}},
		{name: "downgrade", fake: &fakeBackend{mode: routing.StartTLS, cert: backendCert, noStartTLS: true}, tlsMode: routing.StartTLS,
			opts: ptls.ClientOptions{CAFile: caFile}, reason: "STARTTLS not advertised"},
		{name: "injection", fake: &fakeBackend{mode: routing.StartTLS, cert: backendCert, inject: true}, tlsMode: routing.StartTLS, ok: true,
			opts: ptls.ClientOptions{CAFile: caFile}},
		{name: "starttlsunknownca", fake: &fakeBackend{mode: routing.StartTLS, cert: backendCert}, tlsMode: routing.StartTLS,
			opts: ptls.ClientOptions{CAFile: strangerFile}, reason: "unknown authority"},
		{name: "mtls", fake: &fakeBackend{mode: routing.ImplicitTLS, cert: backendCert, clientCAs: ptls.CertPool(proxyClient)}, tlsMode: routing.ImplicitTLS, ok: true,
			opts: ptls.ClientOptions{CAFile: caFile, CertFile: proxyCertFile, KeyFile: proxyKeyFile}},
		{name: "mtlsnocert", fake: &fakeBackend{mode: routing.ImplicitTLS, cert: backendCert, clientCAs: ptls.CertPool(proxyClient)}, tlsMode: routing.ImplicitTLS,
			opts: ptls.ClientOptions{CAFile: caFile}, reason: "certificate required"},
	}

	routes := make(map[string]*routing.Backend)
	for _, s := range scenarios {
		startFakeBackend(t, s.fake)
		routes[s.name+"@example.test"] = &routing.Backend{
			Name: s.name, Addr: s.fake.addr(), TLS: s.tlsMode, TLSConfig: clientTLS(t, s.opts),
			ConnectTimeout: 5 * time.Second, LoginTimeout: 5 * time.Second,
		}
	}

	// Portico itself, on implicit TLS.
	serverCert := selfSigned(t, "localhost")
	store, err := ptls.NewStore(serverCert)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testsrv.Buffer{}
	srv := &proxy.Server{
		Router:    routing.NewStatic(routes),
		TLSConfig: ptls.ServerConfig(store, 0),
		Limits:    proxy.Limits{AuthFailureDelay: -1, MaxAuthFailures: 10},
		Logger:    slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	addr := serveIMAPS(t, srv, func() {
		if strings.Contains(logs.String(), fakePass) {
			t.Error("the password reached the log")
		}
	})
	clientCfg := &tls.Config{RootCAs: ptls.CertPool(serverCert), ServerName: "localhost", NextProtos: []string{"imap"}}

	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			c, err := dialer.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			tc := tls.Client(c, clientCfg)
			defer tc.Close()
			tc.SetDeadline(time.Now().Add(20 * time.Second))
			rc := &rawConn{t: t, conn: tc, br: bufio.NewReader(tc)}
			if g := rc.line(); !strings.HasPrefix(g, "* OK") {
				t.Fatalf("greeting %q", g)
			}
			user := s.name + "@example.test"
			r := rc.cmd("a", "LOGIN "+user+" "+fakePass)
			last := r[len(r)-1]
			anyCreds, inClear := s.fake.credentialsSent()
			if inClear {
				t.Errorf("credentials reached the backend in clear: %q", s.fake.received())
			}
			if !s.ok {
				if !strings.HasPrefix(last, "a NO [UNAVAILABLE]") {
					t.Fatalf("login: %q, want NO [UNAVAILABLE]", r)
				}
				if anyCreds {
					t.Errorf("credentials reached a refused backend: %q", s.fake.received())
				}
				var logLine string
				for _, l := range strings.Split(logs.String(), "\n") {
					if strings.Contains(l, "backend login failed") && strings.Contains(l, "user="+user) {
						logLine = l
					}
				}
				if !strings.Contains(logLine, s.reason) {
					t.Errorf("log line %q does not name the reason %q", logLine, s.reason)
				}
				rc.cmd("z", "LOGOUT")
				return
			}
			if !strings.HasPrefix(last, "a OK") {
				t.Fatalf("login: %q", r)
			}
			// Spliced: the backend answers.
			if r := rc.cmd("b", "NOOP"); !strings.Contains(r[len(r)-1], "by the fake backend") {
				t.Errorf("NOOP after login: %q", r)
			}
			rc.cmd("z", "LOGOUT")
			if s.name == "injection" {
				// The forged AUTH=PLAIN was dropped: Portico asked again
				// inside TLS and used LOGIN, the only method offered there.
				got := s.fake.received()
				var verbs []string
				for _, l := range got {
					prot, line, _ := strings.Cut(l, ": ")
					_, rest, _ := strings.Cut(line, " ")
					verb, _, _ := strings.Cut(rest, " ")
					verbs = append(verbs, prot+" "+verb)
				}
				want := []string{"clear STARTTLS", "tls CAPABILITY", "tls LOGIN", "tls NOOP", "tls LOGOUT"}
				if strings.Join(verbs, ",") != strings.Join(want, ",") {
					t.Errorf("backend received %q, want %q", got, want)
				}
			}
		})
	}
}
