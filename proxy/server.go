package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// Mode is the protocol a listener speaks and how it starts TLS.
type Mode int

const (
	// ImplicitTLS is IMAP with TLS from the first byte (port 993).
	ImplicitTLS Mode = iota
	// StartTLS is IMAP in cleartext, upgraded with STARTTLS (port 143).
	StartTLS
	// POP3S is POP3 with TLS from the first byte (port 995).
	POP3S
	// POP3 is POP3 in cleartext, upgraded with STLS (port 110).
	POP3
)

func (m Mode) String() string {
	switch m {
	case StartTLS:
		return "imap"
	case POP3S:
		return "pop3s"
	case POP3:
		return "pop3"
	}
	return "imaps"
}

// implicitTLS reports whether TLS starts with the first byte.
func (m Mode) implicitTLS() bool { return m == ImplicitTLS || m == POP3S }

// isPOP3 reports whether the listener speaks POP3 rather than IMAP.
func (m Mode) isPOP3() bool { return m == POP3S || m == POP3 }

// Protocol is the name of the listener's protocol, as AuthRequest.Protocol
// and nginx's Auth-Protocol give it: "imap" or "pop3".
func (m Mode) Protocol() string {
	if m.isPOP3() {
		return "pop3"
	}
	return "imap"
}

// Listener describes one accepting socket.
type Listener struct {
	Name string
	Mode Mode
	// CleartextLogin lists the networks whose clients may log in without
	// TLS on a StartTLS listener. Empty means TLS is always required.
	CleartextLogin []netip.Prefix
	// ProxyProtocolFrom lists the networks of the load balancers in front
	// of the listener: their connections must start with a PROXY protocol
	// header (v1 or v2), whose client address is then the session's, and
	// connections from anywhere else must not. Empty means no header is
	// expected.
	ProxyProtocolFrom []netip.Prefix
}

func (l *Listener) allowsCleartext(a netip.Addr) bool { return inNetworks(l.CleartextLogin, a) }

// Limits bound what an unauthenticated client can make Portico do. Zero
// fields take the defaults in parentheses.
type Limits struct {
	MaxLine          int           // command line, without literals (8192)
	MaxLiteral       int           // one literal before login (1024)
	MaxAuthLine      int           // one AUTHENTICATE response line (16384)
	PreauthTimeout   time.Duration // absolute, from accept to login (60s)
	HandshakeTimeout time.Duration // TLS handshake (10s)
	MaxBadCommands   int           // then * BYE (3)
	MaxAuthFailures  int           // per connection, then * BYE (3)
	AuthFailureDelay time.Duration // minimum time to answer a failed login (2s); negative means none
	LookupTimeout    time.Duration // routing lookup (2s)
	AuthTimeout      time.Duration // the Authenticator's decision (LookupTimeout)
	IdleTimeout      time.Duration // spliced session without traffic in either direction (31m)
	ProxyTTL         int           // x-proxy-ttl sent to backends (5)
	KickTimeout      time.Duration // a kicked session's wait for a response boundary, then it is closed (10s)
	LoginGateTimeout time.Duration // longest wait in Server.LoginGate (15s)

	// Connection limits; zero means none unless a default is given. See
	// abuse.go for the answers.
	MaxConnections       int // client connections at once (none; FileLimitConnections fits the open-file limit)
	MaxPreauthPerIP      int // sessions not logged in per client address (none)
	IPv6Prefix           int // per-address limits count IPv6 clients by this prefix (64)
	MaxSessionsPerUser   int // sessions of a user, with Server.UserSessions fleet-wide (none)
	MaxSessionsPerUserIP int // sessions of a user from one client address (none)
	MaxLoginsInProgress  int // backend logins in progress (1000)
	MaxLoginsPerBackend  int // backend logins in progress to one backend (100)
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.MaxLine, 8192)
	def(&l.MaxLiteral, 1024)
	def(&l.MaxAuthLine, 16384)
	def(&l.MaxBadCommands, 3)
	def(&l.MaxAuthFailures, 3)
	def(&l.ProxyTTL, 5)
	def(&l.MaxLoginsInProgress, 1000)
	def(&l.MaxLoginsPerBackend, 100)
	if l.IPv6Prefix <= 0 || l.IPv6Prefix > 128 {
		l.IPv6Prefix = 64
	}
	defd(&l.PreauthTimeout, 60*time.Second)
	defd(&l.HandshakeTimeout, 10*time.Second)
	defd(&l.AuthFailureDelay, 2*time.Second)
	defd(&l.LookupTimeout, 2*time.Second)
	if l.AuthTimeout <= 0 {
		l.AuthTimeout = l.LookupTimeout
	}
	if l.KickTimeout <= 0 {
		l.KickTimeout = DefaultKickTimeout
	}
	if l.LoginGateTimeout <= 0 {
		l.LoginGateTimeout = 15 * time.Second
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = 31 * time.Minute
	}
	if l.IdleTimeout < 30*time.Minute {
		// RFC 3501 §5.4: IDLE clients may stay silent for 29 minutes.
		l.IdleTimeout = 30 * time.Minute
	}
	return l
}

// DefaultKickTimeout is Limits.KickTimeout's default.
const DefaultKickTimeout = 10 * time.Second

// LoginFunc logs in to a backend on behalf of a client. It is
// upstream.Login unless a test replaces it.
type LoginFunc func(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error)

// Server accepts IMAP clients, authenticates them, finds their backend
// through Router, logs in there and splices the two connections.
//
// Serve is the one place where connections are accepted and splice the one
// place where they are joined; everything between is a session.
type Server struct {
	// Router finds a user's backend. Required.
	Router routing.Router
	// TLSConfig is used for implicit TLS and STARTTLS. Required unless
	// every listener is a StartTLS listener used only by trusted
	// cleartext networks.
	TLSConfig *tls.Config
	// DefaultDomain is appended to user names without a domain.
	DefaultDomain string
	Limits        Limits
	// Logger receives one line per session end; nil means slog.Default().
	Logger *slog.Logger
	// Login defaults to upstream.Login, and LoginPOP3, for the sessions of
	// POP3 listeners, to upstream.LoginPOP3.
	Login     LoginFunc
	LoginPOP3 LoginFunc

	// LoginGate, if set, is asked before every login, after the user name
	// is normalised and before routing. It may wait, for instance to hold a
	// user's new logins while the user is moved to another backend, until
	// ctx is done (Limits.LoginGateTimeout, or shutdown). A non-nil error
	// answers the login with NO [UNAVAILABLE]; the client may retry.
	LoginGate func(ctx context.Context, user string) error

	// LoginGateAgain, if set, replaces LoginGate for its second ask,
	// made once the login is registered (so that a kick finds it): a
	// gate that read shared state the first time may answer from what
	// it learnt since. Nil means LoginGate again.
	LoginGateAgain func(ctx context.Context, user string) error

	// Limiter, if set, limits failed logins per client address and user
	// (see LoginLimiter); nil means none.
	Limiter LoginLimiter

	// Authenticator, if set, decides logins at the proxy (see
	// Authenticator); nil leaves the decision to the backends.
	Authenticator Authenticator

	// OAuth offers AUTHENTICATE XOAUTH2 and OAUTHBEARER (see OAuth); the
	// zero value does not.
	OAuth OAuth

	// OnSplice is called when a session is logged in and spliced, and
	// OnEnd when that session has ended, once each per session and in that
	// order. They run on the session's goroutine and must not block: a
	// registry that writes to Redis should queue the update.
	OnSplice func(SessionInfo)
	OnEnd    func(SessionInfo)

	// TrustedNetworks are front proxies and webmails whose ID fields
	// x-originating-ip/-port, x-connected-ip/-port, x-session-id and
	// x-proxy-ttl are believed, and whose own address is exempt from
	// Limits.MaxPreauthPerIP.
	TrustedNetworks []netip.Prefix
	// UserSessions, if set, counts a user's logged-in sessions fleet-wide
	// for Limits.MaxSessionsPerUser; without it, this server's are
	// counted. An error lets the login through.
	UserSessions func(ctx context.Context, user string) (int, error)

	// Observer, if set, is told about handshakes and logins, for metrics.
	Observer Observer

	initOnce sync.Once
	// cur is what new connections are accepted under: the fields above at
	// the first use, then each Reconfigure. See reconfig.go.
	cur atomic.Pointer[settings]

	mu        sync.Mutex
	listeners map[net.Listener]*atomic.Pointer[Listener]
	sessions  map[*session]struct{}
	spliced   map[*session]struct{}            // logged-in sessions
	byUser    map[string]map[*session]struct{} // the same, by user
	closing   atomic.Bool
	done      chan struct{} // closed when shutting down
	// ctx is cancelled when the remaining sessions are closed; lookups and
	// backend logins of every session run under it.
	ctx    context.Context
	cancel context.CancelFunc
	// stopping is cancelled as soon as shutdown begins: waits that only
	// delay a login (LoginGate) end then.
	stopping context.Context
	stop     context.CancelFunc
	wg       sync.WaitGroup

	// poller parks idle sessions' backend->client directions; made at the
	// first splice, closed by Shutdown once no session is left.
	pollerOnce sync.Once
	poller     *poller
	pollerShut sync.Once

	ab abuse // limits and loop guards; see abuse.go

	// For Stats, guarded by mu: bytes of the sessions that have ended, and
	// connections by the listener description they were accepted under.
	endedToBackend, endedToClient int64
	conns                         map[*Listener]int
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.cur.Store(s.exportedSettings())
		s.listeners = make(map[net.Listener]*atomic.Pointer[Listener])
		s.sessions = make(map[*session]struct{})
		s.conns = make(map[*Listener]int)
		s.spliced = make(map[*session]struct{})
		s.byUser = make(map[string]map[*session]struct{})
		s.done = make(chan struct{})
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.stopping, s.stop = context.WithCancel(s.ctx)
	})
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Serve accepts connections on ln until Shutdown or Close and handles each
// in its own goroutine. Serve takes ownership of ln and closes it; closing
// ln earlier (a listener removed by a reload) ends Serve with an error
// that wraps net.ErrClosed. UpdateListener changes l for the connections
// accepted from then on.
func (s *Server) Serve(ln net.Listener, l Listener) error {
	s.init()
	if l.Mode.implicitTLS() && s.current().tlsConfig == nil {
		ln.Close()
		return fmt.Errorf("proxy: listener %q: implicit TLS without a TLS config", l.Name)
	}
	lp := new(atomic.Pointer[Listener])
	lp.Store(&l)
	if !s.trackListener(ln, lp) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.untrackListener(ln)
	s.addListener(ln.Addr(), l.Name)
	s.reserveSpare() // released by Shutdown
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			if outOfFiles(err) && s.refuseWithSpare(ln, lp.Load()) {
				// A client was refused with the spare descriptor: the
				// backlog moves on, and the next accept may work.
				delay = 0
				continue
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || outOfFiles(err) {
				// Out of file descriptors or similar: back off, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				name := lp.Load().Name
				s.logLimit("accept", name, "accept failed; retrying", "listener", name, "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("proxy: listener %q: accept: %w", lp.Load().Name, err)
		}
		delay = 0
		sess := newSession(s, lp.Load(), s.current(), c)
		switch s.addSession(sess) {
		case addClosed:
			c.Close()
			return ErrServerClosed
		case addRefused:
			// Past the connection limit, with refusals enough under way.
			s.logLimit("max_connections", "", "too many connections: new ones are refused", "listener", sess.ln.Name, "max", sess.set.limits.MaxConnections)
			c.Close()
			continue
		}
		go sess.serve() // the session calls s.sessionDone when it ends
	}
}

// refuseWithSpare gives up the spare descriptor to accept one connection
// and close it at once, with a BYE where that costs nothing (no TLS, no
// PROXY header to read first). It reports whether a connection was
// refused; the spare is taken back in any case, if the process has a
// descriptor for it.
func (s *Server) refuseWithSpare(ln net.Listener, l *Listener) bool {
	// The accept must not block with the spare given up: the client that
	// made accept fail may be gone.
	dl, ok := ln.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return false
	}
	s.ab.mu.Lock()
	freed := s.ab.spare.release()
	s.ab.mu.Unlock()
	if !freed {
		s.reserveSpare()
		return false
	}
	dl.SetDeadline(time.Now().Add(10 * time.Millisecond))
	c, err := ln.Accept()
	dl.SetDeadline(time.Time{})
	if err == nil {
		s.logLimit("out_of_files", l.Name, "out of file descriptors: new connections are refused", "listener", l.Name)
		if !l.Mode.implicitTLS() && len(l.ProxyProtocolFrom) == 0 {
			c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			if l.Mode.isPOP3() {
				io.WriteString(c, "-ERR [SYS/TEMP] Server busy, try again later\r\n")
			} else {
				io.WriteString(c, "* BYE [UNAVAILABLE] Server busy, try again later\r\n")
			}
		}
		c.Close()
	}
	s.reserveSpare()
	return err == nil
}

// reserveSpare takes the spare descriptor back, if it is not held and the
// server is not shutting down.
func (s *Server) reserveSpare() {
	s.ab.mu.Lock()
	if !s.closing.Load() {
		s.ab.spare.acquire()
	}
	s.ab.mu.Unlock()
}

type addResult int

const (
	addOK addResult = iota
	addClosed
	addRefused
)

// addSession tracks a new session, within Limits.MaxConnections: past it,
// the session is only admitted to be told BYE (sessionAbuse.overflow), as
// long as fewer than maxRefusing are.
func (s *Server) addSession(sess *session) addResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return addClosed
	}
	if max := sess.set.limits.MaxConnections; max > 0 && len(s.sessions)-s.ab.refusing >= max {
		if s.ab.refusing >= maxRefusing {
			return addRefused
		}
		s.ab.refusing++
		sess.ab.overflow = true
	}
	s.sessions[sess] = struct{}{}
	s.conns[sess.ln]++
	// Under s.mu, so that it happens before Shutdown's wg.Wait: Shutdown
	// sets closing under s.mu too, and a session added after that is
	// refused above.
	s.wg.Add(1)
	return addOK
}

// sessionDone is called once by every session that Serve started.
func (s *Server) sessionDone(sess *session) {
	s.releasePreauth(sess)
	s.mu.Lock()
	delete(s.sessions, sess)
	if n := s.conns[sess.ln]; n > 1 {
		s.conns[sess.ln] = n - 1
	} else {
		delete(s.conns, sess.ln)
	}
	if sess.ab.overflow {
		s.ab.refusing--
	}
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) trackListener(ln net.Listener, l *atomic.Pointer[Listener]) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.listeners[ln] = l
	return true
}

func (s *Server) untrackListener(ln net.Listener) {
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
	s.removeListener(ln.Addr())
}

// Shutdown stops accepting, says `* BYE [UNAVAILABLE]` to every client that
// has not logged in yet, and waits for spliced sessions to end by
// themselves until ctx is done; it then closes those that remain.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	if s.closing.CompareAndSwap(false, true) {
		close(s.done)
		s.stop()
	}
	for ln := range s.listeners {
		ln.Close()
	}
	s.ab.mu.Lock()
	s.ab.spare.release()
	s.ab.mu.Unlock()
	for sess := range s.sessions {
		sess.interruptPreauth()
	}
	s.mu.Unlock()

	finished := make(chan struct{})
	go func() { s.wg.Wait(); close(finished) }()
	select {
	case <-finished:
		s.closePoller()
		return nil
	case <-ctx.Done():
	}
	s.closeSessions()
	<-finished
	s.closePoller()
	return ctx.Err()
}

// splicePoller returns the server's poller, or nil where there is none
// (not Linux, or epoll refused): sessions then keep two goroutines.
func (s *Server) splicePoller() *poller {
	s.pollerOnce.Do(func() {
		pl, err := newPoller()
		if err != nil {
			s.logger().Debug("proxy: idle sessions keep a goroutine per direction", "err", err)
			return
		}
		s.poller = pl
	})
	return s.poller
}

// closePoller runs once every session has ended: none is parked any more.
func (s *Server) closePoller() {
	s.pollerShut.Do(func() {
		// A session cannot start a poller from now on: there is none left
		// to splice, and new ones are refused.
		s.pollerOnce.Do(func() {})
		if s.poller != nil {
			s.poller.close()
		}
	})
}

// Close stops accepting and closes every connection at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Shutdown(ctx)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (s *Server) closeSessions() {
	// The cancel is what ends spliced sessions properly: each splice runs
	// closeBoth when s.ctx is done, and only closeBoth can end a direction
	// parked in the poller (a closed socket raises no epoll event).
	// sess.close then covers sessions that have not reached the splice.
	s.cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	for sess := range s.sessions {
		sess.close()
	}
}
