// Package e2e drives a Portico server with real clients (curl, python3's
// imaplib, go-imap's imapclient) against real redis-server and Dovecot
// processes on loopback.
package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/app"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// Credentials used throughout. Alice's password has spaces, quotes, a
// backslash and non-ASCII letters, so every client must quote or send it
// as a literal, and Portico must pass it on byte for byte.
const (
	aliceUser = "alice@example.test"
	alicePass = `s3cret "quoted" back\slash ünïcödé`
	bobUser   = "bob@example.test"
	bobPass   = "bob-password"
	// clientIP is the loopback address test clients connect from, so that
	// Dovecot's log can show it is the client's and not Portico's.
	clientIP = "127.0.0.2"
)

// dovecotNoAuthPenalty, in DovecotOptions.Extra, turns off Dovecot's own
// delay of logins from an address that failed before (up to 15 s): tests
// that fail logins on purpose, from one address, would wait for it.
const dovecotNoAuthPenalty = `
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
`

// env is one Portico in front of two Dovecots, routed through Redis.
type env struct {
	redis    *testsrv.Redis
	rdb      redis.UniversalClient
	d1, d2   *testsrv.Dovecot
	srv      *proxy.Server
	imaps    string // implicit TLS listener
	imap     string // STARTTLS listener
	roots    *x509.CertPool
	caFile   string
	logs     *testsrv.Buffer
	router   *routing.Redis
	baseline int // goroutines before Portico started
}

type envOptions struct {
	limits proxy.Limits
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{logs: &testsrv.Buffer{}}
	e.redis = testsrv.StartRedis(t)
	// COMPRESS=DEFLATE on the first backend, to show it passes the splice.
	e.d1 = testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: map[string]string{aliceUser: alicePass}, Extra: `
mail_plugins = $mail_plugins zlib
protocol imap {
  mail_plugins = $mail_plugins imap_zlib
}
`})
	e.d2 = testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: map[string]string{bobUser: bobPass}})

	cert, err := ptls.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	e.roots = ptls.CertPool(cert)
	dir := t.TempDir()
	e.caFile = filepath.Join(dir, "ca.pem")
	if err := ptls.WritePEM(cert, e.caFile, filepath.Join(dir, "key.pem")); err != nil {
		t.Fatal(err)
	}
	store, err := ptls.NewStore(cert)
	if err != nil {
		t.Fatal(err)
	}

	e.rdb = routing.NewRedisClient(routing.RedisOptions{Addrs: []string{e.redis.Addr}})
	t.Cleanup(func() { e.rdb.Close() })
	e.router = &routing.Redis{
		Client:   e.rdb,
		Backends: map[string]*routing.Backend{"dovecot1": {Name: "dovecot1", Addr: e.d1.Addr, ForwardID: true}},
		Defaults: routing.Backend{ForwardID: true, LoginTimeout: 5 * time.Second},
		Timeout:  time.Second,
	}
	ctx := context.Background()
	if err := e.router.SetRoute(ctx, aliceUser, routing.Record{Backend: "dovecot1"}); err != nil {
		t.Fatal(err)
	}
	if err := e.router.SetRoute(ctx, bobUser, routing.Record{Addr: e.d2.Addr, Security: "plain"}); err != nil {
		t.Fatal(err)
	}

	limits := o.limits
	if limits.AuthFailureDelay == 0 {
		limits.AuthFailureDelay = 300 * time.Millisecond
	}
	e.baseline = runtime.NumGoroutine()
	e.srv = &proxy.Server{
		Router:    e.router,
		TLSConfig: ptls.ServerConfig(store, 0),
		Limits:    limits,
		Logger:    slog.New(slog.NewTextHandler(io.MultiWriter(e.logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	e.imaps = e.listen(t, proxy.Listener{Name: "imaps", Mode: proxy.ImplicitTLS})
	e.imap = e.listen(t, proxy.Listener{Name: "imap", Mode: proxy.StartTLS})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		checkGoroutines(t, e.baseline)
		// No password ever reaches a log line, at any level.
		for _, secret := range []string{alicePass, bobPass, "s3cret"} {
			if strings.Contains(e.logs.String(), secret) {
				t.Errorf("a password reached the log")
			}
		}
	})
	return e
}

// serveIMAPS serves srv on an implicit-TLS listener on a free loopback
// port and returns its address. The test's end shuts srv down, then runs
// after, if not nil, for the test's own checks.
func serveIMAPS(t *testing.T, srv *proxy.Server, after func()) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln, proxy.Listener{Name: "imaps", Mode: proxy.ImplicitTLS})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if after != nil {
			after()
		}
	})
	return ln.Addr().String()
}

// startApp serves cfg as "portico serve" does, assembled by internal/app:
// built, started (TLS, routing, fleet), and every listener served on its
// configured address (port 0: any free one). prepare, if not nil, may
// change the Server first (wrap its Login and LoginPOP3, which are never
// nil then, or swap its Limiter). The test's end shuts it all down; a
// caller's own end-of-test checks of the logs, registered before, run
// after that. It returns the App and each listener's address, in the
// config's order.
func startApp(t *testing.T, cfg *config.Config, logger *slog.Logger, prepare func(*proxy.Server)) (*app.App, []string) {
	t.Helper()
	rt, err := app.Build(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv := rt.Server
	if srv.Login == nil {
		srv.Login = upstream.Login
	}
	if srv.LoginPOP3 == nil {
		srv.LoginPOP3 = upstream.LoginPOP3
	}
	if prepare != nil {
		prepare(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var addrs []string
	var served []chan struct{}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		srv.Shutdown(sctx)
		scancel()
		for _, done := range served {
			<-done
		}
		cancel()
		rt.Close()
	})
	if _, err := rt.Start(ctx, logger); err != nil {
		t.Fatal(err)
	}
	for _, l := range rt.Listeners {
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		done := make(chan struct{})
		served = append(served, done)
		go func() { srv.Serve(ln, l.Config); close(done) }()
	}
	return rt, addrs
}

func (e *env) listen(t *testing.T, l proxy.Listener) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(ln, l)
	return ln.Addr().String()
}

// testWriter sends log lines to t.Log so failures show them.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// checkGoroutines waits for the goroutine count to fall back to what it was
// before Portico started, and dumps the stacks if it does not.
func checkGoroutines(t *testing.T, baseline int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Errorf("leaked goroutines: %d > %d\n%s", runtime.NumGoroutine(), baseline, buf[:n])
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tlsConfig trusts Portico's self-signed certificate.
func (e *env) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: e.roots, ServerName: "localhost", NextProtos: []string{"imap"}}
}

// dialer connects from clientIP.
var dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 5 * time.Second}

// rawConn is a hand-driven IMAP client for protocol-level tests.
type rawConn struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func (e *env) dialRaw(t *testing.T, implicitTLS bool) *rawConn {
	t.Helper()
	addr := e.imap
	if implicitTLS {
		addr = e.imaps
	}
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if implicitTLS {
		tc := tls.Client(c, e.tlsConfig())
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c = tc
	}
	rc := &rawConn{t: t, conn: c, br: bufio.NewReader(c)}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if g := rc.line(); !strings.HasPrefix(g, "* OK ") {
		t.Fatalf("greeting: %q", g)
	}
	return rc
}

func (c *rawConn) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawConn) line() string {
	c.t.Helper()
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// cmd sends one command line and returns all lines up to its tagged reply.
func (c *rawConn) cmd(tag, line string) []string {
	c.t.Helper()
	c.write(tag + " " + line + "\r\n")
	return c.until(tag)
}

func (c *rawConn) until(tag string) []string {
	c.t.Helper()
	var lines []string
	for {
		l := c.line()
		lines = append(lines, l)
		if strings.HasPrefix(l, tag+" ") {
			return lines
		}
	}
}

func (c *rawConn) startTLS(e *env) {
	c.t.Helper()
	if r := c.cmd("s", "STARTTLS"); !strings.HasPrefix(r[len(r)-1], "s OK") {
		c.t.Fatalf("STARTTLS: %q", r)
	}
	tc := tls.Client(c.conn, e.tlsConfig())
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.conn = tc
	c.br = bufio.NewReader(tc)
}

// redisCommands is the number of commands Redis has processed so far.
func (e *env) redisCommands(t *testing.T) int64 {
	t.Helper()
	info, err := e.rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "total_commands_processed:"); ok {
			var n int64
			fmt.Sscan(v, &n)
			return n
		}
	}
	t.Fatal("no total_commands_processed in INFO")
	return 0
}

func mustLookPath(t *testing.T, name string) string {
	return testsrv.LookPath(t, name)
}

func writeTemp(t *testing.T, name, content string) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func tlsClient(c net.Conn, e *env) *tls.Conn { return tls.Client(c, e.tlsConfig()) }

func TestMain(m *testing.M) {
	// The Sentinel and Cluster tests kill Redis nodes on purpose; go-redis'
	// own reconnect chatter would bury the test output in CI.
	redis.SetLogger(quietRedisLogger{})
	os.Exit(m.Run())
}

type quietRedisLogger struct{}

func (quietRedisLogger) Printf(context.Context, string, ...any) {}

// silentServer listens on loopback and reads whatever its clients send,
// answering nothing: a backend or service that hangs. Closing it (or the
// test's end) stops new connections.
func silentServer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	return ln
}
