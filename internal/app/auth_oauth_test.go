package app

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
)

// TestBuildOAuth: auth.oauth reaches the server, in both modes.
func TestBuildOAuth(t *testing.T) {
	is := testsrv.StartIssuer(t)
	defer is.CloseConnections()
	dir := t.TempDir()
	_, certFile, keyFile := testcert.Files(t, dir, "localhost", "127.0.0.1")
	idpCA := filepath.Join(dir, "idp.pem")
	if err := os.WriteFile(idpCA, is.CAPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PORTICO_TEST_MASTER_PW", "master-pw")
	build := func(auth string) *App {
		t.Helper()
		return buildYAML(t, `
listeners:
  - {mode: imaps, address: "127.0.0.1:0"}
tls:
  certificates:
    - {cert_file: `+certFile+`, key_file: `+keyFile+`}
routing:
  redis: {addrs: ["127.0.0.1:1"]}
  health: {disabled: true}
  default_domain: example.test
`+auth)
	}

	if rt := build(""); rt.Server.OAuth.Enabled {
		t.Error("OAuth offered without auth.oauth")
	}
	rt := build("auth:\n  oauth: {mode: passthrough, scope: mail, cleartext_backends: true}\n")
	if o := rt.Server.OAuth; !o.Enabled || o.Scope != "mail" || !o.CleartextBackends || rt.Server.Authenticator != nil {
		t.Errorf("passthrough: OAuth %+v, Authenticator %v", o, rt.Server.Authenticator)
	}

	rt = build(`auth:
  master_user: portico
  master_password: {env: PORTICO_TEST_MASTER_PW}
  oauth:
    mode: validate
    issuer: "` + is.URL + `"
    audience: [imap]
    tls: {ca_file: ` + idpCA + `}
`)
	o := rt.Server.OAuth
	if !o.Enabled || o.CleartextBackends || o.OpenIDConfiguration != is.URL+"/.well-known/openid-configuration" {
		t.Errorf("validate: OAuth %+v", o)
	}
	a := rt.Server.Authenticator
	if a == nil {
		t.Fatal("validate: no Authenticator")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tok := is.Token(t, map[string]any{"aud": "imap", "email": "alice"}) // completed with default_domain
	res, err := a.Authenticate(ctx, proxy.AuthRequest{Mechanism: "XOAUTH2", User: "alice@example.test", Secret: tok})
	if err != nil || !res.OK || res.Upstream.User != "portico" || res.Upstream.AuthzID != "alice@example.test" {
		t.Errorf("validate: %+v, %v", res, err)
	}
	// Passwords still go to the backend.
	if res, err := a.Authenticate(ctx, proxy.AuthRequest{Mechanism: "PLAIN", User: "alice@example.test", Secret: "pw"}); err != nil || !res.OK || res.Upstream.User != "" {
		t.Errorf("PLAIN: %+v, %v", res, err)
	}

	// auth.oauth.cache: the second login with a token asks nobody.
	t.Setenv("PORTICO_TEST_CLIENT_SECRET", is.ClientSecret)
	rt = build(`auth:
  master_user: portico
  master_password: {env: PORTICO_TEST_MASTER_PW}
  oauth:
    mode: validate
    introspection_url: "` + is.URL + `/introspect"
    client_id: ` + is.ClientID + `
    client_secret: {env: PORTICO_TEST_CLIENT_SECRET}
    user_claim: username
    tls: {ca_file: ` + idpCA + `}
    cache: {ttl: 30s}
`)
	opaque := testsrv.OpaqueToken()
	is.SetOpaque(opaque, map[string]any{"active": true, "username": "alice"})
	n := is.Introspections()
	for range 2 {
		res, err := rt.Server.Authenticator.Authenticate(ctx, proxy.AuthRequest{Mechanism: "OAUTHBEARER", User: "alice@example.test", Secret: opaque})
		if err != nil || !res.OK {
			t.Fatalf("cached validate: %+v, %v", res, err)
		}
	}
	if d := is.Introspections() - n; d != 1 {
		t.Errorf("two logins with auth.oauth.cache made %d introspections, want 1", d)
	}
}
