package config

import (
	"strings"
	"testing"
	"time"
)

func TestAuthOAuth(t *testing.T) {
	f := newFixture(t)
	t.Setenv("PORTICO_TEST_MASTER_PW", "master-secret-value")
	t.Setenv("PORTICO_TEST_CLIENT_SECRET", "client-secret-value")
	master := "  master_user: portico\n  master_password: {env: PORTICO_TEST_MASTER_PW}\n"
	for _, tc := range []struct {
		name, auth string
		check      func(t *testing.T, o *OAuth)
		err        string
	}{
		{"passthrough", "auth:\n  oauth: {mode: passthrough, scope: mail}\n", func(t *testing.T, o *OAuth) {
			if o.Mode != "passthrough" || o.Scope != "mail" || o.CleartextBackends || o.UserClaim != "" || o.Timeout != 0 {
				t.Errorf("oauth = %+v", o)
			}
		}, ""},
		{"validate jwt", "auth:\n" + master + "  oauth: {mode: validate, issuer: \"https://idp.example.com/realms/mail\", audience: [imap]}\n", func(t *testing.T, o *OAuth) {
			if o.UserClaim != "email" || o.Timeout != 5*time.Second || o.OpenIDConfiguration != "https://idp.example.com/realms/mail/.well-known/openid-configuration" {
				t.Errorf("oauth = %+v", o)
			}
		}, ""},
		{"validate introspection", "auth:\n" + master + "  oauth: {mode: validate, introspection_url: \"https://idp.example.com/introspect\", client_id: portico, client_secret: {env: PORTICO_TEST_CLIENT_SECRET}, user_claim: username}\n", func(t *testing.T, o *OAuth) {
			if o.ClientSecret.Value != "client-secret-value" || o.UserClaim != "username" {
				t.Errorf("oauth = %+v", o)
			}
		}, ""},
		{"no mode", "auth:\n  oauth: {}\n", nil, `auth.oauth.mode: must be "passthrough" or "validate"`},
		{"validate without master", "auth:\n  oauth: {mode: validate, issuer: \"https://idp.example.com\", audience: [imap]}\n", nil, `auth.oauth.mode: "validate" needs auth.master_user`},
		{"validate without issuer", "auth:\n" + master + "  oauth: {mode: validate}\n", nil, `needs issuer (JWT) or introspection_url`},
		{"http issuer", "auth:\n" + master + "  oauth: {mode: validate, issuer: \"http://idp.example.com\", audience: [imap]}\n", nil, "auth.oauth.issuer: must be an https URL"},
		{"no audience", "auth:\n" + master + "  oauth: {mode: validate, issuer: \"https://idp.example.com\"}\n", nil, "auth.oauth.audience: is required with issuer"},
		{"introspection without client", "auth:\n" + master + "  oauth: {mode: validate, introspection_url: \"https://idp.example.com/i\"}\n", nil, "auth.oauth.client_id: and client_secret are required"},
		{"inline client secret", "auth:\n" + master + "  oauth: {mode: validate, introspection_url: \"https://idp.example.com/i\", client_id: x, client_secret: client-secret-value}\n", nil, "auth.oauth.client_secret: must be {env: NAME} or {file: PATH}"},
		{"passthrough with issuer", "auth:\n  oauth: {mode: passthrough, issuer: \"https://idp.example.com\"}\n", nil, `auth.oauth.issuer: is only used with mode "validate"`},
		{"validate cleartext", "auth:\n" + master + "  oauth: {mode: validate, issuer: \"https://idp.example.com\", audience: [imap], cleartext_backends: true}\n", nil, "auth.oauth.cleartext_backends: is only used with mode \"passthrough\""},
		{"validate cache", "auth:\n" + master + "  oauth: {mode: validate, issuer: \"https://idp.example.com\", audience: [imap], cache: {}}\n", func(t *testing.T, o *OAuth) {
			if o.Cache == nil || o.Cache.TTL != time.Minute || o.Cache.MaxEntries != 10000 {
				t.Errorf("oauth.cache = %+v", o.Cache)
			}
		}, ""},
		{"cache ttl", "auth:\n" + master + "  oauth: {mode: validate, issuer: \"https://idp.example.com\", audience: [imap], cache: {ttl: 2h}}\n", nil, "auth.oauth.cache.ttl: must be between 1s and 1h"},
		{"passthrough with cache", "auth:\n  oauth: {mode: passthrough, cache: {ttl: 1m}}\n", nil, `auth.oauth.cache: is only used with mode "validate"`},
		{"bad scope", "auth:\n  oauth: {mode: passthrough, scope: \"a\\\"b\"}\n", nil, "auth.oauth.scope: must not contain quotes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(f.base("", quiet+tc.auth)), "portico.yaml")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "secret-value") {
					t.Errorf("a secret is in the error: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c.Auth.OAuth)
		})
	}
}
