package proxy_test

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// fakeLimiter answers Check with verdict and records what it is told.
type fakeLimiter struct {
	mu        sync.Mutex
	verdict   proxy.LimitVerdict
	checks    []string // client user
	failed    []string // client user password
	succeeded []string // client user
}

func (f *fakeLimiter) set(v proxy.LimitVerdict) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.verdict = v
}

func (f *fakeLimiter) Check(ctx context.Context, client netip.Addr, user string) proxy.LimitVerdict {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks = append(f.checks, client.String()+" "+user)
	return f.verdict
}

func (f *fakeLimiter) Failed(ctx context.Context, client netip.Addr, user, password string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed = append(f.failed, client.String()+" "+user+" "+password)
}

func (f *fakeLimiter) Succeeded(client netip.Addr, user string, v proxy.LimitVerdict) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rec := ""
	if v.Recorded {
		rec = " (recorded)"
	}
	f.succeeded = append(f.succeeded, client.String()+" "+user+rec)
}

func (f *fakeLimiter) take() (checks, failed, succeeded []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	checks, failed, succeeded = f.checks, f.failed, f.succeeded
	f.checks, f.failed, f.succeeded = nil, nil, nil
	return
}

// TestLoginLimiter: the server asks its LoginLimiter before routing; a
// blocked login is answered exactly like a wrong password, after the same
// delay, without routing or a backend login and without a log line of its
// own; a delay is waited before the login goes on; a limiter that cannot
// decide (fail closed) gives NO [UNAVAILABLE]. Failures of every kind and
// successes are reported with the client's address and the normalised
// user.
func TestLoginLimiter(t *testing.T) {
	lim := &fakeLimiter{}
	var backendLogins atomic.Int64
	const delay = 200 * time.Millisecond
	h := newHarnessWith(t, func(l *proxy.Limits) { l.AuthFailureDelay = delay }, func(s *proxy.Server) {
		s.Limiter = lim
		s.Login = func(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error) {
			backendLogins.Add(1)
			return upstream.Login(ctx, b, cred, id)
		}
	})
	c := h.dialTLS(t, h.imaps)
	c.greeting()

	timed := func(tag, args, want string) time.Duration {
		t.Helper()
		start := time.Now()
		c.send(tag + " LOGIN " + args + "\r\n")
		c.expect(tag + " " + want)
		return time.Since(start)
	}

	// Failures of each kind, reported with the password for repeats.
	timed("a", "Alice@example.test wrong-pw", failText)
	timed("b", "nobody wrong-pw2", failText)
	timed("c", `"%u" wrong-pw3`, failText)
	checks, failed, _ := lim.take()
	if want := []string{"127.0.0.1 alice@example.test", "127.0.0.1 nobody@example.test"}; strings.Join(checks, ",") != strings.Join(want, ",") {
		t.Errorf("checks = %q, want %q", checks, want)
	}
	if want := []string{"127.0.0.1 alice@example.test wrong-pw", "127.0.0.1 nobody@example.test wrong-pw2", "127.0.0.1  wrong-pw3"}; strings.Join(failed, ",") != strings.Join(want, ",") {
		t.Errorf("failed = %q, want %q", failed, want)
	}
	c.expectPrefix("* BYE ")

	// Blocked: even the right password gets the failure, after the same
	// delay, with no lookup, no backend login and no log line.
	c = h.dialTLS(t, h.imaps)
	c.greeting()
	lim.set(proxy.LimitVerdict{Block: true})
	lookups, logins := h.router.calls.Load(), backendLogins.Load()
	logLines := strings.Count(h.logs.String(), "login failed")
	if d := timed("d", "alice@example.test "+alicePW, failText); d < delay {
		t.Errorf("blocked login answered after %v, before the %v failure delay", d, delay)
	}
	if h.router.calls.Load() != lookups || backendLogins.Load() != logins {
		t.Errorf("a blocked login was routed or sent to the backend")
	}
	if n := strings.Count(h.logs.String(), "login failed"); n != logLines {
		t.Errorf("a blocked login was logged by the server")
	}
	if _, failed, succeeded := lim.take(); len(failed)+len(succeeded) != 0 {
		t.Errorf("a blocked login was reported: failed %q, succeeded %q", failed, succeeded)
	}

	// Fail closed: NO [UNAVAILABLE] at once, not counted as a failure.
	lim.set(proxy.LimitVerdict{Unavailable: true})
	if d := timed("e", "alice@example.test "+alicePW, "NO [UNAVAILABLE] Service temporarily unavailable, try again later"); d >= delay {
		t.Errorf("unavailable answered after %v", d)
	}
	if h.router.calls.Load() != lookups || backendLogins.Load() != logins {
		t.Errorf("a refused login was routed or sent to the backend")
	}

	// Delayed, then logged in; the success is reported.
	lim.set(proxy.LimitVerdict{Delay: 300 * time.Millisecond})
	start := time.Now()
	c.loginAlice("f")
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("delayed login done after %v", d)
	}
	c.checkSelect("g")
	if _, _, succeeded := lim.take(); strings.Join(succeeded, ",") != "127.0.0.1 alice@example.test" {
		t.Errorf("succeeded = %q", succeeded)
	}
}
