package proxy

import (
	"crypto/tls"
	"net"
	"net/netip"

	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// Reloading. A Server's configuration can change while it serves: a
// session takes the configuration current when it is accepted and keeps it
// until it ends, so a client in the middle of its login finishes it on the
// router, certificates and limits it started with, and a spliced session,
// which no longer consults any of them, is not touched at all. The
// configuration is one immutable value behind an atomic pointer: a
// Reconfigure is one store, and each accept one load.

// Config is the part of a Server that Reconfigure may change; each field
// means what the Server field of the same name means.
type Config struct {
	Router          routing.Router
	TLSConfig       *tls.Config
	DefaultDomain   string
	Limits          Limits
	Login           LoginFunc
	LoginPOP3       LoginFunc
	Limiter         LoginLimiter
	Authenticator   Authenticator
	OAuth           OAuth
	TrustedNetworks []netip.Prefix
}

// settings is a Config with its defaults applied.
type settings struct {
	router        routing.Router
	tlsConfig     *tls.Config
	pop3TLS       *tls.Config // tlsConfig with ALPN "pop3"; see pop3TLSConfig
	defaultDomain string
	limits        Limits
	login         LoginFunc
	loginPOP3     LoginFunc
	limiter       LoginLimiter
	authenticator Authenticator
	oauth         OAuth
	trusted       []netip.Prefix

	oauthChallenge string // oauth.errorChallenge()
}

func newSettings(c Config) *settings {
	st := &settings{
		router:        c.Router,
		tlsConfig:     c.TLSConfig,
		defaultDomain: c.DefaultDomain,
		limits:        c.Limits.withDefaults(),
		login:         c.Login,
		loginPOP3:     c.LoginPOP3,
		limiter:       c.Limiter,
		authenticator: c.Authenticator,
		oauth:         c.OAuth,
		trusted:       c.TrustedNetworks,
	}
	if st.oauth.Enabled {
		st.oauthChallenge = st.oauth.errorChallenge()
	}
	if st.login == nil {
		st.login = upstream.Login
	}
	if st.loginPOP3 == nil {
		st.loginPOP3 = upstream.LoginPOP3
	}
	st.pop3TLS = pop3TLSConfig(st.tlsConfig)
	return st
}

// exportedSettings are the settings of the Server's exported fields, which
// apply until the first Reconfigure.
func (s *Server) exportedSettings() *settings {
	return newSettings(Config{
		Router: s.Router, TLSConfig: s.TLSConfig, DefaultDomain: s.DefaultDomain, Limits: s.Limits,
		Login: s.Login, LoginPOP3: s.LoginPOP3, Limiter: s.Limiter, Authenticator: s.Authenticator, OAuth: s.OAuth, TrustedNetworks: s.TrustedNetworks,
	})
}

// current returns the settings new connections are accepted under.
func (s *Server) current() *settings {
	s.init()
	return s.cur.Load()
}

// Reconfigure makes c the configuration of the connections accepted from
// now on. Connections accepted before keep theirs until they end. The
// Server's exported fields are left as they were (sessions may be reading
// them) and no longer describe the running configuration.
//
// Limits that count across sessions (MaxConnections, the logins in
// progress) compare the counts of every session with the new maximum;
// lowering one refuses new connections or logins until enough sessions
// have ended, and ends none.
func (s *Server) Reconfigure(c Config) {
	s.init()
	s.cur.Store(newSettings(c))
}

// UpdateListener replaces the description of ln, a listener that Serve is
// running, for the connections accepted from now on. It reports false when
// Serve is not running ln.
func (s *Server) UpdateListener(ln net.Listener, l Listener) bool {
	s.init()
	s.mu.Lock()
	lp := s.listeners[ln]
	s.mu.Unlock()
	if lp == nil {
		return false
	}
	lp.Store(&l)
	return true
}

// pop3TLSConfig is the listeners' TLS configuration for POP3: the same
// certificates and policy, with ALPN "pop3" (RFC 7301's registry) where
// IMAP has "imap", so that a client that names another protocol (a browser
// sent to port 995 by an attacker: ALPACA) is refused by the handshake.
// Configurations that name no protocol are used as they are.
func pop3TLSConfig(c *tls.Config) *tls.Config {
	if c == nil || len(c.NextProtos) == 0 {
		return c
	}
	p := c.Clone()
	p.NextProtos = []string{"pop3"}
	return p
}
