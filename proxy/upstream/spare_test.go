package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/routing"
)

// eventually waits up to 5s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// idleSpares returns the local addresses of the idle spares of b's IMAP
// service.
func (s *Spares) idleSpares(b *routing.Backend) []string {
	return s.idleAt(b, b.Addr)
}

func (s *Spares) idleAt(b *routing.Backend, addr string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	if pl := s.pools[poolKey{b, addr}]; pl != nil {
		for _, sp := range pl.idle {
			out = append(out, sp.c.raw.LocalAddr().String())
		}
	}
	return out
}

func (s *Spares) poolCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pools)
}

// TestSpareDovecot: the second login starts on a connection that Dovecot
// accepted and greeted before the login began, works like any other, and
// the spare is replaced.
func TestSpareDovecot(t *testing.T) {
	d := testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: map[string]string{"alice": "secret"}})
	b := &routing.Backend{Name: "dovecot", Addr: d.Addr, ForwardID: true, LoginTimeout: 5 * time.Second, SpareConnections: 2}
	s := &Spares{}
	defer s.Close()
	cred := Credentials{User: "alice", Secret: "secret"}

	res, err := s.Login(context.Background(), b, cred, &IDInfo{ClientIP: "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	selectInbox(t, res)
	if st := s.Stats(); st.Missed != 1 || st.Taken != 0 {
		t.Errorf("first login: %+v, want one miss", st)
	}
	eventually(t, "two spares", func() bool { return len(s.idleSpares(b)) == 2 })
	before := s.idleSpares(b)

	res, err = s.Login(context.Background(), b, cred, &IDInfo{ClientIP: "192.0.2.8"})
	if err != nil {
		t.Fatal(err)
	}
	if local := res.Conn.LocalAddr().String(); !strings.Contains(strings.Join(before, " "), local) {
		t.Errorf("login on %s, not on one of the spares %v", local, before)
	}
	if st := s.Stats(); st.Taken != 1 {
		t.Errorf("second login: %+v, want one taken", st)
	}
	selectInbox(t, res)
	// ID still went first on the spare: Dovecot logs the client's address.
	d.WaitLog(t, "rip=192.0.2.8", 5*time.Second)
	eventually(t, "the spare replaced", func() bool { return len(s.idleSpares(b)) == 2 })

	_, err = s.Login(context.Background(), b, Credentials{User: "alice", Secret: "wrong"}, nil)
	if !errors.Is(err, ErrAuthFailed) || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("wrong password on a spare: %v", err)
	}
}

// TestSparePOP3Dovecot: POP3 logins take spares of the POP3 service.
func TestSparePOP3Dovecot(t *testing.T) {
	d := startPOP3Dovecot(t, testsrv.DovecotOptions{})
	d.AddMessage(t, "alice", "INBOX", pop3Message)
	b := pop3Backend(d)
	b.SpareConnections = 1
	s := &Spares{}
	defer s.Close()
	loginAndClose(t, s.LoginPOP3, b)
	eventually(t, "a POP3 spare", func() bool { return len(s.idleAt(b, b.POP3Addr)) == 1 })
	if len(s.idleSpares(b)) != 0 {
		t.Error("a POP3 login made IMAP spares")
	}
	res, err := s.LoginPOP3(context.Background(), b, alice, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Taken != 1 {
		t.Errorf("stats %+v, want one taken", st)
	}
	retr(t, res, pop3Message)
}

// TestSpareStartTLS: a spare of a STARTTLS backend is upgraded before it
// waits, and the login on it is encrypted.
func TestSpareStartTLS(t *testing.T) {
	cert, pool := testCert(t)
	addr := memBackend(t, "secret", &tls.Config{Certificates: []tls.Certificate{cert}})
	b := &routing.Backend{Name: "mem", Addr: addr, TLS: routing.StartTLS, TLSConfig: &tls.Config{RootCAs: pool}, SpareConnections: 1}
	s := &Spares{}
	defer s.Close()
	warm(t, s, b)
	res, err := s.Login(context.Background(), b, alice, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.Conn.(*tls.Conn); !ok || !res.TLS || s.Stats().Taken != 1 {
		t.Fatalf("Conn is %T, TLS=%v, stats %+v", res.Conn, res.TLS, s.Stats())
	}
	selectInbox(t, res)
}

// multiFake is an IMAP backend for many connections: it greets, answers
// CAPABILITY and ID, and accepts any AUTHENTICATE PLAIN.
type multiFake struct {
	ln       net.Listener
	mu       sync.Mutex
	open     map[net.Conn]bool
	accepted int
	auths    int
	// Connections accepted up to muteUpTo close, unanswered, at their
	// next command.
	muteUpTo atomic.Int32
}

func startMultiFake(t *testing.T) *multiFake {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &multiFake{ln: ln, open: make(map[net.Conn]bool)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			m.mu.Lock()
			m.open[c] = true
			m.accepted++
			n := int32(m.accepted)
			m.mu.Unlock()
			go m.serve(c, n)
		}
	}()
	t.Cleanup(func() { ln.Close(); m.killAll() })
	return m
}

func (m *multiFake) addr() string { return m.ln.Addr().String() }

func (m *multiFake) serve(c net.Conn, n int32) {
	defer func() {
		c.Close()
		m.mu.Lock()
		delete(m.open, c)
		m.mu.Unlock()
	}()
	io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID] ready\r\n")
	br := bufio.NewReader(c)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		tag, cmd, _ := strings.Cut(strings.TrimSuffix(l, "\r\n"), " ")
		if strings.HasPrefix(cmd, "AUTHENTICATE") {
			m.mu.Lock()
			m.auths++
			m.mu.Unlock()
		}
		if n <= m.muteUpTo.Load() {
			return
		}
		switch {
		case strings.HasPrefix(cmd, "ID "):
			io.WriteString(c, tag+" OK ID done\r\n")
		case strings.HasPrefix(cmd, "AUTHENTICATE PLAIN "):
			io.WriteString(c, tag+" OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n")
			io.Copy(io.Discard, br)
			return
		default:
			io.WriteString(c, tag+" BAD what\r\n")
		}
	}
}

func (m *multiFake) killAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.open {
		c.Close()
	}
}

func (m *multiFake) counts() (open, accepted, auths int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.open), m.accepted, m.auths
}

func fakeBackend(m *multiFake, spares int) *routing.Backend {
	return &routing.Backend{Name: "fake", Addr: m.addr(), LoginTimeout: 5 * time.Second, SpareConnections: spares}
}

var alice = Credentials{User: "alice", Secret: "secret"}

// loginAndClose logs alice in through login (a Spares' Login or
// LoginPOP3) and closes the connection at once.
func loginAndClose(t *testing.T, login func(context.Context, *routing.Backend, Credentials, *IDInfo) (*Result, error), b *routing.Backend) {
	t.Helper()
	res, err := login(context.Background(), b, alice, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
}

// warm logs in once (a miss) and waits for the spares.
func warm(t *testing.T, s *Spares, b *routing.Backend) {
	t.Helper()
	loginAndClose(t, s.Login, b)
	eventually(t, "spares", func() bool { return len(s.idleSpares(b)) == b.SpareConnections })
}

// TestSpareKilledByBackend: spares the backend closed are seen dead
// before use, and the login dials afresh and sends its credentials once.
func TestSpareKilledByBackend(t *testing.T) {
	m := startMultiFake(t)
	b := fakeBackend(m, 2)
	s := &Spares{}
	defer s.Close()
	warm(t, s, b)
	m.killAll()
	eventually(t, "the spares closed", func() bool { open, _, _ := m.counts(); return open == 0 })
	_, _, authsBefore := m.counts()

	loginAndClose(t, s.Login, b)
	if _, _, auths := m.counts(); auths != authsBefore+1 {
		t.Errorf("credentials sent %d times, want once", auths-authsBefore)
	}
	// (A spare refilled meanwhile may have served it: Taken 0 or 1.)
	if st := s.Stats(); st.Discarded < 2 {
		t.Errorf("stats %+v: want both spares discarded", st)
	}
}

// TestSpareDiesAtLogin: a spare that looks alive but closes without
// answering the credentials has logged nobody in: the login is redone on
// a fresh connection.
func TestSpareDiesAtLogin(t *testing.T) {
	m := startMultiFake(t)
	b := fakeBackend(m, 1)
	s := &Spares{}
	defer s.Close()
	warm(t, s, b)
	_, accepted, _ := m.counts()
	m.muteUpTo.Store(int32(accepted)) // the spare, not the fresh connection
	loginAndClose(t, s.Login, b)
	if st := s.Stats(); st.Taken != 1 || st.Discarded != 1 {
		t.Errorf("stats %+v: want one taken and discarded", st)
	}
	if _, _, auths := m.counts(); auths != 3 { // warm, spare, fresh
		t.Errorf("%d AUTHENTICATEs, want 3", auths)
	}
}

// TestSpareExpiry: spares live at most SpareMaxIdle, and a backend without
// logins for that long keeps none (and no goroutine).
func TestSpareExpiry(t *testing.T) {
	m := startMultiFake(t)
	base := runtime.NumGoroutine()
	b := fakeBackend(m, 2)
	b.SpareMaxIdle = 300 * time.Millisecond
	s := &Spares{}
	defer s.Close()
	warm(t, s, b)
	eventually(t, "the pool gone", func() bool { return s.poolCount() == 0 })
	eventually(t, "the spares closed", func() bool { open, _, _ := m.counts(); return open == 0 })
	eventually(t, "the goroutines ended", func() bool { return runtime.NumGoroutine() <= base })
	if st := s.Stats(); st.Discarded < 2 {
		t.Errorf("stats %+v", st)
	}

}

// TestSpareAges: with logins coming, each spare is still replaced once it
// is SpareMaxIdle old.
func TestSpareAges(t *testing.T) {
	m := startMultiFake(t)
	b := fakeBackend(m, 1)
	b.SpareMaxIdle = 400 * time.Millisecond
	s := &Spares{}
	defer s.Close()
	warm(t, s, b)
	first := s.idleSpares(b)
	// Keep the backend in use without taking the spare: POP3 logins are
	// another pool, so touch the pool directly.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		s.pools[poolKey{b, b.Addr}].lastUsed = time.Now()
		s.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	now := s.idleSpares(b)
	if len(now) == 1 && now[0] == first[0] {
		t.Errorf("spare %s outlived SpareMaxIdle", first[0])
	}
	if s.poolCount() != 1 {
		t.Errorf("the pool of a backend in use went away")
	}
}

// TestSpareNotForProxyProtocol: a backend that takes a PROXY header gets
// no spares.
func TestSpareNotForProxyProtocol(t *testing.T) {
	for _, b := range []*routing.Backend{
		{Name: "pp", SpareConnections: 2, ProxyProtocol: true},
		{Name: "", SpareConnections: 2}, // a route record's literal address
		{Name: "off"},
	} {
		if hasSpares(b) {
			t.Errorf("%+v has spares", b)
		}
	}
	m := startMultiFake(t)
	b := fakeBackend(m, 2)
	b.Name = ""
	s := &Spares{}
	defer s.Close()
	loginAndClose(t, s.Login, b)
	time.Sleep(100 * time.Millisecond)
	if _, accepted, _ := m.counts(); accepted != 1 || s.poolCount() != 0 {
		t.Errorf("%d connections, %d pools; want 1 and 0", accepted, s.poolCount())
	}
}

// TestSpareUnusable: a backend marked down or drained loses its spares and
// gets no new ones until it is usable again.
func TestSpareUnusable(t *testing.T) {
	m := startMultiFake(t)
	b := fakeBackend(m, 2)
	var down atomic.Bool
	s := &Spares{Usable: func(*routing.Backend) bool { return !down.Load() }}
	defer s.Close()
	warm(t, s, b)
	down.Store(true)
	eventually(t, "the spares closed", func() bool { open, _, _ := m.counts(); return open == 0 })
	_, accepted, _ := m.counts()
	time.Sleep(200 * time.Millisecond)
	if _, now, _ := m.counts(); now != accepted {
		t.Errorf("%d spares dialled to a backend that is down", now-accepted)
	}
	down.Store(false)
	eventually(t, "spares again", func() bool { return len(s.idleSpares(b)) == 2 })
}

// TestSpareClose: Close closes every spare and ends every goroutine; later
// logins dial as usual.
func TestSpareClose(t *testing.T) {
	m := startMultiFake(t)
	base := runtime.NumGoroutine()
	b := fakeBackend(m, 3)
	s := &Spares{}
	warm(t, s, b)
	s.Close()
	eventually(t, "the spares closed", func() bool { open, _, _ := m.counts(); return open == 0 })
	eventually(t, "the goroutines ended", func() bool { return runtime.NumGoroutine() <= base })
	loginAndClose(t, s.Login, b)
	time.Sleep(50 * time.Millisecond)
	if s.poolCount() != 0 {
		t.Error("a closed Spares made a pool")
	}
	s.Close() // twice is fine
}

// TestSpareBackoff: a backend that refuses connections is not hammered.
func TestSpareBackoff(t *testing.T) {
	addr, n := silentBackend(t, true)
	b := &routing.Backend{Name: "bad", Addr: addr, SpareConnections: 2}
	s := &Spares{}
	defer s.Close()
	if _, err := s.Login(context.Background(), b, alice, nil); err == nil {
		t.Fatal("login to a backend that does not greet worked")
	}
	time.Sleep(1500 * time.Millisecond)
	// The login, a spare at once, one a second later.
	if got := n.Load(); got > 3 {
		t.Errorf("%d connections in 1.5s", got)
	}
}

// BenchmarkSpareLogin measures the upstream login alone (what a client
// waits for after its AUTHENTICATE), on a fresh connection and on a
// spare, against an in-memory backend. The spares' refill runs in the background between two logins, as it would between
// two clients' logins.
func BenchmarkSpareLogin(b *testing.B) {
	mem, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice", Password: "secret"})
	if err != nil {
		b.Fatal(err)
	}
	defer mem.Close()
	run := func(b *testing.B, addr string) {
		b.Run("fresh", func(b *testing.B) {
			benchLogins(b, Login, &routing.Backend{Name: "be", Addr: addr})
		})
		b.Run("spare", func(b *testing.B) {
			s := &Spares{}
			defer s.Close()
			benchLogins(b, s.Login, &routing.Backend{Name: "be", Addr: addr, SpareConnections: 2})
			b.StopTimer()
			st := s.Stats()
			b.ReportMetric(float64(st.Taken)/float64(st.Taken+st.Missed), "hit-ratio")
		})
	}
	// Against the test Dovecot (a login process per connection, ~20-30 ms
	// a login here) the same measure is too slow to keep in the suite.
	run(b, mem.Addr())
}

func benchLogins(b *testing.B, login func(context.Context, *routing.Backend, Credentials, *IDInfo) (*Result, error), bk *routing.Backend) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		res, err := login(context.Background(), bk, alice, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		res.Conn.Close()
		time.Sleep(500 * time.Microsecond)
		b.StartTimer()
	}
}
