package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/auth"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// authHTTPEnv is one Portico whose logins an nginx-style auth_http
// service (scripts/auth-http-service.py) decides, in front of a real
// Dovecot, and the pieces to run nginx in front of the same service.
type authHTTPEnv struct {
	d        *testsrv.Dovecot
	svc      *testsrv.AuthHTTP
	srv      *proxy.Server
	imaps    string
	caFile   string
	certFile string
	keyFile  string
	logs     *testsrv.Buffer
}

const carolPass = "carol's pw"

// authHTTPUsers are the service's users: alice with her password of every
// awkward character, carol whose login the service rewrites to bob's.
func authHTTPUsers(d *testsrv.Dovecot) []testsrv.AuthHTTPUser {
	return []testsrv.AuthHTTPUser{
		{Login: aliceUser, Password: alicePass, Backend: d.Addr},
		{Login: "carol@example.test", Password: carolPass, Backend: d.Addr, UpstreamUser: bobUser, UpstreamPass: bobPass},
	}
}

func newAuthHTTPEnv(t *testing.T, http11 bool, url string) *authHTTPEnv {
	t.Helper()
	e := &authHTTPEnv{logs: &testsrv.Buffer{}}
	e.d = testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: map[string]string{aliceUser: alicePass, bobUser: bobPass}})
	if url == "" {
		e.svc = testsrv.StartAuthHTTP(t, http11, authHTTPUsers(e.d)...)
		url = e.svc.URL
	}
	cert, err := ptls.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e.caFile, e.certFile, e.keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.pem"), filepath.Join(dir, "key.pem")
	if err := ptls.WritePEM(cert, e.certFile, e.keyFile); err != nil {
		t.Fatal(err)
	}
	store, err := ptls.NewStore(cert)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(e.logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := &auth.HTTP{URL: url, Timeout: time.Second, Logger: logger,
		Backend: func(_ context.Context, a netip.AddrPort) (*routing.Backend, error) {
			return &routing.Backend{Addr: a.String(), ForwardID: true, LoginTimeout: 5 * time.Second}, nil
		}}
	baseline := runtime.NumGoroutine()
	e.srv = &proxy.Server{
		// Never asked: the service names every backend.
		Router:        routing.NewStatic(nil),
		TLSConfig:     ptls.ServerConfig(store, 0),
		Limits:        proxy.Limits{AuthFailureDelay: 200 * time.Millisecond, MaxAuthFailures: 5, AuthTimeout: 3 * time.Second},
		Logger:        logger,
		Authenticator: &auth.Mux{Password: h},
	}
	e.imaps = serveIMAPS(t, e.srv, func() {
		h.Close()
		checkGoroutines(t, baseline)
		for _, secret := range []string{alicePass, bobPass, carolPass, "s3cret", "wrong-pw"} {
			if strings.Contains(e.logs.String(), secret) {
				t.Errorf("a password reached the log")
			}
		}
	})
	return e
}

// authHTTPScript logs in through a front end (Portico or nginx) the ways
// that make an auth_http service see different requests, and prints one
// line per outcome, so that both front ends can be held to the same.
const authHTTPScript = `
import imaplib, ssl, sys, time
host, port, cafile, alice, alicepw = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=cafile)

def conn():
    return imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)

def login(M, user, pw):
    M.literal = pw.encode("utf-8")
    try:
        typ, dat = M._simple_command("LOGIN", user)
    except imaplib.IMAP4.error as e:
        sys.stderr.write("login %s: %s\n" % (user, e))
        return "NO"
    if typ == "OK":
        M.state = "AUTH"
    return typ

# 1. LOGIN with the password as a literal.
M = conn()
print("login", login(M, alice, alicepw))
typ, dat = M.select("INBOX")
print("select", typ)
M.logout()

# 2. AUTHENTICATE PLAIN.
M = conn()
typ, dat = M.authenticate("PLAIN", lambda _: b"\0" + alice.encode() + b"\0" + alicepw.encode("utf-8"))
print("plain", typ)
M.logout()

# 3. A wrong password, refused with Auth-Wait: 1; then the right one on
# the same connection (Auth-Login-Attempt: 2).
M = conn()
t0 = time.monotonic()
print("wrong", login(M, alice, "wrong-pw"), "waited", time.monotonic() - t0 >= 0.9)
print("again", login(M, alice, alicepw))
M.logout()

# 4. carol, whose credentials the service rewrites to bob's.
M = conn()
print("carol", login(M, "carol@example.test", "carol's pw"))
typ, dat = M.select("INBOX")
print("carol-select", typ)
M.logout()

# 5. An unknown user: refused without Auth-Wait, then the connection
# is closed.
M = conn()
print("unknown", login(M, "nobody@example.test", "pw"))
try:
    M.noop()
    print("after-unknown open")
except (imaplib.IMAP4.abort, OSError, EOFError):
    print("after-unknown closed")
`

var authHTTPOutcome = []string{
	"login OK", "select OK", "plain OK", "wrong NO waited True", "again OK",
	"carol OK", "carol-select OK", "unknown NO", "after-unknown closed",
}

func runAuthHTTPScript(t *testing.T, addr, caFile string) {
	t.Helper()
	py := mustLookPath(t, "python3")
	script := writeTemp(t, "authhttp.py", authHTTPScript)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, script, "localhost", port("x://"+addr), caFile, aliceUser, alicePass).CombinedOutput()
	if err != nil {
		t.Fatalf("python3 imaplib: %v\n%s", err, out)
	}
	if got := strings.Split(strings.TrimSpace(string(out)), "\n"); strings.Join(got, "|") != strings.Join(authHTTPOutcome, "|") {
		t.Errorf("outcomes:\n%s\nwant:\n%s", out, strings.Join(authHTTPOutcome, "\n"))
	}
}

// TestAuthHTTPDovecot: python3 imaplib logs in through Portico, whose
// auth_http service decides each login and names the Dovecot; the
// service sees what nginx would send it, over one kept-alive connection.
func TestAuthHTTPDovecot(t *testing.T) {
	e := newAuthHTTPEnv(t, true, "")
	runAuthHTTPScript(t, e.imaps, e.caFile)

	// carol's login reached Dovecot as bob's, from the client's address.
	e.d.WaitLog(t, "Login: user=<"+bobUser+">", 5*time.Second)
	if log := e.d.Log(); !strings.Contains(log, "rip=127.0.0.1") {
		t.Errorf("Dovecot did not see the client's address:\n%s", log)
	}
	reqs := e.svc.Requests(t)
	if len(reqs) != 6 {
		t.Fatalf("%d requests to the service, want 6", len(reqs))
	}
	for i, r := range reqs {
		if r.Conn != 1 {
			t.Errorf("request %d on connection %d: keep-alive not used", i, r.Conn)
		}
	}
	want := map[string]string{
		"Host": "127.0.0.1", "Auth-Method": "plain", "Auth-User": aliceUser,
		"Auth-Pass":     `s3cret%20"quoted"%20back\slash%20ünïcödé`,
		"Auth-Protocol": "imap", "Auth-Login-Attempt": "1", "Client-IP": "127.0.0.1",
		"Auth-SSL": "on", "Auth-SSL-Protocol": "TLSv1.3",
	}
	for k, v := range want {
		if got, _ := reqs[0].Header(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	if got, _ := reqs[3].Header("Auth-Login-Attempt"); got != "2" {
		t.Errorf("the retry on the same connection: Auth-Login-Attempt %q", got)
	}
}

// TestAuthHTTPUnavailable: a service that is down or too slow is not a
// wrong password: NO [UNAVAILABLE], and the client may try again.
func TestAuthHTTPUnavailable(t *testing.T) {
	silent := silentServer(t)
	e := newAuthHTTPEnv(t, false, "http://"+silent.Addr().String()+"/auth")
	login := func() (string, time.Duration) {
		c, err := tls.Dial("tcp", e.imaps, &tls.Config{ServerName: "localhost", RootCAs: mustPool(t, e.caFile)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 512)
		c.Read(buf)
		start := time.Now()
		fmt.Fprintf(c, "a LOGIN %s pw\r\n", aliceUser)
		n, _ := c.Read(buf)
		return string(buf[:n]), time.Since(start)
	}
	got, d := login()
	if !strings.HasPrefix(got, "a NO [UNAVAILABLE]") || d < 900*time.Millisecond || d > 3*time.Second {
		t.Errorf("service silent: %q after %v, want NO [UNAVAILABLE] after its 1s timeout", got, d)
	}
	silent.Close()
	if got, _ := login(); !strings.HasPrefix(got, "a NO [UNAVAILABLE]") {
		t.Errorf("service down: %q", got)
	}
}

func mustPool(t *testing.T, caFile string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in " + caFile)
	}
	return p
}

// TestAuthHTTPLikeNginx: the same auth_http service behind real nginx
// (1.22, mail module) and behind Portico, driven by the same client,
// gives the same outcomes and receives the same headers, name for name
// and value for value; what may differ is listed and explained.
func TestAuthHTTPLikeNginx(t *testing.T) {
	e := newAuthHTTPEnv(t, false, "")
	nginxAddr := startNginxMail(t, e)
	runAuthHTTPScript(t, nginxAddr, e.caFile)
	viaNginx := e.svc.Requests(t)
	runAuthHTTPScript(t, e.imaps, e.caFile)
	viaPortico := e.svc.Requests(t)[len(viaNginx):]
	if len(viaNginx) != 6 || len(viaPortico) != 6 {
		t.Fatalf("requests: %d via nginx, %d via Portico; want 6 each", len(viaNginx), len(viaPortico))
	}
	for i := range viaNginx {
		n, p := headerMap(viaNginx[i]), headerMap(viaPortico[i])
		if viaNginx[i].Request != "GET /auth HTTP/1.0" || viaPortico[i].Request != "GET /auth HTTP/1.1" {
			t.Errorf("request %d: %q via nginx, %q via Portico", i, viaNginx[i].Request, viaPortico[i].Request)
		}
		for k, nv := range n {
			pv, ok := p[k]
			switch {
			case !ok:
				t.Errorf("request %d: nginx sent %s: %q, Portico did not", i, k, nv)
			case k == "Auth-SSL-Cipher":
				// Each TLS stack picks its own suite among the client's.
				if !strings.HasPrefix(pv, "TLS_") {
					t.Errorf("request %d: Auth-SSL-Cipher %q via Portico", i, pv)
				}
			case pv != nv:
				t.Errorf("request %d: %s: %q via nginx, %q via Portico", i, k, nv, pv)
			}
		}
		for k, pv := range p {
			if _, ok := n[k]; !ok {
				t.Errorf("request %d: Portico sent %s: %q, nginx did not", i, k, pv)
			}
		}
	}
	if t.Failed() {
		js, _ := json.MarshalIndent([]any{viaNginx, viaPortico}, "", " ")
		t.Logf("nginx, then Portico:\n%s", js)
	}
}

func headerMap(r testsrv.AuthHTTPRequest) map[string]string {
	m := make(map[string]string, len(r.Headers))
	for _, h := range r.Headers {
		m[h[0]] = h[1]
	}
	return m
}

// startNginxMail runs nginx's mail proxy on a loopback port with TLS, in
// front of e's auth service, as scripts/compare-peers.sh configures it,
// in the foreground and without a master process.
func startNginxMail(t *testing.T, e *authHTTPEnv) string {
	t.Helper()
	bin := testsrv.LookPath(t, "nginx", "/usr/sbin/nginx")
	const module = "/usr/lib/nginx/modules/ngx_mail_module.so"
	if _, err := os.Stat(module); err != nil {
		t.Fatalf("nginx's mail module is missing (Debian: libnginx-mod-mail): %v", err)
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	p := testsrv.FreePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(p)
	conf := fmt.Sprintf(`load_module %s;
daemon off;
master_process off;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log info;
events { worker_connections 64; }
mail {
  server_name localhost;
  auth_http %[3]s/auth;
  imap_auth plain login;
  ssl_certificate %[4]s;
  ssl_certificate_key %[5]s;
  ssl_protocols TLSv1.3;
  server {
    listen %[6]s ssl;
    protocol imap;
  }
}
`, module, dir, e.svc.Addr, e.certFile, e.keyFile, addr)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &testsrv.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited: %s\n%s", out, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx did not listen on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
