package config

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAuth(t *testing.T) {
	f := newFixture(t)
	t.Setenv("PORTICO_TEST_MASTER_PW", "master-secret-value")
	master := "  master_user: portico\n  master_password: {env: PORTICO_TEST_MASTER_PW}\n"
	for _, tc := range []struct {
		name, auth string
		check      func(t *testing.T, a Auth)
		err        string // want an error containing err
	}{
		{"absent", "", func(t *testing.T, a Auth) {
			if a.Passwords != "" || a.Redis != nil || a.LDAP != nil || a.MasterUser != "" {
				t.Errorf("auth = %+v", a)
			}
		}, ""},
		{"redis defaults", "auth:\n  passwords: redis\n" + master, func(t *testing.T, a Auth) {
			if a.Redis == nil || a.Redis.Field != "password" || a.Redis.Key != "" || a.Redis.AllowPlain {
				t.Errorf("auth.redis = %+v", a.Redis)
			}
			if a.MasterUser != "portico" || a.MasterPassword.Value != "master-secret-value" {
				t.Errorf("master = %q", a.MasterUser)
			}
		}, ""},
		{"redis key", "auth:\n  passwords: redis\n  redis: {key: \"passwd:{user}\"}\n", func(t *testing.T, a Auth) {
			if a.Redis.Field != "" || a.Redis.Key != "passwd:{user}" {
				t.Errorf("auth.redis = %+v", a.Redis)
			}
		}, ""},
		{"redis key and field", "auth:\n  passwords: redis\n  redis: {key: \"passwd:{user}\", field: pw}\n", nil, "auth.redis: field and key are exclusive"},
		{"redis key without user", "auth:\n  passwords: redis\n  redis: {key: passwd}\n", nil, `auth.redis.key: must contain "{user}"`},
		{"redis route field", "auth:\n  passwords: redis\n  redis: {field: backend}\n", nil, `auth.redis.field: "backend" is a field of the route record`},
		{"redis unused", "auth:\n  redis: {}\n", nil, `auth.redis: is only used with auth.passwords "redis"`},
		{"unknown source", "auth:\n  passwords: sql\n", nil, `auth.passwords: must be "redis", "ldap", "http" or ""`},
		{"ldap missing", "auth:\n  passwords: ldap\n", nil, `auth.ldap: is required`},
		{"http missing", "auth:\n  passwords: http\n", nil, `auth.http: is required`},
		{"ldap bind_dn", "auth:\n  passwords: ldap\n  ldap: {url: \"ldap://127.0.0.1:389\", bind_dn: \"uid={local},ou=people,dc=example,dc=com\", start_tls: true}\n", func(t *testing.T, a Auth) {
			l := a.LDAP
			if l.Timeout != 5*time.Second || l.PoolSize != 8 || l.SearchFilter != "" || !l.StartTLS {
				t.Errorf("auth.ldap = %+v", l)
			}
		}, ""},
		{"ldap search", "auth:\n  passwords: ldap\n  ldap: {url: \"ldaps://ldap.example.com\", search_base: \"dc=example,dc=com\", service_dn: \"cn=portico,dc=example,dc=com\", service_password: {env: PORTICO_TEST_MASTER_PW}}\n", func(t *testing.T, a Auth) {
			l := a.LDAP
			if l.SearchFilter != "(mail={user})" || l.ServicePassword.Value != "master-secret-value" {
				t.Errorf("auth.ldap = %+v", l)
			}
		}, ""},
		{"ldap neither", "auth:\n  passwords: ldap\n  ldap: {url: \"ldap://127.0.0.1\"}\n", nil, "auth.ldap: needs bind_dn"},
		{"ldap both", "auth:\n  passwords: ldap\n  ldap: {url: \"ldap://127.0.0.1\", bind_dn: \"uid={user}\", search_base: \"dc=x\"}\n", nil, "auth.ldap: bind_dn and search_base are exclusive"},
		{"ldap bad url", "auth:\n  passwords: ldap\n  ldap: {url: \"http://x\", bind_dn: \"uid={user}\"}\n", nil, "auth.ldap.url: must be ldap://"},
		{"ldaps starttls", "auth:\n  passwords: ldap\n  ldap: {url: \"ldaps://x\", bind_dn: \"uid={user}\", start_tls: true}\n", nil, "auth.ldap.start_tls: is for ldap:// URLs"},
		{"ldap dn without user", "auth:\n  passwords: ldap\n  ldap: {url: \"ldap://x\", bind_dn: \"cn=admin\"}\n", nil, `auth.ldap.bind_dn: must contain "{user}"`},
		{"ldap bad filter", "auth:\n  passwords: ldap\n  ldap: {url: \"ldap://x\", search_base: \"dc=x\", search_filter: \"mail={user}\"}\n", nil, "auth.ldap.search_filter: must be an LDAP filter in parentheses"},
		{"ldap timeout", "auth:\n  passwords: ldap\n  ldap: {url: \"ldap://x\", bind_dn: \"uid={user}\", timeout: 2m}\n", nil, "auth.ldap.timeout: must be between"},
		{"ldap unused", "auth:\n  ldap: {url: \"ldap://x\", bind_dn: \"uid={user}\"}\n", nil, `auth.ldap: is only used with auth.passwords "ldap"`},
		{"master without password", "auth:\n  passwords: redis\n  master_user: portico\n", nil, "auth.master_password: is required with auth.master_user"},
		{"master password inline", "auth:\n  passwords: redis\n  master_user: portico\n  master_password: master-secret-value\n", nil, "auth.master_password: must be {env: NAME} or {file: PATH}, not written in the config file"},
		{"master password alone", "auth:\n  master_password: {env: PORTICO_TEST_MASTER_PW}\n", nil, "auth.master_password: is set but auth.master_user is not"},
		{"cache", "auth:\n  passwords: redis\n  cache: {}\n", func(t *testing.T, a Auth) {
			if a.Cache == nil || a.Cache.TTL != time.Minute || a.Cache.MaxEntries != 10000 {
				t.Errorf("auth.cache = %+v", a.Cache)
			}
		}, ""},
		{"cache ttl", "auth:\n  passwords: ldap\n  ldap: {url: \"ldap://127.0.0.1\", bind_dn: \"uid={user}\"}\n  cache: {ttl: 2h}\n", nil, "auth.cache.ttl: must be between 1s and 1h"},
		{"cache unused", "auth:\n  cache: {}\n", nil, `auth.cache: is only used with auth.passwords "redis" or "ldap"`},
		{"master env unset", "auth:\n  master_user: portico\n  master_password: {env: PORTICO_TEST_NO_SUCH_VAR}\n", nil, "auth.master_password: environment variable PORTICO_TEST_NO_SUCH_VAR is not set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(f.base("", quiet+tc.auth)), "portico.yaml")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "master-secret-value") {
					t.Errorf("the master password is in the error: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c.Auth)
			if w := c.Warnings(); len(w) != 0 {
				t.Errorf("warnings: %q", w)
			}
		})
	}
}

func TestAuthSecretsNeverPrinted(t *testing.T) {
	f := newFixture(t)
	const pw = "S3cr3t-Ma5ter"
	t.Setenv("PORTICO_TEST_MASTER_PW", pw)
	c, err := Parse([]byte(f.base("", quiet+"auth:\n  passwords: ldap\n  master_user: portico\n  master_password: {env: PORTICO_TEST_MASTER_PW}\n"+
		"  ldap: {url: \"ldap://127.0.0.1\", search_base: \"dc=x\", service_dn: \"cn=svc\", service_password: {env: PORTICO_TEST_MASTER_PW}}\n")), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth.MasterPassword.Value != pw || c.Auth.LDAP.ServicePassword.Value != pw {
		t.Fatal("secrets not loaded")
	}
	for _, v := range []any{c, *c, c.Auth, &c.Auth, c.Auth.LDAP, *c.Auth.LDAP} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
			if s := fmt.Sprintf(verb, v); strings.Contains(s, pw) || strings.Contains(s, fmt.Sprintf("%x", pw)) {
				t.Errorf("secret revealed by %s: %s", verb, s)
			}
		}
		js, _ := json.Marshal(v)
		if strings.Contains(string(js), pw) {
			t.Errorf("secret revealed in JSON: %s", js)
		}
	}
}

func TestAuthWarnings(t *testing.T) {
	f := newFixture(t)
	t.Setenv("PORTICO_TEST_MASTER_PW", "master-secret-value")
	master := "  master_user: portico\n  master_password: {env: PORTICO_TEST_MASTER_PW}\n"
	for _, tc := range []struct {
		name, yml string
		want      []string // warnings starting so, in order
	}{
		{"master unused", "auth:\n" + master, []string{"auth.master_user: has no effect"}},
		{"master to a plain backend", "auth:\n  passwords: redis\n" + master, nil},
		{"ldap in clear", "auth:\n  passwords: ldap\n  ldap: {url: \"ldap://ldap.example.com\", bind_dn: \"uid={user}\"}\n", []string{"auth.ldap.start_tls: is not set: users' passwords are sent in clear to ldap.example.com"}},
		{"ldap on loopback", "auth:\n  passwords: ldap\n  ldap: {url: \"ldap://127.0.0.1:3389\", bind_dn: \"uid={user}\"}\n", nil},
		{"ldap starttls", "auth:\n  passwords: ldap\n  ldap: {url: \"ldap://ldap.example.com\", start_tls: true, bind_dn: \"uid={user}\", tls: {insecure_skip_verify: true}}\n", []string{"auth.ldap.tls.insecure_skip_verify"}},
		{"plain hashes", "auth:\n  passwords: redis\n  redis: {allow_plain: true}\n", []string{"auth.redis.allow_plain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(f.base("", quiet+tc.yml)), "portico.yaml")
			if err != nil {
				t.Fatal(err)
			}
			w := c.Warnings()
			if len(w) != len(tc.want) {
				t.Fatalf("warnings %q, want %q", w, tc.want)
			}
			for i := range w {
				if !strings.HasPrefix(w[i], tc.want[i]) {
					t.Errorf("warning %q, want %q...", w[i], tc.want[i])
				}
			}
		})
	}
	// A master password file others can read.
	pwFile := filepath.Join(t.TempDir(), "master")
	os.WriteFile(pwFile, []byte("master-secret-value\n"), 0o644)
	c, err := Parse([]byte(f.base("", quiet+"auth:\n  passwords: redis\n  master_user: portico\n  master_password: {file: "+pwFile+"}\n")), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Warnings(); len(w) != 1 || !strings.Contains(w[0], "is readable by others (mode 0644)") {
		t.Errorf("warnings %q", w)
	}
	os.Chmod(pwFile, 0o600)
	if c, _ = Parse([]byte(f.base("", quiet+"auth:\n  passwords: redis\n  master_user: portico\n  master_password: {file: "+pwFile+"}\n")), "portico.yaml"); len(c.Warnings()) != 0 {
		t.Errorf("warnings %q for mode 0600", c.Warnings())
	}

	// A named backend in clear with a master user: the master password
	// would cross the network.
	yml := strings.Replace(f.base("", quiet+"auth:\n  passwords: redis\n"+master), "backends:\n", "backends:\n  - {name: far, address: \"192.0.2.7:143\", security: plain}\n", 1)
	c, err = Parse([]byte(yml), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, w := range c.Warnings() {
		found = found || strings.Contains(w, "sends the master password, which opens every mailbox, in clear to 192.0.2.7:143")
	}
	if !found {
		t.Errorf("no master password warning in %q", c.Warnings())
	}
}
