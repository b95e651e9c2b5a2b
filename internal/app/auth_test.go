package app

import (
	"testing"
	"time"

	"github.com/portico-mail/portico/auth"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/proxy/upstream"
)

// TestBuildPasswords: auth.passwords redis and ldap reach the server as a
// Mux whose password side checks the store and logs in as the master user.
func TestBuildPasswords(t *testing.T) {
	dir := t.TempDir()
	_, certFile, keyFile := testcert.Files(t, dir, "localhost", "127.0.0.1")
	t.Setenv("PORTICO_TEST_MASTER_PW", "master-pw")
	build := func(authYAML string) *App {
		t.Helper()
		return buildYAML(t, `
listeners:
  - {mode: imaps, address: "127.0.0.1:0"}
tls:
  certificates:
    - {cert_file: `+certFile+`, key_file: `+keyFile+`}
routing:
  redis: {addrs: ["127.0.0.1:1"], key_prefix: "p:"}
  health: {disabled: true}
  lookup_timeout: 1s
auth:
  master_user: portico
  master_password: {env: PORTICO_TEST_MASTER_PW}
`+authYAML)
	}
	passwords := func(rt *App) *auth.Passwords {
		t.Helper()
		m, ok := rt.Server.Authenticator.(*auth.Mux)
		if !ok {
			t.Fatalf("Authenticator = %T, want *auth.Mux", rt.Server.Authenticator)
		}
		p, ok := m.Password.(*auth.Passwords)
		if !ok {
			t.Fatalf("Mux.Password = %T, want *auth.Passwords", m.Password)
		}
		if want := (upstream.Credentials{User: "portico", Secret: "master-pw", AuthzID: "u@x"}); p.Master.Credentials("u@x") != want {
			t.Errorf("master credentials %+v", p.Master.Credentials("u@x"))
		}
		return p
	}

	rt := build("  passwords: redis\n")
	s, ok := passwords(rt).Store.(*auth.RedisStore)
	if !ok || s.Routes != rt.RedisRouter || s.Field != "password" || s.Key != "" {
		t.Errorf("redis store = %+v", s)
	}
	if rt.Server.Limits.AuthTimeout != time.Second {
		t.Errorf("AuthTimeout = %v, want routing.lookup_timeout", rt.Server.Limits.AuthTimeout)
	}
	rt = build("  passwords: redis\n  redis: {key: \"pw:{user}\", allow_plain: true}\n")
	if s := passwords(rt).Store.(*auth.RedisStore); s.Key != "pw:{user}" || s.Prefix != "p:" || s.Client != rt.Redis || !s.Hashes.AllowPlain {
		t.Errorf("redis key store = %+v", s)
	}

	rt = build("  passwords: ldap\n  ldap: {url: \"ldaps://ldap.example.test:636\", bind_dn: \"uid={local},dc=example,dc=test\", timeout: 3s, pool_size: 4}\n")
	l, ok := passwords(rt).Store.(*auth.LDAPStore)
	if !ok || l.URL != "ldaps://ldap.example.test:636" || l.PoolSize != 4 || l.Timeout != 3*time.Second || l.TLSConfig == nil {
		t.Fatalf("ldap store = %+v", l)
	}
	if rt.Server.Limits.AuthTimeout != 3*time.Second {
		t.Errorf("AuthTimeout = %v, want auth.ldap.timeout", rt.Server.Limits.AuthTimeout)
	}

	rt = build("  passwords: redis\n  cache: {ttl: 30s, max_entries: 5}\n")
	if c, ok := passwords(rt).Store.(*auth.CachedStore); !ok || c.TTL != 30*time.Second || c.MaxEntries != 5 {
		t.Errorf("cached store = %+v", passwords(rt).Store)
	} else if _, ok := c.Store.(*auth.RedisStore); !ok {
		t.Errorf("cache in front of %T", c.Store)
	}

	// Without auth.passwords (and OAuth), no Authenticator at all.
	if rt := build(""); rt.Server.Authenticator != nil {
		t.Errorf("Authenticator = %T without a source", rt.Server.Authenticator)
	}
}
