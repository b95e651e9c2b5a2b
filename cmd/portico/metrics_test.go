package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
	ptls "github.com/portico-mail/portico/tls"
)

const testAdminToken = "metrics-test-token-0123456789"

// adminGet fetches path from the admin listener with token ("" sends
// none) and returns the status and body.
func adminGet(t *testing.T, addr, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// scrape is one /metrics answer, parsed.
type scrape struct {
	text string
	fams map[string]*dto.MetricFamily
}

func scrapeMetrics(t *testing.T, addr string) scrape {
	t.Helper()
	code, body := adminGet(t, addr, "/metrics", testAdminToken)
	if code != 200 {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return scrape{body, fams}
}

// value returns the value of the series of name whose labels include
// labels ("k=v" each), summed over the series that match; a histogram
// gives its count. ok is false when no series matches.
func (s scrape) value(name string, labels ...string) (v float64, ok bool) {
	f := s.fams[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for _, kv := range labels {
			k, want, _ := strings.Cut(kv, "=")
			if have[k] != want {
				match = false
			}
		}
		if !match {
			continue
		}
		ok = true
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Histogram != nil:
			v += float64(m.Histogram.GetSampleCount())
		}
	}
	return v, ok
}

func (s scrape) must(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.value(name, labels...)
	if !ok {
		t.Fatalf("no series %s%v in:\n%s", name, labels, s.text)
	}
	return v
}

// waitMetric scrapes until cond holds for the value of name{labels}.
func waitMetric(t *testing.T, addr string, d time.Duration, cond func(float64) bool, name string, labels ...string) scrape {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := scrapeMetrics(t, addr)
		if v, ok := s.value(name, labels...); ok && cond(v) {
			return s
		}
		if time.Now().After(deadline) {
			v, _ := s.value(name, labels...)
			t.Fatalf("%s%v = %v: condition not met within %s\n%s", name, labels, v, d, s.text)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// promtoolCheck runs the real `promtool check metrics` on text. promtool
// comes with Debian's prometheus package (scripts/install-test-deps.sh);
// its absence fails the test.
func promtoolCheck(t *testing.T, text string) {
	t.Helper()
	promtool := testsrv.LookPath(t, "promtool")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestMetrics runs `portico serve` with Redis, an in-memory backend and
// the admin listener, and follows the metrics through successful and
// failed logins, a login without TLS, an idle session that parks, a
// `portico kick` and a certificate reload by SIGHUP.
func TestMetrics(t *testing.T) {
	bin := binary(t)
	const user, pass = "alice@example.test", "alice-pw"
	r := testsrv.StartRedis(t)
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: user, Password: pass, Messages: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first, _ := ptls.SelfSigned("first.example.test")
	ptls.WritePEM(first, certFile, keyFile)
	imaps, imap, adminAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	t.Setenv("PORTICO_TEST_ADMIN_TOKEN", testAdminToken)
	cfg := `
listeners:
  - {name: imaps, mode: imaps, address: "` + imaps + `"}
  - {name: imap, mode: imap, address: "` + imap + `"}
tls:
  certificates:
    - {cert_file: ` + certFile + `, key_file: ` + keyFile + `}
  reload_interval: 1h
limits:
  auth_failure_delay: 10ms
routing:
  redis: {addrs: ["` + r.Addr + `"]}
  health: {interval: 1s, timeout: 500ms}
backends:
  - {name: mem, address: "` + be.Addr() + `"}
fleet: {heartbeat: 1s}
admin:
  address: "` + adminAddr + `"
  token: {env: PORTICO_TEST_ADMIN_TOKEN}
`
	p := writeConfig(t, dir, cfg)
	if out, code := run(t, bin, nil, "route", "set", "-config", p, "-backend", "mem", user); code != 0 {
		t.Fatalf("route set: exit %d\n%s", code, out)
	}
	serve, stderr := startServe(t, bin, p, imaps, 10*time.Second)
	if err := testsrv.WaitDial(adminAddr, 5*time.Second); err != nil {
		t.Fatalf("admin listener: %v\n%s", err, stderr)
	}

	s0 := scrapeMetrics(t, adminAddr)
	for _, name := range []string{"portico_build_info", "portico_connections", "portico_backend_up", "portico_certificate_expiry_timestamp_seconds", "go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := s0.value(name); !ok {
			t.Errorf("no %s at start", name)
		}
	}
	if v := s0.must(t, "portico_logins_total", "result=ok", "mechanism=login"); v != 0 {
		t.Errorf("ok logins at start = %v", v)
	}
	if v := s0.must(t, "portico_backend_up", "backend=mem"); v != 1 {
		t.Errorf("backend_up = %v", v)
	}
	if v := s0.must(t, "portico_listeners_open"); v != 2 {
		t.Errorf("listeners_open = %v", v)
	}

	// Three whole sessions, two wrong passwords, one LOGIN without TLS.
	const oks = 3
	for range oks {
		c := dialIMAP(t, imaps)
		if l := c.cmd("a", "LOGIN "+user+" "+pass); !strings.HasPrefix(l, "a OK") {
			t.Fatalf("login: %q\n%s", l, stderr)
		}
		c.cmd("b", "LOGOUT")
		c.c.Close()
	}
	bad := dialIMAP(t, imaps)
	for _, tag := range []string{"a", "b"} {
		if l := bad.cmd(tag, "LOGIN "+user+" wrong-password"); !strings.HasPrefix(l, tag+" NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("wrong password: %q", l)
		}
	}
	bad.c.Close()
	clear := dialCleartext(t, imap)
	if l := clear.cmd("a", "LOGIN "+user+" "+pass); !strings.HasPrefix(l, "a NO [PRIVACYREQUIRED]") {
		t.Fatalf("cleartext login: %q", l)
	}
	clear.c.Close()

	// The server sees the cleartext client's close a moment later.
	waitMetric(t, adminAddr, 5*time.Second, func(v float64) bool { return v == 0 }, "portico_connections", "listener=imap")
	s1 := waitMetric(t, adminAddr, 5*time.Second, func(v float64) bool { return v == 0 }, "portico_connections", "listener=imaps")
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"portico_logins_total", []string{"result=ok", "mechanism=login"}, oks},
		{"portico_logins_total", []string{"result=auth_failed", "mechanism=login"}, 2},
		{"portico_logins_total", []string{"result=privacy_required", "mechanism=login"}, 1},
		{"portico_logins_total", []string{"result=unavailable"}, 0},
		{"portico_login_duration_seconds", nil, oks},
		{"portico_login_phase_duration_seconds", []string{"phase=route_lookup"}, oks + 2},
		{"portico_login_phase_duration_seconds", []string{"phase=backend_login"}, oks + 2},
		{"portico_login_phase_duration_seconds", []string{"phase=tls_handshake"}, oks + 1},
		{"portico_connections", []string{"listener=imap"}, 0},
		{"portico_backend_logins_total", []string{"backend=mem", "result=ok"}, oks},
		{"portico_backend_logins_total", []string{"backend=mem", "result=auth_failed"}, 2},
		{"portico_route_cache_misses_total", nil, 1},
		{"portico_route_cache_hits_total", nil, oks + 2 - 1},
	}
	for _, c := range checks {
		if v := s1.must(t, c.name, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if v := s1.must(t, "portico_spliced_bytes_total", "direction=to_client"); v <= 0 {
		t.Errorf("bytes to client = %v", v)
	}
	if v := s1.must(t, "portico_spliced_bytes_total", "direction=to_backend"); v <= 0 {
		t.Errorf("bytes to backend = %v", v)
	}
	toClient := s1.must(t, "portico_spliced_bytes_total", "direction=to_client")

	// A connection that has not logged in is preauth.
	pre := dialIMAP(t, imaps)
	waitMetric(t, adminAddr, 5*time.Second, func(v float64) bool { return v == 1 }, "portico_connections", "listener=imaps", "state=preauth")
	pre.c.Close()

	// An idle session: spliced, then parked once both directions have
	// been silent for a second.
	idle := dialIMAP(t, imaps)
	if l := idle.cmd("a", "LOGIN "+user+" "+pass); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login: %q", l)
	}
	idle.cmd("b", "SELECT INBOX")
	s2 := waitMetric(t, adminAddr, 10*time.Second, func(v float64) bool { return v == 1 }, "portico_connections", "listener=imaps", "state=parked")
	if v := s2.must(t, "portico_connections", "listener=imaps", "state=preauth"); v != 0 {
		t.Errorf("preauth = %v with the only connection logged in", v)
	}
	if v := s2.must(t, "portico_connections", "listener=imaps", "state=spliced"); v != 0 {
		t.Errorf("spliced = %v with the only session parked", v)
	}
	if v := s2.must(t, "portico_backend_sessions", "backend=mem"); v != 1 {
		t.Errorf("backend_sessions = %v", v)
	}
	if v := s2.must(t, "portico_spliced_bytes_total", "direction=to_client"); v <= toClient {
		t.Errorf("bytes to client of a running session not counted: %v <= %v", v, toClient)
	}
	// The registry has written the session.
	s2 = waitMetric(t, adminAddr, 5*time.Second, func(v float64) bool { return v == 0 }, "portico_registry_pending_changes")

	// portico kick ends it: the gauges go back to zero, the bytes stay.
	if out, code := run(t, bin, nil, "kick", "-config", p, user); code != 0 || !strings.Contains(out, "kick sent") {
		t.Fatalf("kick: exit %d\n%s", code, out)
	}
	if l := idle.line(); !strings.HasPrefix(l, "* BYE [UNAVAILABLE]") {
		t.Fatalf("kicked client got %q", l)
	}
	s3 := waitMetric(t, adminAddr, 5*time.Second, func(v float64) bool { return v == 0 }, "portico_backend_sessions", "backend=mem")
	if v := s3.must(t, "portico_connections", "listener=imaps"); v != 0 {
		t.Errorf("connections after kick = %v", v)
	}
	if a, b := s3.must(t, "portico_spliced_bytes_total", "direction=to_client"), s2.must(t, "portico_spliced_bytes_total", "direction=to_client"); a < b {
		t.Errorf("bytes to client went down at the session's end: %v < %v", a, b)
	}
	if v := s3.must(t, "portico_logins_total", "result=ok"); v != oks+1 {
		t.Errorf("ok logins = %v", v)
	}

	// A new certificate, SIGHUP: its name and expiry replace the old.
	next, err := ptls.SelfSignedValid(time.Now().Add(-time.Hour), time.Now().Add(90*24*time.Hour), "next.example.test")
	if err != nil {
		t.Fatal(err)
	}
	ptls.WritePEM(next, certFile, keyFile)
	serve.Process.Signal(syscall.SIGHUP)
	s4 := waitMetric(t, adminAddr, 10*time.Second, func(float64) bool { return true }, "portico_certificate_expiry_timestamp_seconds", "name=next.example.test", "source=file")
	exp := s4.must(t, "portico_certificate_expiry_timestamp_seconds", "name=next.example.test", "source=file")
	if want := float64(next.Leaf.NotAfter.Unix()); exp != want {
		t.Errorf("expiry = %v, want %v", exp, want)
	}
	if _, ok := s4.value("portico_certificate_expiry_timestamp_seconds", "name=first.example.test"); ok {
		t.Errorf("the replaced certificate is still reported")
	}

	// Redis errors are counted by command once Redis is gone; the route
	// cache keeps the proxy ready, and /readyz says it is degraded.
	r.Stop()
	s5 := waitMetric(t, adminAddr, 10*time.Second, func(v float64) bool { return v > 0 }, "portico_redis_errors_total")
	code, body := adminGet(t, adminAddr, "/readyz", testAdminToken)
	if code != 200 || !strings.Contains(body, "degraded: redis: unreachable") {
		t.Errorf("/readyz without Redis, with a cache: %d\n%s", code, body)
	}

	// No user name and no client address in any label.
	for _, s := range []scrape{s1, s2, s3, s4, s5} {
		if strings.Contains(s.text, "alice") || strings.Contains(s.text, "127.0.0.1") {
			t.Fatalf("a user name or address in the metrics:\n%s", s.text)
		}
	}
	promtoolCheck(t, s5.text)
	if strings.Contains(stderr.String(), testAdminToken) {
		t.Fatal("the admin token reached the log")
	}
	if t.Failed() {
		t.Logf("log:\n%s", stderr)
	}
}

// dialCleartext connects to a STARTTLS listener without TLS.
func dialCleartext(t *testing.T, addr string) *imapConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	ic := &imapConn{t: t, c: c, br: bufio.NewReader(c)}
	ic.line()
	return ic
}

// TestAdminAccess checks the token and /readyz of a proxy whose Redis is
// gone and that has no route cache.
func TestAdminAccess(t *testing.T) {
	bin := binary(t)
	r := testsrv.StartRedis(t)
	dir := t.TempDir()
	imaps, adminAddr := freeAddr(t), freeAddr(t)
	t.Setenv("PORTICO_TEST_ADMIN_TOKEN", testAdminToken)
	base := `
listeners:
  - {name: imaps, mode: imaps, address: "` + imaps + `"}
` + certFiles(t, dir) + `routing:
  redis: {addrs: ["` + r.Addr + `"], dial_timeout: 200ms, read_timeout: 200ms}
  cache: {disabled: true}
backend_defaults: {security: starttls}
`
	// Off the loopback, a token is required: check-config says so.
	noToken := writeConfig(t, t.TempDir(), base+"admin: {address: \":9143\"}\n")
	if out, code := run(t, bin, nil, "check-config", noToken); code == 0 || !strings.Contains(out, "admin.token: is required") {
		t.Fatalf("check-config without a token off loopback: exit %d\n%s", code, out)
	}

	p := writeConfig(t, dir, base+"admin:\n  address: \""+adminAddr+"\"\n  token: {env: PORTICO_TEST_ADMIN_TOKEN}\n")
	_, stderr := startServe(t, bin, p, imaps, 10*time.Second)
	if err := testsrv.WaitDial(adminAddr, 5*time.Second); err != nil {
		t.Fatalf("admin listener: %v\n%s", err, stderr)
	}
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/healthz", "", 200},
		{"/metrics", "", 401},
		{"/metrics", "wrong-token-wrong-token", 401},
		{"/metrics", testAdminToken[:len(testAdminToken)-1], 401},
		{"/metrics", testAdminToken, 200},
		{"/readyz", "", 401},
		{"/readyz", testAdminToken, 200},
		{"/debug/pprof/", "", 401},
		{"/debug/pprof/", testAdminToken, 200},
		{"/debug/pprof/goroutine?debug=1", testAdminToken, 200},
		{"/nope", testAdminToken, 404},
	} {
		code, body := adminGet(t, adminAddr, tc.path, tc.token)
		if code != tc.want {
			t.Errorf("GET %s with token %q: %d, want %d\n%s", tc.path, tc.token, code, tc.want, body)
		}
	}
	// "Bearer" is required, not just the token.
	req, _ := http.NewRequest("GET", "http://"+adminAddr+"/metrics", nil)
	req.Header.Set("Authorization", testAdminToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Errorf("token without Bearer: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// Redis gone, no cache: not ready, and the body says why.
	r.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := adminGet(t, adminAddr, "/readyz", testAdminToken)
		if code == 503 && strings.Contains(body, "redis: unreachable") && strings.Contains(body, "no route cache") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz without Redis: %d\n%s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, _ := adminGet(t, adminAddr, "/healthz", ""); code != 200 {
		t.Errorf("/healthz without Redis: %d", code)
	}
	if strings.Contains(stderr.String(), testAdminToken) {
		t.Fatal("the admin token reached the log")
	}
}
