package config

import (
	"net/url"
	"strings"
	"time"
)

// OAuth configures XOAUTH2 and OAUTHBEARER logins (auth.oauth). Without
// it the two mechanisms are not offered.
type OAuth struct {
	// Mode is "passthrough" (the backend validates the token: Portico
	// logs in there with the same mechanism and token) or "validate"
	// (Portico validates it, then logs in as auth.master_user). Required.
	Mode string `yaml:"mode"`
	// Scope and OpenIDConfiguration go into the error challenge of a
	// refused token (RFC 7628 §3.2.2), telling the client which token to
	// ask for. OpenIDConfiguration defaults to the issuer's discovery
	// URL in validate mode.
	Scope               string `yaml:"scope"`
	OpenIDConfiguration string `yaml:"openid_configuration"`
	// CleartextBackends lets passthrough tokens go to backends with
	// security "plain". Default false: such logins are refused (NO
	// [UNAVAILABLE], logged), as a bearer token must not cross a network
	// in clear.
	CleartextBackends bool `yaml:"cleartext_backends"`

	// Validate mode. Issuer (https) enables JWT validation: discovery at
	// Issuer/.well-known/openid-configuration unless JWKSURL is set;
	// Audience is then required. IntrospectionURL (https) enables RFC
	// 7662 introspection of opaque tokens with ClientID/ClientSecret.
	Issuer           string   `yaml:"issuer"`
	JWKSURL          string   `yaml:"jwks_url"`
	Audience         []string `yaml:"audience"`
	UserClaim        string   `yaml:"user_claim"`
	IntrospectionURL string   `yaml:"introspection_url"`
	ClientID         string   `yaml:"client_id"`
	ClientSecret     Secret   `yaml:"client_secret"`
	// Timeout bounds each request to the issuer; default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// Cache remembers validated tokens (per user, never past their exp)
	// for a while: a token revoked at the issuer keeps working this
	// long. nil (the default) asks the issuer or checks the signature
	// at every login.
	Cache *AuthCache `yaml:"cache"`
	// TLS towards the issuer (ca_file for a private CA...); default
	// system roots.
	TLS *ClientTLS `yaml:"tls"`
}

const (
	OAuthPassthrough = "passthrough"
	OAuthValidate    = "validate"

	defaultOAuthUserClaim = "email"
	defaultOAuthTimeout   = 5 * time.Second
)

func (o *OAuth) applyDefaults() {
	if o.Mode != OAuthValidate {
		return
	}
	if o.UserClaim == "" {
		o.UserClaim = defaultOAuthUserClaim
	}
	setDur(&o.Timeout, defaultOAuthTimeout)
	if c := o.Cache; c != nil {
		setDur(&c.TTL, time.Minute)
		setInt(&c.MaxEntries, 10_000)
	}
	if o.OpenIDConfiguration == "" && o.Issuer != "" {
		o.OpenIDConfiguration = strings.TrimSuffix(o.Issuer, "/") + "/.well-known/openid-configuration"
	}
}

// validate checks o; master says whether auth.master_user is set, which
// validate mode logs in to backends as.
func (o *OAuth) validate(v *validator, p string, master bool) {
	validating := []struct {
		key string
		set bool
	}{
		{"issuer", o.Issuer != ""}, {"jwks_url", o.JWKSURL != ""}, {"audience", len(o.Audience) > 0},
		{"user_claim", o.UserClaim != ""}, {"introspection_url", o.IntrospectionURL != ""},
		{"client_id", o.ClientID != ""}, {"client_secret", o.ClientSecret.Source != ""},
		{"timeout", o.Timeout != 0}, {"tls", o.TLS != nil}, {"cache", o.Cache != nil},
	}
	switch o.Mode {
	case OAuthPassthrough:
		for _, k := range validating {
			if k.set {
				v.add(p+"."+k.key, `is only used with mode "validate"`)
			}
		}
	case OAuthValidate:
		if o.CleartextBackends {
			v.add(p+".cleartext_backends", `is only used with mode "passthrough": validated tokens never reach a backend`)
		}
		if !master {
			v.add(p+".mode", `"validate" needs auth.master_user and auth.master_password: validated tokens log in to backends as the master user`)
		}
		if o.Issuer == "" && o.IntrospectionURL == "" {
			v.add(p, `mode "validate" needs issuer (JWT) or introspection_url (opaque tokens), or both`)
		}
		for _, k := range []struct{ key, u string }{{"issuer", o.Issuer}, {"jwks_url", o.JWKSURL}, {"introspection_url", o.IntrospectionURL}, {"openid_configuration", o.OpenIDConfiguration}} {
			if k.u == "" {
				continue
			}
			if u, err := url.Parse(k.u); err != nil || u.Scheme != "https" || u.Host == "" {
				v.add(p+"."+k.key, "must be an https URL, not %q", k.u)
			}
		}
		if o.JWKSURL != "" && o.Issuer == "" {
			v.add(p+".jwks_url", "needs issuer: the tokens' iss is checked against it")
		}
		if o.Issuer != "" && len(o.Audience) == 0 {
			v.add(p+".audience", "is required with issuer: without it a token the issuer made for any application would open mailboxes")
		}
		if o.IntrospectionURL != "" && (o.ClientID == "" || o.ClientSecret.Source == "") {
			v.add(p+".client_id", "and client_secret are required with introspection_url")
		}
		if o.ClientSecret.Source == "inline" {
			v.add(p+".client_secret", "must be {env: NAME} or {file: PATH}, not written in the config file")
		}
		for _, a := range o.Audience {
			if a == "" {
				v.add(p+".audience", "must not hold an empty string")
			}
		}
		checkDur(v, p+".timeout", o.Timeout, 100*time.Millisecond, time.Minute)
		if c := o.Cache; c != nil {
			checkDur(v, p+".cache.ttl", c.TTL, time.Second, time.Hour)
			checkInt(v, p+".cache.max_entries", c.MaxEntries, 1, 10_000_000)
		}
		checkClientTLS(v, p+".tls", o.TLS)
	default:
		v.add(p+".mode", `must be "passthrough" or "validate", not %q`, o.Mode)
	}
	if strings.ContainsAny(o.Scope, "\"\\\x00\r\n") {
		v.add(p+".scope", "must not contain quotes, backslashes or control characters")
	}
}

func (o *OAuth) resolveSecrets(resolve func(*Secret, string), p string) {
	resolve(&o.ClientSecret, p+".client_secret")
}
