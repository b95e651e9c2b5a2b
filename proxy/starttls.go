package proxy

import (
	"bytes"
	"io"
	"net"

	"github.com/emersion/go-imap/v2"

	"github.com/portico-mail/portico/proxy/wire"
)

// STARTTLS upgrades a cleartext connection (and POP3's STLS, pop3stls.go,
// the same way). Whatever the client sent after the STARTTLS line is
// never parsed as IMAP (CVE-2011-0411 and the NO STARTTLS findings): a
// conforming client sends nothing before our OK, so any such bytes are
// handed to the TLS handshake, which fails on injected plaintext.
func (s *session) handleStartTLS(cmd *wire.Command) action {
	if len(cmd.Args) != 0 {
		return s.badCommand(cmd.Tag, "Unexpected arguments")
	}
	if !s.canStartTLS() {
		return s.badCommand(cmd.Tag, "STARTTLS not available")
	}
	return s.startTLS(cmd.Tag)
}

// canStartTLS reports whether the session may upgrade to TLS now.
func (s *session) canStartTLS() bool {
	return s.tlsVersion == "" && !s.ln.Mode.implicitTLS() && s.set.tlsConfig != nil
}

// startTLS says OK and upgrades the connection.
func (s *session) startTLS(tag string) action {
	s.writeStatus(tag, imap.StatusResponseTypeOK, "", "Begin TLS negotiation now")
	if err := s.flush(); err != nil {
		s.outcome = "write failed"
		return actClose
	}
	var early []byte
	if n := s.br.Buffered(); n > 0 {
		p, _ := s.br.Peek(n)
		early = bytes.Clone(p)
	}
	s.releaseIO()
	var c net.Conn = s.raw
	if len(early) > 0 {
		c = &prefixConn{Conn: s.raw, r: io.MultiReader(bytes.NewReader(early), s.raw)}
	}
	if err := s.handshake(c); err != nil {
		s.outcome = "starttls handshake failed"
		s.srv.logger().Debug("starttls handshake failed", "session", s.id, "client", s.client, "err", err)
		return actClose
	}
	s.setupIO()
	return actContinue
}

// prefixConn replays bytes read ahead of a TLS handshake.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }
