package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/pires/go-proxyproto"
)

// maxRefusing bounds the connections past Limits.MaxConnections that are
// told `* BYE [UNAVAILABLE]` at once (each costs a TLS handshake on an
// imaps listener); beyond it they are closed at once.
const maxRefusing = 64

func (l *Listener) proxyTrusted(a netip.Addr) bool { return inNetworks(l.ProxyProtocolFrom, a) }

// inNetworks reports whether a, IPv4-mapped or not, is in one of nets.
func inNetworks(nets []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range nets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// admit runs first in every session. Where the listener expects PROXY
// headers it takes the client's address from a trusted balancer's header
// and refuses a header from anyone else; then it applies the limits that
// need no command: the server's connection limit and the limit on
// sessions not logged in per client address. It reports whether the session goes on; when not, the
// client has had its answer (or the connection is to be closed) and the
// outcome is set.
func (s *session) admit() bool {
	srv := s.srv
	if len(s.ln.ProxyProtocolFrom) > 0 {
		if s.ln.proxyTrusted(s.client.Addr()) {
			if err := s.readProxyHeader(); err != nil {
				s.quiet("proxy protocol header refused")
				srv.logLimit("proxy_protocol", s.client.Addr().String(), "no valid PROXY protocol header from a trusted balancer; connection closed",
					"session", s.id, "listener", s.ln.Name, "balancer", s.client.String(), "err", err)
				return false
			}
		} else {
			// Headers from anywhere else are refused. On imaps the client
			// speaks first and its first bytes can be checked now; on
			// imap, after the greeting (afterGreeting).
			s.ab.sniff = true
			if s.ln.Mode.implicitTLS() && !s.afterGreeting() {
				return false
			}
		}
	}
	s.ab.peer = s.client
	s.ab.trusted = srv.trusted(s.client.Addr())
	if s.ab.overflow {
		srv.logLimit("max_connections", "", "too many connections: new ones are refused", "listener", s.ln.Name, "max", s.set.limits.MaxConnections)
		s.refuse(imap.ResponseCodeUnavailable, "Too many connections, try again later", "too many connections")
		return false
	}
	if !s.ab.trusted && !srv.countPreauth(s) {
		srv.logLimit("preauth_per_ip", srv.clientKey(s.client.Addr()).String(), "too many connections not logged in from one address; refused",
			"session", s.id, "listener", s.ln.Name, "client", s.client.String(), "max", s.set.limits.MaxPreauthPerIP)
		s.refuse(imap.ResponseCodeLimit, "Too many connections from your address", "too many connections from the address")
		return false
	}
	return true
}

// afterGreeting refuses a PROXY header from a client that may not send
// one, on a listener that expects them from its balancers. It waits for
// the client's first bytes without reading them; any error is left to the
// command loop, which meets it again.
func (s *session) afterGreeting() bool {
	if !s.ab.sniff {
		return true
	}
	s.ab.sniff = false
	var buf [len("\r\n\r\n\x00\r\nQUIT\n")]byte
	n, err := peek(s.raw, buf[:])
	if err != nil || !startsWithProxyHeader(buf[:n]) {
		return true
	}
	s.quiet("proxy protocol header refused")
	s.srv.logLimit("proxy_protocol", s.client.Addr().String(), "PROXY protocol header from an address that is not a trusted balancer; connection closed",
		"session", s.id, "listener", s.ln.Name, "client", s.client.String())
	return false
}

// startsWithProxyHeader reports whether p begins with a whole PROXY
// protocol signature (a v1 "PROXY " or the v2 signature).
func startsWithProxyHeader(p []byte) bool {
	return bytes.HasPrefix(p, []byte("PROXY ")) || bytes.HasPrefix(p, proxyproto.SIGV2)
}

// refuse ends a session before its greeting with `* BYE [code] text`,
// after the TLS handshake on an imaps listener.
func (s *session) refuse(code imap.ResponseCode, text, outcome string) {
	s.quiet(outcome)
	if s.ln.Mode.implicitTLS() {
		if s.set.tlsConfig == nil || s.handshake(s.raw) != nil {
			return
		}
	}
	s.setupIO()
	s.writeStatus("*", imap.StatusResponseTypeBye, code, text)
	s.flush()
}

// quiet sets the outcome of a session refused by a limit, whose refusal is
// logged by logLimit: its own end is logged at debug level only, so that a
// flood of refused connections does not flood the log.
func (s *session) quiet(outcome string) {
	s.outcome = outcome
	s.ab.quiet = true
}

// endLevel is the level of the session's end line.
func (s *session) endLevel() slog.Level {
	if s.ab.quiet {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// readProxyHeader reads the PROXY protocol header (v1 or v2) a trusted
// balancer sends first, within the handshake timeout, and makes the
// addresses in it the session's. A LOCAL (v2) or UNKNOWN (v1) header, as
// health checks send, keeps the balancer's. Exactly the header's bytes are
// consumed, so that the connection stays a plain socket (one that an idle
// session can park).
func (s *session) readProxyHeader() error {
	d := time.Now().Add(s.set.limits.HandshakeTimeout)
	if s.deadline.Before(d) {
		d = s.deadline
	}
	s.raw.SetReadDeadline(d)
	defer s.setDeadline(s.deadline)
	h, c, err := readProxyHeader(s.raw, d)
	if err != nil {
		return err
	}
	s.raw, s.conn = c, c
	if !h.Command.IsProxy() || !h.TransportProtocol.IsStream() || !(h.TransportProtocol.IsIPv4() || h.TransportProtocol.IsIPv6()) {
		return nil
	}
	src, dst, ok := h.TCPAddrs()
	if !ok {
		return nil
	}
	s.client = addrPort(src)
	s.local = addrPort(dst)
	s.ab.proxySrc, s.ab.proxyDst = s.client, s.local
	return nil
}

var errIncompleteHeader = errors.New("incomplete PROXY protocol header")

// proxyHeaderLen returns the length of the PROXY protocol header at the
// start of p, 0 when p does not start with one, or errIncompleteHeader
// when p holds only its beginning.
func proxyHeaderLen(p []byte) (int, error) {
	const maxV1 = 107
	switch {
	case prefixOf(p, []byte("PROXY ")):
		if len(p) < len("PROXY ") {
			return 0, errIncompleteHeader
		}
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			return i + 1, nil
		}
		if len(p) >= maxV1 {
			return maxV1, nil // the parser says what is wrong
		}
		return 0, errIncompleteHeader
	case prefixOf(p, proxyproto.SIGV2):
		if len(p) < 16 {
			return 0, errIncompleteHeader
		}
		n := 16 + int(binary.BigEndian.Uint16(p[14:16]))
		if len(p) < n {
			return n, errIncompleteHeader
		}
		return n, nil
	}
	return 0, nil
}

// prefixOf reports whether p and sig agree on their common length.
func prefixOf(p, sig []byte) bool {
	n := min(len(p), len(sig))
	return n > 0 && bytes.Equal(p[:n], sig[:n])
}

// parseProxyHeader parses the header that is the whole of p.
func parseProxyHeader(p []byte) (*proxyproto.Header, error) {
	br := bufio.NewReaderSize(bytes.NewReader(p), max(len(p), 16))
	h, err := proxyproto.Read(br)
	if err != nil {
		return nil, err
	}
	if br.Buffered() != 0 {
		return nil, fmt.Errorf("PROXY protocol header of %d bytes, %d left over", len(p), br.Buffered())
	}
	return h, nil
}

// readProxyHeaderBuffered reads the header through a buffer, for sockets
// that cannot be peeked at. Bytes read past it are kept by the returned
// connection, which replaces c.
func readProxyHeaderBuffered(c net.Conn) (*proxyproto.Header, net.Conn, error) {
	br := bufio.NewReaderSize(c, 256)
	h, err := proxyproto.Read(br)
	if err != nil {
		return nil, c, err
	}
	if n := br.Buffered(); n > 0 {
		p, _ := br.Peek(n)
		c = &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(bytes.Clone(p)), c)}
	}
	return h, c, nil
}
