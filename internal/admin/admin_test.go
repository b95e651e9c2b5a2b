package admin

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, h http.Handler, path, auth string) (int, string, http.Header) {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Code, w.Body.String(), w.Header()
}

func TestToken(t *testing.T) {
	const token = "0123456789abcdef-token"
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "m 1\n") })
	h := NewHandler(Options{Token: token, Metrics: metrics})
	for _, tc := range []struct {
		path, auth string
		want       int
	}{
		{"/healthz", "", 200},
		{"/healthz", "Bearer wrong", 200},
		{"/metrics", "", 401},
		{"/metrics", "Bearer ", 401},
		{"/metrics", "Bearer wrong", 401},
		{"/metrics", "Bearer " + token + "x", 401},
		{"/metrics", "bearer " + token, 401},
		{"/metrics", "Basic " + token, 401},
		{"/metrics", token, 401},
		{"/metrics", "Bearer " + token, 200},
		{"/readyz", "", 401},
		{"/readyz", "Bearer " + token, 200},
		{"/debug/pprof/", "", 401},
		{"/debug/pprof/", "Bearer " + token, 200},
		{"/debug/pprof/cmdline", "Bearer " + token, 200},
		{"/nope", "", 401}, // no hint of what exists without the token
		{"/nope", "Bearer " + token, 404},
	} {
		code, body, hdr := get(t, h, tc.path, tc.auth)
		if code != tc.want {
			t.Errorf("%s with %q: %d, want %d (%s)", tc.path, tc.auth, code, tc.want, body)
		}
		if code == 401 && hdr.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", tc.path)
		}
		if strings.Contains(body, token) {
			t.Errorf("%s: the token is in the answer", tc.path)
		}
	}
}

func TestNoToken(t *testing.T) {
	h := NewHandler(Options{})
	for _, p := range []string{"/healthz", "/readyz", "/debug/pprof/"} {
		if code, body, _ := get(t, h, p, ""); code != 200 {
			t.Errorf("%s: %d %s", p, code, body)
		}
	}
	if code, _, _ := get(t, h, "/metrics", ""); code != 404 {
		t.Errorf("/metrics without a metrics handler: %d", code)
	}
}

func TestReady(t *testing.T) {
	var problems, notes []string
	h := NewHandler(Options{Ready: func(ctx context.Context) ([]string, []string) {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("the readiness check runs without a deadline")
		}
		return problems, notes
	}})
	if code, body, _ := get(t, h, "/readyz", ""); code != 200 || body != "ready\n" {
		t.Errorf("ready: %d %q", code, body)
	}
	notes = []string{"redis: unreachable (x); logins use the route cache"}
	if code, body, _ := get(t, h, "/readyz", ""); code != 200 || body != "ready\ndegraded: "+notes[0]+"\n" {
		t.Errorf("degraded: %d %q", code, body)
	}
	problems = []string{"listeners: 1 of 2 open", "certificates: none loaded"}
	code, body, _ := get(t, h, "/readyz", "")
	if code != 503 || body != "not ready\nlisteners: 1 of 2 open\ncertificates: none loaded\ndegraded: "+notes[0]+"\n" {
		t.Errorf("not ready: %d %q", code, body)
	}
}

// The server closes with its context and reports no error for that; a
// failed listen names the address.
func TestServeStops(t *testing.T) {
	s, err := Listen("127.0.0.1:0", NewHandler(Options{}), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	resp, err := http.Get("http://" + s.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, err := Listen(s.Addr().String(), nil, slog.New(slog.DiscardHandler)); err == nil || !strings.HasPrefix(err.Error(), "admin: listen \"127.0.0.1:") {
		t.Errorf("listening on a busy address: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}
