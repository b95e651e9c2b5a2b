package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/portico-mail/portico/routing"
)

// POP3 (RFC 1939) with CAPA (RFC 2449), STLS (RFC 2595), AUTH with an
// initial response (RFC 5034) and response codes (RFC 2449, 3206).

const (
	maxPOP3Line = 8 << 10  // one response line
	maxCAPALen  = 64 << 10 // a whole CAPA response
	// RFC 5034 §4: an AUTH command with its initial response may not
	// exceed 255 octets; a longer response follows the "+" instead.
	maxAUTHLine = 255
	// Dovecot ignores a longer SESSION (LOGIN_MAX_SESSION_ID_LEN).
	maxXclientSession = 64
)

// LoginPOP3 is Login for POP3: it connects to b.POP3Addr, sends a PROXY
// protocol v2 header if b.ProxyProtocol is set, upgrades to TLS as b.TLS
// says (STLS for routing.StartTLS), forwards id with XCLIENT if
// b.ForwardID is set (and b.ProxyProtocol is not) and the backend offers
// it, and logs in as cred says: AUTH PLAIN where offered, else USER and
// PASS, or cred.Mechanism.
//
// The Result's Caps are nil: POP3 has no capabilities to announce after
// login. Its Buffered holds what the backend sent past the "+OK" of the
// login, to be written to the client after the proxy's own "+OK".
// Errors are as Login's: ErrAuthFailed for a "-ERR" to the login (except
// [SYS/TEMP] and [IN-USE], RFC 3206, which say the backend cannot serve
// the user now), the backend unavailable otherwise.
func LoginPOP3(ctx context.Context, b *routing.Backend, cred Credentials, id *IDInfo) (*Result, error) {
	if b == nil {
		return nil, errors.New("upstream: nil backend")
	}
	if b.POP3Addr == "" {
		return nil, fmt.Errorf("upstream: %s: backend serves no POP3", b)
	}
	return dial(ctx, b, b.POP3Addr, pop3Label(b), cred, id, pop3Protocol)
}

// pop3Label names b's POP3 service in errors.
func pop3Label(b *routing.Backend) string {
	if b.Name != "" {
		return b.Name + "(pop3 " + b.POP3Addr + ")"
	}
	return "pop3 " + b.POP3Addr
}

// pop3Caps are the lines of a CAPA response by their upper-case first
// word, with the rest of the line as arguments; nil when the backend does
// not know CAPA.
type pop3Caps map[string][]string

func (caps pop3Caps) has(name string) bool {
	_, ok := caps[name]
	return ok
}

// sasl reports whether the SASL line lists mech.
func (caps pop3Caps) sasl(mech string) bool {
	for _, m := range caps["SASL"] {
		if strings.EqualFold(m, mech) {
			return true
		}
	}
	return false
}

// preparePOP3 reads the greeting and CAPA, and does STLS where b.TLS says
// so.
func (c *conn) preparePOP3() error {
	c.br = bufio.NewReaderSize(c.nc, readBufSize)
	line, err := c.pop3Line()
	if err != nil {
		// With TLS 1.3 a backend checks a client certificate after our
		// side of the handshake is done: its refusal arrives here.
		return c.errorf("greeting: %s%w", tlsReason(err), err)
	}
	st, text := pop3Status(line)
	switch st {
	case "+OK":
	case "-ERR":
		return c.errorf("greeting: -ERR %s", c.clean(text, 200))
	default:
		return c.errorf("greeting: not POP3: %q", c.clean(line, 80))
	}
	// Dovecot's pop3-login announces XCLIENT in its greeting, to trusted
	// clients only ("+OK [XCLIENT] Dovecot ready."), not in CAPA.
	c.greetXCLIENT = strings.EqualFold(pop3Code(text), "XCLIENT")

	caps, err := c.capa()
	if err != nil {
		return err
	}
	if upgraded, err := c.upgradeTLS(caps.has("STLS"), "STLS", c.stls); err != nil {
		return err
	} else if upgraded {
		// The greeting's [XCLIENT] may have been tampered with too, but
		// at worst that sends an XCLIENT the backend refuses, or none.
		if caps, err = c.capa(); err != nil {
			return err
		}
	}
	c.pop3Caps = caps
	return nil
}

// loginPOP3 logs in on a prepared connection.
func (c *conn) loginPOP3(cred Credentials, id *IDInfo) (*Result, error) {
	caps, xclient := c.pop3Caps, c.greetXCLIENT
	var err error
	// One way of passing the client's address per backend, as with ID.
	var xclientErr string
	if c.b.ForwardID && !c.b.ProxyProtocol && id != nil && (xclient || caps.has("XCLIENT")) {
		if xclientErr, err = c.xclient(id); err != nil {
			return nil, err
		}
	}

	line, err := c.pop3Authenticate(caps, cred)
	if err != nil {
		return nil, err
	}
	c.answered = true
	st, text := pop3Status(line)
	switch st {
	case "+OK":
	case "-ERR":
		if xclientErr != "" {
			text += " (after XCLIENT was refused: " + xclientErr + ")"
		}
		// Codes that say the credentials are not the cause: the client
		// must not take them for a wrong password.
		switch code := strings.ToUpper(pop3Code(text)); code {
		case "IN-USE":
			return nil, fmt.Errorf("upstream: %s: login: -ERR %s: %w", c.label, c.clean(text, 300), ErrInUse)
		case "LOGIN-DELAY":
			return nil, fmt.Errorf("upstream: %s: login: -ERR %s: %w", c.label, c.clean(text, 300), ErrLoginDelay)
		case "SYS/TEMP", "SYS/PERM":
			return nil, c.errorf("login: -ERR %s", c.clean(text, 300))
		}
		return nil, fmt.Errorf("upstream: %s: login: -ERR %s: %w", c.label, c.clean(text, 300), ErrAuthFailed)
	default:
		return nil, c.errorf("login: unexpected reply %q", c.clean(line, 80))
	}

	var buffered []byte
	if n := c.br.Buffered(); n > 0 {
		p, _ := c.br.Peek(n)
		buffered = append(buffered, p...)
	}
	c.br = nil
	_, isTLS := c.nc.(*tls.Conn)
	return &Result{Conn: c.nc, Buffered: buffered, TLS: isTLS}, nil
}

// capa sends CAPA and reads the capability lines up to the terminating
// ".". A backend answering -ERR does not know CAPA (RFC 1939 servers):
// its capabilities are nil, not an error.
func (c *conn) capa() (pop3Caps, error) {
	if err := c.write("CAPA\r\n"); err != nil {
		return nil, c.errorf("capa: %w", err)
	}
	line, err := c.pop3Line()
	if err != nil {
		return nil, c.errorf("capa: %w", err)
	}
	switch st, _ := pop3Status(line); st {
	case "+OK":
	case "-ERR":
		return nil, nil
	default:
		return nil, c.errorf("capa: unexpected reply %q", c.clean(line, 80))
	}
	caps := pop3Caps{}
	size := 0
	for {
		line, err := c.pop3Line()
		if err != nil {
			return nil, c.errorf("capa: %w", err)
		}
		if size += len(line) + 2; size > maxCAPALen {
			return nil, c.errorf("capa: response too large")
		}
		if line == "." {
			return caps, nil
		}
		line = strings.TrimPrefix(line, ".") // dot-stuffing
		f := strings.Fields(line)
		if len(f) > 0 {
			caps[strings.ToUpper(f[0])] = f[1:]
		}
	}
}

func (c *conn) stls() error {
	if err := c.write("STLS\r\n"); err != nil {
		return c.errorf("stls: %w", err)
	}
	line, err := c.pop3Line()
	if err != nil {
		return c.errorf("stls: %w", err)
	}
	if st, text := pop3Status(line); st != "+OK" {
		return c.errorf("stls: %s %s", st, c.clean(text, 200))
	}
	return c.handshake("stls")
}

// xclient forwards id with Dovecot's XCLIENT and waits for the answer
// before any credential is sent. Not pipelined with AUTH although
// Dovecot's pop3-login offers PIPELINING: measured against Dovecot 2.3.19,
// about half of such logins answer 40 ms late (its second reply waits
// for our delayed ACK of the first), against 1 ms when we wait; the
// round trip saved is 0.1 ms. A -ERR is not fatal: the login works,
// with the proxy's address in the backend's logs; its text is returned to
// go into the error should the login fail.
func (c *conn) xclient(id *IDInfo) (refused string, err error) {
	args := xclientArgs(id)
	if args == "" {
		return "", nil
	}
	if err := c.write("XCLIENT " + args + "\r\n"); err != nil {
		return "", c.errorf("xclient: %w", err)
	}
	line, err := c.pop3Line()
	if err != nil {
		return "", c.errorf("xclient: %w", err)
	}
	switch st, text := pop3Status(line); st {
	case "+OK":
		return "", nil
	case "-ERR":
		return "-ERR " + c.clean(text, 200), nil
	}
	return "", c.errorf("xclient: unexpected reply %q", c.clean(line, 80))
}

// xclientArgs builds XCLIENT's arguments as Dovecot's pop3-login takes
// them (ADDR, PORT, SESSION, TTL), leaving out what is unknown or could
// not be sent as one space-free token.
func xclientArgs(id *IDInfo) string {
	var f []string
	if ip, err := netip.ParseAddr(id.ClientIP); err == nil {
		f = append(f, "ADDR="+ip.WithZone("").Unmap().String())
	}
	if id.ClientPort > 0 && id.ClientPort <= 65535 {
		f = append(f, "PORT="+strconv.Itoa(id.ClientPort))
	}
	if s := id.SessionID; s != "" && len(s) <= maxXclientSession && isXclientValue(s) {
		f = append(f, "SESSION="+s)
	}
	if id.TTL > 0 {
		f = append(f, "TTL="+strconv.Itoa(id.TTL))
	}
	return strings.Join(f, " ")
}

// isXclientValue reports whether s is printable ASCII without spaces:
// Dovecot splits XCLIENT's arguments at spaces.
func isXclientValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// pop3Authenticate sends the credentials and returns the backend's answer
// to them: AUTH PLAIN when offered, else USER and PASS, or the OAuth
// mechanism of cred.
func (c *conn) pop3Authenticate(caps pop3Caps, cred Credentials) (string, error) {
	switch {
	case cred.Mechanism != "":
		return c.pop3OAuth(caps, cred)
	case caps.sasl("PLAIN"):
		ir := base64.StdEncoding.EncodeToString([]byte(cred.AuthzID + "\x00" + cred.User + "\x00" + cred.Secret))
		line, err := c.pop3SASL("PLAIN", ir)
		if err != nil {
			return "", err
		}
		if isContinuation(line) {
			// PLAIN has a single step: a further challenge is a
			// protocol error. Cancel so the line stays in sync.
			return "", c.pop3Cancel("unexpected continuation")
		}
		return line, nil
	case cred.AuthzID != "":
		return "", c.errorf("login: SASL PLAIN not advertised (a master user login needs it)")
	case caps != nil && !caps.has("USER"):
		// Dovecot leaves USER out where it would refuse plaintext
		// logins: LOGINDISABLED, in POP3.
		return "", c.errorf("login: backend offers neither USER nor SASL PLAIN (refusing to send credentials)")
	}
	if strings.ContainsAny(cred.User, "\r\n") || strings.ContainsAny(cred.Secret, "\r\n") {
		// A line break would end USER or PASS early and make the rest a
		// command: no backend can accept these over USER/PASS.
		return "", fmt.Errorf("upstream: %s: credentials contain a line break: %w", c.label, ErrAuthFailed)
	}
	if err := c.write("USER " + cred.User + "\r\n"); err != nil {
		return "", c.errorf("login: %w", err)
	}
	line, err := c.pop3Line()
	if err != nil {
		return "", c.errorf("login: %w", err)
	}
	if st, _ := pop3Status(line); st != "+OK" {
		return line, nil
	}
	if err := c.write("PASS " + cred.Secret + "\r\n"); err != nil {
		return "", c.errorf("login: %w", err)
	}
	if line, err = c.pop3Line(); err != nil {
		return "", c.errorf("login: %w", err)
	}
	return line, nil
}

// pop3OAuth logs in with cred.Mechanism, which the backend must offer: a
// backend without it is refused, never sent the token another way.
func (c *conn) pop3OAuth(caps pop3Caps, cred Credentials) (string, error) {
	mech, ir, err := c.oauthInitial(cred, caps.sasl, "SASL ")
	if err != nil {
		return "", err
	}
	line, err := c.pop3SASL(mech, ir)
	if err != nil || !isContinuation(line) {
		return line, err
	}
	// The error challenge (RFC 7628 §3.2.3), not kept: see authOAuth.
	if err := c.write(oauthDummy(mech) + "\r\n"); err != nil {
		return "", c.errorf("auth: %w", err)
	}
	if line, err = c.pop3Line(); err != nil {
		return "", c.errorf("auth: %w", err)
	}
	if isContinuation(line) {
		return "", c.pop3Cancel("unexpected second continuation")
	}
	if st, _ := pop3Status(line); st == "+OK" {
		// Success after an error challenge would contradict RFC 7628.
		return "", c.errorf("auth: +OK after an error challenge")
	}
	return line, nil
}

// pop3SASL sends AUTH mech with the initial response ir: on the command
// line where it fits, else after the backend's first "+". It returns the
// backend's next line: the result or a further challenge.
func (c *conn) pop3SASL(mech, ir string) (string, error) {
	cmd := "AUTH " + mech + " " + ir + "\r\n"
	if len(cmd) > maxAUTHLine {
		if err := c.write("AUTH " + mech + "\r\n"); err != nil {
			return "", c.errorf("auth: %w", err)
		}
		line, err := c.pop3Line()
		if err != nil {
			return "", c.errorf("auth: %w", err)
		}
		if !isContinuation(line) {
			return line, nil
		}
		cmd = ir + "\r\n"
	}
	if err := c.write(cmd); err != nil {
		return "", c.errorf("auth: %w", err)
	}
	line, err := c.pop3Line()
	if err != nil {
		return "", c.errorf("auth: %w", err)
	}
	return line, nil
}

// pop3Cancel ends a SASL exchange the backend took somewhere unexpected
// with "*" (RFC 5034 §4) and reads its -ERR, then fails with why.
func (c *conn) pop3Cancel(why string) error {
	if err := c.write("*\r\n"); err != nil {
		return c.errorf("auth: %w", err)
	}
	if _, err := c.pop3Line(); err != nil {
		return c.errorf("auth: %w", err)
	}
	return c.errorf("auth: %s", why)
}

// pop3Line reads one line of at most maxPOP3Line bytes and returns it
// without its line ending.
func (c *conn) pop3Line() (string, error) {
	var line []byte
	for {
		frag, err := c.br.ReadSlice('\n')
		if len(line)+len(frag) > maxPOP3Line {
			return "", errors.New("response line too long")
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			if err == io.EOF && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return string(line), nil
}

// pop3Status splits a status line into "+OK" or "-ERR" and its text; the
// status is "" for anything else.
func pop3Status(line string) (status, text string) {
	for _, st := range []string{"+OK", "-ERR"} {
		if len(line) >= len(st) && strings.EqualFold(line[:len(st)], st) {
			if rest := line[len(st):]; rest == "" || rest[0] == ' ' {
				return st, strings.TrimPrefix(rest, " ")
			}
		}
	}
	return "", line
}

// pop3Code returns the name of the response code that starts text
// ("[SYS/TEMP] ..." gives "SYS/TEMP"), or "".
func pop3Code(text string) string {
	if !strings.HasPrefix(text, "[") {
		return ""
	}
	end := strings.IndexByte(text, ']')
	if end < 0 {
		return ""
	}
	return text[1:end]
}

// isContinuation reports whether line is a SASL challenge: "+" alone or
// "+ " and base64.
func isContinuation(line string) bool {
	return line == "+" || strings.HasPrefix(line, "+ ")
}
