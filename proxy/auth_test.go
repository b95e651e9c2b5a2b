package proxy_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// fakeAuth decides logins by a table and records what it was asked.
type fakeAuth struct {
	mu      sync.Mutex
	asked   []proxy.AuthRequest
	results map[string]proxy.AuthResult // by user and secret
}

func (a *fakeAuth) Authenticate(ctx context.Context, req proxy.AuthRequest) (proxy.AuthResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.asked = append(a.asked, req)
	if req.User == "broken@example.test" {
		return proxy.AuthResult{}, errors.New("auth service down")
	}
	return a.results[req.User+" "+req.Secret], nil
}

// TestAuthenticator: a Server with an Authenticator logs a user in only
// when it says so, with the credentials and to the backend it names, and
// answers its refusals like any wrong password.
func TestAuthenticator(t *testing.T) {
	const delay = 50 * time.Millisecond
	mem := &routing.Backend{Name: "mem2"}
	alice := upstream.Credentials{User: "alice@example.test", Secret: alicePW}
	auth := &fakeAuth{results: map[string]proxy.AuthResult{
		"alice@example.test proxy-pw":  {OK: true, Upstream: alice},
		"routed@example.test proxy-pw": {OK: true, Upstream: alice, Backend: mem},
		"waited@example.test pw":       {Wait: 400 * time.Millisecond},
		"closed@example.test pw":       {Close: true},
	}}
	h := newHarnessWith(t, func(l *proxy.Limits) { l.AuthFailureDelay = delay }, func(s *proxy.Server) { s.Authenticator = auth })
	mem.Addr = h.mem.Addr()
	login := func(user, pass, want string) time.Duration {
		t.Helper()
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		start := time.Now()
		c.send("a LOGIN " + user + " " + pass + "\r\n")
		c.expectPrefix("a " + want)
		return time.Since(start)
	}
	login("alice", "proxy-pw", "OK ")
	// AUTHENTICATE LOGIN is a LOGIN to the Authenticator.
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a AUTHENTICATE LOGIN\r\n")
	c.expectPrefix("+ ")
	c.send(base64.StdEncoding.EncodeToString([]byte("alice")) + "\r\n")
	c.expectPrefix("+ ")
	c.send(base64.StdEncoding.EncodeToString([]byte("proxy-pw")) + "\r\n")
	c.expectPrefix("a OK ")
	auth.mu.Lock()
	if m := auth.asked[len(auth.asked)-1].Mechanism; m != "LOGIN" {
		t.Errorf("AUTHENTICATE LOGIN reached the Authenticator as %q", m)
	}
	auth.mu.Unlock()
	// The backend would take this password; the authenticator decides.
	if d := login("alice", alicePW, failText); d < delay {
		t.Errorf("refusal answered after %v, before the failure delay", d)
	}
	lookups := h.router.calls.Load()
	login("routed", "proxy-pw", "OK ") // no route: the authenticator's backend
	if h.router.calls.Load() != lookups {
		t.Error("the router was asked although the authenticator named the backend")
	}
	login("broken", "pw", "NO [UNAVAILABLE] ")
	if d := login("waited", "pw", failText); d < 400*time.Millisecond {
		t.Errorf("refusal with Wait answered after %v", d)
	}
	// A refusal with Close ends the session after the tagged answer.
	c = h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a LOGIN Closed pw\r\n")
	c.expectPrefix("a " + failText)
	if rest := string(c.readToEOF()); !strings.HasPrefix(rest, "* BYE ") {
		t.Errorf("after a refusal with Close: %q", rest)
	}
	// Behind a balancer's PROXY header, the request names its addresses.
	_, ppImaps := h.ppListeners()
	c = h.dial(t, ppImaps)
	c.send(string(proxyHeader(2, "192.0.2.7:51000", "203.0.113.1:993")))
	c.upgrade(h.clientTLS)
	c.greeting()
	c.send("a LOGIN waited@example.test wrong\r\n")
	c.expectPrefix("a " + failText)
	auth.mu.Lock()
	defer auth.mu.Unlock()
	if r := auth.asked[len(auth.asked)-1]; r.ProxySource.String() != "192.0.2.7:51000" || r.ProxyDest.String() != "203.0.113.1:993" ||
		r.Client != r.ProxySource {
		t.Errorf("behind a PROXY header: request %+v", r)
	}
	if r := auth.asked[0]; r.Mechanism != "LOGIN" || r.User != "alice@example.test" || r.Login != "alice" || !r.TLS ||
		r.TLSVersion == 0 || r.CipherSuite == 0 || r.ProxySource.IsValid() || r.Attempt != 1 ||
		r.Protocol != "imap" || !r.Client.IsValid() || !r.Local.IsValid() {
		t.Errorf("request %+v", r)
	}
	for _, s := range []string{"proxy-pw", alicePW} {
		if strings.Contains(h.logs.String(), s) {
			t.Errorf("a secret reached the log: %q", s)
		}
	}
}
