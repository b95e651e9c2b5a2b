package app

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/portico-mail/portico/auth"
	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/proxy"
	ptls "github.com/portico-mail/portico/tls"
)

// oauthOffer is what the server offers for auth.oauth: the mechanisms,
// and what a refused token's error challenge says.
func oauthOffer(cfg *config.Config) proxy.OAuth {
	o := cfg.Auth.OAuth
	if o == nil {
		return proxy.OAuth{}
	}
	return proxy.OAuth{
		Enabled: true, Scope: o.Scope, OpenIDConfiguration: o.OpenIDConfiguration,
		CleartextBackends: o.Mode == config.OAuthPassthrough && o.CleartextBackends,
	}
}

// buildOAuth builds the authenticator of auth.oauth for XOAUTH2 and
// OAUTHBEARER: the validator in mode "validate", nil in "passthrough"
// (and without auth.oauth), meaning the backend decides.
func (rt *App) buildOAuth(cfg *config.Config, master auth.Master, logger *slog.Logger) (proxy.Authenticator, error) {
	o := cfg.Auth.OAuth
	if o == nil || o.Mode != config.OAuthValidate {
		return nil, nil
	}
	var client *http.Client
	if o.TLS != nil {
		tc, err := ptls.ClientConfig(clientOptions(o.TLS))
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		client = &http.Client{Transport: tr}
	}
	var ttl time.Duration
	var entries int
	if c := o.Cache; c != nil {
		ttl, entries = c.TTL, c.MaxEntries
	}
	return auth.NewOAuth(auth.OAuthConfig{
		Issuer: o.Issuer, JWKSURL: o.JWKSURL, Audience: o.Audience, UserClaim: o.UserClaim,
		IntrospectionURL: o.IntrospectionURL, ClientID: o.ClientID, ClientSecret: o.ClientSecret.Value,
		Master: master, DefaultDomain: cfg.Routing.DefaultDomain, Timeout: o.Timeout,
		HTTPClient: client, Logger: logger, CacheTTL: ttl, CacheEntries: entries,
	})
}
