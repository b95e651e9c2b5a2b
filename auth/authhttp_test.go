package auth

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"net/textproto"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// rawService is an auth_http service that records each request exactly
// as it came over the wire (header names in their case, in their order)
// and answers with a canned response. It speaks HTTP/1.1 with keep-alive
// unless told to close, so that the tests can count connections.
type rawService struct {
	ln    net.Listener
	conns atomic.Int32

	mu       sync.Mutex
	requests [][]string // request line, then header lines
	answer   func(req []string) string
	wg       sync.WaitGroup
}

func startRawService(t *testing.T, answer func(req []string) string) *rawService {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startRawServiceOn(t, ln, answer)
}

func startRawServiceOn(t *testing.T, ln net.Listener, answer func(req []string) string) *rawService {
	t.Helper()
	s := &rawService{ln: ln, answer: answer}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *rawService) serve(c net.Conn) {
	defer c.Close()
	tr := textproto.NewReader(bufio.NewReader(c))
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var req []string
		for {
			line, err := tr.ReadLine()
			if err != nil {
				return
			}
			if line == "" {
				break
			}
			req = append(req, line)
		}
		s.mu.Lock()
		s.requests = append(s.requests, req)
		answer := s.answer
		s.mu.Unlock()
		resp := answer(req)
		if resp == "" {
			return // hang up without a word
		}
		if _, err := c.Write([]byte(resp)); err != nil {
			return
		}
		if strings.Contains(resp, "Connection: close") || strings.HasPrefix(resp, "HTTP/1.0") {
			return
		}
	}
}

func (s *rawService) url() string { return "http://" + s.ln.Addr().String() + "/auth" }

func (s *rawService) last() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.requests) == 0 {
		return nil
	}
	return s.requests[len(s.requests)-1]
}

func ok200(headers ...string) string {
	return "HTTP/1.1 200 OK\r\n" + strings.Join(headers, "\r\n") + "\r\nContent-Length: 0\r\n\r\n"
}

// loginReq is a login over TLS 1.3 through a balancer's PROXY header,
// with a password that needs every kind of escaping nginx does and some
// it does not.
var loginReq = proxy.AuthRequest{
	Mechanism: "LOGIN", User: "alice@example.test", Login: "Alice Smith",
	Secret: "p w%d+e/é\t\x01\x7f!", Attempt: 2, Protocol: "imap",
	Client: netip.MustParseAddrPort("192.0.2.7:51000"), Local: netip.MustParseAddrPort("203.0.113.1:993"),
	ProxySource: netip.MustParseAddrPort("192.0.2.7:51000"), ProxyDest: netip.MustParseAddrPort("203.0.113.1:993"),
	TLS: true, TLSVersion: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256,
}

// TestHTTPRequest: the request carries what nginx 1.22's
// ngx_mail_auth_http_create_request writes, byte for byte in the values
// and with nginx's spelling of the names, and nothing Go would add.
func TestHTTPRequest(t *testing.T) {
	svc := startRawService(t, func([]string) string { return ok200("Auth-Status: OK") })
	h := &HTTP{URL: svc.url(), KeepRouting: true, Headers: []Header{{"X-Auth-Key", "s3cr3t"}}}
	defer h.Close()
	res, err := h.Authenticate(context.Background(), loginReq)
	if err != nil || !res.OK || res.Backend != nil || res.Upstream != (upstream.Credentials{}) {
		t.Fatalf("Authenticate = %+v, %v", res, err)
	}
	req := svc.last()
	if req[0] != "GET /auth HTTP/1.1" {
		t.Errorf("request line %q", req[0])
	}
	got := map[string]string{}
	for _, l := range req[1:] {
		k, v, _ := strings.Cut(l, ": ")
		if _, dup := got[k]; dup {
			t.Errorf("header %s sent twice", k)
		}
		got[k] = v
	}
	want := map[string]string{
		"Host":        "127.0.0.1", // without the port, as nginx sends it
		"Auth-Method": "plain",
		"Auth-User":   "Alice%20Smith", // as the client typed it
		// Space, %, tab and other controls escaped; +, / and UTF-8 not.
		// DEL is escaped too (Go's client will not send it raw).
		"Auth-Pass":                  "p%20w%25d+e/é%09%01%7F!",
		"Auth-Protocol":              "imap",
		"Auth-Login-Attempt":         "2",
		"Client-IP":                  "192.0.2.7",
		"Proxy-Protocol-Addr":        "192.0.2.7",
		"Proxy-Protocol-Port":        "51000",
		"Proxy-Protocol-Server-Addr": "203.0.113.1",
		"Proxy-Protocol-Server-Port": "993",
		"Auth-SSL":                   "on",
		"Auth-SSL-Protocol":          "TLSv1.3",
		"Auth-SSL-Cipher":            "TLS_AES_128_GCM_SHA256",
		"X-Auth-Key":                 "s3cr3t",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected header %s: %q", k, got[k])
		}
	}

	// Cleartext (a trusted network), no PROXY header, a TLS 1.2 cipher.
	r := loginReq
	r.TLS, r.ProxySource, r.ProxyDest = false, netip.AddrPort{}, netip.AddrPort{}
	h.Authenticate(context.Background(), r)
	for _, l := range svc.last() {
		if strings.HasPrefix(l, "Auth-SSL") || strings.HasPrefix(l, "Proxy-Protocol") {
			t.Errorf("cleartext login without PROXY header sent %q", l)
		}
	}
	if n := cipherName(tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256); n != "ECDHE-RSA-AES128-GCM-SHA256" {
		t.Errorf("OpenSSL name %q", n)
	}
}

// nginxMailAuthEscape is the table ngx_escape_uri uses for
// NGX_ESCAPE_MAIL_AUTH in nginx 1.22 (src/core/ngx_string.c, "mail_auth is
// the same as memcached"): one bit per byte value, set when escaped.
var nginxMailAuthEscape = [8]uint32{
	0xffffffff, // 0x00-0x1f
	0x00000021, // " " and "%"
	0, 0, 0, 0, 0, 0,
}

func TestEscapeMailAuthMatchesNginx(t *testing.T) {
	for c := 0; c < 256; c++ {
		nginx := nginxMailAuthEscape[c>>5]&(1<<(c&0x1f)) != 0
		got := escapeMailAuth(string([]byte{byte(c)})) != string([]byte{byte(c)})
		if c == 0x7f {
			nginx = true // the one documented difference
		}
		if got != nginx {
			t.Errorf("byte %#x: escaped %v, nginx %v", c, got, nginx)
		}
	}
	if s := escapeMailAuth("a b%\n"); s != "a%20b%25%0A" {
		t.Errorf("escape = %q", s)
	}
}

// TestHTTPAnswers: how each answer a service can give becomes a decision.
func TestHTTPAnswers(t *testing.T) {
	answer := make(chan string, 1)
	svc := startRawService(t, func([]string) string {
		select {
		case a := <-answer:
			return a
		case <-time.After(5 * time.Second):
			return ""
		}
	})
	be := &routing.Backend{Name: "imap1", Addr: "127.0.0.1:1143"}
	var resolved netip.AddrPort
	newHTTP := func() *HTTP {
		return &HTTP{URL: svc.url(), Timeout: 500 * time.Millisecond,
			Backend: func(ctx context.Context, a netip.AddrPort) (*routing.Backend, error) {
				resolved = a
				if a.Port() == 9999 {
					return nil, routing.ErrBackendDown
				}
				return be, nil
			}}
	}
	h := newHTTP()
	defer func() { h.Close() }()
	req := proxy.AuthRequest{Mechanism: "PLAIN", User: "alice@example.test", Secret: "pw", Attempt: 1,
		Client: netip.MustParseAddrPort("127.0.0.2:4000")}
	ask := func(resp string) (proxy.AuthResult, error) {
		t.Helper()
		answer <- resp
		return h.Authenticate(context.Background(), req)
	}

	// OK naming the backend, nginx style (an HTTP/1.0 answer that closes).
	res, err := ask("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 1143\r\n\r\n")
	if err != nil || !res.OK || res.Backend != be || resolved.String() != "127.0.0.1:1143" {
		t.Errorf("OK: %+v, %v (resolved %v)", res, err, resolved)
	}
	// Rewritten credentials are used as sent, not URL-decoded.
	res, err = ask(ok200("Auth-Status: OK", "Auth-Server: ::1", "Auth-Port: 143", "Auth-User: alice%20x", "Auth-Pass: other pw"))
	if err != nil || res.Upstream != (upstream.Credentials{User: "alice%20x", Secret: "other pw"}) || resolved.String() != "[::1]:143" {
		t.Errorf("rewrite: %+v, %v", res, err)
	}
	// Only a password rewrite: the user stays.
	res, _ = ask(ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1", "Auth-Port: 143", "Auth-Pass: master"))
	if res.Upstream != (upstream.Credentials{User: "alice@example.test", Secret: "master"}) {
		t.Errorf("password rewrite: %+v", res.Upstream)
	}
	// nginx ignores the status line; so does Portico, below 500.
	res, err = ask("HTTP/1.1 403 Forbidden\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\nContent-Length: 0\r\n\r\n")
	if err != nil || res.OK || res.Wait != 3*time.Second || res.Close {
		t.Errorf("refusal with Auth-Wait: %+v, %v", res, err)
	}
	// Without Auth-Wait (or with 0, or garbage) nginx closes the connection.
	for _, w := range []string{"", "Auth-Wait: 0", "Auth-Wait: soon"} {
		res, err = ask(ok200("Auth-Status: Invalid login or password", w))
		if err != nil || res.OK || res.Wait != 0 || !res.Close {
			t.Errorf("refusal with %q: %+v, %v", w, res, err)
		}
	}
	// Refusals are told apart by nothing but the text, which stays here.
	res, err = ask(ok200("Auth-Status: No such user"))
	if err != nil || res.OK {
		t.Errorf("unknown user: %+v, %v", res, err)
	}

	// Errors: the client is told to try later, never that its password
	// is wrong.
	for name, resp := range map[string]string{
		"5xx with OK":        "HTTP/1.1 500 Internal Server Error\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 1143\r\nContent-Length: 0\r\n\r\n",
		"502":                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
		"no Auth-Status":     ok200("Auth-Server: 127.0.0.1", "Auth-Port: 143"),
		"OK without server":  ok200("Auth-Status: OK"),
		"OK without port":    ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1"),
		"server is a name":   ok200("Auth-Status: OK", "Auth-Server: imap1.example.test", "Auth-Port: 143"),
		"port 0":             ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1", "Auth-Port: 0"),
		"port too big":       ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1", "Auth-Port: 65536"),
		"backend down":       ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1", "Auth-Port: 9999"),
		"empty Auth-Pass":    ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1", "Auth-Port: 143", "Auth-Pass: "),
		"garbage":            "SSH-2.0-OpenSSH_9.2\r\n\r\n",
		"hang up":            "",
		"truncated response": "HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nContent-Length: 10\r\n\r\n",
	} {
		// A fresh client for each: Go's retries a GET once when a reused
		// connection breaks, which would take the next case's answer.
		h.Close()
		h = newHTTP()
		res, err := ask(resp)
		if err == nil {
			t.Errorf("%s: %+v, want an error", name, res)
		} else if strings.Contains(err.Error(), "pw") {
			t.Errorf("%s: the password is in the error %q", name, err)
		}
	}
	// A service that does not answer within the timeout.
	start := time.Now()
	if _, err := h.Authenticate(context.Background(), req); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("silent service: %v after %v", err, time.Since(start))
	}
	answer <- "" // let the silent connection go

	// With a master user, an OK without rewrites logs in as the master.
	h.Master = Master{User: "portico", Password: "master-pw"}
	answer <- ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1", "Auth-Port: 143")
	if res, _ := h.Authenticate(context.Background(), req); res.Upstream != (upstream.Credentials{User: "portico", Secret: "master-pw", AuthzID: "alice@example.test"}) {
		t.Errorf("master: %+v", res.Upstream)
	}
	answer <- ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1", "Auth-Port: 143", "Auth-Pass: x")
	if res, _ := h.Authenticate(context.Background(), req); res.Upstream.User != "alice@example.test" || res.Upstream.AuthzID != "" {
		t.Errorf("master and a rewrite: %+v", res.Upstream)
	}

	// Auth-Status WAIT: asked again after Auth-Wait seconds, as nginx does.
	answer <- ok200("Auth-Status: WAIT", "Auth-Wait: 1")
	go func() { answer <- ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1", "Auth-Port: 143") }()
	start = time.Now()
	if res, err := h.Authenticate(context.Background(), req); err != nil || !res.OK || time.Since(start) < time.Second {
		t.Errorf("WAIT, then OK: %+v, %v after %v", res, err, time.Since(start))
	}
	// ... for as long as the caller's context lasts.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	answer <- ok200("Auth-Status: WAIT", "Auth-Wait: 1")
	if _, err := h.Authenticate(ctx, req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WAIT beyond the deadline: %v", err)
	}
	cancel()

	// KeepRouting: the answer decides the password only.
	h2 := &HTTP{URL: svc.url(), KeepRouting: true}
	defer h2.Close()
	answer <- ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1", "Auth-Port: 1143")
	if res, err := h2.Authenticate(context.Background(), req); err != nil || !res.OK || res.Backend != nil {
		t.Errorf("KeepRouting: %+v, %v", res, err)
	}
	// Without a Backend func, the address itself, in plain IMAP.
	h3 := &HTTP{URL: svc.url()}
	defer h3.Close()
	answer <- ok200("Auth-Status: OK", "Auth-Server: 127.0.0.1", "Auth-Port: 1143")
	if res, err := h3.Authenticate(context.Background(), req); err != nil || res.Backend == nil ||
		res.Backend.Addr != "127.0.0.1:1143" || res.Backend.TLS != routing.Plain {
		t.Errorf("no Backend func: %+v, %v", res, err)
	}
}

// TestHTTPKeepAlive: logins reuse one connection to a service that keeps
// it open, even when they come one after another from many sessions.
func TestHTTPKeepAlive(t *testing.T) {
	svc := startRawService(t, func([]string) string { return ok200("Auth-Status: OK") })
	h := &HTTP{URL: svc.url(), KeepRouting: true}
	defer h.Close()
	for i := 0; i < 20; i++ {
		if res, err := h.Authenticate(context.Background(), loginReq); err != nil || !res.OK {
			t.Fatalf("login %d: %+v, %v", i, res, err)
		}
	}
	if n := svc.conns.Load(); n != 1 {
		t.Errorf("20 logins one after another opened %d connections, want 1", n)
	}
	// Concurrent logins open what they need and no more than that.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.Authenticate(context.Background(), loginReq)
		}()
	}
	wg.Wait()
	if n := svc.conns.Load(); n > 9 {
		t.Errorf("8 concurrent logins: %d connections in all", n)
	}
}

// TestHTTPServiceDown: nothing listening is an error, quickly.
func TestHTTPServiceDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/auth"
	ln.Close()
	h := &HTTP{URL: url}
	defer h.Close()
	if _, err := h.Authenticate(context.Background(), loginReq); err == nil {
		t.Fatal("no error with the service down")
	}
	// The caller's context bounds the request too.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.Authenticate(ctx, loginReq); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	for _, u := range []string{"", "ftp://x/", "127.0.0.1:80/auth", "http:///auth"} {
		if _, err := (&HTTP{URL: u}).Authenticate(context.Background(), loginReq); err == nil {
			t.Errorf("URL %q accepted", u)
		}
	}
	// Tokens are not passwords: nginx has no method for them.
	r := loginReq
	r.Mechanism = "XOAUTH2"
	if _, err := h.Authenticate(context.Background(), r); err == nil {
		t.Error("XOAUTH2 sent to an auth_http service")
	}
}

// TestHTTPUnixSocket: nginx's unix:/path/to/socket:/uri form of the URL.
func TestHTTPUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "auth.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	svc := startRawServiceOn(t, ln, func([]string) string { return ok200("Auth-Status: OK") })
	for url, line := range map[string]string{"unix:" + sock + ":/auth": "GET /auth HTTP/1.1", "unix:" + sock: "GET / HTTP/1.1"} {
		h := &HTTP{URL: url, KeepRouting: true}
		res, err := h.Authenticate(context.Background(), loginReq)
		h.Close()
		if err != nil || !res.OK {
			t.Fatalf("%s: %+v, %v", url, res, err)
		}
		req := svc.last()
		if req[0] != line || !slices.Contains(req, "Host: localhost") {
			t.Errorf("%s: request %q", url, req)
		}
	}
	for _, url := range []string{"unix:", "unix::/auth", "unix:" + sock + ":auth"} {
		if _, err := (&HTTP{URL: url}).Authenticate(context.Background(), loginReq); err == nil {
			t.Errorf("URL %q accepted", url)
		}
	}
}
