package config

import "time"

// Config is the whole configuration file. Zero values are replaced by the
// defaults documented in portico.example.yaml when the file is loaded.
type Config struct {
	Log       Log        `yaml:"log"`
	Listeners []Listener `yaml:"listeners"`
	TLS       TLS        `yaml:"tls"`
	Limits    Limits     `yaml:"limits"`
	Routing   Routing    `yaml:"routing"`
	// Backends are named backend servers that routes can refer to.
	Backends []Backend `yaml:"backends"`
	// BackendDefaults apply to literal backend addresses found in Redis
	// route records (those that do not name a configured backend).
	BackendDefaults BackendOptions `yaml:"backend_defaults"`
	// Fleet: session registry, kick, move and drain across proxies
	// (needs routing.redis).
	Fleet Fleet `yaml:"fleet"`
	// PIDFile is where serve writes its process id, for portico reload
	// and portico upgrade (and systemd's PIDFile=). Default none.
	PIDFile string `yaml:"pid_file"`
	// Admin is the HTTP listener for /metrics, /healthz, /readyz and
	// /debug/pprof/; nil (the default) means none.
	Admin *Admin `yaml:"admin"`
	// Auth decides logins at the proxy (auth.go); the zero value leaves
	// them to the backends.
	Auth Auth `yaml:"auth"`
}

// Admin configures the admin HTTP listener.
type Admin struct {
	// Address is host:port; default DefaultAdminAddress (loopback).
	Address string `yaml:"address"`
	// Token, when set, must come as "Authorization: Bearer <token>" on
	// every path but /healthz. Required unless Address is loopback; only
	// {env: NAME} or {file: PATH}, never inline.
	Token Secret `yaml:"token"`
}

// Log configures log/slog.
type Log struct {
	Level  string `yaml:"level"`  // debug|info|warn|error; default info
	Format string `yaml:"format"` // text|json; default text
}

// Listener is one socket clients connect to.
type Listener struct {
	Name    string `yaml:"name"`    // for logs; default "<mode>-<address>"
	Address string `yaml:"address"` // default ":993" imaps, ":143" imap, ":995" pop3s, ":110" pop3
	// Mode is "imaps" (implicit TLS), "imap" (cleartext + STARTTLS),
	// "pop3s" (implicit TLS) or "pop3" (cleartext + STLS); required.
	Mode string `yaml:"mode"`
	// CleartextLoginNetworks lists CIDRs from which LOGIN/AUTHENTICATE are
	// allowed without TLS (passwords in clear) on an "imap" listener; every
	// entry draws a warning. Empty (the default) means TLS is required for
	// every login.
	CleartextLoginNetworks []string `yaml:"cleartext_login_networks"`
	// ProxyProtocol makes the listener take the client's address from a
	// PROXY protocol header (v1 or v2) sent by a load balancer. Nil (the
	// default) means no header is expected.
	ProxyProtocol *ProxyProtocolIn `yaml:"proxy_protocol"`
}

// ProxyProtocolIn says who may put a listener's connections behind a
// PROXY protocol header.
type ProxyProtocolIn struct {
	// TrustedNetworks are the balancers' CIDR networks: connections from
	// them must start with a header, connections from anywhere else must
	// not. Required, at least one.
	TrustedNetworks []string `yaml:"trusted_networks"`
}

// TLS holds the certificates clients see and how they are negotiated.
type TLS struct {
	// Certificates are PEM files; the first is served to clients whose SNI
	// matches nothing (or who send none) unless ACME's default name applies.
	Certificates []Certificate `yaml:"certificates"`
	MinVersion   string        `yaml:"min_version"` // "1.2" (default) or "1.3"
	// CipherSuites restricts TLS 1.2 suites by their Go/IANA names, e.g.
	// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256; empty means Go's defaults
	// (AEAD with forward secrecy only). TLS 1.3 suites are not configurable;
	// suites in tls.InsecureCipherSuites are refused. See TLS.CipherSuiteIDs.
	CipherSuites []string `yaml:"cipher_suites"`
	// CurvePreferences restricts key exchanges to these names
	// (case-insensitive): X25519MLKEM768, X25519, P256, P384, P521;
	// crypto/tls ignores their order. Empty means Go's default, which
	// includes post-quantum hybrids. See TLS.CurveIDs.
	CurvePreferences []string `yaml:"curve_preferences"`
	// ReloadInterval is how often certificate files are checked for
	// changes; SIGHUP reloads at once. Default 30s.
	ReloadInterval time.Duration `yaml:"reload_interval"`
	// ExpiryWarning logs a warning for certificates that expire within
	// this long. Default 336h (14 days).
	ExpiryWarning time.Duration `yaml:"expiry_warning"`
	// SessionTickets configures TLS session resumption.
	SessionTickets SessionTickets `yaml:"session_tickets"`
	// ACME obtains and renews certificates automatically (Let's Encrypt).
	ACME *ACME `yaml:"acme"`
}

// SessionTickets configures resumption tickets. With Redis, every proxy
// of a fleet uses the same rotating keys, so a client resumes anywhere.
type SessionTickets struct {
	Disabled bool `yaml:"disabled"` // default false: tickets on
	// Redis shares the ticket keys through routing.redis. Default false
	// (each process has its own keys, rotated by crypto/tls).
	Redis bool `yaml:"redis"`
	// Rotation is how long one key encrypts new tickets; tickets stay
	// valid for two more periods. Default 12h.
	Rotation time.Duration `yaml:"rotation"`
	// Key encrypts the shared keys at rest in Redis (any string, hashed to
	// 256 bits); required with redis.
	Key Secret `yaml:"key"`
}

// ACME configures automatic certificates through golang.org/x/crypto's
// autocert.
type ACME struct {
	// Hostnames are the names certificates are obtained for; the first is
	// the default for clients that send no SNI. Required.
	Hostnames []string `yaml:"hostnames"`
	Email     string   `yaml:"email"` // contact for the CA, optional
	// DirectoryURL defaults to Let's Encrypt production; staging is
	// https://acme-staging-v02.api.letsencrypt.org/directory.
	DirectoryURL string `yaml:"directory_url"`
	// CAFile trusts a private ACME server (tests, internal CAs).
	CAFile string `yaml:"ca_file"`
	// HTTPAddress serves HTTP-01 challenges (only the challenge path).
	// Default ":80"; "off" disables it.
	HTTPAddress string `yaml:"http_address"`
	// TLSALPNAddress serves TLS-ALPN-01 challenges, for deployments where
	// port 443 reaches Portico. Default none ("" or "off").
	TLSALPNAddress string `yaml:"tls_alpn_address"`
	// Cache is "dir" (default) or "redis" (shared by a fleet, through
	// routing.redis).
	Cache    string `yaml:"cache"`
	CacheDir string `yaml:"cache_dir"` // default /var/lib/portico/acme
	// CacheKey encrypts cached keys and certificates at rest; required
	// for the redis cache, optional for dir.
	CacheKey Secret `yaml:"cache_key"`
	// RenewBefore renews this long before expiry, at most 720h (autocert
	// caps it at 30 days); 0 means autocert's default (a third of the
	// lifetime, at most 30 days).
	RenewBefore time.Duration `yaml:"renew_before"`
}

// Certificate is a PEM certificate chain and its key (ECDSA, RSA or Ed25519).
type Certificate struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Limits bound what an unauthenticated client can make Portico do.
type Limits struct {
	MaxLineLength     int           `yaml:"max_line_length"`      // default 8192 bytes
	MaxLiteralSize    int           `yaml:"max_literal_size"`     // per pre-auth literal; default 1024 bytes
	MaxAuthLineLength int           `yaml:"max_auth_line_length"` // AUTHENTICATE responses; default 16384
	PreauthTimeout    time.Duration `yaml:"preauth_timeout"`      // absolute, from accept to login; default 60s
	HandshakeTimeout  time.Duration `yaml:"handshake_timeout"`    // TLS handshake; default 10s
	MaxBadCommands    int           `yaml:"max_bad_commands"`     // then * BYE; default 3
	MaxAuthFailures   int           `yaml:"max_auth_failures"`    // per connection, then * BYE; default 3
	AuthFailureDelay  time.Duration `yaml:"auth_failure_delay"`   // before every NO [AUTHENTICATIONFAILED]; default 2s
	IdleTimeout       time.Duration `yaml:"idle_timeout"`         // spliced session without traffic; default 31m, minimum 30m
	ShutdownTimeout   time.Duration `yaml:"shutdown_timeout"`     // on SIGTERM; default 30s
	// After a binary upgrade, the old process keeps its spliced sessions
	// this long, then ends the rest spread over UpgradeWindow.
	UpgradeTimeout time.Duration `yaml:"upgrade_timeout"` // default 1h
	UpgradeWindow  time.Duration `yaml:"upgrade_window"`  // default 5m

	// Connection limits. Client addresses are counted per address, IPv6
	// addresses per IPv6Prefix.
	MaxConnections             int `yaml:"max_connections"`                // per proxy, at once; 0 (default): from the open-file limit
	MaxPreauthConnectionsPerIP int `yaml:"max_preauth_connections_per_ip"` // not logged in yet; default 100
	IPv6Prefix                 int `yaml:"ipv6_prefix"`                    // default 64
	MaxSessionsPerUser         int `yaml:"max_sessions_per_user"`          // fleet-wide with Redis; default 100
	MaxSessionsPerUserIP       int `yaml:"max_sessions_per_user_ip"`       // on each proxy; default 10
	// Backend logins in progress (connect to login reply): bounds what a
	// routing loop or a stuck backend can hold.
	MaxLoginsInProgress           int `yaml:"max_logins_in_progress"`             // default 1000
	MaxLoginsInProgressPerBackend int `yaml:"max_logins_in_progress_per_backend"` // default 100
	// TrustedNetworks are Portico's own front proxies and webmails: CIDR
	// networks whose ID fields x-originating-ip/-port, x-connected-ip/-port,
	// x-session-id and x-proxy-ttl are believed, and whose own address is
	// exempt from the per-address limits. Default [].
	TrustedNetworks []string `yaml:"trusted_networks"`

	// BruteForce limits failed logins per client address, per user and
	// per user and address, fleet-wide through routing.redis.
	BruteForce BruteForce `yaml:"brute_force"`
}

// BruteForce configures the failed-login limits (package limits). Client
// addresses are counted per address, IPv6 addresses per
// Limits.IPv6Prefix; Limits.TrustedNetworks are exempt.
type BruteForce struct {
	Disabled bool `yaml:"disabled"` // default false: limits on
	// The three families of counters. Defaults: ip 10/30 per 30m, block
	// 30m; user_ip 3/10 per 15m, block 15m; user 10/50 per 1h, block 15m.
	IP     FailureLimit `yaml:"ip"`
	UserIP FailureLimit `yaml:"user_ip"`
	User   FailureLimit `yaml:"user"`
	// Delay is the first wait past delay_after, doubled with each further
	// failure up to MaxDelay. Defaults 1s and 15s.
	Delay    time.Duration `yaml:"delay"`
	MaxDelay time.Duration `yaml:"max_delay"`
	// KnownAddressTTL keeps an address a user logged in from exempt from
	// the user and ip limits for the user; at most KnownAddresses per
	// user. Defaults 720h and 16.
	KnownAddressTTL time.Duration `yaml:"known_address_ttl"`
	KnownAddresses  int           `yaml:"known_addresses"`
	// RepeatedPasswordWindow: the same wrong password for a user within
	// this long counts once. Default 1h.
	RepeatedPasswordWindow time.Duration `yaml:"repeated_password_window"`
	// PasswordHashKey keys the HMAC by which wrong passwords are
	// recognised; the same on every proxy. Empty: a random key per
	// process.
	PasswordHashKey Secret `yaml:"password_hash_key"`
	// OnRedisError is "open" (default: this proxy's own counters decide
	// while Redis is unreachable) or "closed" (NO [UNAVAILABLE]).
	OnRedisError string `yaml:"on_redis_error"`
}

// FailureLimit is one family of failure counters.
type FailureLimit struct {
	DelayAfter int           `yaml:"delay_after"` // failures from which attempts wait
	BlockAfter int           `yaml:"block_after"` // the failure that blocks
	Window     time.Duration `yaml:"window"`      // the count drains block_after per window
	BlockFor   time.Duration `yaml:"block_for"`
}

// Routing says where users' mailboxes are.
type Routing struct {
	// DefaultDomain is appended to user names without "@"; default none.
	DefaultDomain string        `yaml:"default_domain"`
	LookupTimeout time.Duration `yaml:"lookup_timeout"` // default 2s
	// Static routes are consulted before Redis.
	Static []StaticRoute `yaml:"static"`
	// Redis is optional; without it only static routes exist.
	Redis *Redis `yaml:"redis"`
	// Pools group backends; a Redis route may name a pool, and users
	// without a route can be assigned to a pool's members.
	Pools []Pool `yaml:"pools"`
	// DomainPools maps a user's domain, in lower case, to the pool that
	// takes users of that domain without a route; DefaultPool takes the
	// rest. Both are used only with Redis.
	DomainPools map[string]string `yaml:"domain_pools"`
	DefaultPool string            `yaml:"default_pool"`
	// Cache keeps route records in process; invalidated fleet-wide.
	Cache RouteCache `yaml:"cache"`
	// Health checks backends actively and passively.
	Health Health `yaml:"health"`
}

// Pool is a named group of backends.
type Pool struct {
	Name     string   `yaml:"name"`     // required, unique; a namespace apart from backends
	Backends []string `yaml:"backends"` // names of configured backends; at least one
	// Policy for users without a route: "reject" (default; answered like a
	// wrong password) or "assign" (weighted rendezvous hashing over the
	// healthy members, written to Redis, which it needs; the user stays
	// there).
	Policy string `yaml:"policy"`
}

// RouteCache configures the in-process route cache.
type RouteCache struct {
	Disabled    bool          `yaml:"disabled"`
	PositiveTTL time.Duration `yaml:"positive_ttl"` // default 30s
	NegativeTTL time.Duration `yaml:"negative_ttl"` // default 5s
	MaxEntries  int           `yaml:"max_entries"`  // default 100000
}

// Health configures backend health checks.
type Health struct {
	Disabled bool          `yaml:"disabled"`
	Interval time.Duration `yaml:"interval"` // default 5s
	Timeout  time.Duration `yaml:"timeout"`  // default 3s
	Rise     int           `yaml:"rise"`     // good checks to come back; default 2
	Fall     int           `yaml:"fall"`     // failures to go down; default 3
}

// Fleet configures how proxies share live session state through Redis.
type Fleet struct {
	// ProxyID names this proxy in session listings. Empty (the default)
	// means hostname:pid, which the binary fills in.
	ProxyID string `yaml:"proxy_id"`
	// Heartbeat tells the registry this proxy is alive (one small command,
	// whatever its number of sessions); readers ignore the sessions of a
	// proxy that missed three. Default 10s.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// Reconcile is how often the proxy compares its registry entries with
	// its sessions, repairing the difference and refreshing byte counts.
	// Default 5m.
	Reconcile time.Duration `yaml:"reconcile"`
	// WriteRate bounds the sessions per second a restore (after Redis
	// lost the registry), a reconciliation or a sweep of a dead proxy
	// writes. Default 5000.
	WriteRate int `yaml:"write_rate"`
	// MoveHold is how long `portico move` holds a user's new logins at
	// most while the old sessions end. Default 30s.
	MoveHold time.Duration `yaml:"move_hold"`
	// DrainWindow spreads the sessions ended by a drain deadline over
	// this long, so clients do not reconnect all at once. At most 24h;
	// zero means the default, 5m.
	DrainWindow time.Duration `yaml:"drain_window"`
}

// StaticRoute sends one user to one configured backend.
type StaticRoute struct {
	User    string `yaml:"user"`
	Backend string `yaml:"backend"` // name of an entry in backends
}

// Redis is the route store, reached through go-redis' UniversalClient:
// one address is a standalone server, several a cluster, and MasterName
// selects Sentinel.
type Redis struct {
	Addrs        []string      `yaml:"addrs"`       // required, host:port
	MasterName   string        `yaml:"master_name"` // Sentinel
	Username     string        `yaml:"username"`
	Password     Secret        `yaml:"password"`
	DB           int           `yaml:"db"`
	KeyPrefix    string        `yaml:"key_prefix"`    // default "portico:"
	DialTimeout  time.Duration `yaml:"dial_timeout"`  // default 1s
	ReadTimeout  time.Duration `yaml:"read_timeout"`  // default 1s
	WriteTimeout time.Duration `yaml:"write_timeout"` // default 1s
	PoolSize     int           `yaml:"pool_size"`     // default go-redis' (10 per CPU)
	TLS          *ClientTLS    `yaml:"tls"`           // nil: no TLS
}

// Secret is a password that may be given inline, from an environment
// variable or from a file, so that it need not sit in the config file:
//
//	password: "inline"
//	password: {env: REDIS_PASSWORD}
//	password: {file: /run/secrets/redis}
//
// Value is resolved at load time; Source says where it came from, for
// messages (never the secret itself).
type Secret struct {
	Value  string `yaml:"-"`
	Source string `yaml:"-"` // "inline", "env:NAME", "file:PATH" or ""
}

// ClientTLS configures TLS for an outgoing connection.
type ClientTLS struct {
	CAFile             string `yaml:"ca_file"`     // default: system roots
	ServerName         string `yaml:"server_name"` // default: host of the address
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
	CertFile           string `yaml:"cert_file"` // client certificate (mutual TLS), optional
	KeyFile            string `yaml:"key_file"`
	// PinSHA256 lists base64 SHA-256 hashes of acceptable SubjectPublicKeyInfo;
	// when set, the server's leaf key must match one (on top of verification).
	PinSHA256 []string `yaml:"pin_sha256"`
}

// Backend is a named backend IMAP server.
type Backend struct {
	Name    string `yaml:"name"`    // required, unique
	Address string `yaml:"address"` // required, host:port
	// Weight is its share of a pool's new users, relative to the other
	// members; 1..1000, default 1.
	Weight int `yaml:"weight"`
	// Fallback names another backend that takes this one's logins while
	// it is down or drained (it must reach the same mailboxes); optional.
	Fallback string `yaml:"fallback"`
	// SpareConnections is how many connections to the backend (and to
	// its POP3 service, if any) Portico keeps connected, TLS set up and
	// greeted, so that a login skips those steps; 0..64, default 0 (none).
	// Not with proxy_protocol. Only configured backends have spares, not
	// the addresses of route records (backend_defaults).
	SpareConnections int `yaml:"spare_connections"`
	// SpareMaxIdle is how long a spare connection waits at most, and how
	// long the backend keeps spares without logins; 1s..170s (below
	// Dovecot's 3-minute pre-login timeout); default 60s.
	SpareMaxIdle   time.Duration `yaml:"spare_max_idle"`
	BackendOptions `yaml:",inline"`
}

// BackendOptions say how to reach a backend.
type BackendOptions struct {
	// Security is "plain", "starttls" or "tls"; default "plain" for named
	// backends and backend_defaults.
	Security string     `yaml:"security"`
	TLS      *ClientTLS `yaml:"tls"`
	// ForwardID sends ID with x-originating-ip and friends before login;
	// only for backends that trust Portico (Dovecot login_trusted_networks).
	// Default false.
	ForwardID      bool          `yaml:"forward_id"`
	ConnectTimeout time.Duration `yaml:"connect_timeout"` // default 10s
	LoginTimeout   time.Duration `yaml:"login_timeout"`   // default 30s
	// ProxyProtocol sends a PROXY protocol v2 header with the client's
	// address instead of ID forwarding (one mechanism per backend: not
	// with ForwardID; the backend's listener must expect it, e.g. Dovecot
	// haproxy = yes). Default false.
	ProxyProtocol bool `yaml:"proxy_protocol"`
	// POP3Port is the port of the backend's POP3 service on the host of
	// its address (Dovecot's pop3 listener: 110, or 995 with security
	// "tls"), reached with the same security, PROXY header and
	// forwarding. 0 (the default) means the backend serves no POP3.
	POP3Port int `yaml:"pop3_port"`
}
