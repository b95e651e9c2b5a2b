package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// Protocol-level tests of the pre-auth session and the hand-off, driven by
// hand-written bytes over raw connections so that segments and exact
// replies are under the test's control.

const (
	alicePW  = "alice-pw"
	quotePW  = `pa"ss\word`
	eightPW  = "pässwörd"
	failText = "NO [AUTHENTICATIONFAILED] Authentication failed"
)

var testCert = sync.OnceValues(func() (tls.Certificate, error) {
	return ptls.SelfSigned("localhost", "127.0.0.1")
})

// countingRouter is a static router that counts lookups and fails on
// demand, to prove that some inputs never reach routing.
type countingRouter struct {
	calls atomic.Int64

	mu     sync.Mutex
	routes map[string]*routing.Backend
	static *routing.Static
	fail   map[string]error
}

func (r *countingRouter) add(user string, b *routing.Backend) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes[user] = b
	r.static = routing.NewStatic(r.routes)
}

func (r *countingRouter) Lookup(ctx context.Context, user string) (*routing.Backend, error) {
	r.calls.Add(1)
	r.mu.Lock()
	st, err := r.static, r.fail[user]
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return st.Lookup(ctx, user)
}

// harness is a Portico with three listeners: imaps (implicit TLS), imap
// (STARTTLS, TLS required) and imapClear (STARTTLS, cleartext login from
// 127.0.0.1), routing to an in-memory backend and to raw fake backends.
type harness struct {
	t         *testing.T
	srv       *proxy.Server
	router    *countingRouter
	mem       *membackend.Backend
	logs      *testsrv.Buffer
	clientTLS *tls.Config

	imaps, imap, imapClear string

	serveWG   sync.WaitGroup
	serveMu   sync.Mutex
	serveErrs []error

	mu    sync.Mutex
	conns []net.Conn
	raws  []*rawBackend
}

func newHarness(t *testing.T, tune func(*proxy.Limits)) *harness {
	t.Helper()
	return newHarnessWith(t, tune, nil)
}

// newHarnessWith is newHarness with a chance to set the server's hooks
// before it serves.
func newHarnessWith(t *testing.T, tune func(*proxy.Limits), setup func(*proxy.Server)) *harness {
	t.Helper()
	baseline := runtime.NumGoroutine()
	// Registered first, so it runs last: after the server, the backends
	// and every client are gone, no goroutine may be left.
	t.Cleanup(func() { checkGoroutines(t, baseline) })

	cert, err := testCert()
	if err != nil {
		t.Fatal(err)
	}
	store, err := ptls.NewStore(cert)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := membackend.Start("127.0.0.1:0",
		membackend.User{Name: "alice@example.test", Password: alicePW, Messages: 3},
		membackend.User{Name: "quote@example.test", Password: quotePW},
		membackend.User{Name: "eight@example.test", Password: eightPW},
	)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{
		t:         t,
		mem:       mem,
		logs:      &testsrv.Buffer{},
		clientTLS: &tls.Config{RootCAs: ptls.CertPool(cert), ServerName: "localhost", NextProtos: []string{"imap"}},
		router: &countingRouter{
			routes: map[string]*routing.Backend{},
			fail:   map[string]error{"broken@example.test": errors.New("redis: connection refused")},
		},
	}
	memBackend := &routing.Backend{Name: "mem", Addr: mem.Addr()}
	for _, u := range []string{"alice@example.test", "quote@example.test", "eight@example.test"} {
		h.router.add(u, memBackend)
	}
	h.router.add("down@example.test", &routing.Backend{Name: "down", Addr: closedAddr(t), ConnectTimeout: time.Second})

	lim := proxy.Limits{
		AuthFailureDelay: 50 * time.Millisecond,
		PreauthTimeout:   5 * time.Second,
		HandshakeTimeout: 2 * time.Second,
		LookupTimeout:    time.Second,
	}
	if tune != nil {
		tune(&lim)
	}
	h.srv = &proxy.Server{
		Router:        h.router,
		TLSConfig:     ptls.ServerConfig(store, 0),
		DefaultDomain: "example.test",
		Limits:        lim,
		Logger:        slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if setup != nil {
		setup(h.srv)
	}
	h.imaps = h.serve(proxy.Listener{Name: "imaps", Mode: proxy.ImplicitTLS})
	h.imap = h.serve(proxy.Listener{Name: "imap", Mode: proxy.StartTLS})
	h.imapClear = h.serve(proxy.Listener{
		Name: "imap-clear", Mode: proxy.StartTLS,
		CleartextLogin: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	})
	t.Cleanup(h.close)
	return h
}

func (h *harness) serve(l proxy.Listener) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	h.serveWG.Add(1)
	go func() {
		defer h.serveWG.Done()
		err := h.srv.Serve(ln, l)
		h.serveMu.Lock()
		h.serveErrs = append(h.serveErrs, err)
		h.serveMu.Unlock()
	}()
	return ln.Addr().String()
}

// waitServe waits for every Serve call to return and checks that each
// returned ErrServerClosed.
func (h *harness) waitServe() {
	h.serveWG.Wait()
	h.serveMu.Lock()
	defer h.serveMu.Unlock()
	for _, err := range h.serveErrs {
		if !errors.Is(err, proxy.ErrServerClosed) {
			h.t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	}
}

func (h *harness) close() {
	h.mu.Lock()
	for _, c := range h.conns {
		c.Close()
	}
	raws := h.raws
	h.mu.Unlock()
	h.srv.Close()
	h.waitServe()
	for _, b := range raws {
		b.close()
	}
	h.mem.Close()
}

func checkGoroutines(t *testing.T, baseline int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= baseline {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutine leak: %d running, %d before the test\n%s", n, baseline, buf)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// closedAddr is a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// client is a hand-driven IMAP client connection.
type client struct {
	t       *testing.T
	c       net.Conn
	br      *bufio.Reader
	replies []string // every line received
	under   *eofConn // under the TLS connection, once upgraded
}

// eofConn records whether its reader has met the end of the TCP stream.
// Under a tls.Conn, that tells a clean close from a truncation: after
// close_notify, crypto/tls returns io.EOF without reading any further,
// while a TCP close without it reaches the tls.Conn as the socket's EOF
// (which crypto/tls, at a record boundary, also returns as io.EOF).
type eofConn struct {
	net.Conn
	eof atomic.Bool
}

func (c *eofConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		c.eof.Store(true)
	}
	return n, err
}

func (h *harness) dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.conns = append(h.conns, c)
	h.mu.Unlock()
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

func (h *harness) dialTLS(t *testing.T, addr string) *client {
	t.Helper()
	c := h.dial(t, addr)
	c.upgrade(h.clientTLS)
	return c
}

// upgrade runs a TLS client handshake over the connection.
func (c *client) upgrade(cfg *tls.Config) {
	c.t.Helper()
	if n := c.br.Buffered(); n > 0 {
		c.t.Fatalf("%d bytes buffered before the TLS handshake", n)
	}
	c.under = &eofConn{Conn: c.c}
	tc := tls.Client(c.under, cfg)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	c.c = tc
	c.br = bufio.NewReader(tc)
}

func (c *client) send(s string) {
	c.t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

// line reads one line and returns it without CRLF.
func (c *client) line() string {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read after %q: %v (partial %q)", c.replies, err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("line without CRLF: %q", l)
	}
	l = strings.TrimSuffix(l, "\r\n")
	c.replies = append(c.replies, l)
	return l
}

// expect reads one line that must equal want.
func (c *client) expect(want string) {
	c.t.Helper()
	if l := c.line(); l != want {
		c.t.Fatalf("got %q, want %q", l, want)
	}
}

// expectPrefix reads one line that must start with prefix.
func (c *client) expectPrefix(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want a line starting with %q", l, prefix)
	}
	return l
}

// until reads lines up to and including the one tagged tag.
func (c *client) until(tag string) []string {
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

// greeting reads the greeting and returns its capabilities.
func (c *client) greeting() []string {
	c.t.Helper()
	l := c.expectPrefix("* OK [CAPABILITY ")
	return capsOf(l)
}

// expectEOF checks that the server closes the connection without sending
// anything more. A reset counts as a close: the server may close with the
// client's unread bytes in its buffer.
func (c *client) expectEOF() {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c.br)
	if len(rest) > 0 {
		c.t.Fatalf("unexpected data before close: %q", rest)
	}
	if err != nil && !isReset(err) {
		c.t.Fatalf("waiting for close: %v", err)
	}
}

// expectCloseNotify checks that the server ends the TLS connection
// cleanly: close_notify, and nothing else before it.
func (c *client) expectCloseNotify() {
	c.t.Helper()
	if c.under == nil {
		c.t.Fatal("expectCloseNotify on a connection without TLS")
	}
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c.br)
	if len(rest) > 0 || err != nil {
		c.t.Fatalf("waiting for close_notify: %v (got %q)", err, rest)
	}
	if c.under.eof.Load() {
		c.t.Fatal("the server closed the TCP connection without close_notify")
	}
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// capsOf returns the capability list of a `* CAPABILITY` line or of the
// [CAPABILITY ...] code of a status line.
func capsOf(l string) []string {
	if s, ok := strings.CutPrefix(l, "* CAPABILITY "); ok {
		return strings.Fields(s)
	}
	i := strings.Index(l, "[CAPABILITY ")
	if i < 0 {
		return nil
	}
	s := l[i+len("[CAPABILITY "):]
	if j := strings.IndexByte(s, ']'); j >= 0 {
		s = s[:j]
	}
	return strings.Fields(s)
}

func hasCap(caps []string, name string) bool {
	for _, c := range caps {
		if strings.EqualFold(c, name) {
			return true
		}
	}
	return false
}

func hasAuthCap(caps []string) bool {
	for _, c := range caps {
		if strings.HasPrefix(strings.ToUpper(c), "AUTH=") {
			return true
		}
	}
	return false
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// rawBackend is a scripted IMAP backend that records every line it
// receives. It accepts any AUTHENTICATE or LOGIN.
type rawBackend struct {
	*fakeServer
	greeting string // capabilities in the greeting
	postCaps string // capabilities in the tagged OK of the login
	extra    string // written with the login's tagged OK, in the same write
	lines    chan string
}

func (h *harness) rawBackend(user string, forwardID bool, greeting, postCaps, extra string) *rawBackend {
	h.t.Helper()
	b := &rawBackend{greeting: greeting, postCaps: postCaps, extra: extra, lines: make(chan string, 256)}
	b.fakeServer = startFakeServer(h.t, b.handle)
	h.mu.Lock()
	h.raws = append(h.raws, b)
	h.mu.Unlock()
	h.router.add(user, &routing.Backend{Name: "raw", Addr: b.addr(), ForwardID: forwardID})
	return b
}

func (b *rawBackend) handle(c net.Conn) {
	io.WriteString(c, "* OK [CAPABILITY "+b.greeting+"] raw backend ready\r\n")
	br := bufio.NewReader(c)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimRight(l, "\r\n")
		select {
		case b.lines <- l:
		default:
		}
		tag, rest, _ := strings.Cut(l, " ")
		cmd, _, _ := strings.Cut(rest, " ")
		var reply string
		switch strings.ToUpper(cmd) {
		case "ID":
			reply = "* ID NIL\r\n" + tag + " OK ID done\r\n"
		case "AUTHENTICATE", "LOGIN":
			reply = tag + " OK [CAPABILITY " + b.postCaps + "] Logged in\r\n" + b.extra
		case "CAPABILITY":
			reply = "* CAPABILITY " + b.postCaps + "\r\n" + tag + " OK done\r\n"
		case "LOGOUT":
			io.WriteString(c, "* BYE bye\r\n"+tag+" OK done\r\n")
			return
		default:
			reply = tag + " OK done\r\n"
		}
		if _, err := io.WriteString(c, reply); err != nil {
			return
		}
	}
}

// next returns the next line the backend received whose command (the part
// after the tag) starts with cmd, skipping others.
func (b *rawBackend) next(t *testing.T, cmd string) string {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case l := <-b.lines:
			if _, rest, _ := strings.Cut(l, " "); strings.HasPrefix(rest, cmd) {
				return l
			}
		case <-timeout:
			t.Fatalf("backend never received %s", cmd)
		}
	}
}

// loginAlice logs alice in with LOGIN and checks the tagged OK.
func (c *client) loginAlice(tag string) {
	c.t.Helper()
	c.send(tag + " LOGIN alice@example.test " + alicePW + "\r\n")
	if l := c.line(); strings.HasPrefix(l, "* CAPABILITY ") {
		// The client asked CAPABILITY before: the list also comes untagged.
		c.expectPrefix(tag + " OK [CAPABILITY ")
	} else if !strings.HasPrefix(l, tag+" OK [CAPABILITY ") {
		c.t.Fatalf("login: %q", l)
	}
}

// checkSelect checks that the connection reaches alice's mailbox.
func (c *client) checkSelect(tag string) {
	c.t.Helper()
	c.send(tag + " SELECT INBOX\r\n")
	lines := c.until(tag)
	if !strings.HasPrefix(lines[len(lines)-1], tag+" OK") {
		c.t.Fatalf("SELECT: %q", lines)
	}
}

func TestGreetingCapabilities(t *testing.T) {
	h := newHarness(t, nil)

	t.Run("imaps", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		caps := c.greeting()
		want := []string{"IMAP4rev1", "LITERAL-", "SASL-IR", "ID", "AUTH=PLAIN", "AUTH=LOGIN"}
		if strings.Join(caps, " ") != strings.Join(want, " ") {
			t.Errorf("greeting caps %q, want %q", caps, want)
		}
	})
	t.Run("imap before TLS", func(t *testing.T) {
		c := h.dial(t, h.imap)
		caps := c.greeting()
		if !hasCap(caps, "STARTTLS") || !hasCap(caps, "LOGINDISABLED") || hasAuthCap(caps) {
			t.Errorf("greeting caps %q: want STARTTLS and LOGINDISABLED, no AUTH=", caps)
		}
		for _, want := range []string{"IMAP4rev1", "ID", "LITERAL-", "SASL-IR"} {
			if !hasCap(caps, want) {
				t.Errorf("greeting caps %q lack %s", caps, want)
			}
		}
	})
	t.Run("cleartext allowed", func(t *testing.T) {
		c := h.dial(t, h.imapClear)
		caps := c.greeting()
		if !hasCap(caps, "AUTH=PLAIN") || hasCap(caps, "LOGINDISABLED") {
			t.Errorf("greeting caps %q: want AUTH=PLAIN, no LOGINDISABLED", caps)
		}
		c.loginAlice("a")
		c.checkSelect("b")
		c.send("c LOGOUT\r\n")
		c.expectPrefix("* BYE")
		c.expectPrefix("c OK")
		c.expectEOF()
	})
}

func TestCapabilityNoopLogout(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dialTLS(t, h.imaps)
	greet := c.greeting()

	c.send("a CAPABILITY\r\n")
	l := c.expectPrefix("* CAPABILITY ")
	if got := capsOf(l); strings.Join(got, " ") != strings.Join(greet, " ") {
		t.Errorf("CAPABILITY %q differs from the greeting's %q", got, greet)
	}
	c.expect("a OK Capability completed") // exactly one untagged line

	c.send("b NOOP\n") // bare LF is accepted
	c.expect("b OK NOOP completed")

	c.send("c LOGOUT\r\n")
	c.expectPrefix("* BYE ")
	c.expectPrefix("c OK ")
	c.expectEOF()
}

func TestPipelinedPreauthCommands(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial(t, h.imap)
	c.greeting()
	c.send("a CAPABILITY\r\nb NOOP\r\nc ID NIL\r\nd LOGOUT\r\n")
	c.expectPrefix("* CAPABILITY ")
	c.expectPrefix("a OK ")
	c.expectPrefix("b OK ")
	c.expect("* ID NIL")
	c.expectPrefix("c OK ")
	c.expectPrefix("* BYE ")
	c.expectPrefix("d OK ")
	c.expectEOF()
}

func TestIDForwardedWithoutClientXFields(t *testing.T) {
	h := newHarness(t, nil)
	be := h.rawBackend("fake@example.test", true, "IMAP4rev1 ID SASL-IR AUTH=PLAIN", "IMAP4rev1 IDLE", "")

	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send(`a ID ("x-originating-ip" "6.6.6.6" "x-session-id" "evil" "X-Originating-IP" "7.7.7.7" ` +
		`"name" "foo" "os" {6+}` + "\r\nev\r\nil)\r\n")
	c.expect("* ID NIL")
	c.expectPrefix("a OK ")
	c.loginAlike("b", "fake@example.test", "pw")

	id := be.next(t, "ID ")
	clientPort := c.c.LocalAddr().(*net.TCPAddr).Port
	for _, want := range []string{
		`"x-originating-ip" "127.0.0.1"`,
		`"x-originating-port" "` + strconv.Itoa(clientPort) + `"`,
		`"name" "foo"`,
	} {
		if !strings.Contains(id, want) {
			t.Errorf("backend's ID line %q lacks %s", id, want)
		}
	}
	for _, bad := range []string{"6.6.6.6", "evil", "7.7.7.7", `"os"`} {
		if strings.Contains(id, bad) {
			t.Errorf("backend's ID line %q carries the client's %q", id, bad)
		}
	}
	if n := strings.Count(id, "x-originating-ip"); n != 1 {
		t.Errorf("backend's ID line has x-originating-ip %d times: %q", n, id)
	}
	m := regexp.MustCompile(`msg="logged in" session=(\S+)`).FindStringSubmatch(h.logs.String())
	if m == nil {
		t.Fatalf("no session id in the log:\n%s", h.logs)
	}
	if !strings.Contains(id, `"x-session-id" "`+m[1]+`"`) {
		t.Errorf("backend's ID line %q lacks our session id %s", id, m[1])
	}
	if auth := be.next(t, "AUTHENTICATE "); auth == "" {
		t.Error("no login after ID")
	}
}

// loginAlike logs in as user and checks the tagged OK.
// TestIDLimits: client ID fields over RFC 2971's limits (30 pairs, 30-byte
// names, 1024-byte values) are dropped, silently, and the rest forwarded.
func TestIDLimits(t *testing.T) {
	h := newHarness(t, nil)
	be := h.rawBackend("fake@example.test", true, "IMAP4rev1 ID SASL-IR AUTH=PLAIN", "IMAP4rev1 IDLE", "")

	c := h.dialTLS(t, h.imaps)
	c.greeting()
	long := strings.Repeat("k", 31)
	big := strings.Repeat("v", 1025)
	fields := `"name" "foo" "` + long + `" "long name" "bigvalue" "` + big + `" "fits" "` + big[:1024] + `"`
	for i := range 40 {
		fields += fmt.Sprintf(` "f%d" "%d"`, i, i)
	}
	c.send("a ID (" + fields + ")\r\n")
	c.expect("* ID NIL")
	c.expectPrefix("a OK ")
	c.loginAlike("b", "fake@example.test", "pw")

	id := be.next(t, "ID ")
	for _, want := range []string{`"name" "foo"`, `"fits" "` + big[:1024] + `"`, `"f0" "0"`} {
		if !strings.Contains(id, want) {
			t.Errorf("backend's ID line lacks %.40s: %q", want, id)
		}
	}
	for _, bad := range []string{long, "long name", "bigvalue", big} {
		if strings.Contains(id, bad) {
			t.Errorf("backend's ID line carries %.40s: %q", bad, id)
		}
	}
	if n := len(regexp.MustCompile(`"[^"]*"`).FindAllString(id, -1)); n != 60 {
		t.Errorf("backend's ID line has %d pairs, want 30 (the limit): %q", n/2, id)
	}
}

func (c *client) loginAlike(tag, user, pass string) {
	c.t.Helper()
	c.send(tag + " LOGIN " + user + " " + pass + "\r\n")
	c.expectPrefix(tag + " OK [CAPABILITY ")
}

// token marks client input that must never come back in a reply.
const token = "ZQXJ"

func checkNoEcho(t *testing.T, c *client) {
	t.Helper()
	for _, l := range c.replies {
		if strings.Contains(l, token) {
			t.Errorf("reply echoes client input: %q", l)
		}
	}
}

func TestBadInput(t *testing.T) {
	h := newHarness(t, nil)

	t.Run("three bad commands", func(t *testing.T) {
		c := h.dial(t, h.imap)
		c.greeting()
		c.send("a " + token + "FOO " + token + "\r\n")
		c.expectPrefix("a BAD ")
		c.send("b SELECT " + token + "BOX\r\n")
		c.expectPrefix("b BAD ")
		c.send("c ENABLE " + token + "\r\n")
		c.expectPrefix("c BAD ")
		c.expectPrefix("* BYE ")
		c.expectEOF()
		checkNoEcho(t, c)
	})
	t.Run("APPEND literal gets no continuation", func(t *testing.T) {
		c := h.dial(t, h.imap)
		c.greeting()
		c.send("a APPEND " + token + " {10000000}\r\n")
		c.expectPrefix("a BAD ")
		c.send("b LOGIN " + token + " {99999999999999999999}\r\n")
		c.expectPrefix("b BAD [TOOBIG] ")
		c.send("c NOOP\r\n")
		c.expectPrefix("c OK ")
		checkNoEcho(t, c)
	})
	t.Run("LITERAL- violation", func(t *testing.T) {
		c := h.dial(t, h.imap)
		c.greeting()
		data := token + "\r\nb LOGOUT\r\n"
		data += strings.Repeat("x", 5000-len(data))
		c.send("a LOGIN {5000+}\r\n" + data + "\r\n")
		c.expectPrefix("a BAD [TOOBIG] ")
		c.expectPrefix("* BYE ")
		c.expectEOF() // b is never answered
		checkNoEcho(t, c)
	})
	t.Run("64 KiB line", func(t *testing.T) {
		c := h.dial(t, h.imap)
		c.greeting()
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.c.Write([]byte(token + strings.Repeat("A", 64<<10)))
		}()
		c.expectPrefix("* BAD [TOOBIG] ")
		c.expectPrefix("* BYE ")
		c.expectEOF()
		<-done
		checkNoEcho(t, c)
	})
	t.Run("bad tags", func(t *testing.T) {
		c := h.dial(t, h.imap)
		c.greeting()
		c.send("* NOOP " + token + "\r\n")
		c.expectPrefix("* BAD ")
		c.send("+ NOOP\r\n")
		c.expectPrefix("* BAD ")
		c.send("a NOOP\r\n")
		c.expectPrefix("a OK ")
		c.send(strings.Repeat(token, 250) + " NOOP\r\n")
		c.expectPrefix("* BAD ")
		c.expectPrefix("* BYE ")
		c.expectEOF()
		checkNoEcho(t, c)
	})
	t.Run("AUTHENTICATE response too long", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a AUTHENTICATE PLAIN\r\n")
		c.expect("+ ")
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.c.Write([]byte(strings.Repeat(token, 5000) + "\r\nb LOGOUT\r\n"))
		}()
		c.expectPrefix("a BAD [TOOBIG] ")
		c.expectPrefix("* BYE ")
		c.expectEOF()
		<-done
		checkNoEcho(t, c)
	})
	t.Run("NUL in quoted user", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN \"alice\x00" + token + "\" " + alicePW + "\r\n")
		c.expectPrefix("a BAD ")
		checkNoEcho(t, c)
	})
	if n := h.router.calls.Load(); n != 0 {
		t.Errorf("router called %d times for bad input", n)
	}
}

func TestLoginLiterals(t *testing.T) {
	h := newHarness(t, nil)

	t.Run("synchronizing", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN {18}\r\n")
		c.expectPrefix("+ ")
		c.send("alice@example.test {8}\r\n")
		c.expectPrefix("+ ")
		c.send(alicePW + "\r\n")
		c.expectPrefix("a OK [CAPABILITY ")
		c.checkSelect("b")
	})
	t.Run("non-synchronizing", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN {18+}\r\nalice@example.test {8+}\r\n" + alicePW + "\r\n")
		c.expectPrefix("a OK [CAPABILITY ") // no "+" before it
		c.checkSelect("b")
	})
	t.Run("quoted with escapes", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.loginAlike("a", `"quote@example.test"`, `"pa\"ss\\word"`)
		c.checkSelect("b")
	})
	t.Run("8-bit quoted", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.loginAlike("a", "eight", `"`+eightPW+`"`) // default domain appended
		c.checkSelect("b")
	})
	t.Run("8-bit literal", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN eight@example.test {" + strconv.Itoa(len(eightPW)) + "}\r\n")
		c.expectPrefix("+ ")
		c.send(eightPW + "\r\n")
		c.expectPrefix("a OK [CAPABILITY ")
		c.checkSelect("b")
	})
	t.Run("8-bit wrong", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send(`a LOGIN eight@example.test "passwörd"` + "\r\n")
		c.expect("a " + failText)
	})
}

func TestFailedLogins(t *testing.T) {
	h := newHarness(t, nil)
	const delay = 50 * time.Millisecond

	attempt := func(c *client, tag, args string) {
		c.t.Helper()
		start := time.Now()
		c.send(tag + " LOGIN " + args + "\r\n")
		c.expect(tag + " " + failText)
		if d := time.Since(start); d < delay {
			c.t.Errorf("%s: failure answered after %v, before the %v delay", args, d, delay)
		}
	}

	t.Run("three failures", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		attempt(c, "a", "alice@example.test wrong-pw")
		attempt(c, "b", "nobody@example.test "+alicePW)
		attempt(c, "c", `"al ice@example.test" `+alicePW)
		c.expectPrefix("* BYE ")
		c.expectEOF()
	})
	t.Run("invalid name then retry", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		attempt(c, "a", `"%u" `+alicePW)
		attempt(c, "b", "alice@example.test wrong-pw")
		c.loginAlice("c")
		c.checkSelect("d")
	})
}

func TestAuthenticate(t *testing.T) {
	h := newHarness(t, nil)
	ir := b64("\x00alice@example.test\x00" + alicePW)

	open := func(t *testing.T) *client {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		return c
	}
	t.Run("PLAIN with IR", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE PLAIN " + ir + "\r\n")
		c.expectPrefix("a OK [CAPABILITY ")
		c.checkSelect("b")
	})
	t.Run("PLAIN without IR", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE PLAIN\r\n")
		c.expect("+ ")
		c.send(ir + "\r\n")
		c.expectPrefix("a OK [CAPABILITY ")
		c.checkSelect("b")
	})
	t.Run("empty IR", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE PLAIN =\r\n")
		c.expect("a " + failText)
	})
	t.Run("cancel", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE PLAIN\r\n")
		c.expect("+ ")
		c.send("*\r\n")
		c.expectPrefix("a BAD ")
		c.send("b NOOP\r\n")
		c.expectPrefix("b OK ")
	})
	t.Run("bad base64", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE PLAIN !!!\r\n")
		c.expectPrefix("a BAD ")
		c.send("b AUTHENTICATE PLAIN\r\n")
		c.expect("+ ")
		c.send("!!" + token + "!!\r\n")
		c.expectPrefix("b BAD ")
		c.send("c NOOP\r\n")
		c.expectPrefix("c OK ")
		checkNoEcho(t, c)
	})
	t.Run("authzid differs", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE PLAIN " + b64("bob@example.test\x00alice@example.test\x00"+alicePW) + "\r\n")
		c.expectPrefix("a NO [AUTHORIZATIONFAILED] ")
	})
	t.Run("malformed PLAIN", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE PLAIN " + b64("\x00alice@example.test\x00"+alicePW+"\x00x") + "\r\n")
		c.expect("a " + failText)
	})
	t.Run("unknown mechanism", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE CRAM-MD5\r\n")
		c.expectPrefix("a NO ")
		c.send("b NOOP\r\n")
		c.expectPrefix("b OK ")
	})
	t.Run("LOGIN mechanism", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE LOGIN\r\n")
		c.expect("+ VXNlcm5hbWU6")
		c.send(b64("alice@example.test") + "\r\n")
		c.expect("+ UGFzc3dvcmQ6")
		c.send(b64(alicePW) + "\r\n")
		c.expectPrefix("a OK [CAPABILITY ")
		c.checkSelect("b")
	})
	t.Run("LOGIN mechanism with IR", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE LOGIN " + b64("alice@example.test") + "\r\n")
		c.expect("+ UGFzc3dvcmQ6")
		c.send(b64(alicePW) + "\r\n")
		c.expectPrefix("a OK [CAPABILITY ")
		c.checkSelect("b")
	})
	t.Run("LOGIN mechanism wrong password", func(t *testing.T) {
		c := open(t)
		c.send("a AUTHENTICATE LOGIN " + b64("alice@example.test") + "\r\n")
		c.expect("+ UGFzc3dvcmQ6")
		c.send(b64("wrong") + "\r\n")
		c.expect("a " + failText)
	})
}

func TestStartTLS(t *testing.T) {
	h := newHarness(t, nil)

	t.Run("on imaps", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a STARTTLS\r\n")
		c.expectPrefix("a BAD ")
	})
	t.Run("with argument", func(t *testing.T) {
		c := h.dial(t, h.imap)
		c.greeting()
		c.send("a STARTTLS extra\r\n")
		c.expectPrefix("a BAD ")
	})
	t.Run("upgrade", func(t *testing.T) {
		c := h.dial(t, h.imap)
		c.greeting()
		c.send("a STARTTLS\r\n")
		c.expectPrefix("a OK ")
		c.upgrade(h.clientTLS)
		c.send("b CAPABILITY\r\n")
		caps := capsOf(c.expectPrefix("* CAPABILITY "))
		c.expectPrefix("b OK ")
		if !hasCap(caps, "AUTH=PLAIN") || hasCap(caps, "STARTTLS") || hasCap(caps, "LOGINDISABLED") {
			t.Errorf("caps after STARTTLS %q: want AUTH=PLAIN, no STARTTLS or LOGINDISABLED", caps)
		}
		c.send("c STARTTLS\r\n")
		c.expectPrefix("c BAD ")
		c.loginAlice("d")
		c.checkSelect("e")
	})
}

func TestStartTLSInjection(t *testing.T) {
	h := newHarness(t, nil)

	t.Run("LOGIN", func(t *testing.T) {
		c := h.dial(t, h.imap)
		c.greeting()
		c.send("a STARTTLS\r\nb LOGIN alice@example.test " + alicePW + "\r\n")
		c.expectPrefix("a OK ")
		tc := tls.Client(c.c, h.clientTLS)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err == nil {
			t.Fatal("TLS handshake after injected plaintext succeeded")
		}
	})
	t.Run("CAPABILITY", func(t *testing.T) {
		c := h.dial(t, h.imap)
		c.greeting()
		c.send("a STARTTLS\r\nb CAPABILITY\r\n")
		c.expectPrefix("a OK ")
		c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		rest, err := io.ReadAll(c.br)
		if err != nil && !isReset(err) {
			t.Fatalf("waiting for close: %v", err)
		}
		if bytes.Contains(rest, []byte("CAPABILITY")) || bytes.Contains(rest, []byte("b ")) {
			t.Errorf("injected command answered: %q", rest)
		}
	})
	if n := h.router.calls.Load(); n != 0 {
		t.Errorf("router called %d times", n)
	}
}

func TestCredentialsBeforeTLS(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial(t, h.imap)
	c.greeting()
	c.send("a LOGIN alice@example.test " + alicePW + "\r\n")
	c.expectPrefix("a NO [PRIVACYREQUIRED] ")
	c.send("b AUTHENTICATE PLAIN " + b64("\x00alice@example.test\x00"+alicePW) + "\r\n")
	c.expectPrefix("b NO [PRIVACYREQUIRED] ")
	if n := h.router.calls.Load(); n != 0 {
		t.Fatalf("router called %d times before TLS", n)
	}
	// Still not authenticated, so STARTTLS is still allowed.
	c.send("c STARTTLS\r\n")
	c.expectPrefix("c OK ")
	c.upgrade(h.clientTLS)
	c.loginAlice("d")
	c.checkSelect("e")
	if n := h.router.calls.Load(); n != 1 {
		t.Errorf("router called %d times, want 1", n)
	}

	t.Run("AUTHENTICATE LOGIN", func(t *testing.T) {
		c := h.dial(t, h.imap)
		c.greeting()
		c.send("a AUTHENTICATE LOGIN\r\n")
		c.expectPrefix("a NO [PRIVACYREQUIRED] ") // no "+" prompt
	})
}

// trickle writes next() every interval until the connection fails or stop
// is closed.
func trickle(c net.Conn, interval time.Duration, next func() string, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := io.WriteString(c, next()); err != nil {
					return
				}
			}
		}
	}()
	return done
}

func TestPreauthDeadline(t *testing.T) {
	const timeout = time.Second
	h := newHarness(t, func(l *proxy.Limits) { l.PreauthTimeout = timeout })

	for _, tc := range []struct {
		name  string
		setup func(c *client) // after the greeting
		drip  string          // sent every interval
		every time.Duration
	}{
		{"partial line", nil, "a", 200 * time.Millisecond},
		// NOOP is answered but does not extend the deadline. The interval
		// keeps commands away from the deadline itself: the answer to one
		// read just before it would miss the write deadline, and the
		// connection would close without BYE.
		{"NOOP", nil, "n NOOP\r\n", 300 * time.Millisecond},
		{"slow literal", func(c *client) {
			c.send("a LOGIN {10}\r\n")
			c.expectPrefix("+ ")
		}, "x", 200 * time.Millisecond},
		{"unanswered AUTHENTICATE", func(c *client) {
			c.send("a AUTHENTICATE PLAIN\r\n")
			c.expect("+ ")
		}, "", 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			c := h.dial(t, h.imapClear)
			c.greeting()
			if tc.setup != nil {
				tc.setup(c)
			}
			stop := make(chan struct{})
			done := trickle(c.c, tc.every, func() string { return tc.drip }, stop)
			defer func() { close(stop); <-done }()
			for {
				l := c.line()
				if strings.HasPrefix(l, "* BYE ") {
					break
				}
				if l != "n OK NOOP completed" {
					t.Fatalf("unexpected %q", l)
				}
			}
			c.expectEOF()
			if d := time.Since(start); d < timeout-100*time.Millisecond || d > timeout+time.Second {
				t.Errorf("closed after %v, want about %v", d, timeout)
			}
		})
	}
}

// TestPreauthCloseNotify: a session that ends before login over TLS, by
// LOGOUT or by a BYE (limits, timeout), sends close_notify before the TCP
// close, so that the client sees the end of the stream and not a
// truncation. Shutdown is checked in TestShutdown.
func TestPreauthCloseNotify(t *testing.T) {
	const timeout = 2 * time.Second
	h := newHarness(t, func(l *proxy.Limits) { l.PreauthTimeout = timeout })
	for _, tc := range []struct {
		name string
		end  func(c *client)
	}{
		{"LOGOUT", func(c *client) {
			c.send("a LOGOUT\r\n")
			c.expectPrefix("* BYE ")
			c.expectPrefix("a OK ")
		}},
		{"bad commands", func(c *client) {
			for _, tag := range []string{"a", "b", "c"} {
				c.send(tag + " FOO\r\n")
				c.expectPrefix(tag + " BAD ")
			}
			c.expect("* BYE Too many invalid commands")
		}},
		{"failed logins", func(c *client) {
			for _, tag := range []string{"a", "b", "c"} {
				c.send(tag + " LOGIN alice@example.test wrong\r\n")
				c.expect(tag + " " + failText)
			}
			c.expectPrefix("* BYE ")
		}},
		{"line too long", func(c *client) {
			c.send("a NOOP " + strings.Repeat("x", 9000) + "\r\n")
			c.expectPrefix("* BAD [TOOBIG] ")
			c.expectPrefix("* BYE ")
		}},
		{"timeout", func(c *client) {
			c.expect("* BYE Timeout before login")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			t.Run("imaps", func(t *testing.T) {
				t.Parallel()
				c := h.dialTLS(t, h.imaps)
				c.greeting()
				tc.end(c)
				c.expectCloseNotify()
			})
			t.Run("STARTTLS", func(t *testing.T) {
				t.Parallel()
				c := h.dial(t, h.imap)
				c.greeting()
				c.send("s STARTTLS\r\n")
				c.expectPrefix("s OK ")
				c.upgrade(h.clientTLS)
				tc.end(c)
				c.expectCloseNotify()
			})
		})
	}
}

// TestLogoutOpenSSL: `openssl s_client -ign_eof`, which fails on a TLS
// stream that ends without close_notify, exits 0 after a LOGOUT before
// login, over implicit TLS and over STARTTLS.
func TestLogoutOpenSSL(t *testing.T) {
	openssl := testsrv.LookPath(t, "openssl")
	h := newHarness(t, nil)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"imaps", []string{"-connect", h.imaps}},
		{"STARTTLS", []string{"-connect", h.imap, "-starttls", "imap"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, openssl, append([]string{"s_client", "-servername", "localhost", "-ign_eof"}, tc.args...)...)
			cmd.Stdin = strings.NewReader("a LOGOUT\r\n")
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "a OK ") {
				t.Fatalf("openssl s_client: %v\n%s", err, out)
			}
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	const timeout = 500 * time.Millisecond
	h := newHarness(t, func(l *proxy.Limits) { l.HandshakeTimeout = timeout })
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"nothing", nil},
		// A record header announcing 512 bytes of ClientHello, and a few of them.
		{"half ClientHello", []byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := h.dial(t, h.imaps)
			if tc.send != nil {
				c.send(string(tc.send))
			}
			c.expectEOF()
			if d := time.Since(start); d < timeout-100*time.Millisecond || d > timeout+time.Second {
				t.Errorf("closed after %v, want about %v", d, timeout)
			}
		})
	}
}

func TestRoutingErrors(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a LOGIN broken@example.test pw\r\n")
	c.expectPrefix("a NO [UNAVAILABLE] ")
	c.send("b NOOP\r\n")
	c.expectPrefix("b OK ")
	c.send("c LOGIN down@example.test pw\r\n")
	c.expectPrefix("c NO [UNAVAILABLE] ")
	// Temporary failures are not failed logins: a third one does not
	// end the connection.
	c.send("d LOGIN broken@example.test pw\r\n")
	c.expectPrefix("d NO [UNAVAILABLE] ")
	c.loginAlice("e")
	c.checkSelect("f")
}

func TestHandOff(t *testing.T) {
	h := newHarness(t, nil)

	t.Run("pipelined SELECT", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN alice@example.test " + alicePW + "\r\nb SELECT INBOX\r\n")
		ok := c.expectPrefix("a OK [CAPABILITY ") // no untagged CAPABILITY first
		if caps := capsOf(ok); !hasCap(caps, "IDLE") {
			t.Errorf("login OK caps %q lack the backend's IDLE", caps)
		}
		lines := c.until("b")
		if !strings.HasPrefix(lines[len(lines)-1], "b OK") || !contains(lines, "* 3 EXISTS") {
			t.Errorf("SELECT answer %q", lines)
		}
		c.send("c LOGOUT\r\n")
		c.expectPrefix("* BYE")
		c.expectPrefix("c OK")
		c.expectEOF()
	})
	t.Run("raw backend", func(t *testing.T) {
		be := h.rawBackend("fake@example.test", false, "IMAP4rev1 SASL-IR AUTH=PLAIN",
			"IMAP4rev1 IDLE UNAUTHENTICATE MOVE", "* 1 EXISTS\r\n")
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a CAPABILITY\r\n")
		c.until("a")
		c.send("b LOGIN fake@example.test pw\r\nc NOOP\r\n")
		l := c.expectPrefix("* CAPABILITY ")
		if got := strings.Join(capsOf(l), " "); got != "IMAP4rev1 IDLE MOVE" {
			t.Errorf("untagged caps %q", got)
		}
		l = c.expectPrefix("b OK [CAPABILITY ")
		if got := strings.Join(capsOf(l), " "); got != "IMAP4rev1 IDLE MOVE" {
			t.Errorf("login OK caps %q", got)
		}
		c.expect("* 1 EXISTS")
		c.expect("c OK done")
		be.next(t, "AUTHENTICATE ")
		if l := be.next(t, "NOOP"); l != "c NOOP" {
			t.Errorf("backend got %q", l)
		}
	})
	t.Run("pipelined past the read buffer", func(t *testing.T) {
		h.rawBackend("fake2@example.test", false, "IMAP4rev1 SASL-IR AUTH=PLAIN", "IMAP4rev1 IDLE", "")
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		var sb strings.Builder
		sb.WriteString("a LOGIN fake2@example.test pw\r\n")
		const n = 800 // about 8 KiB, twice the session's read buffer
		for i := range n {
			sb.WriteString("n" + strconv.Itoa(i) + " NOOP\r\n")
		}
		sb.WriteString("z LOGOUT\r\n")
		c.send(sb.String())
		c.expectPrefix("a OK [CAPABILITY ")
		for i := range n {
			c.expect("n" + strconv.Itoa(i) + " OK done")
		}
		c.expect("* BYE bye")
		c.expect("z OK done")
		c.expectEOF()
	})
}

func contains(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}

func TestShutdown(t *testing.T) {
	h := newHarness(t, nil)
	spliced := h.dialTLS(t, h.imaps)
	spliced.greeting()
	spliced.loginAlice("a")
	preTLS := h.dialTLS(t, h.imaps)
	preTLS.greeting()
	preClear := h.dial(t, h.imap)
	preClear.greeting()

	const grace = 700 * time.Millisecond
	start := time.Now()
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		shut <- h.srv.Shutdown(ctx)
	}()
	for _, c := range []*client{preTLS, preClear} {
		c.expect("* BYE [UNAVAILABLE] Server shutting down")
	}
	preTLS.expectCloseNotify()
	preClear.expectEOF()
	// Listeners are closed, the spliced session still runs.
	h.waitServe()
	if c, err := net.Dial("tcp", h.imaps); err == nil {
		c.Close()
		t.Error("listener still accepts after Shutdown")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Serve(ln, proxy.Listener{Name: "late", Mode: proxy.StartTLS}); !errors.Is(err, proxy.ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v, want ErrServerClosed", err)
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("Serve after Shutdown left its listener open")
	}
	spliced.send("b NOOP\r\n")
	spliced.expectPrefix("b OK")
	spliced.expectEOF()
	if d := time.Since(start); d < grace-100*time.Millisecond {
		t.Errorf("spliced session closed after %v, before the %v deadline", d, grace)
	}
	select {
	case err := <-shut:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown: %v, want DeadlineExceeded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

// TestShutdownRacesAccept shuts down while sessions are starting and
// handshaking: each must still notice, so Shutdown returns at once instead
// of waiting for its deadline.
func TestShutdownRacesAccept(t *testing.T) {
	baseline := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, baseline) })
	cert, err := testCert()
	if err != nil {
		t.Fatal(err)
	}
	store, err := ptls.NewStore(cert)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: ptls.CertPool(cert), ServerName: "localhost"}
	for i := range 12 {
		srv := &proxy.Server{
			Router:    routing.NewStatic(nil),
			TLSConfig: ptls.ServerConfig(store, 0),
			Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
		lnTLS, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lnClear, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); srv.Serve(lnTLS, proxy.Listener{Mode: proxy.ImplicitTLS}) }()
		go func() { defer wg.Done(); srv.Serve(lnClear, proxy.Listener{Mode: proxy.StartTLS}) }()
		for j := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var c net.Conn
				if j%2 == 0 {
					tc, err := tls.Dial("tcp", lnTLS.Addr().String(), cfg)
					if err != nil {
						return
					}
					c = tc
				} else {
					nc, err := net.Dial("tcp", lnClear.Addr().String())
					if err != nil {
						return
					}
					defer nc.Close()
					io.WriteString(nc, "a STARTTLS\r\n")
					br := bufio.NewReader(nc)
					br.ReadString('\n') // greeting
					br.ReadString('\n') // OK
					tc := tls.Client(nc, cfg)
					tc.SetDeadline(time.Now().Add(5 * time.Second))
					if tc.Handshake() != nil {
						return
					}
					c = tc
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.Copy(io.Discard, c)
			}()
		}
		time.Sleep(time.Duration(i%6) * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = srv.Shutdown(ctx)
		cancel()
		if err != nil {
			t.Errorf("round %d: Shutdown with only pre-auth sessions: %v", i, err)
		}
		srv.Close()
		wg.Wait()
	}
}

func TestSessionLog(t *testing.T) {
	h := newHarness(t, nil)
	secrets := []string{alicePW, "Wr0ng-Secret-1", "Wr0ng-Secret-2", "Wr0ng-Secret-3", "Wr0ng-Secret-4"}

	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a LOGIN alice@example.test " + secrets[1] + "\r\n")
	c.expect("a " + failText)
	c.send("b AUTHENTICATE PLAIN " + b64("\x00alice@example.test\x00"+secrets[2]) + "\r\n")
	c.expect("b " + failText)
	c.send("c AUTHENTICATE PLAIN " + b64("\x00alice@example.test\x00"+alicePW) + "\r\n")
	c.expectPrefix("c OK ")
	c.checkSelect("d")
	c.send("e LOGOUT\r\n")
	c.until("e")
	c.expectEOF()
	c.c.Close()
	clientAddr := c.c.LocalAddr().String()

	f := h.dial(t, h.imap)
	f.greeting()
	f.send("a LOGIN alice@example.test " + secrets[3] + "\r\n")
	f.expectPrefix("a NO [PRIVACYREQUIRED] ")
	f.send("b STARTTLS\r\n")
	f.expectPrefix("b OK ")
	f.upgrade(h.clientTLS)
	f.send("c AUTHENTICATE LOGIN " + b64("nobody") + "\r\n")
	f.expect("+ UGFzc3dvcmQ6")
	f.send(b64(secrets[4]) + "\r\n")
	f.expect("c " + failText)
	f.send("d LOGOUT\r\n")
	f.until("d")
	f.expectEOF()

	var line string
	deadline := time.Now().Add(5 * time.Second)
	for line == "" {
		for _, l := range strings.Split(h.logs.String(), "\n") {
			if strings.Contains(l, `msg="session end"`) && strings.Contains(l, "client="+clientAddr) {
				line = l
			}
		}
		if line == "" {
			if time.Now().After(deadline) {
				t.Fatalf("no session end line for %s:\n%s", clientAddr, h.logs)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, want := range []string{
		"user=alice@example.test",
		"backend=mem(" + h.mem.Addr() + ")",
		`tls="TLS 1.3"`,
		`outcome="logged out"`,
	} {
		if !strings.Contains(line, want) {
			t.Errorf("session end line lacks %s: %s", want, line)
		}
	}
	for _, field := range []string{"bytes_to_backend", "bytes_to_client"} {
		m := regexp.MustCompile(field + `=(\d+)`).FindStringSubmatch(line)
		if m == nil || m[1] == "0" {
			t.Errorf("session end line: %s missing or zero: %s", field, line)
		}
	}

	h.srv.Close()
	logs := h.logs.String()
	for _, s := range secrets {
		for _, enc := range []string{s, b64(s)} {
			if strings.Contains(logs, enc) {
				t.Errorf("log contains the secret %q:\n%s", enc, logs)
			}
		}
	}
	if strings.Contains(logs, b64("\x00alice@example.test\x00"+alicePW)) {
		t.Errorf("log contains a SASL response:\n%s", logs)
	}
}

// A backend's INUSE (RFC 5530) reaches the IMAP client as such, not as a
// wrong password, and the client may try again on the connection.
func TestBackendInUse(t *testing.T) {
	h := newHarnessWith(t, nil, func(s *proxy.Server) {
		s.Login = func(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error) {
			return nil, fmt.Errorf("NO [INUSE] locked: %w", upstream.ErrInUse)
		}
	})
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a LOGIN alice " + alicePW + "\r\n")
	c.expect("a NO [INUSE] Mailbox in use, try again later")
	c.send("b LOGIN alice " + alicePW + "\r\n")
	c.expect("b NO [INUSE] Mailbox in use, try again later")
}
