package app

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
)

// TestAuthHTTPConfig: auth.passwords "http" asks an nginx-style service
// (python3's http.server) about every login, and its answer's
// Auth-Server/Auth-Port becomes the configured backend of that address or
// an ad-hoc one made from backend_defaults.
func TestAuthHTTPConfig(t *testing.T) {
	const alicePW = "a pw%+é" // escaped on the way, decoded by the service
	mem1, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice@example.test", Password: "alice-backend-pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer mem1.Close()
	mem2, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "bob@example.test", Password: "bob-pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer mem2.Close()
	svc := testsrv.StartAuthHTTP(t, false,
		// The service rewrites alice's credentials: the backend has its own.
		testsrv.AuthHTTPUser{Login: "alice@example.test", Password: alicePW, Backend: mem1.Addr(),
			UpstreamUser: "alice@example.test", UpstreamPass: "alice-backend-pw"},
		testsrv.AuthHTTPUser{Login: "bob@example.test", Password: "bob-pw", Backend: mem2.Addr()},
	)
	certFile, keyFile := certPair(t)
	rt := buildYAML(t, `
listeners:
  - {mode: imap, address: "127.0.0.1:0", cleartext_login_networks: [127.0.0.0/8]}
tls:
  certificates:
    - {cert_file: `+certFile+`, key_file: `+keyFile+`}
routing:
  health: {disabled: true}
  lookup_timeout: 1s
limits:
  auth_failure_delay: 100ms
backends:
  - {name: mem1, address: "`+mem1.Addr()+`"}
backend_defaults:
  security: plain
auth:
  passwords: http
  http:
    url: "`+svc.URL+`"
    timeout: 3s
    headers: {X-Auth-Key: k1}
`)
	if d := rt.Server.Limits.AuthTimeout; d != 3*time.Second {
		t.Errorf("AuthTimeout %v: the service's timeout is longer than the lookup's", d)
	}
	got := make(chan proxy.SessionInfo, 4)
	rt.Server.OnSplice = func(i proxy.SessionInfo) { got <- i }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go rt.Server.Serve(ln, rt.Listeners[0].Config)
	defer rt.Server.Close()

	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(15 * time.Second))
		br := bufio.NewReader(c)
		br.ReadString('\n')
		return c, br
	}
	login := func(c net.Conn, br *bufio.Reader, user, pass, want string) time.Duration {
		t.Helper()
		start := time.Now()
		io.WriteString(c, "a LOGIN "+user+" "+imapQuote(pass)+"\r\n")
		if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "a "+want) {
			t.Fatalf("%s: %q, want %q", user, l, want)
		}
		return time.Since(start)
	}
	spliced := func(backend string) {
		t.Helper()
		select {
		case i := <-got:
			if i.Backend != backend {
				t.Errorf("spliced to %q, want %q", i.Backend, backend)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no session")
		}
	}

	// A wrong password: refused after the service's Auth-Wait, and the
	// client may try again on the same connection.
	c, br := dial()
	if d := login(c, br, "alice@example.test", "wrong", "NO [AUTHENTICATIONFAILED]"); d < time.Second {
		t.Errorf("refusal with Auth-Wait: 1 answered after %v", d)
	}
	login(c, br, "alice@example.test", alicePW, "OK")
	spliced("mem1") // the configured backend of that address, by name

	// An address no backend has: one made from backend_defaults.
	c, br = dial()
	login(c, br, "bob@example.test", "bob-pw", "OK")
	spliced(mem2.Addr())

	// Unknown to the service: no Auth-Wait, so the session ends.
	c, br = dial()
	login(c, br, "mallory@example.test", "pw", "NO [AUTHENTICATIONFAILED]")
	if rest, _ := io.ReadAll(br); !strings.HasPrefix(string(rest), "* BYE") {
		t.Errorf("after a refusal without Auth-Wait: %q", rest)
	}
	// The service failing is not a wrong password.
	c, br = dial()
	login(c, br, "broken", "pw", "NO [UNAVAILABLE]")
	svc.Stop()
	login(c, br, "bob@example.test", "bob-pw", "NO [UNAVAILABLE]")

	reqs := svc.Requests(t)
	if len(reqs) != 5 {
		t.Fatalf("%d requests: %+v", len(reqs), reqs)
	}
	for i, want := range map[int]string{0: "1", 1: "2", 2: "1"} {
		if v, _ := reqs[i].Header("Auth-Login-Attempt"); v != want {
			t.Errorf("request %d: Auth-Login-Attempt %q, want %s", i, v, want)
		}
	}
	if v, _ := reqs[1].Header("Auth-Pass"); v != "a%20pw%25+é" {
		t.Errorf("Auth-Pass %q", v)
	}
	if v, _ := reqs[1].Header("X-Auth-Key"); v != "k1" {
		t.Errorf("X-Auth-Key %q", v)
	}
}

// TestAuthHTTPBackends: the backend of an answer is a configured one when
// the address matches, else an ad-hoc one from backend_defaults, and
// either must be up.
func TestAuthHTTPBackends(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := closed.Addr().String()
	closed.Close()
	cfg, err := config.Parse([]byte(`
listeners:
  - {mode: imaps, address: "127.0.0.1:0"}
tls:
  certificates:
    - {cert_file: `+must(certPair(t))+`}
backends:
  - {name: imap1, address: "10.0.0.1:143", forward_id: true}
  - {name: imap2, address: "imap2.internal:143"}
  - {name: gone, address: "`+down+`"}
routing:
  health: {interval: 1s, timeout: 500ms, fall: 1}
backend_defaults:
  security: starttls
  forward_id: true
  login_timeout: 7s
auth:
  passwords: http
  http: {url: "http://127.0.0.1:1/auth"}
`), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := Build(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	find := rt.authHTTP.Backend
	ctx := context.Background()
	b, err := find(ctx, netip.MustParseAddrPort("10.0.0.1:143"))
	if err != nil || b.Name != "imap1" {
		t.Errorf("configured address: %v, %v", b, err)
	}
	b, err = find(ctx, netip.MustParseAddrPort("10.0.0.2:993"))
	if err != nil || b.Name != "" || b.Addr != "10.0.0.2:993" || b.TLS != routing.StartTLS || !b.ForwardID || b.LoginTimeout != 7*time.Second {
		t.Errorf("ad-hoc backend: %+v, %v", b, err)
	}
	if b, _ := find(ctx, netip.MustParseAddrPort("[2001:db8::1]:143")); b.Addr != "[2001:db8::1]:143" {
		t.Errorf("IPv6: %q", b.Addr)
	}
	// A backend that health checks find down is refused, as a routed
	// one is.
	hctx, stop := context.WithCancel(ctx)
	defer stop()
	go rt.health.Run(hctx, rt.backends[2])
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := find(ctx, netip.MustParseAddrPort(down))
		if errors.Is(err, routing.ErrBackendDown) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend down: %v, %v", b, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// backend: routing needs none of this.
	cfg.Auth.HTTP.Backend = config.HTTPAuthBackendRouting
	rt2, err := Build(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer rt2.Close()
	if rt2.authHTTP.Backend != nil || !rt2.authHTTP.KeepRouting {
		t.Errorf("backend routing: %+v", rt2.authHTTP)
	}
}

func must(certFile, keyFile string) string {
	return certFile + ", key_file: " + keyFile
}

// imapQuote writes s as an IMAP quoted string.
func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
