package routing

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
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
	FieldBackend      = "backend"
	FieldPool         = "pool"
	FieldAddr         = "addr"
	FieldSecurity     = "security"
	FieldServerName   = "server_name"
	FieldFallback     = "fallback"
	FieldAssignedPool = "assigned_pool"
	FieldAssignedAt   = "assigned_at"
)

// Redis looks routes up in Redis hashes, one per user, as described in the
// package documentation. The key is always sent as a single RESP argument,
// so no character of a user name can change the command or act as a glob.
//
// Client should come from NewRedisClient or at least have
// ContextTimeoutEnabled set; otherwise the client's own read and write
// timeouts, not Timeout, bound a lookup against a stalled server.
//
// Only Client is required. Pools, Health, Fleet and Cache add pools and
// assignment, health checks, drains and weights, and a route cache; each
// is optional and does nothing when nil.
type Redis struct {
	Client redis.UniversalClient
	// Prefix starts every key; empty means DefaultRedisPrefix.
	Prefix string
	// Backends are the named backends of the config, which a record refers
	// to with its "backend" and "fallback" fields.
	Backends map[string]*Backend
	// Defaults is the template for a record's literal "addr": TLS mode,
	// TLSConfig, ForwardID and timeouts. Its Name and Addr are ignored.
	Defaults Backend
	// Timeout bounds each Lookup on top of its ctx; zero means
	// DefaultLookupTimeout.
	Timeout time.Duration

	// Pools are the named pools, which a record refers to with its "pool"
	// field. Their members should also be in Backends.
	Pools map[string]*Pool
	// DomainPools maps the domain of a user without a route record to the
	// pool whose Policy decides: ErrNotFound or an assignment. Users of
	// other domains (or without a domain) go to DefaultPool; nil there
	// means ErrNotFound, as without pools.
	DomainPools map[string]*Pool
	DefaultPool *Pool
	// Health, when set, refuses logins to backends that are down, and
	// pools skip their down members.
	Health *Health
	// Fleet, when set, supplies drain flags and weight overrides.
	Fleet *Fleet
	// Cache, when set, keeps records in memory; run an Invalidator with
	// the same Prefix to keep it fresh.
	Cache *Cache
}

// Record is the content of one route hash, for tools and tests that write
// routes. Empty fields are not stored.
type Record struct {
	Backend    string // name of a configured backend; wins over Pool and Addr
	Pool       string // name of a configured pool; wins over Addr
	Addr       string // literal host:port
	Security   string // "plain", "starttls" or "tls"; empty means Defaults.TLS
	ServerName string // TLS server name to verify for Addr
	// Fallback names a configured backend that takes the user's logins
	// while the route's backend is down or drained, or its pool has no
	// usable member. It replaces the backend's own Backend.Fallback.
	Fallback string
	// AssignedPool and AssignedAt (unix seconds) are written by automatic
	// assignment, for operators; lookups ignore them.
	AssignedPool string
	AssignedAt   int64
}

func recordOf(f map[string]string) Record {
	rec := Record{
		Backend:      f[FieldBackend],
		Pool:         f[FieldPool],
		Addr:         f[FieldAddr],
		Security:     f[FieldSecurity],
		ServerName:   f[FieldServerName],
		Fallback:     f[FieldFallback],
		AssignedPool: f[FieldAssignedPool],
	}
	rec.AssignedAt, _ = strconv.ParseInt(f[FieldAssignedAt], 10, 64)
	return rec
}

// String shows a record in one line for logs and Explain.
func (rec Record) String() string {
	var sb strings.Builder
	for _, kv := range rec.fields() {
		if sb.Len() > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(kv[0] + "=" + strconv.Quote(truncate(kv[1])))
	}
	return sb.String()
}

// fields lists the non-empty fields in storage order.
func (rec Record) fields() [][2]string {
	var out [][2]string
	for _, kv := range [...][2]string{
		{FieldBackend, rec.Backend},
		{FieldPool, rec.Pool},
		{FieldAddr, rec.Addr},
		{FieldSecurity, rec.Security},
		{FieldServerName, rec.ServerName},
		{FieldFallback, rec.Fallback},
		{FieldAssignedPool, rec.AssignedPool},
	} {
		if kv[1] != "" {
			out = append(out, kv)
		}
	}
	if rec.AssignedAt != 0 {
		out = append(out, [2]string{FieldAssignedAt, strconv.FormatInt(rec.AssignedAt, 10)})
	}
	return out
}

// Key returns the Redis key holding user's route. It has no hash tag on
// purpose: every script touches one route key only, and users must spread
// over the slots of a Redis Cluster.
func (r *Redis) Key(user string) string {
	return prefix(r.Prefix) + "route:" + user
}

// Lookup returns user's backend:
//
//   - a record naming a backend gives that backend;
//   - a record naming a pool gives the member with the best rendezvous
//     score for the user among the members that are up and not drained,
//     chosen afresh on each lookup and never written;
//   - a record with an addr gives a backend built from Defaults;
//   - no record gives ErrNotFound, unless the user's pool (DomainPools or
//     DefaultPool) has PolicyAssign: then a member is chosen as for a pool
//     record and written into the record, first writer wins. Every proxy
//     uses the record that won, and the user stays there for good.
//
// A backend that is drained fails with ErrDrained and one that is down
// with ErrBackendDown, unless the record's fallback (or the backend's own)
// is usable. A record that cannot be used (unknown backend or pool name,
// bad address or security) is a data error that does not wrap ErrNotFound,
// so the client is told to try later instead of being told its password is
// wrong.
func (r *Redis) Lookup(ctx context.Context, user string) (*Backend, error) {
	return r.resolve(ctx, user, nil)
}

// Explain returns the decision path Lookup would take for user now, with
// no side effect: it neither fills the cache nor writes an assignment. Its
// error is the one Lookup would return; the Explanation is never nil.
func (r *Redis) Explain(ctx context.Context, user string) (*Explanation, error) {
	ex := &Explanation{User: user}
	ex.Backend, ex.Err = r.resolve(ctx, user, ex)
	return ex, ex.Err
}

// resolve is Lookup when ex is nil, and Explain otherwise.
func (r *Redis) resolve(ctx context.Context, user string, ex *Explanation) (*Backend, error) {
	if ex == nil && r.Client != nil {
		// The fast path of a cache hit: no context, no key, no Redis.
		if rec, found, hit := r.Cache.get(user); hit && found {
			r.Cache.count(true)
			return r.backendFor(user, rec, nil)
		}
	}
	key := r.Key(user)
	if r.Client == nil {
		return nil, fmt.Errorf("routing: redis lookup %q: no client", key)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout())
	defer cancel()

	rec, found, hit := r.Cache.get(user)
	if ex == nil {
		r.Cache.count(hit)
	}
	switch {
	case r.Cache == nil:
		ex.add("cache: none")
	case hit && found && ex != nil:
		ex.add("cache: hit: %v", rec)
	case hit:
		ex.add("cache: hit: no record")
	default:
		ex.add("cache: miss")
	}
	if !hit || ex != nil {
		// Explain reads Redis even after a hit, to show both.
		gen := r.Cache.generation()
		fields, err := r.Client.HGetAll(ctx, key).Result()
		if err != nil {
			return nil, fmt.Errorf("routing: redis lookup %q: %w", key, err)
		}
		rrec, rfound := recordOf(fields), hasRouteField(fields)
		if rfound && ex != nil {
			ex.add("redis %s: %v", key, rrec)
		} else if ex != nil {
			ex.add("redis %s: no record", key)
		}
		if !hit {
			rec, found = rrec, rfound
			if ex == nil {
				r.Cache.put(user, rec, found, gen)
			}
		}
	}
	if found {
		return r.backendFor(user, rec, ex)
	}

	pool := r.poolFor(user)
	if pool == nil {
		ex.add("no pool for the user's domain")
		return nil, fmt.Errorf("routing: redis lookup %q: %w", key, ErrNotFound)
	}
	if pool.Policy != PolicyAssign {
		ex.add("pool %s: policy %v", pool.Name, pool.Policy)
		return nil, fmt.Errorf("routing: redis lookup %q: pool %s rejects unrouted users: %w", key, pool.Name, ErrNotFound)
	}
	ex.add("pool %s: policy assign", pool.Name)
	b := r.pick(pool, user, ex)
	if b == nil {
		return nil, fmt.Errorf("routing: assign %q: pool %s has no member up and undrained: %w", user, pool.Name, ErrBackendDown)
	}
	if ex != nil {
		ex.add("would assign %s (not written)", b)
		return b, nil
	}
	gen := r.Cache.generation()
	rec, won, err := r.assign(ctx, user, key, pool, b)
	if err != nil {
		return nil, err
	}
	r.Cache.put(user, rec, true, gen)
	if won {
		return b, nil
	}
	// Another proxy was first; its choice is the user's route now, and it
	// gets the same checks as any record.
	return r.backendFor(user, rec, nil)
}

// assignScript writes an assignment unless the route exists. It touches
// only KEYS[1], so it needs no hash tag in a Redis Cluster; PUBLISH takes
// a channel, not a key. It returns the existing record (the route fields
// as HGETALL's flat list) or an empty list when it wrote. A hash with
// other fields only (a password hash) has no route yet, and keeps them.
var assignScript = redis.NewScript(`
local names = {` + routeFieldsLua + `}
local vals = redis.call('HMGET', KEYS[1], unpack(names))
local cur = {}
for i, v in ipairs(names) do
  if vals[i] then cur[#cur+1] = v; cur[#cur+1] = vals[i] end
end
if #cur > 0 then return cur end
redis.call('HSET', KEYS[1], 'backend', ARGV[1], 'assigned_pool', ARGV[2], 'assigned_at', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {}
`)

// assign stores b as user's backend unless someone else stored a route
// first. It returns the route in force and whether it is ours.
func (r *Redis) assign(ctx context.Context, user, key string, pool *Pool, b *Backend) (Record, bool, error) {
	if b.Name == "" {
		return Record{}, false, fmt.Errorf("routing: assign %q: pool %s member %s has no name", user, pool.Name, b)
	}
	now := time.Now().Unix()
	v, err := assignScript.Run(ctx, r.Client, []string{key},
		b.Name, pool.Name, now, InvalidateChannel(r.Prefix), user).StringSlice()
	if err != nil {
		return Record{}, false, fmt.Errorf("routing: assign %q: %w", key, err)
	}
	if len(v) == 0 {
		return Record{Backend: b.Name, AssignedPool: pool.Name, AssignedAt: now}, true, nil
	}
	f := make(map[string]string, len(v)/2)
	for i := 0; i+1 < len(v); i += 2 {
		f[v[i]] = v[i+1]
	}
	return recordOf(f), false, nil
}

// routeFields are the fields of a route record, which SetRoute replaces
// and DeleteRoute removes; any other field of the hash is left alone.
var routeFields = []string{FieldBackend, FieldPool, FieldAddr, FieldSecurity, FieldServerName, FieldFallback, FieldAssignedPool, FieldAssignedAt}

// hasRouteField reports whether a hash holds a route record: any of its
// fields, even empty (which is a data error, not a missing route).
func hasRouteField(fields map[string]string) bool {
	for _, f := range routeFields {
		if _, ok := fields[f]; ok {
			return true
		}
	}
	return false
}

// routeFieldsLua is routeFields as a Lua list.
var routeFieldsLua = "'" + strings.Join(routeFields, "', '") + "'"

// timeout is how long one read may take (Timeout, or
// DefaultLookupTimeout).
func (r *Redis) timeout() time.Duration {
	if r.Timeout <= 0 {
		return DefaultLookupTimeout
	}
	return r.Timeout
}

// Fields reads user's whole route hash in one round trip, for fields that
// live next to the route (a password hash), and puts the route record it
// holds in the cache, so that the Lookup of the same login costs no
// second read. It never answers from the cache: only route records are
// cached, never other fields.
func (r *Redis) Fields(ctx context.Context, user string) (map[string]string, error) {
	key := r.Key(user)
	if r.Client == nil {
		return nil, fmt.Errorf("routing: redis read %q: no client", key)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout())
	defer cancel()
	gen := r.Cache.generation()
	fields, err := r.Client.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("routing: redis read %q: %w", key, err)
	}
	r.Cache.put(user, recordOf(fields), hasRouteField(fields), gen)
	return fields, nil
}

// poolFor returns the pool deciding about a user without a route.
func (r *Redis) poolFor(user string) *Pool {
	if i := strings.LastIndexByte(user, '@'); i >= 0 {
		if p := r.DomainPools[user[i+1:]]; p != nil {
			return p
		}
	}
	return r.DefaultPool
}

// pick chooses pool's member for user among those up and not drained.
func (r *Redis) pick(pool *Pool, user string, ex *Explanation) *Backend {
	ok := func(b *Backend) bool { return r.Health.Up(b) && !r.Fleet.Drained(b) }
	b := pool.Pick(user, r.Fleet.Weight, ok)
	if ex != nil {
		for _, m := range pool.Members {
			if m == nil {
				continue
			}
			w := r.Fleet.Weight(m)
			ex.Candidates = append(ex.Candidates, Candidate{
				Backend: m, Weight: w, Score: Score(user, m.key(), w),
				Up: r.Health.Up(m), Drained: r.Fleet.Drained(m), Chosen: m == b,
			})
		}
		slices.SortStableFunc(ex.Candidates, func(a, b Candidate) int { return cmp.Compare(b.Score, a.Score) })
		for _, c := range ex.Candidates {
			ex.add("pool %s: %v", pool.Name, c)
		}
	}
	return b
}

// backendFor applies a record.
func (r *Redis) backendFor(user string, rec Record, ex *Explanation) (*Backend, error) {
	var fallback *Backend
	if rec.Fallback != "" {
		if fallback = r.Backends[rec.Fallback]; fallback == nil {
			return nil, fmt.Errorf("routing: redis key %q: unknown fallback backend %q", r.Key(user), truncate(rec.Fallback))
		}
	}
	var b *Backend
	switch {
	case rec.Backend != "":
		if b = r.Backends[rec.Backend]; b == nil {
			return nil, fmt.Errorf("routing: redis key %q: unknown backend %q", r.Key(user), truncate(rec.Backend))
		}
	case rec.Pool != "":
		pool := r.Pools[rec.Pool]
		if pool == nil {
			return nil, fmt.Errorf("routing: redis key %q: unknown pool %q", r.Key(user), truncate(rec.Pool))
		}
		if b = r.pick(pool, user, ex); b != nil {
			ex.add("pool %s: chose %s", pool.Name, b)
			return b, nil // usable by construction
		}
		if fallback != nil {
			b, err := usable(fallback, nil, r.Health, r.Fleet, ex)
			if err == nil {
				return b, nil
			}
		}
		return nil, fmt.Errorf("routing: lookup %q: pool %s has no member up and undrained: %w", user, pool.Name, ErrBackendDown)
	default:
		var err error
		if b, err = r.literal(rec); err != nil {
			return nil, fmt.Errorf("routing: redis key %q: %w", r.Key(user), err)
		}
	}
	if fallback == nil {
		fallback = b.Fallback
	}
	b, err := usable(b, fallback, r.Health, r.Fleet, ex)
	if err != nil {
		return nil, fmt.Errorf("routing: lookup %q: %w", user, err)
	}
	return b, nil
}

// literal turns a record's addr into a Backend.
func (r *Redis) literal(rec Record) (*Backend, error) {
	if rec.Addr == "" {
		return nil, errors.New(`record has neither "backend", "pool" nor "addr"`)
	}
	if err := rec.checkLiteral(); err != nil {
		return nil, err
	}
	b := r.Defaults // a copy: Defaults is shared by every lookup
	b.Name = ""
	b.Addr = rec.Addr
	b.POP3Addr = ""
	if b.POP3Port > 0 {
		host, _, _ := net.SplitHostPort(rec.Addr) // checked above
		b.POP3Addr = net.JoinHostPort(host, strconv.Itoa(b.POP3Port))
	}
	b.Weight = 0
	b.Fallback = nil
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

// SetRoute replaces user's route with rec and tells every proxy, in one
// MULTI/EXEC transaction. It checks rec's syntax, but not that the names
// it holds exist in Backends or Pools, so that tools can write routes
// without the proxy's config.
func (r *Redis) SetRoute(ctx context.Context, user string, rec Record) error {
	key := r.Key(user)
	if r.Client == nil {
		return fmt.Errorf("routing: redis set route %q: no client", key)
	}
	if rec.Backend == "" && rec.Pool == "" && rec.Addr == "" {
		return fmt.Errorf(`routing: redis set route %q: record has neither "backend", "pool" nor "addr"`, key)
	}
	if rec.Addr != "" {
		if err := rec.checkLiteral(); err != nil {
			return fmt.Errorf("routing: redis set route %q: %w", key, err)
		}
	}
	var values []any
	for _, kv := range rec.fields() {
		if kv[0] != FieldAddr && kv[0] != FieldServerName && (len(kv[1]) > 255 || !printable(kv[1])) {
			return fmt.Errorf("routing: redis set route %q: bad %s %q", key, kv[0], truncate(kv[1]))
		}
		values = append(values, kv[0], kv[1])
	}
	_, err := r.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HDel(ctx, key, routeFields...) // not DEL: other fields stay
		p.HSet(ctx, key, values...)
		p.Publish(ctx, InvalidateChannel(r.Prefix), user)
		return nil
	})
	r.Cache.Delete(user)
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
	if !hasRouteField(f) {
		return Record{}, fmt.Errorf("routing: redis get route %q: %w", key, ErrNotFound)
	}
	return recordOf(f), nil
}

// DeleteRoute removes user's route and tells every proxy. Deleting a
// missing route is not an error. A user of a pool with PolicyAssign gets
// a new assignment at the next login. Fields of the hash that are not
// the route's (a password hash) stay.
func (r *Redis) DeleteRoute(ctx context.Context, user string) error {
	key := r.Key(user)
	if r.Client == nil {
		return fmt.Errorf("routing: redis delete route %q: no client", key)
	}
	_, err := r.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HDel(ctx, key, routeFields...)
		p.Publish(ctx, InvalidateChannel(r.Prefix), user)
		return nil
	})
	r.Cache.Delete(user)
	if err != nil {
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
