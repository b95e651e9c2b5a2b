package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// pop3Conn is a POP3 session (RFC 1939, STLS of RFC 2595, AUTH of RFC
// 5034). It sends what the modelled client does and no more: no CAPA
// (the session knows what it will send), AUTH PLAIN with the initial
// response, or USER and PASS with Auth "password"; then STAT, RETR and
// QUIT. Multi-line bodies are counted and discarded, never kept.
type pop3Conn struct {
	*wire
	auth Auth
	msgs int // from STAT, for RETR "*"
}

func (c *pop3Conn) start(ctx context.Context, cfg *Config) error {
	c.deadline()
	line, err := c.readLine()
	if err != nil {
		return &opError{phase: "greeting", err: err}
	}
	if err := pop3Status(line); err != nil {
		return &opError{phase: "greeting", err: err}
	}
	if cfg.Security == StartTLS {
		if _, err := c.command("stls", "STLS"); err != nil {
			return err
		}
		return c.upgrade(ctx, cfg.TLS, "stls")
	}
	return nil
}

func (c *pop3Conn) login(u User) error {
	if strings.ContainsAny(u.Name+u.Password, "\r\n") {
		return &opError{phase: "login", err: errors.New("user name or password contains CR or LF")}
	}
	if c.auth == AuthPassword {
		if _, err := c.command("login", "USER "+u.Name); err != nil {
			return err
		}
		_, err := c.command("login", "PASS "+u.Password)
		return err
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + u.Name + "\x00" + u.Password))
	_, err := c.command("login", "AUTH PLAIN "+ir)
	return err
}

// open runs STAT and returns the number of messages.
func (c *pop3Conn) open() (int, error) {
	line, err := c.command("stat", "STAT")
	if err != nil {
		return 0, err
	}
	// "+OK 3 3072"
	f := strings.Fields(string(line))
	n := -1
	if len(f) >= 2 {
		n, err = strconv.Atoi(f[1])
	}
	if n < 0 || err != nil {
		return 0, &opError{phase: "stat", err: fmt.Errorf("unexpected STAT answer %q", truncate(string(line)))}
	}
	c.msgs = n
	return n, nil
}

// fetch RETRs message args, "*" for the last, and returns the message
// bytes received (the body without its dot-stuffing and terminator).
func (c *pop3Conn) fetch(args string) (int64, error) {
	if args == "*" {
		args = strconv.Itoa(c.msgs)
	}
	if _, err := c.command("retr", "RETR "+args); err != nil {
		return 0, err
	}
	n, err := c.body()
	if err != nil {
		return n, &opError{phase: "retr", err: err}
	}
	return n, nil
}

func (c *pop3Conn) noop() error {
	_, err := c.command("noop", "NOOP")
	return err
}

// logout sends QUIT; a server that closes the connection without its
// +OK is accepted.
func (c *pop3Conn) logout() error {
	_, err := c.command("logout", "QUIT")
	if err != nil && errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// command sends cmd and reads its status line, which must be +OK; the
// line is returned, valid until the next read.
func (c *pop3Conn) command(phase, cmd string) ([]byte, error) {
	c.deadline()
	if err := c.write(cmd + "\r\n"); err != nil {
		return nil, &opError{phase: phase, err: err}
	}
	line, err := c.readLine()
	if err != nil {
		return nil, &opError{phase: phase, err: err}
	}
	if err := pop3Status(line); err != nil {
		return nil, &opError{phase: phase, err: err}
	}
	return line, nil
}

// pop3Status is nil for a +OK line and a statusError for -ERR (or
// anything else).
func pop3Status(line []byte) error {
	if bytes.HasPrefix(line, []byte("+OK")) {
		return nil
	}
	st, text, _ := strings.Cut(string(line), " ")
	if st != "-ERR" {
		st, text = "unexpected", string(line)
	}
	return &statusError{status: st, text: text}
}

// body reads a multi-line response up to its terminating "." line, in
// the reader's buffer (lines longer than it pass in parts), and returns
// the bytes of its lines with their line ends, without the stuffed dots.
func (c *pop3Conn) body() (int64, error) {
	var n int64
	lineStart := true
	for {
		part, err := c.br.ReadSlice('\n')
		if lineStart && len(part) > 0 && part[0] == '.' {
			if err == nil && (len(part) == 2 || len(part) == 3 && part[1] == '\r') {
				return n, nil
			}
			n-- // a stuffed dot
		}
		n += int64(len(part))
		switch err {
		case nil:
			lineStart = true
		case bufio.ErrBufferFull:
			lineStart = false
		case io.EOF:
			return n, io.ErrUnexpectedEOF
		default:
			return n, err
		}
	}
}
