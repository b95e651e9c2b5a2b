package auth_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/auth"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
)

var master = auth.Master{User: "portico-master", Password: "master-pw"}

func newOAuth(t *testing.T, is *testsrv.Issuer, logs *bytes.Buffer, tune func(*auth.OAuthConfig)) *auth.OAuth {
	t.Helper()
	cfg := auth.OAuthConfig{
		Issuer: is.URL, Audience: []string{"imap", "mail"},
		IntrospectionURL: is.URL + "/introspect", ClientID: is.ClientID, ClientSecret: is.ClientSecret,
		Master: master, DefaultDomain: "example.test", HTTPClient: is.Client, Timeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	}
	if tune != nil {
		tune(&cfg)
	}
	o, err := auth.NewOAuth(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func ask(t *testing.T, o *auth.OAuth, user, token string) (proxy.AuthResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return o.Authenticate(ctx, proxy.AuthRequest{Mechanism: "OAUTHBEARER", User: user, Secret: token, Protocol: "imap"})
}

func TestOAuthJWT(t *testing.T) {
	is := testsrv.StartIssuer(t)
	var logs bytes.Buffer
	o := newOAuth(t, is, &logs, nil)
	alice := map[string]any{"aud": "imap", "email": "Alice@Example.test", "email_verified": true}
	with := func(kv ...any) map[string]any {
		c := map[string]any{}
		for k, v := range alice {
			c[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			c[kv[i].(string)] = kv[i+1]
		}
		return c
	}

	good := is.Token(t, alice)
	res, err := ask(t, o, "alice@example.test", good)
	if err != nil || !res.OK {
		t.Fatalf("good token: %+v, %v\n%s", res, err, logs.String())
	}
	want := upstream.Credentials{User: master.User, Secret: master.Password, AuthzID: "alice@example.test"}
	if res.Upstream != want {
		t.Errorf("upstream %+v, want the master user for alice", res.Upstream)
	}

	refused := map[string]string{
		"expired":          is.Token(t, with("exp", time.Now().Add(-time.Minute).Unix())),
		"wrong audience":   is.Token(t, with("aud", "calendar")),
		"no audience":      is.Token(t, with("aud", nil)),
		"wrong issuer":     is.Token(t, with("iss", "https://evil.example")),
		"wrong user":       is.Token(t, with("email", "bob@example.test")),
		"email unverified": is.Token(t, with("email_verified", false)),
		"no user claim":    is.Token(t, with("email", nil)),
		"bad signature":    good[:len(good)-4] + "AAAA",
		"not yet valid":    is.Token(t, with("nbf", time.Now().Add(time.Hour).Unix())),
	}
	for name, tok := range refused {
		res, err := ask(t, o, "alice@example.test", tok)
		if err != nil || res.OK {
			t.Errorf("%s: %+v, %v; want a refusal", name, res, err)
		}
	}
	// A token of alice's does not open bob's mailbox.
	if res, err := ask(t, o, "bob@example.test", good); err != nil || res.OK {
		t.Errorf("alice's token for bob: %+v, %v", res, err)
	}

	// Key rotation: a token signed with the new key makes the key set be
	// fetched again, and validates.
	fetches := is.JWKSFetches()
	is.Rotate(t)
	rotated := is.Token(t, alice)
	if res, err := ask(t, o, "alice@example.test", rotated); err != nil || !res.OK {
		t.Fatalf("token after rotation: %+v, %v\n%s", res, err, logs.String())
	}
	if is.JWKSFetches() != fetches+1 {
		t.Errorf("JWKS fetched %d times for the rotation, want 1", is.JWKSFetches()-fetches)
	}
	// Cached: more logins with the same key fetch nothing.
	for i := 0; i < 3; i++ {
		ask(t, o, "alice@example.test", is.Token(t, alice))
	}
	if is.JWKSFetches() != fetches+1 {
		t.Errorf("JWKS fetched again for a known key")
	}

	for _, tok := range append([]string{good, rotated}, mapValues(refused)...) {
		if strings.Contains(logs.String(), tok) {
			t.Fatalf("a token reached the log:\n%s", logs.String())
		}
	}
	if !strings.Contains(logs.String(), "expired") {
		t.Errorf("refusals are not logged with a reason:\n%s", logs.String())
	}
}

// The CI failure of TestOAuthJWT, repeated: the issuer rotates its key
// right after a token with a bad signature made the key set be fetched.
// go-oidc's RemoteKeySet let the new key's token join the fetch that had
// just finished, and refused it with the old keys, now and then: with the
// old key set this test failed 20 runs out of 20 (-race).
func TestOAuthRotationAfterRefetch(t *testing.T) {
	is := testsrv.StartIssuer(t)
	var logs bytes.Buffer
	// No throttle: every miss fetches.
	o := newOAuth(t, is, &logs, func(c *auth.OAuthConfig) { c.JWKSMinRefresh = time.Nanosecond })
	alice := map[string]any{"aud": "imap", "email": "alice@example.test"}
	for i := 0; i < 200; i++ {
		good := is.Token(t, alice)
		if res, err := ask(t, o, "alice@example.test", good[:len(good)-4]+"AAAA"); err != nil || res.OK {
			t.Fatalf("round %d, bad signature: %+v, %v", i, res, err)
		}
		is.Rotate(t)
		if res, err := ask(t, o, "alice@example.test", is.Token(t, alice)); err != nil || !res.OK {
			t.Fatalf("round %d, token after rotation: %+v, %v\n%s", i, res, err, logs.String())
		}
	}
}

func mapValues(m map[string]string) []string {
	var v []string
	for _, s := range m {
		v = append(v, s)
	}
	return v
}

// Tokens naming key ids the issuer never had cost an attacker nothing; they
// must not make every login fetch the key set.
func TestOAuthUnknownKeyIDThrottled(t *testing.T) {
	is := testsrv.StartIssuer(t)
	var logs bytes.Buffer
	o := newOAuth(t, is, &logs, func(c *auth.OAuthConfig) { c.JWKSMinRefresh = time.Hour })
	claims := map[string]any{"aud": "imap", "email": "alice@example.test"}
	ask(t, o, "alice@example.test", is.Token(t, claims)) // discovery and the first fetch
	base := is.JWKSFetches()
	forger := testsrv.StartIssuer(t)
	forger.Rotate(t) // kid "key-2", which the real issuer lacks
	for i := 0; i < 20; i++ {
		tok := forger.Token(t, map[string]any{"iss": is.URL, "aud": "imap", "email": "alice@example.test"})
		if res, err := ask(t, o, "alice@example.test", tok); err != nil || res.OK {
			t.Fatalf("forged token: %+v, %v", res, err)
		}
	}
	if n := is.JWKSFetches() - base; n > 3 {
		t.Errorf("20 forged tokens fetched the JWKS %d times, want at most the burst of 3", n)
	}
	if res, err := ask(t, o, "alice@example.test", is.Token(t, claims)); err != nil || !res.OK {
		t.Errorf("a good token after the attack: %+v, %v", res, err)
	}
}

func TestOAuthIntrospection(t *testing.T) {
	is := testsrv.StartIssuer(t)
	var logs bytes.Buffer
	o := newOAuth(t, is, &logs, func(c *auth.OAuthConfig) { c.UserClaim = "username" })
	active, inactive, expired, other, foreign := testsrv.OpaqueToken(), testsrv.OpaqueToken(), testsrv.OpaqueToken(), testsrv.OpaqueToken(), testsrv.OpaqueToken()
	is.SetOpaque(active, map[string]any{"active": true, "username": "alice", "aud": []string{"mail"}, "exp": time.Now().Add(time.Hour).Unix()})
	is.SetOpaque(inactive, map[string]any{"active": false, "username": "alice"})
	is.SetOpaque(expired, map[string]any{"active": true, "username": "alice", "exp": time.Now().Add(-time.Minute).Unix()})
	is.SetOpaque(other, map[string]any{"active": true, "username": "bob@example.test"})
	is.SetOpaque(foreign, map[string]any{"active": true, "username": "alice", "aud": "calendar"})

	if res, err := ask(t, o, "alice@example.test", active); err != nil || !res.OK || res.Upstream.AuthzID != "alice@example.test" {
		t.Fatalf("active token: %+v, %v\n%s", res, err, logs.String())
	}
	for name, tok := range map[string]string{"inactive": inactive, "expired": expired, "other user": other, "wrong audience": foreign, "unknown": "nope"} {
		if res, err := ask(t, o, "alice@example.test", tok); err != nil || res.OK {
			t.Errorf("%s: %+v, %v; want a refusal", name, res, err)
		}
	}

	// Wrong client credentials and a down issuer are our problem, not the
	// token's: UNAVAILABLE (an error), not a refusal.
	bad := newOAuth(t, is, &logs, func(c *auth.OAuthConfig) { c.ClientSecret = "wrong"; c.UserClaim = "username" })
	if _, err := ask(t, bad, "alice@example.test", active); err == nil {
		t.Error("introspection with wrong client credentials did not fail")
	}
	is.SetDown(true)
	if _, err := ask(t, o, "alice@example.test", active); err == nil {
		t.Error("introspection with the issuer down did not fail")
	}
	is.SetDown(false)
	if strings.Contains(logs.String(), active) || strings.Contains(logs.String(), is.ClientSecret) {
		t.Errorf("a secret reached the log:\n%s", logs.String())
	}
}

// TestOAuthCache: with CacheTTL, a token validated for a user opens that
// user's mailbox again without asking the issuer, until the TTL or the
// token's exp, whichever comes first; not another user's; and without
// CacheTTL every login asks.
func TestOAuthCache(t *testing.T) {
	is := testsrv.StartIssuer(t)
	var logs bytes.Buffer
	o := newOAuth(t, is, &logs, func(c *auth.OAuthConfig) { c.UserClaim = "username"; c.CacheTTL = time.Minute })
	tok, short := testsrv.OpaqueToken(), testsrv.OpaqueToken()
	is.SetOpaque(tok, map[string]any{"active": true, "username": "alice", "exp": time.Now().Add(time.Hour).Unix()})
	asks := func(user, token string, want bool) int64 {
		t.Helper()
		n := is.Introspections()
		if res, err := ask(t, o, user, token); err != nil || res.OK != want {
			t.Fatalf("%s: %+v, %v; want OK %v\n%s", user, res, err, want, logs.String())
		}
		return is.Introspections() - n
	}
	if n := asks("alice@example.test", tok, true); n != 1 {
		t.Errorf("first login: %d introspections, want 1", n)
	}
	if n := asks("alice@example.test", tok, true); n != 0 {
		t.Errorf("second login: %d introspections, want 0 (cached)", n)
	}
	if n := asks("bob@example.test", tok, false); n != 1 {
		t.Errorf("alice's token for bob: %d introspections, want 1 (never from the cache)", n)
	}
	// Revoked at the issuer: still good from the cache, for at most the TTL.
	is.SetOpaque(tok, map[string]any{"active": false})
	asks("alice@example.test", tok, true)

	// A token that expires before the TTL is not remembered past its exp.
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
	is.SetOpaque(short, map[string]any{"active": true, "username": "alice", "exp": exp.Unix()})
	asks("alice@example.test", short, true)
	asks("alice@example.test", short, true)
	time.Sleep(time.Until(exp) + 100*time.Millisecond)
	if n := asks("alice@example.test", short, false); n != 1 {
		t.Errorf("past exp: %d introspections, want 1", n)
	}

	// Without a cache every login asks.
	is.SetOpaque(tok, map[string]any{"active": true, "username": "alice"})
	o = newOAuth(t, is, &logs, func(c *auth.OAuthConfig) { c.UserClaim = "username" })
	asks("alice@example.test", tok, true)
	if n := asks("alice@example.test", tok, true); n != 1 {
		t.Errorf("without a cache: %d introspections, want 1", n)
	}
}

func TestOAuthIssuerDown(t *testing.T) {
	is := testsrv.StartIssuer(t)
	var logs bytes.Buffer
	o := newOAuth(t, is, &logs, nil)
	tok := is.Token(t, map[string]any{"aud": "imap", "email": "alice@example.test"})
	is.SetDown(true)
	if _, err := ask(t, o, "alice@example.test", tok); err == nil {
		t.Fatal("discovery with the issuer down: no error")
	}
	// Discovery is retried, though not at once.
	is.SetDown(false)
	if _, err := ask(t, o, "alice@example.test", tok); err == nil {
		t.Error("a failed discovery was retried at once")
	}

	// Discovery done, then the JWKS unreachable: UNAVAILABLE, not refused.
	o = newOAuth(t, is, &logs, nil)
	if res, err := ask(t, o, "alice@example.test", tok); err != nil || !res.OK {
		t.Fatalf("%+v, %v", res, err)
	}
	is.Rotate(t)
	tok = is.Token(t, map[string]any{"aud": "imap", "email": "alice@example.test"})
	is.SetDown(true)
	if res, err := ask(t, o, "alice@example.test", tok); err == nil {
		t.Errorf("new key with the JWKS down: %+v, want an error", res)
	}
}

func TestNewOAuthChecks(t *testing.T) {
	for name, cfg := range map[string]auth.OAuthConfig{
		"nothing":         {Master: master},
		"http issuer":     {Issuer: "http://idp.example", Audience: []string{"imap"}, Master: master},
		"no audience":     {Issuer: "https://idp.example", Master: master},
		"no master":       {Issuer: "https://idp.example", Audience: []string{"imap"}},
		"no client id":    {IntrospectionURL: "https://idp.example/introspect", Master: master},
		"http introspect": {IntrospectionURL: "http://idp.example/introspect", ClientID: "x", Master: master},
	} {
		if _, err := auth.NewOAuth(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
