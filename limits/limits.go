package limits

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/proxy"
)

// Config says how failed logins are limited. DefaultConfig returns the
// defaults, which config.Limits.BruteForce documents.
type Config struct {
	IP     Tier // per client address (IPv6: per IPv6Prefix)
	UserIP Tier // per user and client address
	User   Tier // per user, whatever the address; known addresses are exempt

	IPv6Prefix int // bits of an IPv6 address counted together

	Delay    time.Duration // first delay; doubles with every further failure
	MaxDelay time.Duration // longest delay

	// A user's address becomes known with a successful login and stays
	// known KnownAddressTTL after the last one; at most KnownAddresses
	// per user (the oldest go first).
	KnownAddressTTL time.Duration
	KnownAddresses  int

	// RepeatWindow: a wrong password the user sent within this long
	// (counted from its last use) counts only once.
	RepeatWindow time.Duration
	// HashKey keys the hashes by which wrong passwords are recognised
	// (HMAC-SHA256). Every proxy of a fleet needs the same key; nil
	// means a random key for this process.
	HashKey []byte

	// Trusted networks (webmails, monitoring) are exempt: never counted,
	// delayed or blocked.
	Trusted []netip.Prefix
	// FailClosed refuses logins with NO [UNAVAILABLE] while Redis is
	// unreachable; otherwise (the default) this proxy's own counters
	// decide meanwhile.
	FailClosed bool

	// LogInterval: each limit is logged at most once per address (or
	// user) and interval. Default 1 minute.
	LogInterval time.Duration
	// Timeout bounds a success's write, which no client waits for
	// (Check and Failed take their caller's context). Default 2s.
	Timeout time.Duration
	// MaxEntries bounds the addresses and the users the in-memory
	// counters hold, each; past it the idle ones go, then an eighth at
	// random. Default 50,000: at most about 20 MiB (a user with a known
	// address and a failure takes about 380 bytes).
	MaxEntries int
}

// DefaultConfig returns the defaults, close to Dovecot's delays and
// Sora's blocks: see config.BruteForce.
func DefaultConfig() Config {
	return Config{
		IP:              Tier{DelayAfter: 10, BlockAfter: 30, Window: 30 * time.Minute, BlockFor: 30 * time.Minute},
		UserIP:          Tier{DelayAfter: 3, BlockAfter: 10, Window: 15 * time.Minute, BlockFor: 15 * time.Minute},
		User:            Tier{DelayAfter: 10, BlockAfter: 50, Window: time.Hour, BlockFor: 15 * time.Minute},
		IPv6Prefix:      64,
		Delay:           time.Second,
		MaxDelay:        15 * time.Second,
		KnownAddressTTL: 30 * 24 * time.Hour,
		KnownAddresses:  16,
		RepeatWindow:    time.Hour,
	}
}

func (c *Config) fill() {
	d := DefaultConfig()
	tier := func(t *Tier, d Tier) {
		if t.BlockAfter <= 0 {
			t.BlockAfter = d.BlockAfter
		}
		if t.DelayAfter <= 0 {
			t.DelayAfter = min(d.DelayAfter, t.BlockAfter)
		}
		if t.Window <= 0 {
			t.Window = d.Window
		}
		if t.BlockFor <= 0 {
			t.BlockFor = d.BlockFor
		}
	}
	tier(&c.IP, d.IP)
	tier(&c.UserIP, d.UserIP)
	tier(&c.User, d.User)
	if c.IPv6Prefix <= 0 || c.IPv6Prefix > 128 {
		c.IPv6Prefix = d.IPv6Prefix
	}
	if c.Delay <= 0 {
		c.Delay = d.Delay
	}
	if c.MaxDelay < c.Delay {
		c.MaxDelay = max(d.MaxDelay, c.Delay)
	}
	if c.KnownAddressTTL <= 0 {
		c.KnownAddressTTL = d.KnownAddressTTL
	}
	if c.KnownAddresses <= 0 {
		c.KnownAddresses = d.KnownAddresses
	}
	if c.RepeatWindow <= 0 {
		c.RepeatWindow = d.RepeatWindow
	}
	if c.LogInterval <= 0 {
		c.LogInterval = time.Minute
	}
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Second
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = 50_000
	}
}

// Limiter limits failed logins per client address, per user and address,
// and per user, for a proxy.Server (it is a proxy.LoginLimiter). With
// Redis, the counters are shared by every proxy of the fleet; without,
// they are this process's.
type Limiter struct {
	// CountSessions, when set, queues on the pipeline of a check a count
	// of the user's sessions across the fleet (fleet.Fleet's
	// QueueUserSessions does) and returns the function that reads it
	// once the pipeline ran: the login learns its session count in the
	// round trip it makes anyway (proxy.LimitVerdict.Sessions). Set it
	// before the first Check.
	CountSessions func(pipe redis.Pipeliner, user string) func(context.Context) (int, error)
	// SessionsCold, when set, says whether CountSessions would count
	// user's sessions without Redis (fleet.Fleet's SessionsCold does): a
	// check answered without Redis then counts 0 without building a
	// pipeline for it.
	SessionsCold func(user string) bool

	// Hot, when set (with Redis), lets Check answer without Redis for an
	// address and a user that are cold: nobody has failed there of late,
	// anywhere in the fleet. Failed marks them hot once their counters
	// come near a delay. Set it before the first Check; nil asks Redis
	// at every check.
	Hot HotSet

	cfg    Config
	redis  *redisStore // nil without Redis
	mem    *memory
	logger *slog.Logger
	logs   *logOnce
	known  knownCache

	downUntil atomic.Int64 // Unix ns until which Redis is not tried; 0: up
	probing   atomic.Bool  // one login is trying Redis again
	writes    chan struct{}

	stats struct {
		checks, blocked, delayed, unavailable     atomic.Int64
		failures, repeats, successes, redisErrors atomic.Int64
		cold, fromRedis                           atomic.Int64
	}
}

// New returns a limiter. rdb may be nil (counters in memory only);
// prefix is the Redis key prefix ("" means "portico:"). Zero fields of
// cfg take their defaults.
func New(cfg Config, rdb redis.UniversalClient, prefix string, logger *slog.Logger) *Limiter {
	cfg.fill()
	if len(cfg.HashKey) == 0 {
		cfg.HashKey = make([]byte, 32)
		rand.Read(cfg.HashKey)
	}
	if logger == nil {
		logger = slog.Default()
	}
	if prefix == "" {
		prefix = "portico:"
	}
	l := &Limiter{cfg: cfg, logger: logger, writes: make(chan struct{}, 256)}
	l.mem = newMemory(&l.cfg, cfg.MaxEntries)
	l.logs = &logOnce{interval: cfg.LogInterval, max: cfg.MaxEntries, perKind: maxLogLines}
	l.known = knownCache{max: cfg.MaxEntries, need: (cfg.KnownAddressTTL - cfg.knownRefresh()).Milliseconds()}
	if rdb != nil {
		l.redis = newRedisStore(rdb, prefix, &l.cfg)
	}
	return l
}

var _ proxy.LoginLimiter = (*Limiter)(nil)

// Config returns the limiter's configuration with its defaults.
func (l *Limiter) Config() Config { return l.cfg }

// errUnavailable is a check that Redis could not answer, failing closed.
var errUnavailable = errors.New("limits: Redis unavailable")

// Check says whether a login may go on now, after a delay, or not at
// all. It costs one Redis round trip: a pipeline of the address's and the
// user's scripts; none when Hot says the address and the user are cold.
func (l *Limiter) Check(ctx context.Context, client netip.Addr, user string) proxy.LimitVerdict {
	if l.exempt(client) {
		return proxy.LimitVerdict{}
	}
	l.stats.checks.Add(1)
	net := l.cfg.Net(client)
	if v, ok := l.checkCold(ctx, net, user); ok {
		return v
	}
	var sessions func(context.Context) (int, error)
	var queue func(redis.Pipeliner)
	if l.CountSessions != nil && user != "" {
		queue = func(pipe redis.Pipeliner) { sessions = l.CountSessions(pipe, user) }
	}
	s, err := l.snapshot(ctx, net, user, queue)
	if err != nil {
		l.stats.unavailable.Add(1)
		return proxy.LimitVerdict{Unavailable: true}
	}
	v, tier := l.cfg.decide(s)
	v.Recorded = !s.fallback && s.known && s.knownLeft >= l.cfg.KnownAddressTTL-l.cfg.knownRefresh() &&
		s.userIP.n < 0.5 && s.userIP.blocked == 0
	if !s.fallback && l.redis != nil {
		l.stats.fromRedis.Add(1)
		if user != "" && l.Hot != nil {
			if now := nowMs(); s.known {
				l.known.put(user, net, now+s.knownLeft.Milliseconds(), now)
			} else {
				l.known.forget(user, net)
			}
		}
	}
	if sessions != nil {
		if n, err := sessions(ctx); err == nil {
			v.Sessions, v.SessionsCounted = n, true
		}
	}
	switch {
	case v.Block:
		l.stats.blocked.Add(1)
		lv := s.tier(tier)
		l.note(slog.LevelWarn, "login blocked", tier, net, user,
			"failures", round(lv.n), "blocked_for", lv.blocked.Round(time.Second))
	case v.Delay > 0:
		l.stats.delayed.Add(1)
		l.note(slog.LevelInfo, "login delayed", tier, net, user, "failures", round(s.tier(tier).n), "delay", v.Delay)
	}
	return v
}

func (s snapshot) tier(name string) level {
	switch name {
	case tierIP:
		return s.ip
	case tierUser:
		return s.user
	}
	return s.userIP
}

func round(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

// knownRefresh is how old a known address's last recorded login may be
// before a new login is written again: refreshing its expiry on every
// login would cost every login a Redis write for nothing.
func (c *Config) knownRefresh() time.Duration {
	return min(c.KnownAddressTTL/10, 24*time.Hour)
}

// snapshot reads the counters a login is judged by; queue, if not nil,
// adds commands to the Redis round trip (they get an error when Redis is
// not asked).
func (l *Limiter) snapshot(ctx context.Context, net netip.Prefix, user string, queue func(redis.Pipeliner)) (snapshot, error) {
	if l.redisUsable() {
		s, err := l.redis.check(ctx, net, user, queue)
		l.redisDone(err)
		if err == nil {
			return s, nil
		}
	}
	if l.redis != nil && l.cfg.FailClosed {
		return snapshot{}, errUnavailable
	}
	s := l.mem.check(nowMs(), net, user)
	s.fallback = l.redis != nil
	return s, nil
}

// Failed records a failed login. user is "" for an invalid user name,
// which counts for the address only. The password is kept only as a
// truncated HMAC, and only to recognise the same wrong password sent
// again, which counts once.
func (l *Limiter) Failed(ctx context.Context, client netip.Addr, user, password string) {
	if l.exempt(client) {
		return
	}
	net := l.cfg.Net(client)
	tag := ""
	if user != "" {
		tag = l.tag(user, password)
	}
	res := l.mem.fail(nowMs(), net, user, tag)
	if user != "" {
		l.known.forget(user, net) // its next success must reset user_ip
	}
	if l.redisUsable() {
		r, err := l.redis.fail(ctx, net, user, tag)
		l.redisDone(err)
		if err == nil {
			res = r
			if !r.repeat {
				l.markHot(net, user, r)
			}
		}
	}
	if res.repeat {
		l.stats.repeats.Add(1)
		return
	}
	l.stats.failures.Add(1)
	for _, tier := range res.began {
		l.note(slog.LevelWarn, "login limit reached: blocking", tier, net, user,
			"failures", round(res.tier(tier).n), "blocked_for", res.tier(tier).blocked.Round(time.Second))
	}
}

func (r failResult) tier(name string) level {
	return snapshot{ip: r.ip, userIP: r.userIP, user: r.user}.tier(name)
}

// Succeeded records a successful login: the address becomes known for
// the user, and the user's counter for it is reset. The Redis write is
// made in the background; Succeeded does not wait for it. It is skipped
// when the check found nothing it would change (v.Recorded).
func (l *Limiter) Succeeded(client netip.Addr, user string, v proxy.LimitVerdict) {
	if l.exempt(client) || user == "" {
		return
	}
	l.stats.successes.Add(1)
	net := l.cfg.Net(client)
	l.mem.succeed(nowMs(), net, user)
	if v.Recorded || !l.redisUsable() {
		return
	}
	select {
	case l.writes <- struct{}{}:
	default:
		l.probing.Store(false)
		l.logs.do("writes", "", func(int) {
			l.logger.Warn("brute-force limits: too many Redis writes in progress; a known address was recorded on this proxy only", "client", net.String(), "user", user)
		})
		return
	}
	go func() {
		defer func() { <-l.writes }()
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.Timeout)
		now := nowMs()
		err := l.redis.succeed(ctx, net, user)
		cancel()
		l.redisDone(err)
		if err == nil && l.Hot != nil {
			l.known.put(user, net, now+l.cfg.KnownAddressTTL.Milliseconds(), now)
		}
	}()
}

// tag is the keyed hash by which a wrong password is recognised:
// HMAC-SHA256 under HashKey over the user and the password, cut to 64
// bits (enough to tell a user's few recent wrong passwords apart; less
// to go on should both Redis and the key leak).
func (l *Limiter) tag(user, password string) string {
	m := hmac.New(sha256.New, l.cfg.HashKey)
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(password))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

func (l *Limiter) exempt(a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	for _, p := range l.cfg.Trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// redisRetry is how long Redis is left alone after an error: meanwhile
// logins are decided without it at once, instead of each waiting for a
// timeout. Then one login tries it again.
const redisRetry = time.Second

// redisUsable says whether to ask Redis now.
func (l *Limiter) redisUsable() bool {
	if l.redis == nil {
		return false
	}
	until := l.downUntil.Load()
	if until == 0 {
		return true
	}
	if time.Now().UnixNano() < until {
		return false
	}
	return l.probing.CompareAndSwap(false, true)
}

func (l *Limiter) redisDone(err error) {
	defer l.probing.Store(false)
	if err == nil {
		if l.downUntil.Swap(0) != 0 {
			l.logger.Info("brute-force limits: Redis reachable again")
		}
		return
	}
	l.stats.redisErrors.Add(1)
	l.downUntil.Store(time.Now().Add(redisRetry).UnixNano())
	l.logs.do("redis", "", func(int) {
		if l.cfg.FailClosed {
			l.logger.Warn("brute-force limits: Redis unreachable; refusing logins (fail closed)", "err", err)
		} else {
			l.logger.Warn("brute-force limits: Redis unreachable; this proxy's own counters decide meanwhile", "err", err)
		}
	})
}

// maxLogLines bounds the lines one kind of limit logs per interval, over
// all addresses and users; the rest are not logged.
const maxLogLines = 100

// note logs a limit at most once per interval for its tier and subject
// (the address, the user, or both), and for at most maxLogLines subjects
// per interval; a line says how many were not logged for its subject
// since the last.
func (l *Limiter) note(lvl slog.Level, msg, tier string, net netip.Prefix, user string, attrs ...any) {
	var key string
	switch tier {
	case tierIP:
		key = net.String()
	case tierUser:
		key = user
	default:
		key = user + "\x00" + net.String()
	}
	l.logs.do(msg+"\x00"+tier, key, func(skipped int) {
		attrs = append([]any{"limit", tier, "client", net.String(), "user", user}, attrs...)
		if skipped > 0 {
			attrs = append(attrs, "not_logged_since", skipped)
		}
		l.logger.Log(context.Background(), lvl, msg, attrs...)
	})
}

// Stats counts what the limiter did since it was made.
type Stats struct {
	Checks, Blocked, Delayed, Unavailable int64 // checks and their verdicts
	Failures, Repeats, Successes          int64 // outcomes recorded (repeats are not counted)
	RedisErrors                           int64
	// Checks answered without Redis (the address and the user were cold:
	// see Limiter.Hot), and from Redis; the rest were exempt or answered
	// from memory while Redis was unreachable.
	Cold, FromRedis int64
}

// Stats returns the limiter's counts.
func (l *Limiter) Stats() Stats {
	s := &l.stats
	return Stats{
		Checks: s.checks.Load(), Blocked: s.blocked.Load(), Delayed: s.delayed.Load(), Unavailable: s.unavailable.Load(),
		Failures: s.failures.Load(), Repeats: s.repeats.Load(), Successes: s.successes.Load(), RedisErrors: s.redisErrors.Load(),
		Cold: s.cold.Load(), FromRedis: s.fromRedis.Load(),
	}
}

// logOnce runs a function at most once per interval and key, and for at
// most perKind keys of a kind per interval (a limit reached from many
// addresses at once); it tells the function how many calls for its key
// it skipped since the last.
type logOnce struct {
	interval time.Duration
	max      int // keys remembered
	perKind  int

	mu    sync.Mutex
	last  map[string]*logEntry // by kind and key
	kinds map[string]*logEntry // lines per kind this interval
}

type logEntry struct {
	at time.Time
	n  int // skipped since, or lines this interval
}

func (o *logOnce) do(kind, key string, f func(skipped int)) {
	now := time.Now()
	k := kind + "\x00" + key
	o.mu.Lock()
	if o.last == nil {
		o.last, o.kinds = map[string]*logEntry{}, map[string]*logEntry{}
	}
	e := o.last[k]
	if e != nil && now.Sub(e.at) < o.interval {
		e.n++
		o.mu.Unlock()
		return
	}
	kc := o.kinds[kind]
	if kc == nil || now.Sub(kc.at) >= o.interval {
		kc = &logEntry{at: now}
		o.kinds[kind] = kc
	}
	if kc.n >= o.perKind {
		o.mu.Unlock()
		return
	}
	kc.n++
	skipped := 0
	if e != nil {
		skipped = e.n
	}
	if len(o.last) >= o.max {
		for k, e := range o.last {
			if now.Sub(e.at) >= o.interval {
				delete(o.last, k)
			}
		}
		if len(o.last) >= o.max {
			clear(o.last)
		}
	}
	o.last[k] = &logEntry{at: now}
	o.mu.Unlock()
	f(skipped)
}
