// Package upstream logs in to a backend IMAP server (Login) or POP3 server
// (LoginPOP3) on behalf of a client and hands back the raw connection, with
// nothing lost, ready to be spliced.
//
// Typical use:
//
//	res, err := upstream.Login(ctx, backend, upstream.Credentials{User: user, Secret: password}, &upstream.IDInfo{ClientIP: ip})
//	switch {
//	case errors.Is(err, upstream.ErrAuthFailed): // tag NO [AUTHENTICATIONFAILED]
//	case err != nil:                             // tag NO [UNAVAILABLE]; try another backend
//	default:
//		// write "tag OK [CAPABILITY res.Caps...] Logged in" to the client,
//		// then res.Buffered, then splice the client with res.Conn.
//	}
//
// go-imap's imapclient cannot be used for this: its reader goroutine consumes
// backend bytes past the login reply and it sends commands of its own. This
// client reads through a small bufio.Reader that it owns, stops at the tagged
// OK of the login (or of the CAPABILITY that follows it) and returns what was
// read beyond it in Result.Buffered.
package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/portico-mail/portico/routing"
)

// ErrAuthFailed means the backend rejected the credentials: a tagged NO
// without [UNAVAILABLE] or [INUSE], or in POP3 a -ERR without one of the codes that
// say the credentials are not the cause ([SYS/TEMP], [SYS/PERM],
// [IN-USE], [LOGIN-DELAY]). Every other error from Login and LoginPOP3
// means the backend is unavailable. Errors wrapping it never contain the
// password.
var ErrAuthFailed = errors.New("upstream: authentication failed")

// ErrInUse and ErrLoginDelay are the unavailable errors of a backend that
// said why: the mailbox is in use by another session (IMAP's INUSE, RFC
// 5530; POP3's IN-USE, RFC 3206), or the user may not log in this often
// (POP3's LOGIN-DELAY, RFC 2449). The proxy passes the
// code on, so that a client retries later instead of asking its user for
// the password again.
var (
	ErrInUse      = errors.New("upstream: mailbox in use")
	ErrLoginDelay = errors.New("upstream: logged in too recently")
)

const (
	defaultConnectTimeout = 10 * time.Second
	defaultLoginTimeout   = 30 * time.Second

	readBufSize    = 4 << 10
	maxLineLen     = 64 << 10  // one line of a response, without its literals
	maxLiteralLen  = 1 << 20   // one literal inside an untagged response
	maxResponseLen = 4 << 20   // a whole response, literals included
	maxCapturedLen = 256 << 10 // untagged responses kept for the client after login

	// Dovecot's limits for ID (imap-login-cmd-id.c).
	maxIDKeyLen   = 30
	maxIDValueLen = 1024
	maxIDPairs    = 30
)

// IDInfo is what Login forwards in an ID command to backends with
// Backend.ForwardID set (Dovecot honours the x-* fields from its
// login_trusted_networks only). To backends with Backend.ProxyProtocol set,
// the client and connected addresses go in a PROXY protocol v2 header
// instead, and no ID is sent.
type IDInfo struct {
	ClientIP      string // x-originating-ip: the real client
	ClientPort    int    // x-originating-port
	ConnectedIP   string // x-connected-ip: the proxy address the client reached
	ConnectedPort int    // x-connected-port
	SessionID     string // x-session-id: shows up in the backend's log lines
	TTL           int    // x-proxy-ttl: the backend's proxy loop guard; 0 = not sent
	// ClientFields are the client's own ID fields, forwarded after ours.
	// Keys starting with "x-" are dropped so a client cannot spoof ours.
	ClientFields [][2]string
}

// Credentials say whom Login logs in as, and how. LoginPOP3 takes them the
// same way, with POP3's AUTH for AUTHENTICATE and USER/PASS for LOGIN.
type Credentials struct {
	// User is the user to log in as: the client's user, or with AuthzID
	// set the master user who logs in on the user's behalf.
	User string
	// Secret is User's password, or the OAuth 2.0 token of Mechanism
	// XOAUTH2 or OAUTHBEARER.
	Secret string
	// AuthzID, when set, is the user whose mailbox a master user (User)
	// opens: AUTHENTICATE PLAIN with authzid, as Dovecot's master passdb
	// takes it. A backend without AUTH=PLAIN is refused, never sent a
	// LOGIN that would name the master user alone.
	AuthzID string
	// Mechanism is "" for a password (AUTHENTICATE PLAIN where the
	// backend offers it, else LOGIN), or a SASL mechanism the client
	// used and the backend must offer too ("XOAUTH2", "OAUTHBEARER").
	Mechanism string
	// AllowCleartext lets a Mechanism's token go to a backend without
	// TLS (routing.Plain); without it such a login is refused. Passwords
	// are not affected.
	AllowCleartext bool
}

// Result is a logged-in backend connection.
type Result struct {
	// Conn is a *net.TCPConn or a *tls.Conn with no deadline set. The caller
	// owns it.
	Conn net.Conn
	// Buffered holds backend bytes read past the final tagged OK (and any
	// untagged responses received while Login asked for the capabilities),
	// or past the +OK of a POP3 login.
	// Write them to the client before splicing.
	Buffered []byte
	// Caps are the backend's post-login capabilities, without UNAUTHENTICATE
	// (a spliced client must not become someone else on this backend).
	Caps []string
	// TLS reports whether Conn is encrypted.
	TLS bool
}

// Login connects to b, sends a PROXY protocol v2 header if
// b.ProxyProtocol is set, upgrades to TLS as b.TLS says, forwards id if
// b.ForwardID is set (and b.ProxyProtocol is not) and the backend supports
// ID, and logs in as user.
//
// b.ConnectTimeout bounds the connect (and the handshake of implicit TLS);
// b.LoginTimeout bounds everything after it. Cancelling ctx aborts the login.
func Login(ctx context.Context, b *routing.Backend, cred Credentials, id *IDInfo) (*Result, error) {
	if b == nil {
		return nil, errors.New("upstream: nil backend")
	}
	return dial(ctx, b, b.Addr, b.String(), cred, id, imapProtocol)
}

// protocol is what IMAP and POP3 logins differ in. prepare reads the
// greeting and the capabilities and upgrades to TLS: all a spare
// connection has done before a login takes it (Spares). login sends the
// credentials and reads the capabilities after them.
type protocol struct {
	prepare func(c *conn) error
	login   func(c *conn, cred Credentials, id *IDInfo) (*Result, error)
}

var (
	imapProtocol = protocol{(*conn).prepareIMAP, (*conn).loginIMAP}
	pop3Protocol = protocol{(*conn).preparePOP3, (*conn).loginPOP3}
)

// dial is the part of a login that does not depend on the protocol: it
// connects to addr (b.Addr or b.POP3Addr), sends the PROXY header, does the
// handshake of implicit TLS, then runs p under b.LoginTimeout and ctx, and
// closes the connection if that fails. label names the backend in errors.
func dial(ctx context.Context, b *routing.Backend, addr, label string, cred Credentials, id *IDInfo, p protocol) (*Result, error) {
	if err := checkCredentials(label, cred); err != nil {
		return nil, err
	}
	c, done, err := connect(ctx, b, addr, label, id)
	if err != nil {
		return nil, err
	}
	defer done()
	c.password = cred.Secret
	var res *Result
	err = c.run(ctx, func() (err error) {
		if err = p.prepare(c); err == nil {
			res, err = p.login(c, cred, id)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// checkCredentials refuses what no backend can accept.
func checkCredentials(label string, cred Credentials) error {
	if strings.IndexByte(cred.User, 0) >= 0 || strings.IndexByte(cred.Secret, 0) >= 0 || strings.IndexByte(cred.AuthzID, 0) >= 0 {
		// Neither LOGIN nor PLAIN can carry a NUL, so no backend can accept it.
		return fmt.Errorf("upstream: %s: credentials contain NUL: %w", label, ErrAuthFailed)
	}
	return nil
}

// connect opens the connection of a login to addr, under b.ConnectTimeout:
// TCP, the PROXY header if b.ProxyProtocol is set, and the handshake of
// implicit TLS. The caller owns the connection and must call done (which
// ends the WithConnected hook of ctx) when the login returns.
func connect(ctx context.Context, b *routing.Backend, addr, label string, id *IDInfo) (c *conn, done func(), err error) {
	connectTimeout := b.ConnectTimeout
	if connectTimeout <= 0 {
		connectTimeout = defaultConnectTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	// No TCP keep-alive towards backends: they are on the operator's
	// network, a spliced session ends with its client (whose socket has
	// keep-alive, see proxy.Listen), and it saves four system calls per
	// login.
	d := net.Dialer{KeepAlive: -1}
	nc, err := d.DialContext(cctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("upstream: %s: connect: %w", label, err)
	}
	raw := nc.(*net.TCPConn)
	done = connectedHook(ctx, raw)
	if b.ProxyProtocol {
		// The header comes first, before TLS and before the greeting.
		raw.SetWriteDeadline(time.Now().Add(connectTimeout))
		src, dst := id.addrs()
		if err := writeProxyHeader(raw, src, dst); err != nil {
			raw.Close()
			done()
			return nil, nil, fmt.Errorf("upstream: %s: proxy protocol header: %w", label, err)
		}
	}

	c = &conn{b: b, addr: addr, label: label, raw: raw, nc: raw}
	if b.TLS == routing.ImplicitTLS {
		tc := tls.Client(raw, c.tlsConfig())
		if err := tc.HandshakeContext(cctx); err != nil {
			raw.Close()
			done()
			return nil, nil, fmt.Errorf("upstream: %s: tls handshake: %s%w", label, tlsReason(err), err)
		}
		c.nc = tc
	}
	return c, done, nil
}

// connectedHook calls the WithConnected function of ctx, if any, with
// both ends of raw, and returns what it returned (or a no-op).
func connectedHook(ctx context.Context, raw *net.TCPConn) (done func()) {
	if h, ok := ctx.Value(connectedKey{}).(func(local, remote netip.AddrPort) func()); ok {
		return h(raw.LocalAddr().(*net.TCPAddr).AddrPort(), raw.RemoteAddr().(*net.TCPAddr).AddrPort())
	}
	return func() {}
}

// run runs f, the exchange of a login or the preparation of a spare,
// under b.LoginTimeout and ctx: deadlines instead of a goroutine per
// read, which ctx moves to the past. It closes the connection if f fails
// or ctx ends first, and clears the deadline otherwise.
func (c *conn) run(ctx context.Context, f func() error) error {
	loginTimeout := c.b.LoginTimeout
	if loginTimeout <= 0 {
		loginTimeout = defaultLoginTimeout
	}
	c.raw.SetDeadline(time.Now().Add(loginTimeout))
	stop := context.AfterFunc(ctx, func() { c.raw.SetDeadline(time.Unix(1, 0)) })
	err := f()
	if !stop() && err == nil {
		err = fmt.Errorf("upstream: %s: %w", c.label, context.Cause(ctx))
	}
	if err != nil {
		c.nc.Close()
		if ctx.Err() != nil && !errors.Is(err, ErrAuthFailed) {
			err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
		return err
	}
	c.raw.SetDeadline(time.Time{})
	return nil
}

type connectedKey struct{}

// WithConnected returns a context that makes Login call connected with
// the local and remote addresses of its backend connection as soon as it
// is connected, and the function connected returns when Login returns. A
// proxy uses it to recognise its own logins coming back to it (a routing
// loop).
func WithConnected(ctx context.Context, connected func(local, remote netip.AddrPort) (done func())) context.Context {
	return context.WithValue(ctx, connectedKey{}, connected)
}

// conn is one login in progress.
type conn struct {
	b        *routing.Backend
	addr     string // what was dialled: b.Addr or b.POP3Addr
	label    string // names the backend in errors
	raw      *net.TCPConn
	nc       net.Conn // raw or a *tls.Conn over it
	br       *bufio.Reader
	tagN     int
	password string // only to redact backend texts that echo it
	queued   []byte // commands to send with the next write
	skip     string // tag of a queued command whose reply is ignored

	// What prepare learnt, for login.
	caps         []string // IMAP capabilities
	pop3Caps     pop3Caps // POP3 CAPA
	greetXCLIENT bool     // POP3 greeting announced XCLIENT
	// answered is set once the backend has answered the credentials:
	// from then on the connection may be logged in, and a login on a
	// spare must not be retried on another connection.
	answered bool
}

func (c *conn) tlsConfig() *tls.Config {
	cfg := c.b.TLSConfig
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(c.addr)
		if err != nil {
			host = c.addr
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	return cfg
}

func (c *conn) errorf(format string, args ...any) error {
	return fmt.Errorf("upstream: %s: "+format, append([]any{c.label}, args...)...)
}

// prepareIMAP reads the greeting and the capabilities, and does STARTTLS
// where b.TLS says so.
func (c *conn) prepareIMAP() error {
	c.br = bufio.NewReaderSize(c.nc, readBufSize)
	caps, err := c.greeting()
	if err != nil {
		return err
	}
	if caps == nil {
		if caps, err = c.capability(); err != nil {
			return err
		}
	}

	if upgraded, err := c.upgradeTLS(hasCap(caps, "STARTTLS"), "STARTTLS", c.startTLS); err != nil {
		return err
	} else if upgraded {
		if caps, err = c.capability(); err != nil {
			return err
		}
	}
	c.caps = caps
	return nil
}

// loginIMAP logs in on a prepared connection.
func (c *conn) loginIMAP(cred Credentials, id *IDInfo) (*Result, error) {
	caps := c.caps
	if hasCap(caps, "LOGINDISABLED") {
		return nil, c.errorf("backend advertises LOGINDISABLED (refusing to send credentials)")
	}

	// One way of passing the client's address per backend: with a PROXY
	// header, the ID fields would only be a second, weaker claim.
	if c.b.ForwardID && !c.b.ProxyProtocol && id != nil && hasCap(caps, "ID") {
		c.forwardID(id)
	}

	postCaps, err := c.authenticate(caps, cred)
	if err != nil {
		return nil, err
	}
	var captured []byte
	if postCaps == nil {
		if postCaps, captured, err = c.postLoginCapability(); err != nil {
			return nil, err
		}
	}

	buffered := captured
	if n := c.br.Buffered(); n > 0 {
		p, _ := c.br.Peek(n)
		buffered = append(buffered, p...)
	}
	c.br = nil
	_, isTLS := c.nc.(*tls.Conn)
	return &Result{Conn: c.nc, Buffered: buffered, Caps: filterCaps(postCaps), TLS: isTLS}, nil
}

// greeting reads the server greeting. Dovecot may send
// "* OK Waiting for authentication process to respond.." first; that line is
// taken as the greeting, and as it carries no capabilities, the CAPABILITY
// command that follows skips the real greeting as an untagged response.
func (c *conn) greeting() (caps []string, err error) {
	line, err := c.readResponse(nil)
	if err != nil {
		// With TLS 1.3 a backend checks a client certificate after our
		// side of the handshake is done: its refusal arrives here.
		return nil, c.errorf("greeting: %s%w", tlsReason(err), err)
	}
	r, ok := parseResponse(line)
	if !ok || r.tag != "*" {
		return nil, c.errorf("greeting: not IMAP: %q", c.clean(line, 80))
	}
	switch r.kind {
	case "OK":
		return r.caps, nil
	case "BYE":
		return nil, c.errorf("greeting: BYE %s", c.clean(r.text, 200))
	case "PREAUTH":
		// Also what a MitM sends to strip STARTTLS.
		return nil, c.errorf("greeting: unexpected PREAUTH")
	}
	return nil, c.errorf("greeting: not IMAP: %q", c.clean(line, 80))
}

// capability sends CAPABILITY and returns the last list received.
func (c *conn) capability() ([]string, error) {
	tag := c.nextTag()
	if err := c.write(tag + " CAPABILITY\r\n"); err != nil {
		return nil, c.errorf("capability: %w", err)
	}
	var caps []string
	r, err := c.readTagged(tag, func(u response, _ []byte) {
		if u.kind == "CAPABILITY" {
			caps = u.caps
		}
	})
	if err != nil {
		return nil, c.errorf("capability: %w", err)
	}
	if r.kind != "OK" {
		return nil, c.errorf("capability: %s %s", r.kind, c.clean(r.text, 200))
	}
	if r.caps != nil {
		caps = r.caps
	}
	if caps == nil {
		return nil, c.errorf("capability: no capability list")
	}
	return caps, nil
}

func (c *conn) startTLS() error {
	tag := c.nextTag()
	if err := c.write(tag + " STARTTLS\r\n"); err != nil {
		return c.errorf("starttls: %w", err)
	}
	r, err := c.readTagged(tag, nil)
	if err != nil {
		return c.errorf("starttls: %w", err)
	}
	if r.kind != "OK" {
		return c.errorf("starttls: %s %s", r.kind, c.clean(r.text, 200))
	}
	return c.handshake("starttls")
}

// upgradeTLS, for a backend reached with STARTTLS (Backend.TLS), runs
// start (IMAP's STARTTLS or POP3's STLS, named cmd) and reports true: the
// caller then asks for the capabilities again, since those read before
// TLS may have been tampered with. A backend that does not offer it is
// refused, never used in clear.
func (c *conn) upgradeTLS(offered bool, cmd string, start func() error) (bool, error) {
	switch c.b.TLS {
	case routing.StartTLS:
		if !offered {
			return false, c.errorf("%s not advertised (refusing to continue in cleartext)", cmd)
		}
		return true, start()
	case routing.Plain, routing.ImplicitTLS:
		return false, nil
	}
	return false, c.errorf("unknown TLS mode %d", c.b.TLS)
}

// handshake starts TLS over the raw connection once the backend has said
// yes to cmd. Whatever was read past that answer came in cleartext and
// may be an injected response (CVE-2011-0411 style): it is dropped with
// the bufio.
func (c *conn) handshake(cmd string) error {
	tc := tls.Client(c.raw, c.tlsConfig())
	if err := tc.Handshake(); err != nil {
		return c.errorf("%s: tls handshake: %s%w", cmd, tlsReason(err), err)
	}
	c.nc = tc
	c.br = bufio.NewReaderSize(tc, readBufSize)
	return nil
}

// forwardID queues the ID command in front of the login command, which
// carries it in the same write: one round trip to the backend instead of
// two, as Dovecot's own proxy does. The backend runs ID first, so the
// login is logged with the client's address. A NO or BAD to ID is not
// fatal: the login works, only with the proxy's address in the backend's
// logs; readTagged skips its reply.
func (c *conn) forwardID(id *IDInfo) {
	tag := c.nextTag()
	c.queued = append(c.queued, tag+" ID "+idArgs(id)+"\r\n"...)
	c.skip = tag
}

// idArgs builds the parenthesised ID list: our x-* fields first, then the
// client's fields without x-* keys, within Dovecot's limits.
func idArgs(id *IDInfo) string {
	var sb strings.Builder
	sb.WriteByte('(')
	n := 0
	add := func(k, v string) {
		if n >= maxIDPairs || k == "" || len(k) > maxIDKeyLen || !safeIDString(k) {
			return
		}
		v = sanitizeIDValue(v)
		if n > 0 {
			sb.WriteByte(' ')
		}
		writeQuoted(&sb, k)
		sb.WriteByte(' ')
		writeQuoted(&sb, v)
		n++
	}
	if id.ClientIP != "" {
		add("x-originating-ip", id.ClientIP)
	}
	if id.ClientPort > 0 {
		add("x-originating-port", strconv.Itoa(id.ClientPort))
	}
	if id.ConnectedIP != "" {
		add("x-connected-ip", id.ConnectedIP)
	}
	if id.ConnectedPort > 0 {
		add("x-connected-port", strconv.Itoa(id.ConnectedPort))
	}
	if id.SessionID != "" {
		add("x-session-id", id.SessionID)
	}
	if id.TTL > 0 {
		add("x-proxy-ttl", strconv.Itoa(id.TTL))
	}
	for _, f := range id.ClientFields {
		if len(f[0]) >= 2 && (f[0][0] == 'x' || f[0][0] == 'X') && f[0][1] == '-' {
			continue
		}
		add(f[0], f[1])
	}
	if n == 0 {
		return "NIL"
	}
	sb.WriteByte(')')
	return sb.String()
}

// safeIDString reports whether s can go into a quoted string as is.
func safeIDString(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// sanitizeIDValue keeps printable ASCII (a quoted string cannot carry CR, LF
// or NUL, and 8-bit bytes are not valid in IMAP4rev1 quoted strings) and
// truncates to Dovecot's limit.
func sanitizeIDValue(v string) string {
	if len(v) > maxIDValueLen {
		v = v[:maxIDValueLen]
	}
	if safeIDString(v) {
		return v
	}
	b := []byte(v)
	for i, ch := range b {
		if ch < 0x20 || ch > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

// writeQuoted writes s as a quoted string; s must be printable ASCII.
func writeQuoted(w io.ByteWriter, s string) {
	w.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			w.WriteByte('\\')
		}
		w.WriteByte(s[i])
	}
	w.WriteByte('"')
}

// authenticate logs in with AUTHENTICATE PLAIN when offered, else LOGIN. It
// returns the capabilities from the tagged OK or from an untagged CAPABILITY
// received before it, or nil.
func (c *conn) authenticate(caps []string, cred Credentials) ([]string, error) {
	tag := c.nextTag()
	var postCaps []string
	onUntagged := func(u response, _ []byte) {
		if u.kind == "CAPABILITY" {
			postCaps = u.caps
		}
	}
	var r response
	var err error
	switch {
	case cred.Mechanism != "":
		r, err = c.authOAuth(tag, caps, cred, onUntagged)
	case hasCap(caps, "AUTH=PLAIN"):
		r, err = c.authPlain(tag, caps, cred.AuthzID, cred.User, cred.Secret, onUntagged)
	case cred.AuthzID != "":
		return nil, c.errorf("login: AUTH=PLAIN not advertised (a master user login needs it)")
	default:
		r, err = c.loginCmd(tag, caps, cred.User, cred.Secret, onUntagged)
	}
	if err != nil {
		return nil, err
	}
	c.answered = true
	switch r.kind {
	case "OK":
		if r.caps != nil {
			postCaps = r.caps
		}
		return postCaps, nil
	case "NO":
		if strings.EqualFold(r.code, "UNAVAILABLE") {
			return nil, c.errorf("login: NO [UNAVAILABLE] %s", c.clean(r.text, 200))
		}
		if strings.EqualFold(r.code, "INUSE") {
			return nil, fmt.Errorf("upstream: %s: login: NO [INUSE] %s: %w", c.label, c.clean(r.text, 200), ErrInUse)
		}
		code := ""
		if r.code != "" {
			code = "[" + c.clean(r.code, 40) + "] "
		}
		return nil, fmt.Errorf("upstream: %s: login: NO %s%s: %w", c.label, code, c.clean(r.text, 200), ErrAuthFailed)
	}
	return nil, c.errorf("login: %s %s", r.kind, c.clean(r.text, 200))
}

func (c *conn) authPlain(tag string, caps []string, authzid, user, password string, onUntagged func(response, []byte)) (response, error) {
	ir := base64.StdEncoding.EncodeToString([]byte(authzid + "\x00" + user + "\x00" + password))
	r, err := c.saslStart(tag, "PLAIN", ir, caps, onUntagged)
	if err != nil {
		return response{}, err
	}
	if r.kind == "+" {
		// PLAIN has a single step: a further challenge is a protocol error.
		// Cancel so the backend answers and the line stays in sync.
		if err := c.write("*\r\n"); err != nil {
			return response{}, c.errorf("authenticate: %w", err)
		}
		if _, err := c.readTagged(tag, nil); err != nil {
			return response{}, c.errorf("authenticate: %w", err)
		}
		return response{}, c.errorf("authenticate: unexpected continuation")
	}
	return r, nil
}

// saslStart sends AUTHENTICATE mech with the initial response ir: on the
// command line where the backend takes SASL-IR, else after its first
// continuation. It returns the backend's next answer: the tagged result,
// or a further "+" challenge for the caller.
func (c *conn) saslStart(tag, mech, ir string, caps []string, onUntagged func(response, []byte)) (response, error) {
	if hasCap(caps, "SASL-IR") || hasCap(caps, "IMAP4rev2") {
		if err := c.write(tag + " AUTHENTICATE " + mech + " " + ir + "\r\n"); err != nil {
			return response{}, c.errorf("authenticate: %w", err)
		}
	} else {
		if err := c.write(tag + " AUTHENTICATE " + mech + "\r\n"); err != nil {
			return response{}, c.errorf("authenticate: %w", err)
		}
		r, err := c.readTagged(tag, onUntagged)
		if err != nil {
			return response{}, c.errorf("authenticate: %w", err)
		}
		if r.kind != "+" {
			return r, nil
		}
		if err := c.write(ir + "\r\n"); err != nil {
			return response{}, c.errorf("authenticate: %w", err)
		}
	}
	r, err := c.readTagged(tag, onUntagged)
	if err != nil {
		return response{}, c.errorf("authenticate: %w", err)
	}
	return r, nil
}

// loginCmd sends LOGIN with each argument quoted when that is safe, else as a
// literal: non-synchronizing if the backend allows it, else synchronizing
// (waiting for "+" before the bytes). A password can never end a command
// early, whatever bytes it holds.
func (c *conn) loginCmd(tag string, caps []string, user, password string, onUntagged func(response, []byte)) (response, error) {
	literalPlus := hasCap(caps, "LITERAL+")
	literalMinus := hasCap(caps, "LITERAL-") || hasCap(caps, "IMAP4rev2")
	var cmd bytes.Buffer
	cmd.WriteString(tag + " LOGIN")
	for i, arg := range [2]string{user, password} {
		cmd.WriteByte(' ')
		if quotable(arg) {
			writeQuoted(&cmd, arg)
		} else if literalPlus || (literalMinus && len(arg) <= 4096) {
			fmt.Fprintf(&cmd, "{%d+}\r\n", len(arg))
			cmd.WriteString(arg)
		} else {
			fmt.Fprintf(&cmd, "{%d}\r\n", len(arg))
			if err := c.write(cmd.String()); err != nil {
				return response{}, c.errorf("login: %w", err)
			}
			cmd.Reset()
			r, err := c.readTagged(tag, onUntagged)
			if err != nil {
				return response{}, c.errorf("login: %w", err)
			}
			if r.kind != "+" {
				return r, nil // the backend refused the literal
			}
			cmd.WriteString(arg)
		}
		if i == 1 {
			cmd.WriteString("\r\n")
		}
	}
	if err := c.write(cmd.String()); err != nil {
		return response{}, c.errorf("login: %w", err)
	}
	r, err := c.readTagged(tag, onUntagged)
	if err != nil {
		return response{}, c.errorf("login: %w", err)
	}
	if r.kind == "+" {
		return response{}, c.errorf("login: unexpected continuation")
	}
	return r, nil
}

// quotable reports whether s can be sent as a quoted string: 7-bit, no
// control characters, and short.
func quotable(s string) bool {
	if len(s) > 1024 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// postLoginCapability asks for the capabilities after login. Untagged
// responses other than CAPABILITY received meanwhile (an ALERT, EXISTS...)
// are returned raw, to be passed on to the client.
func (c *conn) postLoginCapability() (caps []string, captured []byte, err error) {
	tag := c.nextTag()
	if err := c.write(tag + " CAPABILITY\r\n"); err != nil {
		return nil, nil, c.errorf("capability: %w", err)
	}
	var overflow bool
	r, err := c.readTagged(tag, func(u response, raw []byte) {
		if u.kind == "CAPABILITY" {
			caps = u.caps
			return
		}
		if len(captured)+len(raw) > maxCapturedLen {
			overflow = true
			return
		}
		captured = append(captured, raw...)
	})
	if err != nil {
		return nil, nil, c.errorf("capability: %w", err)
	}
	if overflow {
		return nil, nil, c.errorf("capability: too much unsolicited data after login")
	}
	if r.kind != "OK" {
		return nil, nil, c.errorf("capability: %s %s", r.kind, c.clean(r.text, 200))
	}
	if r.caps != nil {
		caps = r.caps
	}
	if caps == nil {
		return nil, nil, c.errorf("capability: no capability list")
	}
	return caps, captured, nil
}

func (c *conn) nextTag() string {
	c.tagN++
	return "p" + strconv.Itoa(c.tagN)
}

// write sends s, after the queued commands if any, in one write.
func (c *conn) write(s string) error {
	if len(c.queued) > 0 {
		b := append(c.queued, s...)
		c.queued = nil
		_, err := c.nc.Write(b)
		clear(b) // it may hold a password
		return err
	}
	_, err := io.WriteString(c.nc, s)
	return err
}

// readTagged reads responses until the tagged one for tag or a continuation
// request, passing untagged ones to onUntagged (which may be nil).
func (c *conn) readTagged(tag string, onUntagged func(response, []byte)) (response, error) {
	var bye string
	for {
		raw, err := c.readResponse(nil)
		if err != nil {
			if bye != "" && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
				return response{}, byeError(c.clean(bye, 200))
			}
			return response{}, err
		}
		r, ok := parseResponse(raw)
		if !ok {
			return response{}, fmt.Errorf("garbage response: %q", c.clean(raw, 80))
		}
		switch {
		case r.tag == "+":
			return r, nil
		case r.tag == "*":
			if r.kind == "BYE" {
				bye = r.text
			}
			if onUntagged != nil {
				onUntagged(r, raw)
			}
		case r.tag == tag:
			return r, nil
		case r.tag == c.skip && c.skip != "":
			c.skip = "" // the reply to a queued ID
		default:
			return response{}, fmt.Errorf("response with unknown tag %q", c.clean([]byte(r.tag), 40))
		}
	}
}

// byeError is a backend that said BYE and closed the connection.
type byeError string

func (e byeError) Error() string { return "BYE " + string(e) }

// readResponse reads one response: a line, plus the literals announced at
// the ends of its lines and the lines that follow them. It returns the raw
// bytes, CRLFs included.
func (c *conn) readResponse(dst []byte) ([]byte, error) {
	start := len(dst)
	for {
		lineStart := len(dst)
		for {
			frag, err := c.br.ReadSlice('\n')
			if len(dst)-lineStart+len(frag) > maxLineLen {
				return nil, errors.New("response line too long")
			}
			dst = append(dst, frag...)
			if err == nil {
				break
			}
			if err != bufio.ErrBufferFull {
				if err == io.EOF && len(dst) > start {
					err = io.ErrUnexpectedEOF
				}
				return nil, err
			}
		}
		n, ok := literalSize(dst[lineStart:])
		if !ok {
			return dst, nil
		}
		if n > maxLiteralLen || len(dst)-start+int(n) > maxResponseLen {
			return nil, errors.New("literal in response too large")
		}
		litStart := len(dst)
		dst = append(dst, make([]byte, n)...)
		if _, err := io.ReadFull(c.br, dst[litStart:]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// literalSize parses "{n}\r\n" (or "{n+}", "~{n}") at the end of line.
func literalSize(line []byte) (int64, bool) {
	line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	i := bytes.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	digits := bytes.TrimSuffix(line[i+1:len(line)-1], []byte("+"))
	if len(digits) == 0 || len(digits) > 10 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(digits), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// response is the part of a response line Login cares about.
type response struct {
	tag  string   // "*", "+" or a command tag
	kind string   // OK, NO, BAD, BYE, PREAUTH, CAPABILITY, ... (upper case); "+" for continuations
	code string   // response code name, e.g. UNAVAILABLE
	caps []string // from [CAPABILITY ...] or a CAPABILITY response
	text string
}

// parseResponse parses the first line of a raw response.
func parseResponse(raw []byte) (response, bool) {
	line := raw
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimSuffix(line, []byte("\r"))
	s := string(line)
	if s == "+" || strings.HasPrefix(s, "+ ") {
		return response{tag: "+", kind: "+", text: strings.TrimPrefix(strings.TrimPrefix(s, "+"), " ")}, true
	}
	tag, rest, ok := strings.Cut(s, " ")
	if !ok || tag == "" || !isAtom(tag) && tag != "*" {
		return response{}, false
	}
	r := response{tag: tag}
	kind, rest, _ := strings.Cut(rest, " ")
	r.kind = strings.ToUpper(kind)
	if r.kind == "" {
		return response{}, false
	}
	if tag == "*" && r.kind == "CAPABILITY" {
		r.caps = strings.Fields(rest)
		if r.caps == nil {
			r.caps = []string{}
		}
		return r, true
	}
	switch r.kind {
	case "OK", "NO", "BAD", "BYE", "PREAUTH":
	default:
		if tag != "*" {
			return response{}, false // a tagged response is always a status
		}
		return r, true // untagged data (EXISTS, ID, ...): not parsed
	}
	if strings.HasPrefix(rest, "[") {
		if end := strings.IndexByte(rest, ']'); end > 0 {
			code := rest[1:end]
			r.text = strings.TrimPrefix(rest[end+1:], " ")
			name, args, _ := strings.Cut(code, " ")
			r.code = strings.ToUpper(name)
			if r.code == "CAPABILITY" {
				r.caps = strings.Fields(args)
			}
			return r, true
		}
	}
	r.text = rest
	return r, true
}

func isAtom(s string) bool {
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch <= 0x20 || ch >= 0x7f || strings.IndexByte(`(){%*"\`, ch) >= 0 {
			return false
		}
	}
	return true
}

func hasCap(caps []string, name string) bool {
	for _, c := range caps {
		if strings.EqualFold(c, name) {
			return true
		}
	}
	return false
}

func filterCaps(caps []string) []string {
	out := make([]string, 0, len(caps))
	for _, c := range caps {
		if !strings.EqualFold(c, "UNAUTHENTICATE") {
			out = append(out, c)
		}
	}
	return out
}

// clean makes backend text fit for an error message: printable ASCII only,
// bounded, and without the password should the backend echo it.
func (c *conn) clean(p any, max int) string {
	var s string
	switch v := p.(type) {
	case string:
		s = v
	case []byte:
		s = string(v)
	}
	if c.password != "" {
		s = strings.ReplaceAll(s, c.password, "<redacted>")
	}
	s = strings.TrimRight(s, "\r\n")
	if len(s) > max {
		s = s[:max] + "..."
	}
	b := []byte(s)
	for i, ch := range b {
		if ch < 0x20 || ch > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}
