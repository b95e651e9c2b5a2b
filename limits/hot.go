package limits

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/portico-mail/portico/proxy"
)

// HotSet is the fleet-wide set of addresses and users whose logins must
// be judged from Redis (fleet.Fleet is one). Its keys are "ip NET" and
// "user USER" (NET as netip.Prefix.String, USER normalised), as in the
// fleet package's schema.
type HotSet interface {
	// Cold says whether none of keys is hot, and the set is known well
	// enough to be sure of it; when in doubt, false.
	Cold(keys ...string) bool
	// MarkHot makes key hot on every proxy until the given time. It must
	// not block.
	MarkHot(key string, until time.Time)
}

func hotIP(net netip.Prefix) string { return "ip " + net.String() }
func hotUser(user string) string    { return "user " + user }

// checkCold answers a check without Redis when the address and the user
// are cold: nobody has failed there of late, so the answer is "go on"
// (ok false: ask Redis). Only the session count, for a user crowded
// enough to be hot for it, still costs a round trip.
func (l *Limiter) checkCold(ctx context.Context, net netip.Prefix, user string) (proxy.LimitVerdict, bool) {
	if l.Hot == nil || l.redis == nil || l.downUntil.Load() != 0 {
		// Without Redis, or while it is down, the memory fallback
		// decides as before.
		return proxy.LimitVerdict{}, false
	}
	cold := false
	if user == "" {
		cold = l.Hot.Cold(hotIP(net))
	} else {
		cold = l.Hot.Cold(hotIP(net), hotUser(user))
	}
	if !cold {
		return proxy.LimitVerdict{}, false
	}
	// This proxy's own recent failures there, whose mark may still be on
	// its way (or failed to be written), send the login to Redis too.
	now := nowMs()
	if s := l.mem.check(now, net, user); s.ip.n >= 0.5 || s.user.n >= 0.5 || s.userIP.n >= 0.5 ||
		s.ip.blocked > 0 || s.user.blocked > 0 || s.userIP.blocked > 0 {
		return proxy.LimitVerdict{}, false
	}
	l.stats.cold.Add(1)
	// Recorded as a Redis check would say it, from what the last ones
	// and the last success write said. A user_ip counter below the
	// marking threshold that another proxy raised is not reset by this
	// login's success then: it drains by itself, and at worst the user's
	// next typos there are delayed one failure sooner.
	v := proxy.LimitVerdict{Recorded: user != "" && l.known.fresh(user, net, now)}
	if l.CountSessions == nil || user == "" {
		return v, true
	}
	if l.SessionsCold != nil && l.SessionsCold(user) {
		// The fleet's count would be 0 without a read: the server counts
		// its own sessions.
		v.SessionsCounted = true
		return v, true
	}
	pipe := l.redis.rdb.Pipeline()
	count := l.CountSessions(pipe, user)
	if pipe.Len() > 0 {
		pipe.Exec(ctx) // errors are the command's
	}
	if n, err := count(ctx); err == nil {
		v.Sessions, v.SessionsCounted = n, true
	}
	return v, true
}

// hotMargin is added to a hot key's expiry, for the proxies' clocks.
const hotMargin = time.Second

// markHot makes the address and the user hot, after a failure recorded in
// Redis, when a counter has come within one failure of its delay (so that
// one failure of slack covers a mark still in flight to the other
// proxies), until it has drained below that again or its block ends,
// whichever is later.
func (l *Limiter) markHot(net netip.Prefix, user string, res failResult) {
	if l.Hot == nil {
		return
	}
	now := time.Now()
	if d, ok := hotFor(res.ip, l.cfg.IP); ok {
		l.Hot.MarkHot(hotIP(net), now.Add(d+hotMargin))
	}
	if user == "" {
		return
	}
	d, ok := hotFor(res.user, l.cfg.User)
	if d2, ok2 := hotFor(res.userIP, l.cfg.UserIP); ok2 {
		d, ok = max(d, d2), true
	}
	if ok {
		l.Hot.MarkHot(hotUser(user), now.Add(d+hotMargin))
	}
}

// hotFor says whether a counter at lv must be read from Redis, and for
// how long: while it stands for DelayAfter-1 failures or more (see
// reached), or a block runs.
func hotFor(lv level, t Tier) (time.Duration, bool) {
	if lv.blocked <= 0 && !reached(lv.n, t.DelayAfter-1) {
		return 0, false
	}
	floor := max(float64(t.DelayAfter-1)-0.5, 0)
	drain := time.Duration((lv.n-floor)/t.rate()) * time.Millisecond
	return max(drain, lv.blocked), true
}

// knownCache remembers, per user and network, until when Redis keeps the
// address known (Unix ms), as the last Redis check or success write of
// this proxy learnt it: what a check answered without Redis needs for
// Recorded. Bounded: past max entries the expired go, then all.
type knownCache struct {
	max  int
	need int64 // ms an address must stay known for a login to be Recorded
	mu   sync.Mutex
	m    map[string]int64
}

func knownKey(user string, net netip.Prefix) string { return user + "\x00" + net.String() }

func (c *knownCache) put(user string, net netip.Prefix, until, now int64) {
	k := knownKey(user, net)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]int64)
	}
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for k, u := range c.m {
			if u <= now {
				delete(c.m, k)
			}
		}
		if len(c.m) >= c.max {
			clear(c.m)
		}
	}
	c.m[k] = until
}

func (c *knownCache) forget(user string, net netip.Prefix) {
	c.mu.Lock()
	delete(c.m, knownKey(user, net))
	c.mu.Unlock()
}

// fresh says whether the address is known long enough that a success
// would not write it again (as Check's Recorded).
func (c *knownCache) fresh(user string, net netip.Prefix, now int64) bool {
	c.mu.Lock()
	until, ok := c.m[knownKey(user, net)]
	c.mu.Unlock()
	return ok && until-now >= c.need
}
