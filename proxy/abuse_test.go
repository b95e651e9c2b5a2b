package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// Tests of issue 10's connection limits, PROXY protocol in and loop guards.

// dialFrom connects to addr from the loopback address src (127.0.0.x).
func (h *harness) dialFrom(t *testing.T, src, addr string) *client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.conns = append(h.conns, c)
	h.mu.Unlock()
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

// logCount counts the log lines that contain s.
func (h *harness) logCount(s string) int {
	return strings.Count(h.logs.String(), s)
}

func TestMaxConnections(t *testing.T) {
	h := newHarness(t, func(l *proxy.Limits) { l.MaxConnections = 2 })
	a := h.dial(t, h.imap)
	a.greeting()
	b := h.dialTLS(t, h.imaps)
	b.greeting()
	// Past the limit: a BYE, in clear on imap and after the handshake on
	// imaps, and the connection is closed.
	for range 3 {
		c := h.dial(t, h.imap)
		c.expect("* BYE [UNAVAILABLE] Too many connections, try again later")
		c.expectEOF()
	}
	c := h.dialTLS(t, h.imaps)
	c.expect("* BYE [UNAVAILABLE] Too many connections, try again later")
	c.expectCloseNotify()
	// The others are served all along, and a place that frees up is taken.
	a.send("a NOOP\r\n")
	a.expectPrefix("a OK ")
	b.loginAlice("b")
	b.checkSelect("c")
	a.send("z LOGOUT\r\n")
	a.until("z")
	a.expectEOF()
	waitFor(t, func() bool { return h.logCount("outcome=\"logged out\"") > 0 || h.logCount("session end") >= 5 })
	d := h.dial(t, h.imapClear)
	d.greeting()
	d.loginAlice("d")
	// Four refusals, one log line.
	if n := h.logCount("too many connections: new ones are refused"); n != 1 {
		t.Errorf("%d log lines for the refusals, want 1:\n%s", n, h.logs)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPreauthPerIP(t *testing.T) {
	h := newHarnessWith(t, func(l *proxy.Limits) { l.MaxPreauthPerIP = 2 }, func(s *proxy.Server) {
		s.TrustedNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}
	})
	a := h.dial(t, h.imapClear)
	a.greeting()
	b := h.dial(t, h.imap)
	b.greeting()
	for range 2 {
		c := h.dial(t, h.imap)
		c.expect("* BYE [LIMIT] Too many connections from your address")
		c.expectEOF()
	}
	c := h.dialTLS(t, h.imaps)
	c.expect("* BYE [LIMIT] Too many connections from your address")
	// Another address is not concerned, nor is a trusted one.
	h.dialFrom(t, "127.0.0.2", h.imap).greeting()
	for range 3 {
		h.dialFrom(t, "127.0.0.3", h.imap).greeting()
	}
	// A session that logs in no longer counts.
	a.loginAlice("a")
	d := h.dial(t, h.imap)
	d.greeting()
	if n := h.logCount("too many connections not logged in from one address"); n != 1 {
		t.Errorf("%d log lines for the refusals, want 1:\n%s", n, h.logs)
	}
	// The refused sessions' own end lines are at debug level.
	if n := strings.Count(h.logs.String(), `level=INFO msg="session end"`); n != 0 {
		t.Errorf("%d session end lines at info level for refused sessions:\n%s", n, h.logs)
	}
}

func TestSessionsPerUserIP(t *testing.T) {
	h := newHarness(t, func(l *proxy.Limits) { l.MaxSessionsPerUserIP = 2 })
	h.dialTLS(t, h.imaps).greeting()
	for i := range 2 {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.loginAlice("a")
		_ = i
	}
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	// The limit is only told to who knows the password.
	c.send("a LOGIN alice@example.test wrong\r\n")
	c.expect("a " + failText)
	c.send("b LOGIN alice@example.test " + alicePW + "\r\n")
	c.expect("b NO [LIMIT] Too many sessions of this user from your address")
	// The session goes on: another user may log in on it.
	c.send("c LOGIN quote@example.test {10}\r\n")
	c.expectPrefix("+ ")
	c.send(quotePW + "\r\n")
	c.expectPrefix("c OK ")
	// From another address alice may.
	d := h.dialFrom(t, "127.0.0.2", h.imaps)
	d.upgrade(h.clientTLS)
	d.greeting()
	d.loginAlice("a")
}

func TestSessionsPerUser(t *testing.T) {
	var count atomic.Int64
	var fail atomic.Bool
	h := newHarnessWith(t, func(l *proxy.Limits) { l.MaxSessionsPerUser = 3 }, func(s *proxy.Server) {
		s.UserSessions = func(ctx context.Context, user string) (int, error) {
			if fail.Load() {
				return 0, errors.New("redis down")
			}
			return int(count.Load()), nil
		}
	})
	login := func(want string) { t.Helper(); h.loginAlice(t, want) }
	count.Store(2)
	login("a OK ")
	count.Store(3) // the fleet's count
	login("a NO [LIMIT] Too many sessions of this user")
	fail.Store(true) // the count fails open
	login("a OK ")
	// A fleet count below this server's own does not let more in: three
	// are logged in here now.
	fail.Store(false)
	count.Store(0)
	login("a OK ")
	login("a NO [LIMIT] Too many sessions of this user")
	if !strings.Contains(h.logs.String(), "cannot count the user's sessions; login allowed") {
		t.Errorf("no log line for the failed count:\n%s", h.logs)
	}
}

// loginAlice logs alice in over implicit TLS and expects an answer that
// starts with want; the session stays open until the test ends.
func (h *harness) loginAlice(t *testing.T, want string) {
	t.Helper()
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a LOGIN alice@example.test " + alicePW + "\r\n")
	c.expectPrefix(want)
}

// TestSessionsCountedByLimiter: a count of the user's sessions that came
// with the limiter's verdict is used instead of a read of its own, and
// the verdict reaches Succeeded.
func TestSessionsCountedByLimiter(t *testing.T) {
	lim := &fakeLimiter{}
	h := newHarnessWith(t, func(l *proxy.Limits) { l.MaxSessionsPerUser = 3 }, func(s *proxy.Server) {
		s.Limiter = lim
		s.UserSessions = func(ctx context.Context, user string) (int, error) {
			t.Error("UserSessions asked although the limiter counted")
			return 0, nil
		}
	})
	login := func(want string) { t.Helper(); h.loginAlice(t, want) }
	lim.set(proxy.LimitVerdict{Sessions: 3, SessionsCounted: true})
	login("a NO [LIMIT] Too many sessions of this user")
	lim.set(proxy.LimitVerdict{Sessions: 2, SessionsCounted: true, Recorded: true})
	login("a OK ")
	if _, _, succeeded := lim.take(); strings.Join(succeeded, ",") != "127.0.0.1 alice@example.test (recorded)" {
		t.Errorf("succeeded = %q", succeeded)
	}
}

// ppListener serves a STARTTLS and an implicit TLS listener that expect
// PROXY headers from 127.0.0.1 only; the imap one allows cleartext logins
// from 192.0.2.0/24.
func (h *harness) ppListeners() (imap, imaps string) {
	from := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	imap = h.serve(proxy.Listener{Name: "pp-imap", Mode: proxy.StartTLS, ProxyProtocolFrom: from,
		CleartextLogin: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	imaps = h.serve(proxy.Listener{Name: "pp-imaps", Mode: proxy.ImplicitTLS, ProxyProtocolFrom: from})
	return imap, imaps
}

func proxyHeader(version byte, src, dst string) []byte {
	h := proxyproto.HeaderProxyFromAddrs(version,
		net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	b, err := h.Format()
	if err != nil {
		panic(err)
	}
	return b
}

// firstWriteConn sends pre in the same write as the first bytes written,
// as a balancer does that has the client's first bytes at hand.
type firstWriteConn struct {
	net.Conn
	pre []byte
}

func (c *firstWriteConn) Write(p []byte) (int, error) {
	if c.pre != nil {
		b := append(c.pre, p...)
		c.pre = nil
		_, err := c.Conn.Write(b)
		return len(p), err
	}
	return c.Conn.Write(p)
}

func TestProxyProtocolIn(t *testing.T) {
	var spliced []proxy.SessionInfo
	var mu sync.Mutex
	h := newHarnessWith(t, nil, func(s *proxy.Server) {
		s.OnSplice = func(i proxy.SessionInfo) { mu.Lock(); spliced = append(spliced, i); mu.Unlock() }
	})
	imap, imaps := h.ppListeners()
	be := h.rawBackend("fake@example.test", true, "IMAP4rev1 ID SASL-IR AUTH=PLAIN", "IMAP4rev1 IDLE", "")

	for _, v := range []byte{1, 2} {
		// v1 or v2 from the trusted balancer, on imap: the header's client
		// is in cleartext_login_networks, so it may log in without TLS.
		c := h.dial(t, imap)
		c.send(string(proxyHeader(v, "192.0.2.7:51000", "203.0.113.1:143")))
		caps := c.greeting()
		if !hasAuthCap(caps) || hasCap(caps, "LOGINDISABLED") {
			t.Errorf("v%d: caps %q: want cleartext login for 192.0.2.7", v, caps)
		}
		c.loginAlike("a", "fake@example.test", "pw")
		if v == 1 {
			c := c
			defer func() {
				c.logout()
				waitFor(t, func() bool { return strings.Contains(h.logs.String(), "client=192.0.2.7:51000") })
			}()
		}
		id := be.next(t, "ID ")
		for _, want := range []string{`"x-originating-ip" "192.0.2.7"`, `"x-originating-port" "51000"`,
			`"x-connected-ip" "203.0.113.1"`, `"x-connected-port" "143"`} {
			if !strings.Contains(id, want) {
				t.Errorf("v%d: backend's ID %q lacks %s", v, id, want)
			}
		}
		// Another client address is not in cleartext_login_networks.
		c = h.dial(t, imap)
		c.send(string(proxyHeader(v, "198.51.100.1:1234", "203.0.113.1:143")))
		if caps := c.greeting(); !hasCap(caps, "LOGINDISABLED") {
			t.Errorf("v%d: caps %q for 198.51.100.1, want LOGINDISABLED", v, caps)
		}
		// On imaps, with the header in the same segment as the ClientHello.
		raw, err := net.Dial("tcp", imaps)
		if err != nil {
			t.Fatal(err)
		}
		h.mu.Lock()
		h.conns = append(h.conns, raw)
		h.mu.Unlock()
		fw := &firstWriteConn{Conn: raw, pre: proxyHeader(v, "[2001:db8::5]:40000", "[2001:db8::1]:993")}
		tc := tls.Client(fw, h.clientTLS)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			t.Fatalf("v%d: TLS after the header: %v", v, err)
		}
		c = &client{t: t, c: tc, br: bufio.NewReader(tc)}
		c.greeting()
		c.loginAlike("a", "fake@example.test", "pw")
		if id := be.next(t, "ID "); !strings.Contains(id, `"x-originating-ip" "2001:db8::5"`) {
			t.Errorf("v%d: backend's ID %q lacks the IPv6 client", v, id)
		}
	}
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(spliced) == 4 })
	mu.Lock()
	clients := map[string]int{}
	for _, i := range spliced {
		clients[i.Client]++
	}
	if len(spliced) != 4 || clients["192.0.2.7:51000"] != 2 || clients["[2001:db8::5]:40000"] != 2 {
		t.Errorf("sessions registered as %+v", spliced)
	}
	mu.Unlock()

	// A LOCAL header (a health check) keeps the balancer's address.
	c := h.dial(t, imap)
	local, _ := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}).Format()
	c.send(string(local))
	if caps := c.greeting(); !hasCap(caps, "LOGINDISABLED") {
		t.Errorf("caps %q after a LOCAL header", caps)
	}
	c.send("a LOGOUT\r\n")
	c.until("a")

	// No header from the trusted balancer: refused.
	c = h.dial(t, imaps)
	c.send("\x16\x03\x01\x00\x05hello")
	c.expectEOF()
	start := time.Now()
	c = h.dial(t, imap) // waits for a header that never comes
	c.expectEOF()
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("a missing header was waited for %v; the handshake timeout is 2s", d)
	}
	// A header from elsewhere: refused, on imap after the greeting.
	for _, v := range []byte{1, 2} {
		c = h.dialFrom(t, "127.0.0.2", imap)
		c.greeting()
		c.send(string(proxyHeader(v, "192.0.2.7:51000", "203.0.113.1:143")))
		c.expectEOF()
		c = h.dialFrom(t, "127.0.0.2", imaps)
		c.send(string(proxyHeader(v, "192.0.2.7:51000", "203.0.113.1:993")))
		c.expectEOF()
	}
	// Without a header, clients from elsewhere are served as usual.
	c = h.dialFrom(t, "127.0.0.2", imap)
	c.greeting()
	c.send("a NOOP\r\n")
	c.expectPrefix("a OK ")
	c = h.dialFrom(t, "127.0.0.2", imaps)
	c.upgrade(h.clientTLS)
	c.greeting()
	c.loginAlice("a")
	logs := h.logs.String()
	for _, want := range []string{"no valid PROXY protocol header from a trusted balancer",
		"PROXY protocol header from an address that is not a trusted balancer"} {
		if !strings.Contains(logs, want) {
			t.Errorf("no log line %q:\n%s", want, logs)
		}
	}
}

func TestTrustedIDFields(t *testing.T) {
	h := newHarnessWith(t, nil, func(s *proxy.Server) {
		s.TrustedNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	be := h.rawBackend("fake@example.test", true, "IMAP4rev1 ID SASL-IR AUTH=PLAIN", "IMAP4rev1 IDLE", "")
	front := `a ID ("x-originating-ip" "198.51.100.9" "x-originating-port" "4000" "x-connected-ip" "203.0.113.5" ` +
		`"x-connected-port" "993" "x-session-id" "front-17" "x-proxy-ttl" "3" "name" "webmail")` + "\r\n"

	// From a trusted network: believed, and passed on, the TTL decremented.
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send(front)
	c.until("a")
	c.loginAlike("b", "fake@example.test", "pw")
	id := be.next(t, "ID ")
	for _, want := range []string{`"x-originating-ip" "198.51.100.9"`, `"x-originating-port" "4000"`,
		`"x-connected-ip" "203.0.113.5"`, `"x-session-id" "front-17"`, `"x-proxy-ttl" "2"`, `"name" "webmail"`} {
		if !strings.Contains(id, want) {
			t.Errorf("backend's ID %q lacks %s", id, want)
		}
	}
	c.logout()
	waitFor(t, func() bool { return strings.Contains(h.logs.String(), "client=198.51.100.9:4000") })
	// From elsewhere: dropped.
	c = h.dialFrom(t, "127.0.0.2", h.imaps)
	c.upgrade(h.clientTLS)
	c.greeting()
	c.send(front)
	c.until("a")
	c.loginAlike("b", "fake@example.test", "pw")
	id = be.next(t, "ID ")
	if strings.Contains(id, "198.51.100.9") || strings.Contains(id, "front-17") || !strings.Contains(id, `"x-originating-ip" "127.0.0.2"`) ||
		!strings.Contains(id, `"x-proxy-ttl" "5"`) {
		t.Errorf("backend's ID %q: the untrusted client's fields were believed", id)
	}
	// A TTL that has run out ends the login: a loop.
	c = h.dialTLS(t, h.imaps)
	c.greeting()
	c.send(`a ID ("x-proxy-ttl" "1")` + "\r\n")
	c.until("a")
	c.send("b LOGIN fake@example.test pw\r\n")
	c.expect("b NO [UNAVAILABLE] Service temporarily unavailable, try again later")
	if !strings.Contains(h.logs.String(), `signal="x-proxy-ttl 1 has run out"`) {
		t.Errorf("no loop log line:\n%s", h.logs)
	}
}

// TestLoopOwnSessionID: one of this proxy's own session ids coming back,
// from anyone, is a loop.
func TestLoopOwnSessionID(t *testing.T) {
	h := newHarness(t, nil)
	be := h.rawBackend("fake@example.test", true, "IMAP4rev1 ID SASL-IR AUTH=PLAIN", "IMAP4rev1 IDLE", "")
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.loginAlike("a", "fake@example.test", "pw")
	m := regexp.MustCompile(`"x-session-id" "([^"]+)"`).FindStringSubmatch(be.next(t, "ID "))
	if m == nil {
		t.Fatal("no session id sent")
	}
	c = h.dialFrom(t, "127.0.0.2", h.imaps)
	c.upgrade(h.clientTLS)
	c.greeting()
	c.send(`a ID ("x-session-id" "` + m[1] + `")` + "\r\n")
	c.until("a")
	c.send("b LOGIN fake@example.test pw\r\n")
	c.expect("b NO [UNAVAILABLE] Service temporarily unavailable, try again later")
	if !strings.Contains(h.logs.String(), "is this proxy's own session") {
		t.Errorf("no loop log line:\n%s", h.logs)
	}
}

// TestLoopOwnListener: a backend address that is one of the proxy's own
// listeners is refused without connecting.
func TestLoopOwnListener(t *testing.T) {
	h := newHarness(t, nil)
	_, port, _ := net.SplitHostPort(h.imap)
	for _, addr := range []string{h.imap, "localhost:" + port, "[::ffff:127.0.0.1]:" + port} {
		h.router.add("loop@example.test", &routing.Backend{Name: "self", Addr: addr})
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN loop@example.test pw\r\n")
		c.expect("a NO [UNAVAILABLE] Service temporarily unavailable, try again later")
	}
	if n := h.logCount("routing loop: the backend is this proxy's own listener"); n != 1 {
		t.Errorf("%d loop log lines, want 1 (one a minute):\n%s", n, h.logs)
	}
	if !strings.Contains(h.logs.String(), "listener=imap") {
		t.Errorf("the log does not name the listener:\n%s", h.logs)
	}
}

// TestLoopOwnBackendLogin: a connection that is this proxy's own backend
// login in progress (a route through a name that resolves to the proxy)
// is refused at once.
func TestLoopOwnBackendLogin(t *testing.T) {
	var self string
	h := newHarnessWith(t, nil, func(s *proxy.Server) {
		s.Login = func(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error) {
			if b.Name == "via-name" {
				b = &routing.Backend{Name: b.Name, Addr: self}
			}
			return upstream.Login(ctx, b, cred, id)
		}
	})
	self = h.imapClear
	h.router.add("loop@example.test", &routing.Backend{Name: "via-name", Addr: "imap.example.test:143"})
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a LOGIN loop@example.test pw\r\n")
	c.expect("a NO [UNAVAILABLE] Service temporarily unavailable, try again later")
	if !strings.Contains(h.logs.String(), `signal="the connection is this proxy's own backend login"`) {
		t.Errorf("no loop log line:\n%s", h.logs)
	}
}

// hangingBackend accepts connections and never greets.
func hangingBackend(t *testing.T) *fakeServer {
	s := startFakeServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	t.Cleanup(s.close)
	return s
}

func TestLoginsInProgress(t *testing.T) {
	h := newHarness(t, func(l *proxy.Limits) { l.MaxLoginsPerBackend = 2; l.MaxLoginsInProgress = 3 })
	slow := hangingBackend(t)
	slow2 := hangingBackend(t)
	h.router.add("u1@example.test", &routing.Backend{Name: "slow", Addr: slow.addr(), LoginTimeout: 20 * time.Second})
	h.router.add("u2@example.test", &routing.Backend{Name: "slow", Addr: slow.addr(), LoginTimeout: 20 * time.Second})
	h.router.add("u3@example.test", &routing.Backend{Name: "slow", Addr: slow.addr(), LoginTimeout: 20 * time.Second})
	h.router.add("u4@example.test", &routing.Backend{Name: "slow2", Addr: slow2.addr(), LoginTimeout: 20 * time.Second})
	h.router.add("u5@example.test", &routing.Backend{Name: "slow2", Addr: slow2.addr(), LoginTimeout: 20 * time.Second})
	start := func(user string) *client {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN " + user + " pw\r\n")
		return c
	}
	start("u1@example.test")
	start("u2@example.test")
	waitFor(t, func() bool { return slow.count() == 2 })
	t0 := time.Now()
	c := start("u3@example.test") // a third to the same backend
	c.expect("a NO [UNAVAILABLE] Service temporarily unavailable, try again later")
	start("u4@example.test") // another backend: fine
	waitFor(t, func() bool { return slow2.count() == 1 })
	c = start("u5@example.test") // but four in all is too many
	c.expect("a NO [UNAVAILABLE] Service temporarily unavailable, try again later")
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("refusals took %v", d)
	}
	logs := h.logs.String()
	for _, want := range []string{"logins in progress to this backend", "backend logins in progress in all"} {
		if !strings.Contains(logs, want) {
			t.Errorf("no log line with %q:\n%s", want, logs)
		}
	}
}

// TestLoginsOfUserInProgress: more logins of a user from one address in
// progress than it may have sessions (a loop through a relay that passes
// no ID adds one per hop) are refused before the backend is contacted.
func TestLoginsOfUserInProgress(t *testing.T) {
	h := newHarness(t, func(l *proxy.Limits) { l.MaxSessionsPerUserIP = 2 })
	slow := hangingBackend(t)
	h.router.add("u1@example.test", &routing.Backend{Name: "slow", Addr: slow.addr(), LoginTimeout: 20 * time.Second})
	for range 2 {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN u1@example.test pw\r\n")
	}
	waitFor(t, func() bool { return slow.count() == 2 })
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a LOGIN u1@example.test pw\r\n")
	c.expect("a NO [UNAVAILABLE] Service temporarily unavailable, try again later")
	if slow.count() != 2 {
		t.Errorf("the backend got %d connections, want 2", slow.count())
	}
	if !strings.Contains(h.logs.String(), "too many logins of the user from one address in progress") {
		t.Errorf("no log line:\n%s", h.logs)
	}
}

// logout logs out of a spliced session and closes the connection.
func (c *client) logout() {
	c.t.Helper()
	c.send("z LOGOUT\r\n")
	c.readToEOF()
	c.c.Close()
}

// count returns the number of connections open.
func (s *fakeServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// TestLoopThroughRelay: a route through a relay that passes nothing back
// to the proxy ends in one NO [UNAVAILABLE], with the proxy's goroutines
// and connections bounded by the user's logins in progress.
func TestLoopThroughRelay(t *testing.T) {
	h := newHarness(t, func(l *proxy.Limits) { l.MaxSessionsPerUserIP = 10 }) // the config's default
	target := h.imapClear
	relay := startFakeServer(t, func(c net.Conn) {
		b, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer b.Close()
		go func() { io.Copy(b, c); b.Close() }()
		io.Copy(c, b)
	})
	t.Cleanup(relay.close)
	h.router.add("loop@example.test", &routing.Backend{Name: "relay", Addr: relay.addr()})

	base := runtime.NumGoroutine()
	var peak atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			peak.Store(max(peak.Load(), int64(runtime.NumGoroutine())))
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	start := time.Now()
	c.send("a LOGIN loop@example.test pw\r\n")
	c.expect("a NO [UNAVAILABLE] Service temporarily unavailable, try again later")
	took := time.Since(start)
	close(stop)
	<-done
	t.Logf("answered after %v; goroutines %d before, %d at most", took, base, peak.Load())
	if took > 5*time.Second || peak.Load() > int64(base)+60 {
		t.Errorf("answered after %v; goroutines %d before, %d at most", took, base, peak.Load())
	}
	if relay.count() > 20 {
		t.Errorf("%d relayed connections still open", relay.count())
	}
	if !strings.Contains(h.logs.String(), "too many logins of the user from one address in progress") {
		t.Errorf("no log line naming the loop:\n%s", h.logs)
	}
}
