package proxy_test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

const goodToken = "eyJhbGciOi.good-token_~+/="

func xoauth2(user, tok string) string {
	return b64("user=" + user + "\x01auth=Bearer " + tok + "\x01\x01")
}

func oauthbearer(user, tok string) string {
	return b64("n,a=" + user + ",\x01host=imap.example.test\x01port=993\x01auth=Bearer " + tok + "\x01\x01")
}

// oauthBackend is a backend with Dovecot's oauth2 passdb in miniature: it
// accepts goodToken for any user with XOAUTH2 or OAUTHBEARER (SASL-IR),
// and refuses other tokens with the RFC 7628 error challenge.
func oauthBackend(t *testing.T, caps string, lines chan<- string) *fakeServer {
	s := startFakeServer(t, func(c net.Conn) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR ID "+caps+"] ready\r\n")
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			l = strings.TrimRight(l, "\r\n")
			lines <- l
			tag, rest, _ := strings.Cut(l, " ")
			f := strings.Fields(rest)
			switch {
			case len(f) == 3 && f[0] == "AUTHENTICATE":
				msg, _ := base64.StdEncoding.DecodeString(f[2])
				if strings.Contains(string(msg), "auth=Bearer "+goodToken+"\x01") {
					io.WriteString(c, tag+" OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
					continue
				}
				io.WriteString(c, "+ "+b64(`{"status":"invalid_token"}`)+"\r\n")
				if l, err = br.ReadString('\n'); err != nil {
					return
				}
				io.WriteString(c, tag+" NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
			case len(f) > 0 && f[0] == "ID":
				io.WriteString(c, "* ID NIL\r\n"+tag+" OK ID done\r\n")
			default:
				io.WriteString(c, tag+" OK done\r\n")
			}
		}
	})
	t.Cleanup(s.close)
	return s
}

// expectOAuthRefusal reads the error challenge, answers it with dummy and
// expects the tagged NO.
func expectOAuthRefusal(t *testing.T, c *client, tag, dummy string) {
	t.Helper()
	l := c.expectPrefix("+ ")
	js, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(l, "+ "))
	if err != nil {
		t.Fatalf("error challenge %q: %v", l, err)
	}
	var e map[string]string
	if err := json.Unmarshal(js, &e); err != nil || e["status"] != "invalid_token" || e["schemes"] != "bearer" || e["scope"] != "mail" {
		t.Fatalf("error challenge %s: %v", js, err)
	}
	c.send(dummy + "\r\n")
	c.expect(tag + " " + failText)
}

func oauthHarness(t *testing.T, setup func(*proxy.Server)) (*harness, chan string) {
	lines := make(chan string, 64)
	var h *harness
	h = newHarnessWith(t, nil, func(s *proxy.Server) {
		s.OAuth = proxy.OAuth{Enabled: true, Scope: "mail", CleartextBackends: true}
		if setup != nil {
			setup(s)
		}
	})
	b := oauthBackend(t, "AUTH=XOAUTH2 AUTH=OAUTHBEARER", lines)
	h.router.add("tok@example.test", &routing.Backend{Name: "oauth", Addr: b.addr(), ForwardID: true})
	plain := oauthBackend(t, "AUTH=PLAIN", make(chan string, 64))
	h.router.add("plainonly@example.test", &routing.Backend{Name: "plainonly", Addr: plain.addr()})
	return h, lines
}

func TestOAuthCapabilities(t *testing.T) {
	h, _ := oauthHarness(t, nil)
	c := h.dialTLS(t, h.imaps)
	if caps := c.greeting(); !hasCap(caps, "AUTH=XOAUTH2") || !hasCap(caps, "AUTH=OAUTHBEARER") || !hasCap(caps, "SASL-IR") {
		t.Errorf("imaps caps %v", caps)
	}
	c = h.dial(t, h.imap)
	if caps := c.greeting(); hasAuthCap(caps) {
		t.Errorf("caps before TLS %v", caps)
	}
	// Credentials before TLS are refused without being looked at.
	c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("tok@example.test", goodToken) + "\r\n")
	c.expectPrefix("a NO [PRIVACYREQUIRED] ")

	plain := newHarness(t, nil) // OAuth not configured
	c = plain.dialTLS(t, plain.imaps)
	if caps := c.greeting(); hasCap(caps, "AUTH=XOAUTH2") || hasCap(caps, "AUTH=OAUTHBEARER") {
		t.Errorf("caps without OAuth %v", caps)
	}
	c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("tok@example.test", goodToken) + "\r\n")
	c.expect("a NO Unsupported authentication mechanism")
}

func TestOAuthPassThrough(t *testing.T) {
	h, lines := oauthHarness(t, nil)
	open := func() *client {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		return c
	}
	backendGot := func(mech string) string {
		t.Helper()
		for {
			select {
			case l := <-lines:
				if _, rest, _ := strings.Cut(l, " "); strings.HasPrefix(rest, "AUTHENTICATE "+mech+" ") {
					return l
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("backend never received AUTHENTICATE %s", mech)
			}
		}
	}

	t.Run("XOAUTH2 with IR", func(t *testing.T) {
		c := open()
		c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("Tok", goodToken) + "\r\n")
		c.expectPrefix("a OK [CAPABILITY IMAP4rev1 IDLE]")
		// The user as routed (normalised), the token as sent.
		if l := backendGot("XOAUTH2"); !strings.HasSuffix(l, " "+xoauth2("tok@example.test", goodToken)) {
			t.Errorf("backend got %q", l)
		}
	})
	t.Run("OAUTHBEARER without IR", func(t *testing.T) {
		c := open()
		c.send("a AUTHENTICATE OAUTHBEARER\r\n")
		c.expect("+ ")
		c.send(oauthbearer("tok@example.test", goodToken) + "\r\n")
		c.expectPrefix("a OK [CAPABILITY IMAP4rev1 IDLE]")
		backendGot("OAUTHBEARER")
	})
	t.Run("OAUTHBEARER empty IR", func(t *testing.T) {
		// RFC 4959: "=" is an empty message, which is malformed.
		c := open()
		c.send("a AUTHENTICATE OAUTHBEARER =\r\n")
		c.expect("a " + failText)
	})
	t.Run("refused token", func(t *testing.T) {
		c := open()
		c.send("a AUTHENTICATE OAUTHBEARER " + oauthbearer("tok@example.test", "expired") + "\r\n")
		expectOAuthRefusal(t, c, "a", "AQ==")
		// K-9 answers the challenge with an empty line.
		c.send("b AUTHENTICATE XOAUTH2 " + xoauth2("tok@example.test", "expired") + "\r\n")
		expectOAuthRefusal(t, c, "b", "")
		// The third failure ends the connection, after the same flow.
		c.send("c AUTHENTICATE XOAUTH2 " + xoauth2("tok@example.test", "expired") + "\r\n")
		expectOAuthRefusal(t, c, "c", "AQ==")
		c.expectPrefix("* BYE ")
	})
	t.Run("unknown user", func(t *testing.T) {
		c := open()
		start := time.Now()
		c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("nobody@example.test", goodToken) + "\r\n")
		expectOAuthRefusal(t, c, "a", "AQ==")
		if d := time.Since(start); d < 50*time.Millisecond {
			t.Errorf("refused after %v, before the failure delay", d)
		}
	})
	t.Run("backend without the mechanism", func(t *testing.T) {
		c := open()
		c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("plainonly@example.test", goodToken) + "\r\n")
		c.expectPrefix("a NO [UNAVAILABLE] ")
		if !strings.Contains(h.logs.String(), "does not offer AUTH=XOAUTH2") {
			t.Errorf("no log line says why:\n%s", h.logs)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		c := open()
		c.send("a AUTHENTICATE XOAUTH2\r\n")
		c.expect("+ ")
		c.send("*\r\n")
		c.expectPrefix("a BAD ")
	})
	t.Run("malformed", func(t *testing.T) {
		for _, msg := range []string{
			b64("user=tok@example.test\x01auth=Bearer " + goodToken + "\x01"),     // one %x01 at the end
			b64("user=tok@example.test\x01auth=Basic " + goodToken + "\x01\x01"),  // not a bearer token
			b64("user=tok@example.test\x01auth=Bearer a b\x01\x01"),               // not a b64token
			b64("auth=Bearer " + goodToken + "\x01user=tok@example.test\x01\x01"), // XOAUTH2 order is fixed
			b64("user=\x01auth=Bearer " + goodToken + "\x01\x01"),                 // no user
			b64("user=a\x00b\x01auth=Bearer " + goodToken + "\x01\x01"),           // NUL
		} {
			c := open()
			c.send("a AUTHENTICATE XOAUTH2 " + msg + "\r\n")
			c.expect("a " + failText)
		}
		for _, msg := range []string{
			b64("n,,\x01auth=Bearer " + goodToken + "\x01\x01"),                              // no user
			b64("p=tls-unique,a=tok@example.test,\x01auth=Bearer " + goodToken + "\x01\x01"), // channel binding
			b64("n,a=tok=2@example.test,\x01auth=Bearer " + goodToken + "\x01\x01"),          // bad escape
			b64("n,a=tok@example.test,\x01auth=Bearer " + goodToken + "\x01auth=Bearer x\x01\x01"),
			b64("n,a=tok@example.test,\x01host=x\x01\x01"), // no auth
			b64("\x01"),
		} {
			c := open()
			c.send("a AUTHENTICATE OAUTHBEARER " + msg + "\r\n")
			c.expect("a " + failText)
		}
	})
	for _, s := range []string{goodToken, "expired"} {
		if strings.Contains(h.logs.String(), s) {
			t.Errorf("the log holds a token: %q", s)
		}
	}
}

// With a cleartext backend, a pass-through token is not sent unless the
// operator allows it.
func TestOAuthCleartextBackendRefused(t *testing.T) {
	h, lines := oauthHarness(t, func(s *proxy.Server) { s.OAuth.CleartextBackends = false })
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("tok@example.test", goodToken) + "\r\n")
	c.expectPrefix("a NO [UNAVAILABLE] ")
	for len(lines) > 0 {
		if l := <-lines; strings.Contains(l, "AUTHENTICATE") {
			t.Errorf("backend received %q", l)
		}
	}
	if !strings.Contains(h.logs.String(), "without TLS") {
		t.Errorf("no log line says why:\n%s", h.logs)
	}
}

// With an Authenticator (validating mode) the token is its to decide: a
// refusal gets the error challenge, an acceptance logs in as it says.
func TestOAuthAuthenticator(t *testing.T) {
	master := upstream.Credentials{User: "alice@example.test", Secret: alicePW}
	auth := &fakeAuth{results: map[string]proxy.AuthResult{
		"alice@example.test valid-jwt": {OK: true, Upstream: master},
	}}
	h, _ := oauthHarness(t, func(s *proxy.Server) { s.Authenticator = auth })
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", "other-jwt") + "\r\n")
	expectOAuthRefusal(t, c, "a", "AQ==")
	c.send("b AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", "valid-jwt") + "\r\n")
	c.expectPrefix("b OK [CAPABILITY ")
	c.checkSelect("c")
	c = h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("broken", "valid-jwt") + "\r\n")
	c.expectPrefix("a NO [UNAVAILABLE] ")

	auth.mu.Lock()
	defer auth.mu.Unlock()
	if r := auth.asked[0]; r.Mechanism != "OAUTHBEARER" || r.User != "alice@example.test" || r.Secret != "other-jwt" {
		t.Errorf("request %+v", r)
	}
	if strings.Contains(h.logs.String(), "-jwt") {
		t.Error("the log holds a token")
	}
}
