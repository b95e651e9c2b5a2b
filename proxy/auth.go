package proxy

import (
	"context"
	"crypto/tls"
	"net/netip"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// Authenticator decides logins at the proxy instead of leaving the
// decision to the backend: passwords checked against a store of the
// operator's (so that backends need not hold them, and a master user logs
// in for the user), an auth service that may also name the backend (like
// nginx's auth_http), or OAuth 2.0 tokens validated here. A Server without
// one passes the client's credentials to the backend, which decides.
type Authenticator interface {
	// Authenticate answers within ctx. An error means it could not
	// decide: the client gets NO [UNAVAILABLE] and may try again. A
	// refusal is a result with OK false, never an error, so that every
	// wrong password looks the same to the client.
	Authenticate(ctx context.Context, req AuthRequest) (AuthResult, error)
}

// AuthRequest is one login attempt, as an Authenticator sees it.
type AuthRequest struct {
	// Mechanism is the client's: "LOGIN" (the IMAP command or the SASL
	// mechanism of that name), or the SASL mechanism ("PLAIN", "XOAUTH2",
	// "OAUTHBEARER").
	Mechanism string
	// User is the user name, normalised (lower case, default domain).
	User string
	// Login is the user name as the client sent it, which services
	// written for nginx's auth_http expect.
	Login string
	// Secret is the password, or the OAuth 2.0 bearer token. It must
	// never be logged or stored.
	Secret string
	// Client is the client's address (from a trusted PROXY header when
	// there is one); Local is the proxy address it reached.
	Client, Local netip.AddrPort
	// TLS reports whether the client connection is encrypted;
	// TLSVersion and CipherSuite (crypto/tls constants) say how.
	TLS                     bool
	TLSVersion, CipherSuite uint16
	// ProxySource and ProxyDest are the addresses a trusted PROXY
	// protocol header named (zero without one). Client usually equals
	// ProxySource, unless a trusted front proxy forwarded another.
	ProxySource, ProxyDest netip.AddrPort
	// Attempt counts this connection's logins, from 1.
	Attempt int
	// Protocol is "imap" or "pop3", the listener's (Mode.Protocol).
	Protocol string
}

// AuthResult is an Authenticator's decision.
type AuthResult struct {
	// OK accepts the credentials. Without it the client gets the answer
	// of any wrong password (NO [AUTHENTICATIONFAILED], after
	// Limits.AuthFailureDelay).
	OK bool
	// Wait, with OK false, is the least time before the answer (nginx's
	// Auth-Wait); the client may then try again on the same connection.
	Wait time.Duration
	// Close, with OK false, ends the session after the answer, as nginx
	// does when its auth service refuses a login without Auth-Wait.
	Close bool
	// Backend, when not nil, is where the user is logged in, instead of
	// the Router's answer.
	Backend *routing.Backend
	// Upstream is how the proxy logs in to the backend; its zero value
	// means with the client's own credentials.
	Upstream upstream.Credentials
}

// authenticate asks the Authenticator, if there is one, about a login.
// When it returns false the answer is written and act says what comes
// next; otherwise s.auth holds the decision.
func (s *session) authenticate(tag string, ev *LoginEvent, start time.Time, login, user, secret string) (act action, ok bool) {
	s.auth = AuthResult{}
	a := s.set.authenticator
	if a == nil {
		return actContinue, true
	}
	req := AuthRequest{
		Mechanism: authMechanism(ev.Mechanism), User: user, Login: login, Secret: secret,
		Client: s.client, Local: s.local, TLS: s.tlsVersion != "",
		ProxySource: s.ab.proxySrc, ProxyDest: s.ab.proxyDst,
		Attempt: s.authFails + 1, Protocol: s.ln.Mode.Protocol(),
	}
	if tc, ok := s.conn.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		req.TLSVersion, req.CipherSuite = cs.Version, cs.CipherSuite
	}
	ctx, cancel := context.WithTimeout(s.srv.ctx, s.set.limits.AuthTimeout)
	res, err := a.Authenticate(ctx, req)
	cancel()
	if err != nil {
		s.srv.logger().Warn("authentication failed to decide", "session", s.id, "user", user, "err", err)
		return s.unavailable(tag), false
	}
	if !res.OK {
		s.limitFailed(user, secret)
		ev.Result = LoginAuthFailed
		if res.Wait > 0 {
			start = start.Add(res.Wait - s.set.limits.AuthFailureDelay)
		}
		act := s.authFailed(tag, start, user, "rejected by the authenticator")
		if res.Close && act == actContinue {
			s.writeStatus("*", imap.StatusResponseTypeBye, "", "Authentication failed")
			s.outcome = "login refused"
			act = actClose
		}
		return act, false
	}
	s.auth = res
	return actContinue, true
}

// upstreamCredentials are the credentials the session logs in to its
// backend with.
func (s *session) upstreamCredentials(ev *LoginEvent, user, secret string) upstream.Credentials {
	if c := s.auth.Upstream; c != (upstream.Credentials{}) {
		return c
	}
	c := upstream.Credentials{User: user, Secret: secret}
	switch m := strings.ToUpper(ev.Mechanism); m {
	case "XOAUTH2", "OAUTHBEARER":
		c.Mechanism = m
		c.AllowCleartext = s.set.oauth.CleartextBackends
	}
	return c
}

// authMechanism names a login's mechanism (LoginEvent.Mechanism) for an
// Authenticator: the LOGIN command, AUTHENTICATE LOGIN and POP3's USER and
// PASS are all "LOGIN", a user name and a password.
func authMechanism(m string) string {
	if m == MechSASLLogin || m == MechUserPass {
		return "LOGIN"
	}
	return strings.ToUpper(m)
}
