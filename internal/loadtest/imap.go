package loadtest

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// imapConn is an IMAP session. It knows just enough IMAP to log in and
// run the commands of a load pattern: lines, literals (counted and
// discarded, never parsed), tagged status responses and "+"
// continuations.
type imapConn struct {
	*wire
	auth Auth
	caps map[string]bool // upper case; from the greeting or CAPABILITY
	tagN int
}

func (c *imapConn) start(ctx context.Context, cfg *Config) error {
	if err := c.greeting(); err != nil {
		return err
	}
	if cfg.Security == StartTLS {
		if _, err := c.command("starttls", "STARTTLS", nil); err != nil {
			return err
		}
		if err := c.upgrade(ctx, cfg.TLS, "starttls"); err != nil {
			return err
		}
		c.caps = nil // capabilities before TLS must be forgotten (RFC 9051 6.2.1)
	}
	if len(c.caps) == 0 {
		return c.capability()
	}
	return nil
}

// greeting reads the server's greeting and takes its capabilities when it
// has them (nginx's has none; dial then asks with CAPABILITY). Dovecot
// may first send "* OK Waiting for authentication process to respond.."
// and its real greeting later: that line is skipped.
func (c *imapConn) greeting() error {
	for {
		c.deadline()
		line, err := c.readLine()
		if err != nil {
			return &opError{phase: "greeting", err: err}
		}
		s := string(line)
		switch {
		case strings.HasPrefix(s, "* OK"):
			if strings.Contains(s, "Waiting for authentication") {
				continue
			}
			c.parseCaps(s)
			return nil
		case strings.HasPrefix(s, "* BYE"):
			return &opError{phase: "greeting", err: &statusError{status: "BYE", text: s}}
		default:
			return &opError{phase: "greeting", err: fmt.Errorf("unexpected greeting %q", truncate(s))}
		}
	}
}

// parseCaps takes the capabilities from a "[CAPABILITY ...]" response
// code or an untagged "* CAPABILITY ..." line.
func (c *imapConn) parseCaps(s string) {
	var list string
	if i := strings.Index(s, "[CAPABILITY "); i >= 0 {
		list = s[i+len("[CAPABILITY "):]
		if j := strings.IndexByte(list, ']'); j >= 0 {
			list = list[:j]
		}
	} else if strings.HasPrefix(strings.ToUpper(s), "* CAPABILITY ") {
		list = s[len("* CAPABILITY "):]
	} else {
		return
	}
	c.caps = make(map[string]bool)
	for _, f := range strings.Fields(list) {
		c.caps[strings.ToUpper(f)] = true
	}
}

func (c *imapConn) capability() error {
	_, err := c.command("capability", "CAPABILITY", func(line []byte) {
		c.parseCaps(string(line))
	})
	return err
}

// login authenticates with SASL PLAIN, in one round trip when the server
// has SASL-IR, and falls back to LOGIN when PLAIN is not offered; with
// Auth "password" it sends LOGIN.
func (c *imapConn) login(u User) error {
	if c.auth != AuthPassword && c.caps["AUTH=PLAIN"] {
		ir := base64.StdEncoding.EncodeToString([]byte("\x00" + u.Name + "\x00" + u.Password))
		if c.caps["SASL-IR"] {
			_, err := c.command("login", "AUTHENTICATE PLAIN "+ir, nil)
			return err
		}
		tag := c.nextTag()
		c.deadline()
		if err := c.write(tag + " AUTHENTICATE PLAIN\r\n"); err != nil {
			return &opError{phase: "login", err: err}
		}
		if err := c.continuation(tag); err != nil {
			return &opError{phase: "login", err: err}
		}
		if err := c.write(ir + "\r\n"); err != nil {
			return &opError{phase: "login", err: err}
		}
		_, err := c.finish("login", tag, nil)
		return err
	}
	if c.caps["LOGINDISABLED"] {
		return &opError{phase: "login", err: errors.New("server says LOGINDISABLED and offers no AUTH=PLAIN (TLS needed?)")}
	}
	user, err := quote(u.Name)
	if err != nil {
		return &opError{phase: "login", err: err}
	}
	pass, err := quote(u.Password)
	if err != nil {
		return &opError{phase: "login", err: err}
	}
	_, err = c.command("login", "LOGIN "+user+" "+pass, nil)
	return err
}

// open selects INBOX and returns its EXISTS count.
func (c *imapConn) open() (int, error) {
	exists := 0
	_, err := c.command("select", "SELECT INBOX", func(line []byte) {
		// "* 3 EXISTS"
		f := bytes.Fields(line)
		if len(f) == 3 && bytes.EqualFold(f[2], []byte("EXISTS")) {
			exists, _ = strconv.Atoi(string(f[1]))
		}
	})
	return exists, err
}

// fetch runs FETCH with the given arguments and returns the literal bytes
// received (the message data; line bytes are not counted).
func (c *imapConn) fetch(args string) (int64, error) {
	return c.command("fetch", "FETCH "+args, nil)
}

func (c *imapConn) noop() error {
	_, err := c.command("noop", "NOOP", nil)
	return err
}

// idle starts IDLE and returns its tag once the server has accepted it.
func (c *imapConn) idle() (string, error) {
	tag := c.nextTag()
	c.deadline()
	if err := c.write(tag + " IDLE\r\n"); err != nil {
		return "", &opError{phase: "idle", err: err}
	}
	if err := c.continuation(tag); err != nil {
		return "", &opError{phase: "idle", err: err}
	}
	c.nc.SetDeadline(time.Time{}) // held for as long as the test says
	return tag, nil
}

// done ends IDLE; a session that the server dropped while idle fails here.
func (c *imapConn) done(tag string) error {
	c.deadline()
	if err := c.write("DONE\r\n"); err != nil {
		return &opError{phase: "idle", err: err}
	}
	_, err := c.finish("idle", tag, nil)
	return err
}

// logout ends the session politely. A server that closes the connection
// after its BYE without the tagged OK is accepted.
func (c *imapConn) logout() error {
	bye := false
	_, err := c.command("logout", "LOGOUT", func(line []byte) {
		if bytes.HasPrefix(line, []byte("* BYE")) {
			bye = true
		}
	})
	if err != nil && bye && errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// command sends "tag cmd" and reads up to its tagged response, passing
// untagged lines to onLine. It returns the literal bytes received.
func (c *imapConn) command(phase, cmd string, onLine func([]byte)) (int64, error) {
	tag := c.nextTag()
	c.deadline()
	if err := c.write(tag + " " + cmd + "\r\n"); err != nil {
		return 0, &opError{phase: phase, err: err}
	}
	return c.finish(phase, tag, onLine)
}

// finish reads responses until the one tagged tag, which must be OK.
func (c *imapConn) finish(phase, tag string, onLine func([]byte)) (int64, error) {
	var lit int64
	for {
		line, n, err := c.readResponse()
		lit += n
		if err != nil {
			return lit, &opError{phase: phase, err: err}
		}
		if rest, ok := tagged(line, tag); ok {
			st, text, _ := strings.Cut(string(rest), " ")
			if !strings.EqualFold(st, "OK") {
				return lit, &opError{phase: phase, err: &statusError{status: strings.ToUpper(st), text: text}}
			}
			return lit, nil
		}
		if onLine != nil {
			onLine(line)
		}
	}
}

// continuation reads until a "+" line; the tagged response instead means
// the server refused the command.
func (c *imapConn) continuation(tag string) error {
	for {
		line, _, err := c.readResponse()
		if err != nil {
			return err
		}
		if len(line) > 0 && line[0] == '+' {
			return nil
		}
		if rest, ok := tagged(line, tag); ok {
			st, text, _ := strings.Cut(string(rest), " ")
			return &statusError{status: strings.ToUpper(st), text: text}
		}
	}
}

func tagged(line []byte, tag string) ([]byte, bool) {
	if len(line) > len(tag) && line[len(tag)] == ' ' && string(line[:len(tag)]) == tag {
		return line[len(tag)+1:], true
	}
	return nil, false
}

// readResponse reads one response: its first line, and the literals and
// continuation lines that belong to it. Literal data is discarded and
// counted; the returned line is the first line only, valid until the
// next read.
func (c *imapConn) readResponse() ([]byte, int64, error) {
	first, err := c.readLine()
	if err != nil {
		return nil, 0, err
	}
	var lit int64
	line := first
	for {
		n, ok := literalSize(line)
		if !ok {
			return first, lit, nil
		}
		if _, err := io.CopyN(io.Discard, c.br, n); err != nil {
			return nil, lit, err
		}
		lit += n
		// The first line lives in c.line, which the next readLine
		// reuses; callers only look at first lines of responses without
		// literals (status, EXISTS, CAPABILITY), so dropping it is fine.
		first = nil
		if line, err = c.readLine(); err != nil {
			return nil, lit, err
		}
	}
}

// literalSize recognises a line ending in {n}, {n+} or ~{n}.
func literalSize(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	i := bytes.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	num := bytes.TrimSuffix(line[i+1:len(line)-1], []byte("+"))
	n, err := strconv.ParseInt(string(num), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

func (c *imapConn) nextTag() string {
	c.tagN++
	return "a" + strconv.Itoa(c.tagN)
}

// quote makes an IMAP quoted string; CR and LF cannot be quoted, and a
// load generator has no reason to send them.
func quote(s string) (string, error) {
	if strings.ContainsAny(s, "\r\n\x00") {
		return "", errors.New("user name or password contains CR, LF or NUL")
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`, nil
}
