package proxy_test

import (
	"context"
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
	auth.mu.Lock()
	defer auth.mu.Unlock()
	if r := auth.asked[0]; r.Mechanism != "LOGIN" || r.User != "alice@example.test" || !r.TLS || r.Attempt != 1 ||
		r.Protocol != "imap" || !r.Client.IsValid() || !r.Local.IsValid() {
		t.Errorf("request %+v", r)
	}
	for _, s := range []string{"proxy-pw", alicePW} {
		if strings.Contains(h.logs.String(), s) {
			t.Errorf("a secret reached the log: %q", s)
		}
	}
}
