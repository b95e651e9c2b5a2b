package proxy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// TestLoopOwnBackendLoginOnSpare: a spare connection to this proxy's own
// listener (a route through a name that resolves to the proxy) waits
// there greeted; the login that takes it is still recognised as this
// proxy's own and refused at once.
func TestLoopOwnBackendLoginOnSpare(t *testing.T) {
	var self *routing.Backend
	spares := &upstream.Spares{}
	h := newHarnessWith(t, nil, func(s *proxy.Server) {
		s.Login = func(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error) {
			if b.Name == "via-name" {
				b = self
			}
			return spares.Login(ctx, b, cred, id)
		}
	})
	t.Cleanup(spares.Close) // before the harness counts goroutines
	self = &routing.Backend{Name: "via-name", Addr: h.imapClear, SpareConnections: 1}
	h.router.add("loop@example.test", &routing.Backend{Name: "via-name", Addr: "imap.example.test:143"})
	deadline := time.Now().Add(5 * time.Second)
	for n := 1; spares.Stats().Taken == 0; n++ {
		if time.Now().After(deadline) {
			t.Fatalf("no login took a spare: %+v", spares.Stats())
		}
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN loop@example.test pw\r\n")
		c.expect("a NO [UNAVAILABLE] Service temporarily unavailable, try again later")
		// Refused by the guard on the other side, not logged in there to
		// loop once more: one failed backend login per client login.
		// (The guard's own log line is rate-limited per address.)
		if got := strings.Count(h.logs.String(), "backend login failed"); got != n {
			t.Fatalf("login %d: %d failed backend logins, want %d (stats %+v):\n%s", n, got, n, spares.Stats(), h.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(h.logs.String(), `signal="the connection is this proxy's own backend login"`) {
		t.Errorf("no loop log line:\n%s", h.logs)
	}
}
