package proxy_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
)

// TestReconfigure: a client accepted before a Reconfigure logs in through
// the router it was accepted with, one accepted after through the new
// one, and a spliced session goes on untouched.
func TestReconfigure(t *testing.T) {
	h := newHarness(t, nil)
	spliced := h.dial(t, h.imapClear)
	spliced.greeting()
	spliced.loginAlice("a1")

	before := h.dial(t, h.imapClear)
	before.greeting()

	// The new configuration routes nobody.
	empty := routing.NewStatic(map[string]*routing.Backend{})
	h.srv.Reconfigure(proxy.Config{
		Router: empty, TLSConfig: h.srv.TLSConfig, DefaultDomain: "example.test",
		Limits: proxy.Limits{AuthFailureDelay: -1, LookupTimeout: time.Second},
	})
	after := h.dial(t, h.imapClear)
	after.greeting()
	after.send("b1 LOGIN alice@example.test " + alicePW + "\r\n")
	after.expectPrefix("b1 NO [AUTHENTICATIONFAILED]")

	before.loginAlice("c1")
	before.checkSelect("c2")
	spliced.checkSelect("a2")
}

// TestUpdateListener: a listener's new description applies to the
// connections accepted after the call.
func TestUpdateListener(t *testing.T) {
	h := newHarness(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if h.srv.UpdateListener(ln, proxy.Listener{}) {
		t.Fatal("UpdateListener of a listener not served reported true")
	}
	done := make(chan error, 1)
	go func() { done <- h.srv.Serve(ln, proxy.Listener{Name: "plain", Mode: proxy.StartTLS}) }()

	c := h.dial(t, ln.Addr().String())
	c.greeting()
	c.send("a1 LOGIN alice@example.test " + alicePW + "\r\n")
	c.expectPrefix("a1 NO [PRIVACYREQUIRED]")

	if !h.srv.UpdateListener(ln, proxy.Listener{Name: "plain", Mode: proxy.StartTLS,
		CleartextLogin: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}) {
		t.Fatal("UpdateListener of a served listener reported false")
	}
	c2 := h.dial(t, ln.Addr().String())
	c2.greeting()
	c2.loginAlice("b1")

	// A listener closed by its owner ends its Serve; the server goes on.
	ln.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve of a closed listener returned %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its listener was closed")
	}
	c2.checkSelect("b2")
}

// TestKickAll: every spliced session gets the BYE, at a response boundary.
func TestKickAll(t *testing.T) {
	h := newHarness(t, nil)
	var cs []*client
	for i := 0; i < 3; i++ {
		c := h.dial(t, h.imapClear)
		c.greeting()
		c.loginAlice("a1")
		cs = append(cs, c)
	}
	if n := h.srv.KickAll("Server upgrade", 200*time.Millisecond); n != 3 {
		t.Fatalf("KickAll scheduled %d sessions, want 3", n)
	}
	for _, c := range cs {
		if l := c.line(); !strings.HasPrefix(l, "* BYE [UNAVAILABLE] Server upgrade") {
			t.Fatalf("kicked session got %q", l)
		}
		c.expectEOF()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for len(h.srv.Sessions()) > 0 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
}
