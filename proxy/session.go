package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/proxy/wire"
	"github.com/portico-mail/portico/routing"
)

// action tells the command loop what to do after a command.
type action int

const (
	actContinue action = iota
	actClose           // the reply is written; close the connection
	actSplice          // logged in: hand the connection over to the backend
)

// session is one client connection from accept until it is closed. Before
// login it owns the client connection and reads it through a pooled bufio;
// after login it hands both connections to splice, which owns them from
// then on.
type session struct {
	srv *Server
	ln  *Listener
	set *settings // the server's configuration at accept; see reconfig.go

	raw  net.Conn // as accepted
	conn net.Conn // raw, or the *tls.Conn over it
	br   *bufio.Reader
	bw   *bufio.Writer
	dec  *wire.Decoder

	id       string
	client   netip.AddrPort
	local    netip.AddrPort
	start    time.Time
	deadline time.Time // absolute pre-auth deadline

	userName   string // POP3: the name of a USER command, for PASS
	tlsVersion string // "" while cleartext
	askedCaps  bool   // the client sent CAPABILITY before login
	clientID   [][2]string
	bad        int
	authFails  int
	verdict    LimitVerdict // the limiter's answer about the login under way
	auth       AuthResult   // the Authenticator's answer about it
	// oauthChallenge, during an OAuth login, is the error challenge a
	// refusal sends before its tagged NO (RFC 7628 §3.2.2).
	oauthChallenge string

	loginTag string // tag of the login command being answered
	user     string
	backend  *routing.Backend
	up       *upstream.Result
	outcome  string

	mu          sync.Mutex // guards spliced and backendConn against close
	spliced     bool
	backendConn net.Conn // once spliced
	closed      atomic.Bool

	sp    *splicer  // created at hand-off
	since time.Time // when the splice began

	// Guarded by Server.mu; see sessions.go.
	reg        regState
	regUser    string      // the user this session is registered under
	pendingBye []byte      // a kick that came before the splice ran
	kickTimer  *time.Timer // a scheduled kick (KickBackend)

	ab sessionAbuse // PROXY header, limits, loop signals; see abuse.go

	toBackend, toClient int64
}

var (
	sessionPrefix = func() string {
		var b [4]byte
		rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
	sessionCounter atomic.Uint64

	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}
)

func newSession(srv *Server, ln *Listener, set *settings, c net.Conn) *session {
	s := &session{
		srv:   srv,
		ln:    ln,
		set:   set,
		raw:   c,
		conn:  c,
		id:    sessionPrefix + "-" + strconv.FormatUint(sessionCounter.Add(1), 36),
		start: time.Now(),
	}
	s.client = addrPort(c.RemoteAddr())
	s.local = addrPort(c.LocalAddr())
	return s
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// pop3 reports whether the session speaks POP3 (pop3.go) rather than IMAP.
func (s *session) pop3() bool { return s.ln.Mode.isPOP3() }

// serve runs the session until it ends or is handed to splice in a new
// goroutine, whose stack starts small: the deep stack of the TLS handshake
// and the login would otherwise stay with an idle session for its life.
func (s *session) serve() {
	handedOff := false
	defer func() {
		if !handedOff {
			s.finish()
		}
	}()
	s.deadline = s.start.Add(s.set.limits.PreauthTimeout)
	// An absolute deadline: bytes trickled in one at a time do not extend it.
	s.setDeadline(s.deadline)
	if !s.admit() {
		return
	}

	if s.ln.Mode.implicitTLS() {
		if err := s.handshake(s.raw); err != nil {
			s.outcome = "tls handshake failed"
			s.srv.logger().Debug("tls handshake failed", "session", s.id, "client", s.client, "err", err)
			return
		}
	}
	s.setupIO()
	s.writeGreeting()
	if s.flush() != nil {
		s.outcome = "write failed"
		return
	}
	if !s.afterGreeting() {
		return
	}
	for {
		act := s.next()
		if err := s.flush(); err != nil && act != actSplice {
			if s.outcome == "" {
				s.outcome = "write failed"
			}
			return
		}
		switch act {
		case actClose:
			return
		case actSplice:
			if backend := s.handOff(); backend != nil {
				handedOff = true
				go s.splice(backend)
			}
			return
		}
	}
}

// next reads and runs one command.
func (s *session) next() action {
	if s.pop3() {
		return s.nextPOP3()
	}
	cmd, err := s.dec.ReadCommand()
	if err != nil {
		return s.readError(err)
	}
	switch cmd.Name {
	case "CAPABILITY":
		return s.handleCapability(cmd)
	case "NOOP":
		return s.handleNoop(cmd)
	case "LOGOUT":
		return s.handleLogout(cmd)
	case "ID":
		return s.handleID(cmd)
	case "STARTTLS":
		return s.handleStartTLS(cmd)
	case "LOGIN":
		return s.handleLogin(cmd)
	case "AUTHENTICATE":
		return s.handleAuthenticate(cmd)
	}
	if authenticatedCommands[cmd.Name] {
		return s.badCommand(cmd.Tag, "Log in first")
	}
	return s.badCommand(cmd.Tag, "Unknown command")
}

// authenticatedCommands are valid only after login; naming them in the
// answer helps a confused client without echoing anything it sent.
var authenticatedCommands = map[string]bool{
	"SELECT": true, "EXAMINE": true, "CREATE": true, "DELETE": true, "RENAME": true,
	"SUBSCRIBE": true, "UNSUBSCRIBE": true, "LIST": true, "LSUB": true, "STATUS": true,
	"APPEND": true, "CHECK": true, "CLOSE": true, "EXPUNGE": true, "SEARCH": true,
	"FETCH": true, "STORE": true, "COPY": true, "MOVE": true, "UID": true, "IDLE": true,
	"ENABLE": true, "COMPRESS": true, "NAMESPACE": true, "UNSELECT": true,
	"GETQUOTA": true, "GETQUOTAROOT": true, "SETQUOTA": true, "GETACL": true,
	"SETACL": true, "MYRIGHTS": true, "LISTRIGHTS": true, "DELETEACL": true,
	"GETMETADATA": true, "SETMETADATA": true, "NOTIFY": true, "UNAUTHENTICATE": true,
}

// readError answers a command that could not be read. It reports whether
// the session goes on.
func (s *session) readError(err error) action {
	var werr *wire.Error
	switch {
	case errors.As(err, &werr):
		tag := werr.Tag
		if tag == "" {
			tag = "*"
		}
		s.writeStatus(tag, imap.StatusResponseTypeBad, imap.ResponseCode(werr.Code), werr.Text)
		if werr.Fatal {
			s.writeStatus("*", imap.StatusResponseTypeBye, "", "Closing connection")
			s.outcome = "protocol error"
			return actClose
		}
		return s.countBad()
	case s.srv.closing.Load():
		s.bye(imap.ResponseCodeUnavailable, "Server shutting down")
		s.outcome = "shutdown"
	case isTimeout(err):
		s.bye("", "Timeout before login")
		s.outcome = "preauth timeout"
	default:
		s.outcome = "client closed before login"
	}
	return actClose
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bye says goodbye after a read deadline has expired, which needs a fresh
// write deadline.
func (s *session) bye(code imap.ResponseCode, text string) {
	s.conn.SetWriteDeadline(time.Now().Add(time.Second))
	s.writeStatus("*", imap.StatusResponseTypeBye, code, text)
}

// badCommand answers a command that is not valid here and closes the
// connection after too many of them: a client that sends garbage is more
// likely an attack (ALPACA) than a confused mail client.
func (s *session) badCommand(tag, text string) action {
	s.writeStatus(tag, imap.StatusResponseTypeBad, "", text)
	return s.countBad()
}

func (s *session) countBad() action {
	s.bad++
	if s.bad >= s.set.limits.MaxBadCommands {
		s.writeStatus("*", imap.StatusResponseTypeBye, "", "Too many invalid commands")
		s.outcome = "too many invalid commands"
		return actClose
	}
	return actContinue
}

// setupIO (re)creates the pre-auth reader and writer over s.conn.
func (s *session) setupIO() {
	s.releaseIO()
	s.br = readerPool.Get().(*bufio.Reader)
	s.br.Reset(s.conn)
	s.bw = writerPool.Get().(*bufio.Writer)
	s.bw.Reset(s.conn)
	s.dec = &wire.Decoder{
		MaxLine:    s.set.limits.MaxLine,
		MaxLiteral: s.set.limits.MaxLiteral,
		Continue: func() error {
			s.bw.WriteString("+ Ready for literal data\r\n")
			return s.bw.Flush()
		},
		AllowLiteral: func(cmd string) bool { return cmd == "LOGIN" || cmd == "ID" },
	}
	s.dec.Reset(s.br)
}

// releaseIO returns the pre-auth buffers to their pools; an idle spliced
// session holds none.
func (s *session) releaseIO() {
	if s.br != nil {
		s.br.Reset(nil)
		readerPool.Put(s.br)
		s.br = nil
	}
	if s.bw != nil {
		s.bw.Reset(nil)
		writerPool.Put(s.bw)
		s.bw = nil
	}
	s.dec = nil
}

func (s *session) flush() error {
	if s.bw == nil {
		return nil
	}
	return s.bw.Flush()
}

// writeStatus writes a status response: in IMAP as given, in POP3 as
// +OK or -ERR with the code translated (pop3Status), the tag dropped. The
// login path, shared by both protocols, answers through it.
func (s *session) writeStatus(tag string, typ imap.StatusResponseType, code imap.ResponseCode, text string) {
	if s.pop3() {
		writePOP3Status(s.bw, typ, code, text)
		return
	}
	wire.WriteStatus(s.bw, tag, typ, code, text)
}

// canAuth reports whether credentials may be sent on this connection now.
func (s *session) canAuth() bool {
	return s.tlsVersion != "" || s.ln.allowsCleartext(s.peerAddr())
}

// caps lists what Portico offers before login: only what it implements
// itself, since the backend's list comes with the login reply.
func (s *session) caps() []string {
	caps := []string{string(imap.CapIMAP4rev1), string(imap.CapLiteralMinus), string(imap.CapSASLIR), string(imap.CapID)}
	if s.canStartTLS() {
		caps = append(caps, string(imap.CapStartTLS))
	}
	if s.canAuth() {
		caps = append(caps, "AUTH=PLAIN", "AUTH=LOGIN")
		if s.set.oauth.Enabled {
			caps = append(caps, "AUTH=XOAUTH2", "AUTH=OAUTHBEARER")
		}
	} else {
		caps = append(caps, string(imap.CapLoginDisabled))
	}
	return caps
}

func (s *session) writeGreeting() {
	if s.pop3() {
		s.writeStatus("", imap.StatusResponseTypeOK, "", "Portico ready.")
		return
	}
	s.writeStatus("*", imap.StatusResponseTypeOK, imap.ResponseCode("CAPABILITY "+strings.Join(s.caps(), " ")), "Portico ready")
}

// handshake runs the TLS server handshake over c within the handshake
// timeout (never past the pre-auth deadline) and makes it the session's
// connection.
func (s *session) handshake(c net.Conn) error {
	tc := tls.Server(&batchConn{Conn: c}, s.tlsConfig())
	hd := time.Now().Add(s.set.limits.HandshakeTimeout)
	if s.deadline.Before(hd) {
		hd = s.deadline
	}
	s.setDeadline(hd)
	t0 := time.Now()
	// No context: a per-handshake context would leave a children map in
	// the parent for the session's life. Shutdown and close interrupt
	// through the connection instead.
	err := tc.Handshake()
	s.setDeadline(s.deadline)
	if err != nil {
		return err
	}
	s.conn = tc
	s.tlsVersion = tls.VersionName(tc.ConnectionState().Version)
	if o := s.srv.Observer; o != nil {
		o.Handshake(time.Since(t0))
	}
	return nil
}

// tlsConfig is the listeners' TLS configuration, with the ALPN protocol
// of this session's.
func (s *session) tlsConfig() *tls.Config {
	if s.pop3() {
		return s.set.pop3TLS
	}
	return s.set.tlsConfig
}

// setDeadline sets the deadline of the client connection. Once the server
// is shutting down, reads fail at once instead: this call may have undone
// the read deadline interruptPreauth set a moment earlier.
//
// Writes get a little longer than reads, so that a command read just
// before the deadline is still answered (or the BYE still sent).
func (s *session) setDeadline(t time.Time) {
	s.raw.SetReadDeadline(t)
	s.raw.SetWriteDeadline(t.Add(writeGrace))
	if s.srv.closing.Load() {
		s.raw.SetReadDeadline(time.Now())
	}
}

// writeGrace is how much longer than reads writes may take before login.
const writeGrace = 5 * time.Second

// interruptPreauth makes a session that has not logged in yet say BYE:
// its blocked read returns and readError sees that the server is closing.
// Spliced sessions are left alone.
func (s *session) interruptPreauth() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.spliced {
		s.raw.SetReadDeadline(time.Now())
	}
}

// close ends the session at once, whatever its state.
func (s *session) close() {
	s.closed.Store(true)
	s.raw.Close()
	s.mu.Lock()
	if s.backendConn != nil {
		s.backendConn.Close()
	}
	s.mu.Unlock()
}

// handOff answers the login and passes on the bytes each side sent past
// the login exchange. It returns the backend connection, to be spliced, or
// nil when either side is already gone (the backend connection is then
// closed).
func (s *session) handOff() net.Conn {
	up := s.up
	s.up = nil
	backendConn := up.Conn
	s.sp = &splicer{Idle: s.set.limits.IdleTimeout, poller: s.srv.splicePoller()}
	if s.pop3() {
		s.writeStatus("", imap.StatusResponseTypeOK, "", "Logged in.")
		s.sp.pop = new(pop3Framer)
	} else {
		// A client that asked CAPABILITY before login may ignore response
		// codes (Dovecot's heuristic), so it also gets the list as an
		// untagged line.
		caps := strings.Join(up.Caps, " ")
		if s.askedCaps && caps != "" {
			s.bw.WriteString("* CAPABILITY " + caps + "\r\n")
		}
		var code imap.ResponseCode
		if caps != "" {
			code = imap.ResponseCode("CAPABILITY " + caps)
		}
		s.writeStatus(s.loginTag, imap.StatusResponseTypeOK, code, "Logged in")
		s.sp.up.heads = true
	}
	// What the backend sent after its OK follows our OK, in order.
	s.bw.Write(up.Buffered)
	// The framers start at the boundary after the login exchange and
	// follow what each side sent past it.
	s.sp.feedDown(up.Buffered)
	if err := s.bw.Flush(); err != nil {
		backendConn.Close()
		s.outcome = "client gone at login"
		return nil
	}
	// What the client pipelined behind its login command goes to the backend.
	if n := s.br.Buffered(); n > 0 {
		p, _ := s.br.Peek(n)
		s.sp.feedUp(p)
		backendConn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := backendConn.Write(p); err != nil {
			backendConn.Close()
			s.outcome = "backend gone at login"
			return nil
		}
	}
	s.releaseIO()
	s.conn.SetDeadline(time.Time{})
	backendConn.SetDeadline(time.Time{})

	s.mu.Lock()
	s.spliced = true
	s.backendConn = backendConn
	s.mu.Unlock()
	if s.closed.Load() {
		backendConn.Close()
	}
	// The session may have been asked to stop while logging in.
	if s.srv.closing.Load() {
		s.raw.SetReadDeadline(time.Time{})
	}
	s.outcome = "logged in"
	return backendConn
}

// splice starts a logged-in session. It owns both connections from now on.
// It returns once the session's directions run or are parked; spliceDone
// ends the session later, in whichever goroutine ends its last direction,
// so that an idle session holds no goroutine.
func (s *session) splice(backendConn net.Conn) {
	p := s.sp
	p.client, p.backend = s.conn, backendConn
	s.since = time.Now()
	bye := s.srv.startSplice(s)
	if f := s.srv.OnSplice; f != nil {
		f(s.info())
	}
	if bye != nil {
		// Kicked between its login and now; the login reply is out.
		p.kick(bye, s.set.limits.KickTimeout)
	}
	p.start(s.srv.ctx, s.conn, backendConn, s.spliceDone)
}

// spliceDone runs once both directions of the splice are over.
func (s *session) spliceDone(toBackend, toClient int64, err error) {
	defer s.finish()
	p := s.sp
	s.srv.unregister(s)
	s.toBackend, s.toClient = toBackend, toClient
	switch {
	case p.kicked():
		s.outcome = "kicked"
	case err == nil || errors.Is(err, io.EOF):
		s.outcome = "logged out"
	case s.closed.Load() || s.srv.ctx.Err() != nil:
		s.outcome = "closed by proxy"
	default:
		s.outcome = "connection error"
	}
	if f := s.srv.OnEnd; f != nil {
		f(s.info())
	}
}

// closeNotifyTimeout bounds the close_notify of a session closed before
// login: a client that does not read cannot hold the session longer.
const closeNotifyTimeout = time.Second

// closeClient closes the client connection. A session that ends before
// login over TLS (LOGOUT, a BYE for a limit, a timeout or the shutdown)
// sends close_notify first, so that the client sees the end of the
// stream rather than a truncation: strict clients (openssl s_client) fail
// and log a truncation attack otherwise. A spliced session has passed on
// the backend's end of stream, or been ended by the proxy, in splice.
func (s *session) closeClient() {
	s.mu.Lock()
	spliced := s.spliced
	s.mu.Unlock()
	if tc, ok := s.conn.(*tls.Conn); ok && !spliced && !s.closed.Load() {
		// tls.Conn.Close sends close_notify under its own 5 s write
		// deadline; closing the socket under it cuts that short.
		t := time.AfterFunc(closeNotifyTimeout, func() { s.raw.Close() })
		tc.Close()
		t.Stop()
	}
	s.raw.Close()
}

// finish closes the client connection and logs the one line per session.
func (s *session) finish() {
	defer s.srv.sessionDone(s)
	s.srv.unregister(s)
	s.flush()
	s.releaseIO()
	s.closeClient()
	if s.up != nil {
		s.up.Conn.Close()
	}
	attrs := []any{
		"session", s.id,
		"listener", s.ln.Name,
		"client", s.client.String(),
		"user", s.user,
		"backend", s.backend.String(),
		"tls", s.tlsVersion,
		"duration", time.Since(s.start).Round(time.Millisecond),
		"bytes_to_backend", s.toBackend,
		"bytes_to_client", s.toClient,
		"outcome", s.outcome,
	}
	s.srv.logger().Log(context.Background(), s.endLevel(), "session end", attrs...)
}
