package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// client is one session of a protocol, driven by one goroutine at a time.
// The runner drives IMAP (imap.go) and POP3 (pop3.go) sessions alike
// through it; what they share, the connection with its TLS, lines and
// deadlines, is a wire.
type client interface {
	// start reads the greeting and, with StartTLS, upgrades the
	// connection (STARTTLS, STLS).
	start(ctx context.Context, cfg *Config) error
	// login authenticates u (AUTHENTICATE or AUTH PLAIN, or the
	// protocol's password commands with Auth "password").
	login(u User) error
	// open readies the mailbox: SELECT INBOX or STAT. It returns the
	// number of messages.
	open() (int, error)
	// fetch runs Config.Fetch (an IMAP FETCH, a POP3 RETR) and returns
	// the message bytes received.
	fetch(args string) (int64, error)
	noop() error
	// logout ends the session politely: LOGOUT or QUIT.
	logout() error
	close() error
	conn() *wire
}

// wire is the connection under a client: TCP, TLS (implicit or after
// STARTTLS/STLS), and the reading of lines, with one deadline per
// network operation.
type wire struct {
	nc      net.Conn
	br      *bufio.Reader
	timeout time.Duration
	line    []byte // reused by readLine
	tls     *tls.ConnectionState
}

// readBufSize is small on purpose: the idle mode holds thousands of
// sessions, and large FETCH literals bypass the buffer anyway.
const readBufSize = 8 << 10

// dial connects and brings the session to the point where it can log in:
// TCP, TLS (implicit, or STARTTLS/STLS, which the protocol's start runs)
// and the greeting.
func dial(ctx context.Context, cfg *Config) (client, error) {
	d := net.Dialer{Timeout: cfg.Timeout}
	nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, &opError{phase: "connect", err: err}
	}
	w := &wire{nc: nc, timeout: cfg.Timeout}
	if cfg.Security == ImplicitTLS {
		if err := w.handshake(ctx, cfg.TLS); err != nil {
			nc.Close()
			return nil, err
		}
	}
	w.br = bufio.NewReaderSize(w.nc, readBufSize)
	var c client
	if cfg.Protocol == POP3 {
		c = &pop3Conn{wire: w, auth: cfg.Auth}
	} else {
		c = &imapConn{wire: w, auth: cfg.Auth}
	}
	if err := c.start(ctx, cfg); err != nil {
		w.nc.Close()
		return nil, err
	}
	return c, nil
}

func (w *wire) handshake(ctx context.Context, cfg *tls.Config) error {
	tc := tls.Client(w.nc, cfg)
	hctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return &opError{phase: "tls", err: err}
	}
	st := tc.ConnectionState()
	w.nc, w.tls = tc, &st
	return nil
}

// upgrade runs the TLS handshake after the server accepted STARTTLS or
// STLS (phase names which).
func (w *wire) upgrade(ctx context.Context, cfg *tls.Config, phase string) error {
	// Whatever the server sent after its OK would be a response
	// injection; a client must not read it as the protocol.
	if w.br.Buffered() > 0 {
		return &opError{phase: phase, err: fmt.Errorf("server sent data after %s OK", strings.ToUpper(phase))}
	}
	if err := w.handshake(ctx, cfg); err != nil {
		return err
	}
	w.br.Reset(w.nc)
	return nil
}

func (w *wire) conn() *wire { return w }

func (w *wire) close() error { return w.nc.Close() }

// maxLine bounds one response line; a server sending more is broken or
// hostile, and the load generator must not grow without limit.
const maxLine = 1 << 20

// readLine returns one line without its CRLF, in a buffer reused by the
// next call.
func (w *wire) readLine() ([]byte, error) {
	w.line = w.line[:0]
	for {
		part, err := w.br.ReadSlice('\n')
		w.line = append(w.line, part...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			if err == io.EOF && len(w.line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(w.line) > maxLine {
			return nil, fmt.Errorf("response line longer than %d bytes", maxLine)
		}
	}
	return bytes.TrimRight(w.line, "\r\n"), nil
}

func (w *wire) write(s string) error {
	_, err := io.WriteString(w.nc, s)
	return err
}

func (w *wire) deadline() { w.nc.SetDeadline(time.Now().Add(w.timeout)) }

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// opError is a failure in one phase of a session; its kind (phase and
// class) is what the report counts.
type opError struct {
	phase string
	err   error
}

func (e *opError) Error() string { return "loadtest: " + e.phase + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// kind is the report's key: the phase and a coarse class of the cause,
// e.g. "login: NO" or "connect: timeout".
func (e *opError) kind() string {
	var st *statusError
	var ne net.Error
	var rec tls.RecordHeaderError
	switch {
	case errors.As(e.err, &st):
		return e.phase + ": " + st.status
	case errors.Is(e.err, io.EOF), errors.Is(e.err, io.ErrUnexpectedEOF), errors.Is(e.err, net.ErrClosed):
		return e.phase + ": closed"
	case errors.As(e.err, &ne) && ne.Timeout(), errors.Is(e.err, context.DeadlineExceeded):
		return e.phase + ": timeout"
	case strings.Contains(e.err.Error(), "connection refused"):
		return e.phase + ": refused"
	case strings.Contains(e.err.Error(), "connection reset"):
		return e.phase + ": reset"
	case errors.As(e.err, &rec), e.phase == "tls":
		return e.phase + ": handshake"
	}
	return e.phase + ": other"
}

// statusError is a NO, BAD or BYE from the server.
type statusError struct{ status, text string }

func (e *statusError) Error() string { return e.status + " " + truncate(e.text) }
