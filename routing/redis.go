package routing

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisPrefix is the key prefix used when Redis.Prefix is empty.
const DefaultRedisPrefix = "portico:"

// DefaultLookupTimeout bounds a Redis lookup when Redis.Timeout is zero.
const DefaultLookupTimeout = 2 * time.Second

// Field names of a route record; see the package documentation.
const (
	FieldBackend    = "backend"
	FieldAddr       = "addr"
	FieldSecurity   = "security"
	FieldServerName = "server_name"
)

// Redis looks routes up in Redis hashes, one per user, as described in the
// package documentation. The key is always sent as a single RESP argument,
// so no character of a user name can change the command or act as a glob.
//
// Client should come from NewRedisClient or at least have
// ContextTimeoutEnabled set; otherwise the client's own read and write
// timeouts, not Timeout, bound a lookup against a stalled server.
type Redis struct {
	Client redis.UniversalClient
	// Prefix starts every key; empty means DefaultRedisPrefix.
	Prefix string
	// Backends are the named backends of the config, which a record refers
	// to with its "backend" field.
	Backends map[string]*Backend
	// Defaults is the template for a record's literal "addr": TLS mode,
	// TLSConfig, ForwardID and timeouts. Its Name and Addr are ignored.
	Defaults Backend
	// Timeout bounds each Lookup on top of its ctx; zero means
	// DefaultLookupTimeout.
	Timeout time.Duration
}

// Record is the content of one route hash, for tools and tests that write
// routes. Empty fields are not stored.
type Record struct {
	Backend    string // name of a configured backend; wins over Addr
	Addr       string // literal host:port
	Security   string // "plain", "starttls" or "tls"; empty means Defaults.TLS
	ServerName string // TLS server name to verify for Addr
}

// Key returns the Redis key holding user's route.
func (r *Redis) Key(user string) string {
	p := r.Prefix
	if p == "" {
		p = DefaultRedisPrefix
	}
	return p + "route:" + user
}

// Lookup reads user's route hash with one HGETALL. A missing key is
// ErrNotFound; a record that cannot be used (unknown backend name, bad
// address or security) is a data error that does not wrap ErrNotFound, so
// the client is told to try later instead of being told its password is
// wrong.
func (r *Redis) Lookup(ctx context.Context, user string) (*Backend, error) {
	key := r.Key(user)
	if r.Client == nil {
		return nil, fmt.Errorf("routing: redis lookup %q: no client", key)
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultLookupTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fields, err := r.Client.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("routing: redis lookup %q: %w", key, err)
	}
	if len(fields) == 0 {
		return nil, fmt.Errorf("routing: redis lookup %q: %w", key, ErrNotFound)
	}
	b, err := r.backend(fields)
	if err != nil {
		return nil, fmt.Errorf("routing: redis key %q: %w", key, err)
	}
	return b, nil
}

// backend turns a record into a Backend. Unknown fields are ignored so that
// records can grow without breaking older proxies.
func (r *Redis) backend(f map[string]string) (*Backend, error) {
	if name := f[FieldBackend]; name != "" {
		b := r.Backends[name]
		if b == nil {
			return nil, fmt.Errorf("unknown backend %q", truncate(name))
		}
		return b, nil
	}
	rec := Record{Addr: f[FieldAddr], Security: f[FieldSecurity], ServerName: f[FieldServerName]}
	if rec.Addr == "" {
		return nil, errors.New(`record has neither "backend" nor "addr"`)
	}
	if err := rec.checkLiteral(); err != nil {
		return nil, err
	}
	b := r.Defaults // a copy: Defaults is shared by every lookup
	b.Name = ""
	b.Addr = rec.Addr
	if rec.Security != "" {
		b.TLS, _ = ParseTLSMode(rec.Security) // checked above
	}
	if rec.ServerName != "" {
		if b.TLSConfig != nil {
			b.TLSConfig = b.TLSConfig.Clone()
		} else {
			// Same as a nil config (system roots) but for another name.
			b.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		b.TLSConfig.ServerName = rec.ServerName
	}
	return &b, nil
}

// checkLiteral validates the fields that describe a literal address.
func (rec *Record) checkLiteral() error {
	host, port, err := net.SplitHostPort(rec.Addr)
	if err != nil || host == "" || !printable(host) {
		return fmt.Errorf("bad addr %q", truncate(rec.Addr))
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("bad port in addr %q", truncate(rec.Addr))
	}
	if rec.Security != "" {
		if _, err := ParseTLSMode(rec.Security); err != nil {
			return fmt.Errorf("bad security %q: %w", truncate(rec.Security), err)
		}
	}
	if rec.ServerName != "" && (len(rec.ServerName) > 253 || !printable(rec.ServerName)) {
		return fmt.Errorf("bad server_name %q", truncate(rec.ServerName))
	}
	return nil
}

func printable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// truncate keeps data errors readable when a record holds garbage.
func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

// SetRoute replaces user's route with rec in one MULTI/EXEC transaction.
// It checks rec's syntax, but not that rec.Backend exists in Backends, so
// that tools can write routes without the proxy's config.
func (r *Redis) SetRoute(ctx context.Context, user string, rec Record) error {
	key := r.Key(user)
	if r.Client == nil {
		return fmt.Errorf("routing: redis set route %q: no client", key)
	}
	if rec.Backend == "" && rec.Addr == "" {
		return fmt.Errorf(`routing: redis set route %q: record has neither "backend" nor "addr"`, key)
	}
	if rec.Addr != "" {
		if err := rec.checkLiteral(); err != nil {
			return fmt.Errorf("routing: redis set route %q: %w", key, err)
		}
	}
	var values []any
	for _, kv := range [...][2]string{
		{FieldBackend, rec.Backend},
		{FieldAddr, rec.Addr},
		{FieldSecurity, rec.Security},
		{FieldServerName, rec.ServerName},
	} {
		if kv[1] != "" {
			values = append(values, kv[0], kv[1])
		}
	}
	_, err := r.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, key)
		p.HSet(ctx, key, values...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("routing: redis set route %q: %w", key, err)
	}
	return nil
}

// GetRoute returns user's stored record as is, or ErrNotFound.
func (r *Redis) GetRoute(ctx context.Context, user string) (Record, error) {
	key := r.Key(user)
	if r.Client == nil {
		return Record{}, fmt.Errorf("routing: redis get route %q: no client", key)
	}
	f, err := r.Client.HGetAll(ctx, key).Result()
	if err != nil {
		return Record{}, fmt.Errorf("routing: redis get route %q: %w", key, err)
	}
	if len(f) == 0 {
		return Record{}, fmt.Errorf("routing: redis get route %q: %w", key, ErrNotFound)
	}
	return Record{
		Backend:    f[FieldBackend],
		Addr:       f[FieldAddr],
		Security:   f[FieldSecurity],
		ServerName: f[FieldServerName],
	}, nil
}

// DeleteRoute removes user's route. Deleting a missing route is not an
// error.
func (r *Redis) DeleteRoute(ctx context.Context, user string) error {
	key := r.Key(user)
	if r.Client == nil {
		return fmt.Errorf("routing: redis delete route %q: no client", key)
	}
	if err := r.Client.Del(ctx, key).Err(); err != nil {
		return fmt.Errorf("routing: redis delete route %q: %w", key, err)
	}
	return nil
}

// RedisOptions are the plain parameters NewRedisClient needs. One address is
// a standalone server, several are a cluster, and MasterName selects
// Sentinel (Addrs are then the sentinels).
type RedisOptions struct {
	Addrs      []string
	MasterName string
	Username   string
	Password   string
	DB         int
	// DialTimeout, ReadTimeout and WriteTimeout default to 1s: a route
	// lookup is on every login's path, and a slow Redis must turn into a
	// quick NO [UNAVAILABLE] rather than a hung client.
	DialTimeout  time.Duration
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	PoolSize     int // zero means go-redis' default (10 per CPU)
	TLSConfig    *tls.Config
}

// NewRedisClient builds the client a Redis router expects: context
// deadlines honoured, short timeouts, one retry, and "portico" as the
// client name in CLIENT LIST.
func NewRedisClient(o RedisOptions) redis.UniversalClient {
	def := func(d time.Duration) time.Duration {
		if d == 0 {
			return time.Second
		}
		return d
	}
	return redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:                 o.Addrs,
		MasterName:            o.MasterName,
		Username:              o.Username,
		Password:              o.Password,
		DB:                    o.DB,
		ClientName:            "portico",
		DialTimeout:           def(o.DialTimeout),
		ReadTimeout:           def(o.ReadTimeout),
		WriteTimeout:          def(o.WriteTimeout),
		ContextTimeoutEnabled: true,
		MaxRetries:            1,
		// go-redis dials up to 5 times by default; once more is enough
		// and the lookup timeout bounds it anyway.
		DialerRetries: 2,
		PoolSize:      o.PoolSize,
		TLSConfig:     o.TLSConfig,
	})
}

// Compile-time checks.
var (
	_ Router = (*Redis)(nil)
	_ Router = (*Static)(nil)
	_ Router = Chain(nil)
)
