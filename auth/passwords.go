package auth

import (
	"context"
	"fmt"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
)

// Store checks users' passwords: hashes kept in Redis, an LDAP
// directory.
type Store interface {
	// Verify reports whether password is user's. An unknown user is
	// false with a nil error, in the same time as a wrong password, so
	// that neither the answer nor its timing tells them apart. An error
	// means the store could not answer (it is down, or its data is
	// broken); it must not contain the password or a hash.
	Verify(ctx context.Context, user, password string) (bool, error)
}

// Master is the master user the proxy logs in to backends as, for the
// users whose passwords it checked (Dovecot: a passdb with master = yes).
// The zero Master means none: the client's own credentials go to the
// backend, which then checks them a second time.
type Master struct {
	User     string
	Password string
}

// Passwords is a proxy.Authenticator for password logins (LOGIN, PLAIN):
// it checks the password against Store and, when it is right, logs in to
// the backend as Master on behalf of the user.
type Passwords struct {
	Store  Store
	Master Master
}

// Authenticate implements proxy.Authenticator.
func (p *Passwords) Authenticate(ctx context.Context, req proxy.AuthRequest) (proxy.AuthResult, error) {
	if p.Store == nil {
		return proxy.AuthResult{}, fmt.Errorf("auth: no password store")
	}
	ok, err := p.Store.Verify(ctx, req.User, req.Secret)
	if err != nil {
		return proxy.AuthResult{}, err
	}
	if !ok {
		return proxy.AuthResult{}, nil
	}
	return proxy.AuthResult{OK: true, Upstream: p.Master.credentials(req.User)}, nil
}

// credentials are how the proxy logs in upstream for user: as the master
// user with user as the authorization identity, or (zero) with the
// client's own credentials.
func (m Master) credentials(user string) upstream.Credentials {
	if m.User == "" {
		return upstream.Credentials{}
	}
	return upstream.Credentials{User: m.User, Secret: m.Password, AuthzID: user}
}

// Credentials is credentials exported for the other authenticators of
// the proxy (an HTTP auth service, validated OAuth tokens) that also log
// in as the master user.
func (m Master) Credentials(user string) upstream.Credentials { return m.credentials(user) }
