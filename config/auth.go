package config

import (
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Auth configures proxy-side authentication: where passwords are checked
// and how the proxy then logs in to the backend. The zero Auth (no auth:
// section) leaves every decision to the backends, with the client's own
// credentials.
type Auth struct {
	// Passwords is where LOGIN and PLAIN passwords are checked: "redis"
	// (hashes in Redis, see Redis), "ldap" (a bind, see LDAP), "http" (an
	// nginx-style auth_http service, see HTTP), or "" (the default: the
	// backend checks them).
	Passwords string `yaml:"passwords"`
	// MasterUser and MasterPassword are the credentials of a master user
	// (Dovecot: a passdb with master = yes) that the proxy logs in to
	// backends as, on behalf of users whose credentials it checked, with
	// AUTHENTICATE PLAIN and the user as authorization identity. Empty:
	// the client's own credentials go to the backend, which checks them
	// again. The password opens every mailbox: {env: NAME} or
	// {file: PATH} only.
	MasterUser     string `yaml:"master_user"`
	MasterPassword Secret `yaml:"master_password"`
	// Redis says where the hashes live, for passwords "redis"; it needs
	// routing.redis, whose client and key_prefix it uses.
	Redis *AuthRedis `yaml:"redis"`
	// LDAP is the directory, for passwords "ldap".
	LDAP *LDAP `yaml:"ldap"`
	// Cache remembers accepted passwords of redis and ldap for a while;
	// nil (the default) means every login is checked in full.
	Cache *AuthCache `yaml:"cache"`
	// HTTP is the auth_http service, for passwords "http" (auth_http.go).
	HTTP *HTTPAuth `yaml:"http"`
	// OAuth configures XOAUTH2 and OAUTHBEARER (auth_oauth.go).
	OAuth *OAuth `yaml:"oauth"`
}

// AuthRedis says where password hashes are in Redis: in a field of the
// user's route hash (one HGET, nothing new to keep in step) or in a key of
// their own.
type AuthRedis struct {
	// Field of the route hash (key_prefix + "route:" + user) holding the
	// user's hash. Default "password", unless key is set.
	Field string `yaml:"field"`
	// Key is the template of a string key of its own holding the hash,
	// after key_prefix; "{user}" is replaced by the user name, e.g.
	// "passwd:{user}". Not with field.
	Key string `yaml:"key"`
	// AllowPlain accepts {PLAIN} (and {CLEAR}/{CLEARTEXT}) entries, that
	// is passwords stored in clear; default false, such entries fail as
	// data errors (NO [UNAVAILABLE]) and are logged.
	AllowPlain bool `yaml:"allow_plain"`
}

// AuthCache configures the cache of accepted passwords (auth.CachedStore)
// or validated OAuth tokens (auth.oauth.cache).
type AuthCache struct {
	// TTL: a password changed in the store keeps working this long.
	// 1s..1h; default 1m.
	TTL time.Duration `yaml:"ttl"`
	// MaxEntries bounds the memory (about 100 bytes each). Default 10000.
	MaxEntries int `yaml:"max_entries"`
}

// LDAP configures password checks by an LDAP bind as the user.
type LDAP struct {
	// URL is ldap://host:port or ldaps://host:port. Required.
	URL string `yaml:"url"`
	// StartTLS upgrades an ldap:// connection before any bind. Default
	// false; the TLS settings are in TLS.
	StartTLS bool       `yaml:"start_tls"`
	TLS      *ClientTLS `yaml:"tls"`
	// BindDN is the template of the user's DN: "{user}" is the whole user
	// name, "{local}" the part before "@", "{domain}" the part after it,
	// each escaped for a DN. Either BindDN or SearchBase is required.
	BindDN string `yaml:"bind_dn"`
	// SearchBase and SearchFilter find the user's DN with a search, as
	// the service account (ServiceDN, ServicePassword; anonymous when
	// empty); the filter's "{user}", "{local}" and "{domain}" are escaped
	// for a filter. Default filter "(mail={user})".
	SearchBase      string `yaml:"search_base"`
	SearchFilter    string `yaml:"search_filter"`
	ServiceDN       string `yaml:"service_dn"`
	ServicePassword Secret `yaml:"service_password"`
	// Timeout bounds connecting and each operation. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// PoolSize is the number of connections kept open. Default 8.
	PoolSize int `yaml:"pool_size"`
}

const (
	defaultAuthRedisField  = "password"
	defaultLDAPFilter      = "(mail={user})"
	defaultLDAPTimeout     = 5 * time.Second
	defaultLDAPPoolSize    = 8
	maxLDAPPoolSize        = 1000
	authPasswordsChoices   = `"redis", "ldap", "http" or "" (the backend checks passwords)`
	masterPasswordSourceOK = "{env: NAME} or {file: PATH}"
)

// ApplyDefaults fills in the defaults of auth: (called by
// Config.ApplyDefaults).
func (a *Auth) ApplyDefaults() {
	if a.Passwords == "redis" && a.Redis == nil {
		a.Redis = &AuthRedis{}
	}
	if r := a.Redis; r != nil && r.Key == "" && r.Field == "" {
		r.Field = defaultAuthRedisField
	}
	if l := a.LDAP; l != nil {
		if l.SearchBase != "" && l.SearchFilter == "" {
			l.SearchFilter = defaultLDAPFilter
		}
		setDur(&l.Timeout, defaultLDAPTimeout)
		setInt(&l.PoolSize, defaultLDAPPoolSize)
	}
	if c := a.Cache; c != nil {
		setDur(&c.TTL, time.Minute)
		setInt(&c.MaxEntries, 10_000)
	}
	if a.HTTP != nil {
		a.HTTP.applyDefaults()
	}
	if a.OAuth != nil {
		a.OAuth.applyDefaults()
	}
}

func (c *Config) validateAuth(v *validator) {
	a := &c.Auth
	const p = "auth"
	switch a.Passwords {
	case "":
	case "redis":
		if c.Routing.Redis == nil {
			v.add(p+".passwords", `"redis" needs routing.redis`)
		}
	case "ldap":
		if a.LDAP == nil {
			v.add(p+".ldap", `is required with auth.passwords "ldap"`)
		}
	case "http":
		if a.HTTP == nil {
			v.add(p+".http", `is required with auth.passwords "http"`)
		}
	default:
		v.add(p+".passwords", "must be %s, not %q", authPasswordsChoices, a.Passwords)
	}
	if a.Redis != nil && a.Passwords != "redis" {
		v.add(p+".redis", `is only used with auth.passwords "redis"`)
	}
	if a.LDAP != nil && a.Passwords != "ldap" {
		v.add(p+".ldap", `is only used with auth.passwords "ldap"`)
	}

	kind, _, _ := strings.Cut(a.MasterPassword.Source, ":")
	switch {
	case a.MasterUser == "" && kind != "":
		v.add(p+".master_password", "is set but auth.master_user is not")
	case a.MasterUser == "":
	case strings.ContainsAny(a.MasterUser, "\x00\r\n"):
		v.add(p+".master_user", "must not contain NUL or line breaks")
	case kind == "":
		v.add(p+".master_password", "is required with auth.master_user; use %s", masterPasswordSourceOK)
	case kind == "inline":
		// It opens every mailbox, and config files are often
		// world-readable or kept in version control.
		v.add(p+".master_password", "must be %s, not written in the config file: it opens every mailbox", masterPasswordSourceOK)
	}

	if r := a.Redis; r != nil {
		switch {
		case r.Key != "" && r.Field != "":
			v.add(p+".redis", "field and key are exclusive: the hash is in a field of the route hash, or in a key of its own")
		case r.Key != "" && !strings.Contains(r.Key, "{user}"):
			v.add(p+".redis.key", `must contain "{user}", not %q`, r.Key)
		case r.Field != "" && isRouteField(r.Field):
			v.add(p+".redis.field", "%q is a field of the route record itself", r.Field)
		}
	}
	if l := a.LDAP; l != nil {
		l.validate(v, p+".ldap")
	}
	if ca := a.Cache; ca != nil {
		if a.Passwords != "redis" && a.Passwords != "ldap" {
			v.add(p+".cache", `is only used with auth.passwords "redis" or "ldap"`)
		}
		checkDur(v, p+".cache.ttl", ca.TTL, time.Second, time.Hour)
		checkInt(v, p+".cache.max_entries", ca.MaxEntries, 1, 10_000_000)
	}
	if a.HTTP != nil {
		a.HTTP.validate(v, p+".http")
	}
	if a.OAuth != nil {
		a.OAuth.validate(v, p+".oauth", a.MasterUser != "")
	}
}

// isRouteField reports whether f is one of routing's record fields
// (routing.Field*), which a password field must not shadow.
func isRouteField(f string) bool {
	switch f {
	case "backend", "pool", "addr", "security", "server_name", "fallback", "assigned_pool", "assigned_at":
		return true
	}
	return false
}

func (l *LDAP) validate(v *validator, p string) {
	u, err := url.Parse(l.URL)
	switch {
	case l.URL == "":
		v.add(p+".url", "is required (ldap://host:port or ldaps://host:port)")
	case err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "":
		v.add(p+".url", "must be ldap://host[:port] or ldaps://host[:port], not %q", l.URL)
	case u.Scheme == "ldaps" && l.StartTLS:
		v.add(p+".start_tls", "is for ldap:// URLs; ldaps:// is TLS from the start")
	}
	switch {
	case l.BindDN == "" && l.SearchBase == "":
		v.add(p, "needs bind_dn (a DN template) or search_base (and search_filter) to find the user's DN")
	case l.BindDN != "" && l.SearchBase != "":
		v.add(p, "bind_dn and search_base are exclusive")
	case l.BindDN != "" && !hasUserPlaceholder(l.BindDN):
		v.add(p+".bind_dn", `must contain "{user}", "{local}" or "{domain}", not %q`, l.BindDN)
	case l.SearchBase != "" && !hasUserPlaceholder(l.SearchFilter):
		v.add(p+".search_filter", `must contain "{user}", "{local}" or "{domain}", not %q`, l.SearchFilter)
	case l.SearchBase != "" && !(strings.HasPrefix(l.SearchFilter, "(") && strings.HasSuffix(l.SearchFilter, ")")):
		v.add(p+".search_filter", "must be an LDAP filter in parentheses, not %q", l.SearchFilter)
	}
	if l.BindDN != "" && (l.ServiceDN != "" || l.ServicePassword.Source != "") {
		v.add(p+".service_dn", "is only used with search_base")
	}
	if l.ServicePassword.Source != "" && l.ServiceDN == "" {
		v.add(p+".service_password", "is set but service_dn is not")
	}
	checkDur(v, p+".timeout", l.Timeout, 10*time.Millisecond, time.Minute)
	checkInt(v, p+".pool_size", l.PoolSize, 1, maxLDAPPoolSize)
	checkClientTLS(v, p+".tls", l.TLS)
}

func hasUserPlaceholder(s string) bool {
	return strings.Contains(s, "{user}") || strings.Contains(s, "{local}") || strings.Contains(s, "{domain}")
}

// resolveSecrets reads the env and file secrets of auth:.
func (a *Auth) resolveSecrets(resolve func(*Secret, string)) {
	resolve(&a.MasterPassword, "auth.master_password")
	if a.LDAP != nil {
		resolve(&a.LDAP.ServicePassword, "auth.ldap.service_password")
	}
	if a.HTTP != nil {
		a.HTTP.resolveSecrets(resolve, "auth.http")
	}
	if a.OAuth != nil {
		a.OAuth.resolveSecrets(resolve, "auth.oauth")
	}
}

// String names the password source for logs.
func (a Auth) String() string {
	if a.Passwords == "" {
		return "backend"
	}
	return fmt.Sprintf("%s (master user %q)", a.Passwords, a.MasterUser)
}

// ldapFields is LDAP without its methods, for LDAP.Format.
type ldapFields LDAP

// Format prints l as fmt would, with the service password redacted; see
// Redis.Format.
func (l LDAP) Format(f fmt.State, verb rune) {
	type LDAP ldapFields
	fmt.Fprintf(f, fmt.FormatString(f, verb), LDAP(l))
}

// authWarnings adds the risky but valid auth: settings to Warnings.
func (c *Config) authWarnings(add func(path, format string, args ...any)) {
	a := &c.Auth
	usesMaster := a.Passwords != "" || (a.OAuth != nil && a.OAuth.Mode == OAuthValidate)
	if a.MasterUser != "" && !usesMaster {
		add("auth.master_user", "has no effect: nothing checks credentials at the proxy (set auth.passwords, or auth.oauth mode validate)")
	}
	if path, ok := strings.CutPrefix(a.MasterPassword.Source, "file:"); ok {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			add("auth.master_password", "the file %s is readable by others (mode %04o), and the password opens every mailbox; chmod 600 it", path, fi.Mode().Perm())
		}
	}
	if a.MasterUser != "" && usesMaster {
		// Worse than a user's password in clear: this one opens every
		// mailbox.
		for i, b := range c.Backends {
			if b.Security == "plain" && !loopbackHost(b.Address) {
				add(fmt.Sprintf("backends[%d].security", i), `"plain" sends the master password, which opens every mailbox, in clear to %s; use "starttls" or "tls"`, b.Address)
			}
		}
	}
	if l := a.LDAP; l != nil && a.Passwords == "ldap" {
		if u, err := url.Parse(l.URL); err == nil && u.Scheme == "ldap" && !l.StartTLS && !IsLoopbackHost(u.Hostname()) {
			add("auth.ldap.start_tls", "is not set: users' passwords are sent in clear to %s; use start_tls or ldaps://", u.Host)
		}
		if l.TLS != nil && l.TLS.InsecureSkipVerify {
			add("auth.ldap.tls.insecure_skip_verify", "the directory's certificate is not verified: anyone on the path can impersonate it, collect passwords and accept any")
		}
	}
	if h := a.HTTP; h != nil && a.Passwords == "http" {
		h.warnings(add)
	}
	if r := a.Redis; r != nil && a.Passwords == "redis" && r.AllowPlain {
		add("auth.redis.allow_plain", "accepts passwords stored in clear in Redis: anyone who reads Redis (or a dump of it) has them")
	}
}
