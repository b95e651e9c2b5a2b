package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/fleet"
	"github.com/portico-mail/portico/internal/app"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// POP3 through Portico (issue 13): a Portico assembled by internal/app
// from a config with a pop3s and a pop3 (STLS) listener, in front of a
// Dovecot that serves POP3, users routed through Redis, driven by real
// clients: fetchmail, curl and python3's poplib, and by hand for the
// attacks.

// More users of the POP3 tests; alice and bob are env_test.go's.
const (
	noPOP3User  = "nopop@example.test" // routed to a backend without POP3
	noPOP3Pass  = "nopop-password"
	kickedUser  = "dave@example.test" // for the kick, with a big message
	kickedPass  = "dave-password"
	literalUser = "frank@example.test" // routed to a literal address
	literalPass = "frank-password"
	ppUser      = "grace@example.test" // routed to a backend reached with a PROXY header
	ppPass      = "grace-password"
)

// pop3Env is one Portico with POP3 listeners in front of one Dovecot.
type pop3Env struct {
	redis   *testsrv.Redis
	dovecot *testsrv.Dovecot
	rt      *app.App
	config  string // the YAML file, for `portico sessions` and `portico kick`
	pop3s   string // implicit TLS listener
	pop3    string // STLS listener
	pop3sLB string // implicit TLS behind a load balancer: PROXY header from clientIP
	caFile  string // Portico's self-signed certificate, for the clients
	roots   *x509.CertPool
	logs    *testsrv.Buffer
	logins  atomic.Int64 // POP3 logins Portico attempted on a backend
}

// pop3EnvOptions change a pop3Env from the default.
type pop3EnvOptions struct {
	limits       string // YAML lines under limits:, indented by two
	dovecotExtra string // for DovecotOptions.Extra
}

func newPOP3Env(t *testing.T) *pop3Env {
	return newPOP3EnvWith(t, pop3EnvOptions{})
}

func newPOP3EnvWith(t *testing.T, o pop3EnvOptions) *pop3Env {
	t.Helper()
	e := &pop3Env{logs: &testsrv.Buffer{}}
	e.redis = testsrv.StartRedis(t)
	e.dovecot = testsrv.StartDovecot(t, testsrv.DovecotOptions{POP3: true, Users: map[string]string{
		aliceUser: alicePass, bobUser: bobPass, noPOP3User: noPOP3Pass, kickedUser: kickedPass, literalUser: literalPass, ppUser: ppPass,
	}, Extra: dovecotNoAuthPenalty + o.dovecotExtra})
	_, pop3Port, err := net.SplitHostPort(e.dovecot.POP3Addr)
	if err != nil {
		t.Fatal(err)
	}
	_, pop3PPPort, err := net.SplitHostPort(e.dovecot.POP3HAProxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, certFile, keyFile := testcert.Files(t, dir, "localhost", "127.0.0.1")
	e.caFile = certFile
	e.roots = ptls.CertPool(cert)
	e.pop3s = "127.0.0.1:" + strconv.Itoa(testsrv.FreePort(t))
	e.pop3 = "127.0.0.1:" + strconv.Itoa(testsrv.FreePort(t))
	e.pop3sLB = "127.0.0.1:" + strconv.Itoa(testsrv.FreePort(t))
	// Every login reads Redis (no route cache): the tests change routes
	// and watch Redis for lookups. No brute-force limits: the attacks fail
	// on purpose, more often than a real user would.
	yaml := `
listeners:
  - {name: pop3s, mode: pop3s, address: "` + e.pop3s + `"}
  - {name: pop3, mode: pop3, address: "` + e.pop3 + `"}
  - name: pop3s-lb
    mode: pop3s
    address: "` + e.pop3sLB + `"
    proxy_protocol: {trusted_networks: [` + clientIP + `/32]}
tls:
  certificates:
    - {cert_file: ` + certFile + `, key_file: ` + keyFile + `}
limits:
  auth_failure_delay: 200ms
  brute_force: {disabled: true}
` + o.limits + `routing:
  redis: {addrs: ["` + e.redis.Addr + `"]}
  cache: {disabled: true}
  health: {disabled: true}
backends:
  - {name: dovecot, address: "` + e.dovecot.Addr + `", pop3_port: ` + pop3Port + `, forward_id: true}
  - {name: imaponly, address: "` + e.dovecot.Addr + `", forward_id: true}
  - {name: dovecot-pp, address: "` + e.dovecot.HAProxyAddr + `", pop3_port: ` + pop3PPPort + `, proxy_protocol: true}
backend_defaults: {pop3_port: ` + pop3Port + `, forward_id: true}
fleet: {proxy_id: pop3-e2e, heartbeat: 1s}
`
	e.config = writeTemp(t, "portico.yaml", yaml)
	cfg, err := config.Parse([]byte(yaml), e.config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// No password reaches Portico's log, at any level.
		for _, pw := range []string{alicePass, "s3cret", bobPass, noPOP3Pass, kickedPass, literalPass, ppPass} {
			if strings.Contains(e.logs.String(), pw) {
				t.Errorf("a password reached Portico's log")
			}
		}
		if t.Failed() {
			t.Logf("Portico's log:\n%s\nDovecot's log:\n%s", e.logs, e.dovecot.Log())
		}
	})
	logger := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.rt, _ = startApp(t, cfg, logger, func(srv *proxy.Server) {
		next := srv.LoginPOP3
		srv.LoginPOP3 = func(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error) {
			e.logins.Add(1)
			return next(ctx, b, cred, id)
		}
	})
	ctx := context.Background()
	for user, fields := range map[string][]any{
		aliceUser:   {routing.FieldBackend, "dovecot"},
		bobUser:     {routing.FieldBackend, "dovecot"},
		kickedUser:  {routing.FieldBackend, "dovecot"},
		noPOP3User:  {routing.FieldBackend, "imaponly"},
		literalUser: {routing.FieldAddr, e.dovecot.Addr},
		ppUser:      {routing.FieldBackend, "dovecot-pp"},
	} {
		if err := e.rt.Redis.HSet(ctx, "portico:route:"+user, fields...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *pop3Env) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: e.roots, ServerName: "localhost", NextProtos: []string{"pop3"}}
}

// dialPOP3 connects from clientIP to a POP3 listener, with TLS from the
// start if implicitTLS, and reads the greeting. Reads and writes end
// within 30 s.
func (e *pop3Env) dialPOP3(t *testing.T, addr string, implicitTLS bool) *rawConn {
	t.Helper()
	var cfg *tls.Config
	if implicitTLS {
		cfg = e.tlsConfig()
	}
	return dialPOP3(t, dialer, addr, cfg)
}

// dialPOP3 connects to a POP3 listener with d, over TLS with tlsConfig
// unless it is nil, and reads the greeting. Reads and writes end within
// 30 s.
func dialPOP3(t *testing.T, d *net.Dialer, addr string, tlsConfig *tls.Config) *rawConn {
	t.Helper()
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if tlsConfig != nil {
		tc := tls.Client(c, tlsConfig)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c = tc
	}
	rc := &rawConn{t: t, conn: c, br: bufio.NewReader(c)}
	if g := rc.line(); g != "+OK Portico ready." {
		t.Fatalf("greeting: %q", g)
	}
	return rc
}

// pop3 sends one POP3 command and returns the status line it gets.
func (c *rawConn) pop3(line string) string {
	c.t.Helper()
	c.write(line + "\r\n")
	return c.line()
}

// expect reads one line and fails unless it is want.
func (c *rawConn) expect(want string) {
	c.t.Helper()
	if l := c.line(); l != want {
		c.t.Fatalf("got %q, want %q", l, want)
	}
}

// expectPOP3 sends one POP3 command and fails unless its status line is
// want.
func (c *rawConn) expectPOP3(line, want string) {
	c.t.Helper()
	if l := c.pop3(line); l != want {
		c.t.Fatalf("%s: got %q, want %q", strings.Fields(line)[0], l, want)
	}
}

// stls upgrades a pop3 listener's connection with STLS.
func (c *rawConn) stls(e *pop3Env) {
	c.t.Helper()
	if l := c.pop3("STLS"); l != "+OK Begin TLS negotiation now" {
		c.t.Fatalf("STLS: %q", l)
	}
	tc := tls.Client(c.conn, e.tlsConfig())
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.conn, c.br = tc, bufio.NewReader(tc)
}

// pop3Login logs in with USER and PASS.
func (c *rawConn) pop3Login(user, pass string) {
	c.t.Helper()
	if l := c.pop3("USER " + user); l != "+OK Send PASS." {
		c.t.Fatalf("USER: %q", l)
	}
	if l := c.pop3("PASS " + pass); !strings.HasPrefix(l, "+OK") {
		c.t.Fatalf("PASS: %q", l)
	}
}

// multiline reads a POP3 multi-line body up to its terminating dot and
// returns it unstuffed, lines ending in CRLF.
func (c *rawConn) multiline() []byte {
	c.t.Helper()
	var b bytes.Buffer
	for {
		l := c.line()
		if l == "." {
			return b.Bytes()
		}
		b.WriteString(strings.TrimPrefix(l, "."))
		b.WriteString("\r\n")
	}
}

// readToEOF reads what is left until the connection ends.
func (c *rawConn) readToEOF() []byte {
	c.t.Helper()
	b, err := io.ReadAll(c.br)
	if err != nil && !isClosed(err) {
		c.t.Fatalf("read to EOF: %v (after %d bytes)", err, len(b))
	}
	return b
}

// isClosed reports the errors of a connection the server closed: EOF, a
// reset, or TLS's own close.
func isClosed(err error) bool {
	return err == io.EOF || errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "close notify")
}

// bigMessage is a message of about size bytes with CRLF line ends (as
// Dovecot sends them, so that what a client receives can be compared
// with what was stored), lines short enough for poplib (2048 octets), and
// lines that POP3 must byte-stuff: one starting with a dot, one that is a
// lone dot.
func bigMessage(subject string, size int) []byte {
	raw := make([]byte, size*3/4)
	rand.Read(raw)
	enc := base64.StdEncoding.EncodeToString(raw)
	var b bytes.Buffer
	b.WriteString(".leading dot\r\n.\r\n..two dots\r\n")
	for len(enc) > 0 {
		n := min(76, len(enc))
		b.WriteString(enc[:n] + "\r\n")
		enc = enc[n:]
	}
	b.WriteString(".\r\nlast line\r\n")
	return message(subject, b.Bytes())
}

// dovecotLogins returns Dovecot's POP3 login lines of user.
func (e *pop3Env) dovecotLogins(user string) []string {
	var out []string
	for _, l := range strings.Split(e.dovecot.Log(), "\n") {
		if strings.Contains(l, "pop3-login: Info: Login: user=<"+user+">") {
			out = append(out, l)
		}
	}
	return out
}

// runFetchmail runs fetchmail once, in the foreground, with rc as its
// run control file (in a fresh directory that is also its HOME, so that
// no earlier run's seen-message list applies) and %MBOX% in rc replaced
// by a file there. It returns fetchmail's output and what its mda wrote.
func runFetchmail(t *testing.T, rc string) (out, mbox string) {
	t.Helper()
	bin := mustLookPath(t, "fetchmail")
	home := t.TempDir()
	mboxFile := filepath.Join(home, "mbox")
	rcFile := filepath.Join(home, "fetchmailrc")
	if err := os.WriteFile(rcFile, []byte(strings.ReplaceAll(rc, "%MBOX%", mboxFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--nodetach", "--nosyslog", "-v", "-f", rcFile,
		"--pidfile", filepath.Join(home, "fetchmail.pid"), "-i", filepath.Join(home, "fetchids"))
	cmd.Env = append(os.Environ(), "HOME="+home, "FETCHMAILHOME="+home)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fetchmail: %v\n%s", err, b)
	}
	m, err := os.ReadFile(mboxFile)
	if err != nil {
		t.Fatalf("fetchmail delivered nothing: %v\n%s", err, b)
	}
	return string(b), string(m)
}

// TestPOP3Fetchmail fetches a message with fetchmail, keeping it on the
// server, over pop3s and over pop3 with STLS, the certificate checked
// against Portico's.
func TestPOP3Fetchmail(t *testing.T) {
	e := newPOP3Env(t)
	marker := fmt.Sprintf("fetchmail marker %d", time.Now().UnixNano())
	e.dovecot.AddMessage(t, bobUser, "INBOX", message("for fetchmail", []byte(marker+"\r\n")))
	account := `  user "` + bobUser + `" there with password "` + bobPass + `"
  mda "cat >> %MBOX%"
`
	for _, tc := range []struct {
		name, addr, options string
	}{
		{"pop3s", e.pop3s, "keep ssl sslproto 'tls1.2+' sslcertck sslcertfile " + e.caFile},
		{"stls", e.pop3, "keep sslproto 'auto' sslcertck sslcertfile " + e.caFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, port, _ := net.SplitHostPort(tc.addr)
			out, mbox := runFetchmail(t, "poll localhost service "+port+" protocol pop3 timeout 20\n"+
				account+"  options "+tc.options+"\n")
			if !strings.Contains(mbox, marker) || !strings.Contains(mbox, "Subject: for fetchmail") {
				t.Fatalf("fetchmail delivered:\n%s\noutput:\n%s", mbox, out)
			}
			if tc.name == "stls" && !strings.Contains(out, "POP3> STLS") {
				t.Errorf("fetchmail did not use STLS:\n%s", out)
			}
			if !strings.Contains(out, "1 message for "+bobUser) {
				t.Errorf("fetchmail output:\n%s", out)
			}
		})
	}
	// --keep left it there for the second run, which fetched it again.
	if n := len(e.dovecotLogins(bobUser)); n != 2 {
		t.Errorf("%d POP3 logins of bob in Dovecot's log, want 2", n)
	}
}

// TestPOP3Curl lists and retrieves with curl over pop3s and over pop3
// with STLS (--ssl-reqd); without --ssl-reqd, curl's login in clear is
// refused. Dovecot sees the client's address, forwarded with XCLIENT,
// and Portico's session id.
func TestPOP3Curl(t *testing.T) {
	e := newPOP3Env(t)
	msg1 := message("first", []byte("Hello Alice\r\n"))
	msg2 := message("second", []byte(".dotted\r\nsecond body\r\n"))
	e.dovecot.AddMessage(t, aliceUser, "INBOX", msg1)
	time.Sleep(10 * time.Millisecond) // maildir's order is the file names'
	e.dovecot.AddMessage(t, aliceUser, "INBOX", msg2)
	creds := []string{"--cacert", e.caFile, "-u", aliceUser + ":" + alicePass}

	list := runCurl(t, append(creds, "pop3s://"+e.pop3s+"/")...)
	if want := fmt.Sprintf("1 %d\r\n2 %d\r\n", len(msg1), len(msg2)); list != want {
		t.Errorf("LIST: %q, want %q", list, want)
	}
	// Each way curl logs in: AUTH PLAIN (what it picks from CAPA's SASL
	// line), with the initial response, AUTH LOGIN.
	for _, tc := range []struct {
		opts   []string
		method string
	}{
		{nil, "plain"},
		{[]string{"--sasl-ir", "--login-options", "AUTH=PLAIN"}, "plain"},
		{[]string{"--login-options", "AUTH=LOGIN"}, "login"},
	} {
		before := strings.Count(e.logs.String(), "method="+tc.method)
		if got := runCurl(t, append(append(creds, tc.opts...), "pop3s://"+e.pop3s+"/1")...); got != string(msg1) {
			t.Errorf("RETR 1 over pop3s %v: %q, want %q", tc.opts, got, msg1)
		}
		if strings.Count(e.logs.String(), "method="+tc.method) != before+1 {
			t.Errorf("curl %v did not log in with %s", tc.opts, tc.method)
		}
	}
	if got := runCurl(t, append(creds, "--ssl-reqd", "pop3://"+e.pop3+"/2")...); got != string(msg2) {
		t.Errorf("RETR 2 over STLS: %q, want %q", got, msg2)
	}
	logins := e.logins.Load()
	out, err := tryCurl(t, append(creds, "pop3://"+e.pop3+"/1")...)
	if err == nil || strings.Contains(out, "Hello Alice") {
		t.Errorf("curl logged in in clear: %v\n%s", err, out)
	}
	if e.logins.Load() != logins {
		t.Errorf("a login in clear reached the backend")
	}

	// Dovecot saw curl's address and Portico's session id: XCLIENT.
	lines := e.dovecotLogins(aliceUser)
	if len(lines) != 5 {
		t.Fatalf("%d POP3 logins of alice in Dovecot's log, want 5:\n%s", len(lines), e.dovecot.Log())
	}
	ids := regexp.MustCompile(`msg="logged in" session=(\S+) user=`+regexp.QuoteMeta(aliceUser)).FindAllStringSubmatch(e.logs.String(), -1)
	for i, l := range lines {
		if !strings.Contains(l, "rip="+clientIP+",") {
			t.Errorf("Dovecot's login line has not the client's address: %s", l)
		}
		if i >= len(ids) || !strings.Contains(l, "session=<"+ids[i][1]+">") {
			t.Errorf("Dovecot's login line has not Portico's session id: %s", l)
		}
	}
}

const poplibScript = `
import poplib, ssl, sys
host, pop3s_port, pop3_port, cafile, user, pw, msgfile, dovecot = sys.argv[1:9]
ctx = ssl.create_default_context(cafile=cafile)
want = open(msgfile, "rb").read()
assert want.endswith(b"\r\n")
want_lines = want[:-2].split(b"\r\n")

# UIDL straight from Dovecot, to compare with what comes through Portico.
D = poplib.POP3(*dovecot.rsplit(":", 1))
D.user(user)
D.pass_(pw)
dovecot_uidl = D.uidl()[1]
D.quit()

def session(M):
    M.user(user)
    M.pass_(pw)
    count, size = M.stat()
    assert count == 2, (count, size)
    resp, lines, octets = M.retr(2)
    assert resp.startswith(b"+OK"), resp
    if lines != want_lines:
        for i, (a, b) in enumerate(zip(lines, want_lines)):
            if a != b:
                raise SystemExit("line %d differs: %r != %r" % (i, a, b))
        raise SystemExit("%d lines, want %d" % (len(lines), len(want_lines)))
    assert octets >= len(want), (octets, len(want))
    uidl = M.uidl()[1]
    assert uidl == dovecot_uidl and len(uidl) == 2, (uidl, dovecot_uidl)
    assert M.quit().startswith(b"+OK")

session(poplib.POP3_SSL(host, int(pop3s_port), context=ctx))
print("pop3s ok")

M = poplib.POP3(host, int(pop3_port))
assert "STLS" in M.capa() and "USER" not in M.capa(), M.capa()
M.stls(context=ctx)
session(M)
print("stls ok")

# No STLS on a listener that requires TLS: the login is refused.
M = poplib.POP3(host, int(pop3_port))
try:
    M.user(user)
    M.pass_(pw)
    raise SystemExit("login in clear accepted")
except poplib.error_proto as e:
    assert b"[AUTH]" in e.args[0], e
print("clear refused ok")
`

// TestPOP3Poplib drives Portico with python3's poplib over pop3s and
// over pop3 with STLS: USER and PASS (a password with spaces, quotes, a
// backslash and non-ASCII letters), STAT, RETR of a 1 MiB message
// compared line for line with what Dovecot holds, UIDL as Dovecot gives
// it, QUIT; and a login without STLS refused with [AUTH].
func TestPOP3Poplib(t *testing.T) {
	e := newPOP3Env(t)
	py := mustLookPath(t, "python3")
	e.dovecot.AddMessage(t, aliceUser, "INBOX", message("small", []byte("small body\r\n")))
	time.Sleep(10 * time.Millisecond) // maildir's order is the file names'
	big := bigMessage("big", 1<<20)
	e.dovecot.AddMessage(t, aliceUser, "INBOX", big)
	msgFile := writeTemp(t, "big.eml", string(big))
	script := writeTemp(t, "client.py", poplibScript)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, pop3sPort, _ := net.SplitHostPort(e.pop3s)
	_, pop3Port, _ := net.SplitHostPort(e.pop3)
	logins := e.logins.Load()
	out, err := exec.CommandContext(ctx, py, script, "127.0.0.1", pop3sPort, pop3Port, e.caFile,
		aliceUser, alicePass, msgFile, e.dovecot.POP3Addr).CombinedOutput()
	if err != nil {
		t.Fatalf("python3 poplib: %v\n%s", err, out)
	}
	for _, want := range []string{"pop3s ok", "stls ok", "clear refused ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	if n := e.logins.Load() - logins; n != 2 {
		t.Errorf("%d backend logins, want 2 (the one in clear must not reach it)", n)
	}
}

// porticoBinary builds the portico command, for its admin subcommands.
func porticoBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "portico")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/portico-mail/portico/cmd/portico").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// admin runs `portico SUBCOMMAND -config CONFIG ARGS...` against the
// environment's Redis, as an operator would.
func (e *pop3Env) admin(t *testing.T, bin, sub string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append([]string{sub, "-config", e.config}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("portico %s %s: %v\n%s", sub, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// waitFor polls cond every 20 ms for up to d, and fails with what
// otherwise.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// smallReceiveBuffer makes a client that reads slowly hold back its
// server quickly: a 4 KiB receive window instead of megabytes.
func smallReceiveBuffer(_, _ string, c syscall.RawConn) error {
	var err error
	c.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
	})
	return err
}

// TestPOP3RoutingAndKick routes POP3 users through Redis: to a backend
// with pop3_port, to a literal address (backend_defaults.pop3_port), to a
// backend without POP3 (-ERR [SYS/TEMP]). A logged-in POP3 session is in
// the fleet's registry with its listener, and `portico kick` ends it at
// a response boundary: during a large RETR the client gets the whole
// message, then -ERR [SYS/TEMP].
func TestPOP3RoutingAndKick(t *testing.T) {
	e := newPOP3Env(t)
	bin := porticoBinary(t)

	c := e.dialPOP3(t, e.pop3s, true)
	c.expectPOP3("USER "+noPOP3User, "+OK Send PASS.")
	c.expectPOP3("PASS "+noPOP3Pass, "-ERR [SYS/TEMP] Service temporarily unavailable, try again later")
	c.expectPOP3("QUIT", "+OK Logging out.")
	if l := e.dovecotLogins(noPOP3User); len(l) != 0 {
		t.Errorf("a user of a backend without POP3 logged in to Dovecot: %q", l)
	}

	c = e.dialPOP3(t, e.pop3, false)
	c.stls(e)
	c.pop3Login(literalUser, literalPass)
	c.expectPOP3("STAT", "+OK 0 0")
	c.expectPOP3("QUIT", "+OK Logging out.")
	if rest := c.readToEOF(); len(rest) != 0 {
		t.Errorf("after QUIT: %q", rest)
	}
	if l := e.dovecotLogins(literalUser); len(l) != 1 {
		t.Errorf("Dovecot's POP3 logins of %s: %q", literalUser, l)
	}

	// 16 MiB: more than the socket buffers between Dovecot and the client
	// hold, so that Portico is still in the middle of the message when the
	// kick arrives.
	big := bigMessage("kicked", 16<<20)
	e.dovecot.AddMessage(t, kickedUser, "INBOX", big)
	slow := *dialer
	slow.Control = smallReceiveBuffer
	c = dialPOP3(t, &slow, e.pop3s, e.tlsConfig())
	c.pop3Login(kickedUser, kickedPass)

	// The registry lists the session with its listener, and so does
	// `portico sessions`.
	var rec fleet.Record
	waitFor(t, 5*time.Second, "the session is not in the registry", func() bool {
		recs, err := fleet.ListSessions(context.Background(), e.rt.Redis, e.rt.RedisPrefix, kickedUser)
		if err != nil || len(recs) != 1 {
			return false
		}
		rec = recs[0]
		return true
	})
	if rec.Listener != "pop3s" || rec.Backend != "dovecot" || !strings.HasPrefix(rec.Client, clientIP+":") || rec.Proxy != "pop3-e2e" {
		t.Errorf("registry record %+v", rec)
	}
	out := e.admin(t, bin, "sessions", kickedUser)
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(kickedUser) + `\s+pop3-e2e\s+pop3s\s+` + regexp.QuoteMeta(clientIP) + `:\d+\s+dovecot\s`).MatchString(out) {
		t.Errorf("portico sessions %s does not show the session with its listener:\n%s", kickedUser, out)
	}

	// A kick in the middle of the RETR, while the client's full window
	// holds Portico back: the client still gets the rest of the message,
	// then the -ERR, as the answer to the NOOP pipelined behind the RETR.
	// Before the RETR come pipelined commands whose answers are
	// multi-line after login (CAPA, LIST, UIDL, TOP) or not (STAT, NOOP, a
	// failing RETR): the boundary is found through them.
	c.write("CAPA\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 9\r\nTOP 1 2\r\nNOOP\r\nRETR 1\r\nNOOP\r\n")
	for _, cmd := range []struct {
		name, status, body string
	}{
		{"CAPA", "+OK", "\r\nUIDL\r\n"},
		{"STAT", "+OK 1 ", ""},
		{"LIST", "+OK 1 ", "1 "},
		{"UIDL", "+OK", "1 "},
		{"RETR 9", "-ERR ", ""},
		{"TOP 1 2", "+OK", "Subject: kicked\r\n"},
		{"NOOP", "+OK", ""},
		{"RETR 1", "+OK", ""},
	} {
		l := c.line()
		if !strings.HasPrefix(l, cmd.status) {
			t.Fatalf("%s: %q", cmd.name, l)
		}
		if cmd.body != "" {
			body := "\r\n" + string(c.multiline())
			if !strings.Contains(body, cmd.body) {
				t.Fatalf("%s: %q", cmd.name, body)
			}
		}
	}
	var got bytes.Buffer
	for got.Len() < 64<<10 {
		got.WriteString(strings.TrimPrefix(c.line(), ".") + "\r\n")
	}
	toClient := func() int64 {
		for _, s := range e.rt.Server.Sessions() {
			if s.User == kickedUser {
				return s.BytesToClient
			}
		}
		t.Fatal("the session to kick has ended")
		return 0
	}
	last := toClient()
	waitFor(t, 10*time.Second, "Portico never stopped writing to a client that does not read", func() bool {
		time.Sleep(200 * time.Millisecond)
		n := toClient()
		stalled := n == last
		last = n
		return stalled
	})
	t.Logf("Portico stalled after %d bytes of the %d-byte message", last, len(big))
	if last >= int64(len(big)) {
		t.Fatalf("Portico wrote the whole message (%d bytes) before the kick: the buffers are too large for this test", last)
	}
	if out := e.admin(t, bin, "kick", kickedUser); !strings.Contains(out, "kick sent") {
		t.Fatalf("portico kick: %s", out)
	}
	waitFor(t, 5*time.Second, "the kick did not reach the proxy", func() bool {
		return regexp.MustCompile(`msg="fleet: kicked" .*user=` + regexp.QuoteMeta(kickedUser)).MatchString(e.logs.String())
	})
	got.Write(c.multiline())
	if !bytes.Equal(got.Bytes(), big) {
		t.Errorf("the kicked RETR delivered %d bytes, not the %d of the message", got.Len(), len(big))
	}
	c.expect("-ERR [SYS/TEMP] Session ended by the administrator")
	if rest := c.readToEOF(); len(rest) != 0 {
		t.Errorf("after the kick's -ERR: %q", rest)
	}
	waitFor(t, 5*time.Second, "the kicked session is still in the registry", func() bool {
		n, err := fleet.CountSessions(context.Background(), e.rt.Redis, e.rt.RedisPrefix, kickedUser)
		return err == nil && n == 0
	})
	if !regexp.MustCompile(`msg="session end" session=\S+ listener=pop3s .*user=` + regexp.QuoteMeta(kickedUser) + `.* outcome=kicked`).MatchString(e.logs.String()) {
		t.Errorf("no kicked session end in Portico's log")
	}
}

// redisMonitor records every command Redis runs (MONITOR), to show that
// something never reached it.
type redisMonitor struct {
	seen testsrv.Buffer
}

func startRedisMonitor(t *testing.T, addr string) *redisMonitor {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	m := &redisMonitor{}
	br := bufio.NewReader(c)
	io.WriteString(c, "MONITOR\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, err := br.ReadString('\n'); err != nil || l != "+OK\r\n" {
		t.Fatalf("MONITOR: %q %v", l, err)
	}
	c.SetReadDeadline(time.Time{})
	go io.Copy(&m.seen, br)
	return m
}

// commands returns what Redis has run so far: it sends a marker through
// client and waits (5 s at most) for it to show, so that every command
// sent before is in.
func (m *redisMonitor) commands(t *testing.T, e *pop3Env) string {
	t.Helper()
	marker := fmt.Sprintf("marker-%d", time.Now().UnixNano())
	if err := e.rt.Redis.Echo(context.Background(), marker).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "MONITOR never showed the marker", func() bool { return strings.Contains(m.seen.String(), marker) })
	return m.seen.String()
}

// TestPOP3Attacks: what an attacker, or a client that would give its
// password away, gets from Portico's POP3 listeners in front of a real
// Dovecot.
func TestPOP3Attacks(t *testing.T) {
	e := newPOP3Env(t)
	mon := startRedisMonitor(t, e.redis.Addr)
	const wrongPass = "wrong-password-for-alice"

	// STLS with commands pipelined behind it (CVE-2011-0411): nothing is
	// answered in clear, the bytes go to the TLS handshake, which fails.
	c := e.dialPOP3(t, e.pop3, false)
	c.write("STLS\r\nUSER " + aliceUser + "\r\nPASS " + alicePass + "\r\n")
	c.expect("+OK Begin TLS negotiation now")
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(c.br); bytes.Contains(rest, []byte("OK")) || bytes.Contains(rest, []byte("ERR")) {
		t.Errorf("injected commands were answered: %q (%v)", rest, err)
	}
	if err := tls.Client(c.conn, e.tlsConfig()).Handshake(); err == nil {
		t.Errorf("the TLS handshake after an injection succeeded")
	}

	// USER, PASS and AUTH in clear on a listener that requires TLS: refused,
	// the connection closed after max_auth_failures (3).
	c = e.dialPOP3(t, e.pop3, false)
	caps := c.pop3("CAPA")
	capa := string(c.multiline())
	if caps != "+OK Capability list follows" || !strings.Contains(capa, "STLS") || strings.Contains(capa, "USER") || strings.Contains(capa, "SASL") {
		t.Errorf("CAPA before STLS: %s %q", caps, capa)
	}
	c.expectPOP3("USER "+aliceUser, "-ERR [AUTH] TLS is required to log in; use STLS")
	c.expectPOP3("PASS "+alicePass, "-ERR [AUTH] TLS is required to log in; use STLS")
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + aliceUser + "\x00" + alicePass))
	c.expectPOP3("AUTH PLAIN "+plain, "-ERR [AUTH] TLS is required to log in; use STLS")
	c.expect("-ERR Too many failed logins")
	if rest := c.readToEOF(); len(rest) != 0 {
		t.Errorf("after too many failures: %q", rest)
	}
	// None of it reached Redis, a backend, or Dovecot.
	if cmds := mon.commands(t, e); strings.Contains(cmds, aliceUser) {
		t.Errorf("a login in clear reached Redis:\n%s", cmds)
	}
	if e.logins.Load() != 0 || strings.Contains(e.dovecot.Log(), aliceUser) {
		t.Errorf("a login in clear reached the backend (%d logins):\n%s", e.logins.Load(), e.dovecot.Log())
	}

	// A line past max_auth_line_length: -ERR, then the end.
	for _, tc := range []struct {
		addr string
		tls  bool
	}{{e.pop3s, true}, {e.pop3, false}} {
		c = e.dialPOP3(t, tc.addr, tc.tls)
		c.write("USER " + strings.Repeat("a", 20000) + "\r\n")
		c.expect("-ERR Line too long")
		c.expect("-ERR Closing connection")
		if rest := c.readToEOF(); len(rest) != 0 {
			t.Errorf("after a line too long: %q", rest)
		}
	}

	// An HTTP request (ALPACA: a browser made to talk to the POP3 port):
	// three bad commands, then the end.
	for _, tc := range []struct {
		addr string
		tls  bool
	}{{e.pop3s, true}, {e.pop3, false}} {
		c = e.dialPOP3(t, tc.addr, tc.tls)
		c.write("POST /form HTTP/1.1\r\nHost: mail.example.test\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\nUSER x\r\nPASS y\r\n")
		for range 3 {
			c.expect("-ERR Unknown command")
		}
		c.expect("-ERR Too many invalid commands")
		if rest := c.readToEOF(); len(rest) != 0 {
			t.Errorf("after an HTTP request: %q", rest)
		}
	}

	// TLS for another protocol is refused on pop3s and after STLS: ALPN
	// http/1.1 (a browser) or imap; pop3, or no ALPN, is served.
	for _, tc := range []struct {
		protos []string
		ok     bool
	}{{nil, true}, {[]string{"pop3"}, true}, {[]string{"http/1.1"}, false}, {[]string{"imap"}, false}} {
		for _, stls := range []bool{false, true} {
			addr := e.pop3s
			if stls {
				addr = e.pop3
			}
			raw, err := dialer.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			raw.SetDeadline(time.Now().Add(10 * time.Second))
			if stls {
				rc := &rawConn{t: t, conn: raw, br: bufio.NewReader(raw)}
				rc.expect("+OK Portico ready.")
				rc.expectPOP3("STLS", "+OK Begin TLS negotiation now")
			}
			cfg := e.tlsConfig()
			cfg.NextProtos = tc.protos
			tc2 := tls.Client(raw, cfg)
			err = tc2.Handshake()
			if (err == nil) != tc.ok {
				t.Errorf("ALPN %v (STLS %v): handshake error %v", tc.protos, stls, err)
			}
			if err == nil && !stls {
				rc := &rawConn{t: t, conn: tc2, br: bufio.NewReader(tc2)}
				rc.expect("+OK Portico ready.")
			}
			raw.Close()
		}
	}

	// Failures look alike: a wrong password, a user without a route, a
	// user with a route that Dovecot does not know.
	const ghostUser = "ghost@example.test"
	if err := e.rt.Redis.HSet(context.Background(), "portico:route:"+ghostUser, routing.FieldBackend, "dovecot").Err(); err != nil {
		t.Fatal(err)
	}
	var answers []string
	var delays []time.Duration
	for _, cred := range [][2]string{{aliceUser, wrongPass}, {"nobody@example.test", wrongPass}, {ghostUser, wrongPass}} {
		c = e.dialPOP3(t, e.pop3s, true)
		c.expectPOP3("USER "+cred[0], "+OK Send PASS.")
		t0 := time.Now()
		answers = append(answers, c.pop3("PASS "+cred[1]))
		delays = append(delays, time.Since(t0))
		c = e.dialPOP3(t, e.pop3s, true)
		t0 = time.Now()
		answers = append(answers, c.pop3("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+cred[0]+"\x00"+cred[1]))))
		delays = append(delays, time.Since(t0))
	}
	for _, d := range delays {
		if d < 200*time.Millisecond || d > 2*time.Second {
			t.Errorf("failed logins answered after %v, want about auth_failure_delay (200ms)", delays)
			break
		}
	}
	for _, a := range answers {
		if a != "-ERR [AUTH] Authentication failed" {
			t.Errorf("failed logins answered %q", answers)
			break
		}
	}
	if strings.Contains(e.logs.String(), wrongPass) {
		t.Errorf("a wrong password reached Portico's log")
	}
	// The monitor sees route lookups: its silence above meant something.
	if cmds := mon.commands(t, e); !strings.Contains(cmds, "route:"+aliceUser) {
		t.Errorf("MONITOR missed alice's route lookup:\n%s", cmds)
	}
}

// TestPOP3ClientAddress: the backend learns the client's address as
// Portico saw it, by XCLIENT (forward_id) or by a PROXY header
// (proxy_protocol), also when Portico itself took it from a load
// balancer's PROXY header.
func TestPOP3ClientAddress(t *testing.T) {
	e := newPOP3Env(t)
	const realClient = "198.51.100.7"
	for _, tc := range []struct {
		name, user, pass, via string
		lb                    bool
	}{
		{"xclient", aliceUser, alicePass, "XCLIENT", false},
		{"xclient behind a balancer", aliceUser, alicePass, "XCLIENT", true},
		{"proxy header", ppUser, ppPass, "PROXY header", false},
		{"proxy header behind a balancer", ppUser, ppPass, "PROXY header", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.dovecotLogins(tc.user))
			var c *rawConn
			want := clientIP
			if tc.lb {
				raw, err := dialer.Dial("tcp", e.pop3sLB)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { raw.Close() })
				raw.SetDeadline(time.Now().Add(30 * time.Second))
				io.WriteString(raw, "PROXY TCP4 "+realClient+" 127.0.0.1 40000 995\r\n")
				tconn := tls.Client(raw, e.tlsConfig())
				if err := tconn.Handshake(); err != nil {
					t.Fatal(err)
				}
				c = &rawConn{t: t, conn: tconn, br: bufio.NewReader(tconn)}
				c.expect("+OK Portico ready.")
				want = realClient
			} else {
				c = e.dialPOP3(t, e.pop3s, true)
			}
			c.pop3Login(tc.user, tc.pass)
			c.expectPOP3("QUIT", "+OK Logging out.")
			var lines []string
			waitFor(t, 5*time.Second, "no new login in Dovecot's log", func() bool {
				lines = e.dovecotLogins(tc.user)
				return len(lines) > before
			})
			if l := lines[len(lines)-1]; !strings.Contains(l, "rip="+want+",") {
				t.Errorf("Dovecot's login line (%s) has not the client's address %s: %s", tc.via, want, l)
			}
		})
	}
}

// TestPOP3ProxyAuthMasterUser: with auth.passwords, Portico checks the
// POP3 user's password against the hash in Redis and logs in to
// Dovecot's POP3 as the master user on the user's behalf; each user is in
// their own mailbox. Failures are alike and never reach Dovecot.
func TestPOP3ProxyAuthMasterUser(t *testing.T) {
	e := newAuthEnv(t, "  brute_force: {disabled: true}\n")
	for i, u := range e.users {
		c := dialPOP3(t, dialer, e.pop3, nil)
		if i%2 == 0 {
			c.pop3Login(u.name, u.pw)
		} else {
			ir := base64.StdEncoding.EncodeToString([]byte("\x00" + u.name + "\x00" + u.pw))
			if l := c.pop3("AUTH PLAIN " + ir); !strings.HasPrefix(l, "+OK") {
				t.Fatalf("%s (%s): AUTH PLAIN: %q", u.name, u.scheme, l)
			}
		}
		if l := c.pop3("STAT"); !strings.HasPrefix(l, "+OK 1 ") {
			t.Fatalf("%s: STAT: %q", u.name, l)
		}
		if l := c.pop3("RETR 1"); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("%s: RETR: %q", u.name, l)
		}
		if msg := c.multiline(); !bytes.Contains(msg, []byte("Subject: mailbox of "+u.name+"\r\n")) {
			t.Fatalf("%s is not in their own mailbox: %q", u.name, msg)
		}
		c.expectPOP3("QUIT", "+OK Logging out.")
		// Dovecot logged the user in: it knows no password of theirs, only
		// the master user's PLAIN with the user as authzid can do that.
		e.dovecot.WaitLog(t, "pop3-login: Info: Login: user=<"+u.name+">, method=PLAIN, rip="+clientIP, 5*time.Second)
	}

	e.rdb.HSet(context.Background(), "portico:route:nohash@example.test", "backend", "dovecot")
	backends := e.backends.Load()
	var answers []string
	for _, cred := range [][2]string{
		{e.users[0].name, "wrong"},
		{e.users[1].name, e.users[0].pw},
		{"nobody@example.test", e.users[0].pw},
		{"nohash@example.test", "x"},
	} {
		c := dialPOP3(t, dialer, e.pop3, nil)
		c.expectPOP3("USER "+cred[0], "+OK Send PASS.")
		answers = append(answers, c.pop3("PASS "+cred[1]))
	}
	for _, a := range answers {
		if a != "-ERR [AUTH] Authentication failed" {
			t.Errorf("failed logins answered %q", answers)
			break
		}
	}
	if n := e.backends.Load() - backends; n != 0 {
		t.Errorf("%d failed logins reached Dovecot", n)
	}
}

// TestPOP3InUse: a user with too many sessions gets RFC 3206's IN-USE
// from Portico (counted in the fleet's registry); a mailbox Dovecot holds
// locked for another POP3 session (pop3_lock_session) gets Dovecot's
// IN-USE passed on.
// Neither says [AUTH]: a client would ask its user for the password again.
func TestPOP3InUse(t *testing.T) {
	t.Run("max_sessions_per_user", func(t *testing.T) {
		e := newPOP3EnvWith(t, pop3EnvOptions{limits: "  max_sessions_per_user: 1\n"})
		first := e.dialPOP3(t, e.pop3s, true)
		first.pop3Login(aliceUser, alicePass)
		waitFor(t, 5*time.Second, "the first session is not in the registry", func() bool {
			n, err := fleet.CountSessions(context.Background(), e.rt.Redis, e.rt.RedisPrefix, aliceUser)
			return err == nil && n == 1
		})
		c := e.dialPOP3(t, e.pop3s, true)
		c.expectPOP3("USER "+aliceUser, "+OK Send PASS.")
		c.expectPOP3("PASS "+alicePass, "-ERR [IN-USE] Too many sessions of this user")
		first.expectPOP3("QUIT", "+OK Logging out.")
		first.conn.Close()
		waitFor(t, 5*time.Second, "the first session is still in the registry", func() bool {
			n, err := fleet.CountSessions(context.Background(), e.rt.Redis, e.rt.RedisPrefix, aliceUser)
			return err == nil && n == 0
		})
		c.pop3Login(aliceUser, alicePass)
	})
	t.Run("locked by Dovecot", func(t *testing.T) {
		// Dovecot waits 10 s for the lock (a fixed dotlock timeout) before
		// it answers -ERR [IN-USE], which Portico passes on.
		e := newPOP3EnvWith(t, pop3EnvOptions{dovecotExtra: "pop3_lock_session = yes\n"})
		first := e.dialPOP3(t, e.pop3s, true)
		first.pop3Login(aliceUser, alicePass)
		c := e.dialPOP3(t, e.pop3s, true)
		c.expectPOP3("USER "+aliceUser, "+OK Send PASS.")
		if l := c.pop3("PASS " + alicePass); l != "-ERR [IN-USE] Mailbox in use, try again later" {
			t.Errorf("login to a locked mailbox: %q", l)
		}
		if !strings.Contains(e.logs.String(), "Mailbox is locked by another POP3 session") {
			t.Errorf("Dovecot's answer is not in Portico's log")
		}
		first.expectPOP3("QUIT", "+OK Logging out.")
	})
}
