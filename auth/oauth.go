package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
)

// OAuthConfig configures an OAuth validator. A token is checked as a JWT
// against Issuer's keys when Issuer is set and the token has a JWT's
// shape, and by RFC 7662 introspection at IntrospectionURL otherwise.
type OAuthConfig struct {
	// Issuer is the OpenID Connect issuer URL (https). Its discovery
	// document (Issuer/.well-known/openid-configuration) names the JWKS;
	// a token's "iss" must equal it.
	Issuer string
	// JWKSURL, when set, is used instead of discovery.
	JWKSURL string
	// Audience lists the accepted "aud" values; a token must name at
	// least one. Required: without it any token the issuer signed for
	// any application would open the mailbox.
	Audience []string
	// UserClaim names the claim that must equal the user named in the
	// SASL message, both normalised ("email" when empty). An "email"
	// claim whose "email_verified" is false is refused.
	UserClaim string

	// IntrospectionURL is an RFC 7662 endpoint (https) for opaque
	// tokens, asked with HTTP Basic ClientID:ClientSecret.
	IntrospectionURL       string
	ClientID, ClientSecret string

	// Master logs in to the backend for the user (AUTHENTICATE PLAIN
	// with authzid, Dovecot's master passdb): the token itself never
	// reaches a backend. Required.
	Master Master

	// DefaultDomain completes a claim without a domain, as for users.
	DefaultDomain string
	// Timeout bounds each request to the issuer (5s). The login's own
	// deadline (Limits.LookupTimeout) may end it sooner.
	Timeout time.Duration
	// JWKSMinRefresh is the pace at which tokens with an unknown key id
	// may make the JWKS be fetched again, after a burst of three (10s):
	// such tokens cost an attacker nothing to forge.
	JWKSMinRefresh time.Duration
	// CacheTTL, when positive, makes a validated token open the same
	// user's mailbox again for that long without asking the issuer, and
	// never past the token's "exp": a client opens several connections
	// and reconnects often with one token, and each would otherwise cost
	// an introspection request or a signature check. A token revoked at
	// the issuer keeps working for at most CacheTTL. Only successes are
	// kept, under an HMAC of user and token. CacheEntries bounds them
	// (zero: 10,000).
	CacheTTL     time.Duration
	CacheEntries int
	// HTTPClient, when set, is used for every request (its Transport, at
	// least); tests use it to trust their issuer's certificate.
	HTTPClient *http.Client
	Logger     *slog.Logger
}

// OAuth is a proxy.Authenticator for XOAUTH2 and OAUTHBEARER logins that
// validates the bearer token itself and logs in upstream as the master
// user. Other mechanisms are left to the backend (OK with no upstream
// credentials); auth.Mux routes only OAuth logins here.
type OAuth struct {
	cfg    OAuthConfig
	client *http.Client
	log    *slog.Logger

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier // nil until discovery succeeded
	lastTry  time.Time             // of a failed discovery

	cache successCache // with CacheTTL
}

// errUnavailable wraps every failure to reach the issuer: the client gets
// NO [UNAVAILABLE] and may retry, and is not told its token is bad.
var errUnavailable = errors.New("oauth: issuer unavailable")

// NewOAuth checks cfg. It contacts nobody: discovery happens on the first
// login (and is retried after a failure), so that Portico starts while
// the issuer is down.
func NewOAuth(cfg OAuthConfig) (*OAuth, error) {
	if cfg.Issuer == "" && cfg.IntrospectionURL == "" {
		return nil, errors.New("oauth: validation needs an issuer or an introspection URL")
	}
	for _, u := range []string{cfg.Issuer, cfg.JWKSURL, cfg.IntrospectionURL} {
		if u == "" {
			continue
		}
		p, err := url.Parse(u)
		if err != nil || p.Scheme != "https" || p.Host == "" {
			// Tokens, and the introspection client secret, cross this.
			return nil, fmt.Errorf("oauth: %q is not an https URL", u)
		}
	}
	if cfg.Issuer != "" && len(cfg.Audience) == 0 {
		return nil, errors.New("oauth: JWT validation needs an audience")
	}
	if cfg.IntrospectionURL != "" && cfg.ClientID == "" {
		return nil, errors.New("oauth: introspection needs a client id")
	}
	if cfg.Master.User == "" || cfg.Master.Password == "" {
		return nil, errors.New("oauth: validation needs the master user and password to log in to backends")
	}
	if cfg.UserClaim == "" {
		cfg.UserClaim = "email"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.JWKSMinRefresh <= 0 {
		cfg.JWKSMinRefresh = 10 * time.Second
	}
	o := &OAuth{cfg: cfg, log: cfg.Logger}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	base := http.DefaultTransport
	if cfg.HTTPClient != nil && cfg.HTTPClient.Transport != nil {
		base = cfg.HTTPClient.Transport
	}
	o.client = &http.Client{
		Timeout:   cfg.Timeout,
		Transport: base,
		// The issuer's documents and keys are fetched from where its
		// configuration says, never from where a redirect points.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return o, nil
}

// Authenticate implements proxy.Authenticator.
func (o *OAuth) Authenticate(ctx context.Context, req proxy.AuthRequest) (proxy.AuthResult, error) {
	if req.Mechanism != "XOAUTH2" && req.Mechanism != "OAUTHBEARER" {
		return proxy.AuthResult{OK: true}, nil
	}
	now := time.Now()
	var key [sha256.Size]byte
	if o.cfg.CacheTTL > 0 {
		var hit bool
		if key, hit = o.cache.lookup(req.User, req.Secret, now); hit {
			return proxy.AuthResult{OK: true, Upstream: o.cfg.Master.Credentials(req.User)}, nil
		}
	}
	var claims map[string]any
	var err error
	if o.cfg.Issuer != "" && looksLikeJWT(req.Secret) {
		claims, err = o.verifyJWT(ctx, req.Secret)
	} else if o.cfg.IntrospectionURL != "" {
		claims, err = o.introspect(ctx, req.Secret)
	} else {
		err = errors.New("not a JWT")
	}
	if err == nil {
		err = o.checkUser(claims, req.User)
	}
	if errors.Is(err, errUnavailable) {
		return proxy.AuthResult{}, fmt.Errorf("%s", redact(err.Error(), req.Secret))
	}
	if err != nil {
		o.log.Info("oauth token refused", "user", req.User, "client", req.Client.String(), "reason", redact(err.Error(), req.Secret))
		return proxy.AuthResult{}, nil
	}
	if o.cfg.CacheTTL > 0 {
		until := now.Add(o.cfg.CacheTTL)
		if exp, ok := claims["exp"].(float64); ok && time.Unix(int64(exp), 0).Before(until) {
			until = time.Unix(int64(exp), 0)
		}
		o.cache.put(key, until, now, o.cfg.CacheEntries)
	}
	return proxy.AuthResult{OK: true, Upstream: o.cfg.Master.Credentials(req.User)}, nil
}

// checkUser compares the token's user claim with the user the client
// named: a token of bob's must not open alice's mailbox.
func (o *OAuth) checkUser(claims map[string]any, user string) error {
	name := o.cfg.UserClaim
	v, _ := claims[name].(string)
	if v == "" {
		return fmt.Errorf("no %q claim", name)
	}
	if name == "email" {
		if verified, ok := claims["email_verified"].(bool); ok && !verified {
			return errors.New("email not verified")
		}
	}
	got, err := routing.Normalize(v, o.cfg.DefaultDomain)
	if err != nil {
		return fmt.Errorf("claim %q: %w", name, err)
	}
	if got != user {
		return fmt.Errorf("claim %q names another user", name)
	}
	return nil
}

// looksLikeJWT reports whether tok has a JWS compact serialisation's
// shape: three base64url parts.
func looksLikeJWT(tok string) bool {
	if strings.Count(tok, ".") != 2 {
		return false
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// redact keeps a token out of an error text: some libraries quote input.
func redact(s, token string) string {
	if token != "" {
		s = strings.ReplaceAll(s, token, "<token>")
	}
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
