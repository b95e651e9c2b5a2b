package app

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/portico-mail/portico/auth"
	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/proxy"
	ptls "github.com/portico-mail/portico/tls"
)

// buildAuth gives the server its Authenticator (auth:): an auth.Mux that
// sends passwords to the source of auth.passwords and OAuth tokens to
// auth.oauth's validator; either left out means the backend decides.
// Without an auth: section the server has no Authenticator at all.
func (rt *App) buildAuth(cfg *config.Config, srv *proxy.Server, logger *slog.Logger) error {
	a := &cfg.Auth
	master := auth.Master{User: a.MasterUser, Password: a.MasterPassword.Value}
	mux := &auth.Mux{}
	switch a.Passwords {
	case "":
	case "http":
		h, err := rt.buildHTTPAuth(cfg, master, logger)
		if err != nil {
			return fmt.Errorf("auth.http: %w", err)
		}
		if h == nil {
			return fmt.Errorf("auth.passwords %q: not available in this build", a.Passwords)
		}
		mux.Password = h
	default:
		store, err := rt.passwordStore(cfg, logger)
		if err != nil {
			return fmt.Errorf("auth.%s: %w", a.Passwords, err)
		}
		if c := a.Cache; c != nil {
			store = &auth.CachedStore{Store: store, TTL: c.TTL, MaxEntries: c.MaxEntries}
		}
		mux.Password = &auth.Passwords{Store: store, Master: master}
	}
	o, err := rt.buildOAuth(cfg, master, logger)
	if err != nil {
		return fmt.Errorf("auth.oauth: %w", err)
	}
	mux.OAuth = o
	if mux.Password == nil && mux.OAuth == nil {
		return nil // nothing decided here: no Authenticator, as before
	}
	logger.Info("proxy-side authentication", "passwords", a.String(), "oauth", mux.OAuth != nil)
	srv.Authenticator = mux
	srv.Limits.AuthTimeout = authTimeout(cfg)
	return nil
}

// passwordStore builds the auth.Store of auth.passwords "redis" or "ldap".
func (rt *App) passwordStore(cfg *config.Config, logger *slog.Logger) (auth.Store, error) {
	switch a := &cfg.Auth; a.Passwords {
	case "redis":
		if rt.Redis == nil || rt.RedisRouter == nil {
			return nil, errors.New("needs routing.redis")
		}
		r := a.Redis
		if r == nil {
			r = &config.AuthRedis{Field: "password"}
		}
		return &auth.RedisStore{
			Routes: rt.RedisRouter, Field: r.Field,
			Client: rt.Redis, Prefix: rt.RedisPrefix, Key: r.Key,
			Hashes: auth.Hashes{AllowPlain: r.AllowPlain},
		}, nil
	case "ldap":
		l := a.LDAP
		if l == nil {
			return nil, errors.New("auth.ldap is missing")
		}
		s := &auth.LDAPStore{
			URL: l.URL, StartTLS: l.StartTLS, BindDN: l.BindDN,
			SearchBase: l.SearchBase, SearchFilter: l.SearchFilter,
			ServiceDN: l.ServiceDN, ServicePassword: l.ServicePassword.Value,
			Timeout: l.Timeout, PoolSize: l.PoolSize,
		}
		if l.TLS != nil || l.StartTLS || strings.HasPrefix(l.URL, "ldaps:") {
			opts := ptls.ClientOptions{}
			if l.TLS != nil {
				opts = clientOptions(l.TLS)
			}
			tc, err := ptls.ClientConfig(opts)
			if err != nil {
				return nil, fmt.Errorf("tls: %w", err)
			}
			s.TLSConfig = tc
		}
		return s, nil
	}
	return nil, fmt.Errorf("unknown password source %q", cfg.Auth.Passwords)
}

// authTimeout is how long the Authenticator may take: the route lookup's
// timeout, or longer for a source that is given longer (a directory, an
// issuer) than Redis.
func authTimeout(cfg *config.Config) time.Duration {
	d := cfg.Routing.LookupTimeout
	if l := cfg.Auth.LDAP; l != nil && cfg.Auth.Passwords == "ldap" {
		d = max(d, l.Timeout)
	}
	if h := cfg.Auth.HTTP; h != nil && cfg.Auth.Passwords == "http" {
		d = max(d, h.Timeout)
	}
	if o := cfg.Auth.OAuth; o != nil {
		d = max(d, o.Timeout)
	}
	return d
}
