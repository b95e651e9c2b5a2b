package auth

import (
	"context"
	"strings"

	"github.com/portico-mail/portico/proxy"
)

// Mux is a proxy.Authenticator that hands each login to the
// authenticator for its kind of credentials. A nil field means "the
// backend decides": the login is accepted here with the client's own
// credentials, and the backend checks them as it would without a Mux. The
// zero Mux therefore changes nothing.
type Mux struct {
	// OAuth decides XOAUTH2 and OAUTHBEARER logins (bearer tokens).
	OAuth proxy.Authenticator
	// Password decides every other mechanism: LOGIN and PLAIN.
	Password proxy.Authenticator
}

// Authenticate implements proxy.Authenticator.
func (m *Mux) Authenticate(ctx context.Context, req proxy.AuthRequest) (proxy.AuthResult, error) {
	a := m.Password
	if IsOAuth(req.Mechanism) {
		a = m.OAuth
	}
	if a == nil {
		return proxy.AuthResult{OK: true}, nil
	}
	return a.Authenticate(ctx, req)
}

// IsOAuth reports whether a mechanism carries an OAuth 2.0 bearer token
// rather than a password.
func IsOAuth(mechanism string) bool {
	switch strings.ToUpper(mechanism) {
	case "XOAUTH2", "OAUTHBEARER":
		return true
	}
	return false
}
