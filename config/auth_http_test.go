package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestHTTPAuth(t *testing.T) {
	f := newFixture(t)
	t.Setenv("PORTICO_TEST_AUTH_KEY", "key-from-env")
	for _, tc := range []struct {
		name, http string
		check      func(t *testing.T, h *HTTPAuth)
		err        string
	}{
		{"defaults", "{url: \"http://127.0.0.1:9000/auth\"}", func(t *testing.T, h *HTTPAuth) {
			if h.URL != "http://127.0.0.1:9000/auth" || h.Timeout != 5*time.Second || h.Backend != "answer" || len(h.Headers) != 0 {
				t.Errorf("auth.http = %+v", h)
			}
		}, ""},
		{"everything", "{url: \"https://auth.internal/mail\", timeout: 800ms, backend: routing, tls: {server_name: auth}, " +
			"headers: {X-Auth-Key: {env: PORTICO_TEST_AUTH_KEY}, X-Site: eu1}}", func(t *testing.T, h *HTTPAuth) {
			if h.Timeout != 800*time.Millisecond || h.Backend != "routing" || h.TLS == nil {
				t.Errorf("auth.http = %+v", h)
			}
			if l := h.HeaderList(); fmt.Sprint(l) != "[[X-Auth-Key key-from-env] [X-Site eu1]]" {
				t.Errorf("headers %q", l)
			}
		}, ""},
		{"clear to another host", "{url: \"http://10.1.2.3:9000/auth\"}", nil, "warning auth.http.url: users' passwords are sent in clear to 10.1.2.3:9000"},
		{"unverified", "{url: \"https://auth.internal/auth\", tls: {insecure_skip_verify: true}}", nil, "warning auth.http.tls.insecure_skip_verify: "},
		{"unix socket", "{url: \"unix:/run/auth.sock:/auth\"}", func(t *testing.T, h *HTTPAuth) {
			if h.URL != "unix:/run/auth.sock:/auth" {
				t.Errorf("auth.http = %+v", h)
			}
		}, ""},
		{"unix relative", "{url: \"unix:auth.sock\"}", nil, "auth.http.url: must be unix:/path/to/socket"},
		{"no url", "{timeout: 1s}", nil, "auth.http.url: is required"},
		{"bad url", "{url: \"127.0.0.1:9000/auth\"}", nil, "auth.http.url: must be http://"},
		{"ftp", "{url: \"ftp://x/auth\"}", nil, "auth.http.url: must be http://"},
		{"timeout", "{url: \"http://x/\", timeout: 2m}", nil, "auth.http.timeout: must be between"},
		{"backend", "{url: \"http://x/\", backend: redis}", nil, `auth.http.backend: must be "answer"`},
		{"reserved header", "{url: \"http://x/\", headers: {Auth-Pass: x}}", nil, "auth.http.headers.Auth-Pass: is sent by Portico itself"},
		{"bad header name", "{url: \"http://x/\", headers: {\"X Key\": x}}", nil, `auth.http.headers: "X Key" is not an HTTP header name`},
		{"bad header value", "{url: \"http://x/\", headers: {X-Key: \"a\\r\\nb\"}}", nil, "auth.http.headers.X-Key: must not contain control characters"},
		{"tls for http", "{url: \"http://x/\", tls: {server_name: x}}", nil, "auth.http.tls: is for https:// URLs"},
		{"env unset", "{url: \"http://x/\", headers: {X-Key: {env: PORTICO_TEST_NO_SUCH_VAR}}}", nil, "auth.http.headers.X-Key: environment variable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(f.base("", quiet+"auth:\n  passwords: http\n  http: "+tc.http+"\n")), "portico.yaml")
			if w, ok := strings.CutPrefix(tc.err, "warning "); ok {
				if err != nil {
					t.Fatal(err)
				}
				if ws := c.Warnings(); len(ws) != 1 || !strings.HasPrefix(ws[0], w) {
					t.Errorf("warnings %q, want %q", ws, w)
				}
				return
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c.Auth.HTTP)
			if w := c.Warnings(); len(w) != 0 {
				t.Errorf("warnings: %q", w)
			}
			for _, verb := range []string{"%v", "%+v", "%#v"} {
				if s := fmt.Sprintf(verb, c.Auth); strings.Contains(s, "key-from-env") {
					t.Errorf("a header secret is printed by %s: %s", verb, s)
				}
			}
		})
	}
}
