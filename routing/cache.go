package routing

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of Cache.
const (
	DefaultPositiveTTL = 30 * time.Second
	DefaultNegativeTTL = 5 * time.Second
	DefaultMaxEntries  = 100_000
)

// Cache keeps route records read from Redis in process memory: found
// records for PositiveTTL, missing ones for NegativeTTL. It caches the
// records, not the backends they resolve to, so that health, drains and
// pool choices are applied afresh on every lookup. Set it as Redis.Cache
// and run an Invalidator so that changes made anywhere reach every proxy
// at once; the TTLs only bound the damage of a lost notification.
//
// The zero value is ready to use with the defaults; a nil *Cache caches
// nothing. When full, an arbitrary entry is evicted.
type Cache struct {
	PositiveTTL time.Duration // zero means DefaultPositiveTTL
	NegativeTTL time.Duration // zero means DefaultNegativeTTL
	MaxEntries  int           // zero means DefaultMaxEntries

	mu sync.RWMutex
	m  map[string]cacheEntry
	// gen changes on every invalidation. A lookup that read Redis before
	// an invalidation must not store what it read after it: it could be
	// the value the invalidation was about.
	gen uint64

	hits, misses atomic.Uint64 // for metrics
}

type cacheEntry struct {
	rec     Record
	found   bool
	expires time.Time
}

// get returns user's cached record and whether the cache had one.
func (c *Cache) get(user string) (rec Record, found, hit bool) {
	if c == nil {
		return Record{}, false, false
	}
	c.mu.RLock()
	e, ok := c.m[user]
	c.mu.RUnlock()
	if !ok || time.Now().After(e.expires) {
		return Record{}, false, false
	}
	return e.rec, e.found, true
}

// count records the outcome of one lookup (not of every get: a lookup
// may look twice).
func (c *Cache) count(hit bool) {
	if c == nil {
		return
	}
	if hit {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
}

// Stats reports the lookups answered from the cache (hits, an unknown
// user's negative entry included) and those that went to Redis (misses)
// since the cache was made.
func (c *Cache) Stats() (hits, misses uint64) {
	if c == nil {
		return 0, 0
	}
	return c.hits.Load(), c.misses.Load()
}

// generation is read before a Redis lookup and passed to put.
func (c *Cache) generation() uint64 {
	if c == nil {
		return 0
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen
}

func (c *Cache) put(user string, rec Record, found bool, gen uint64) {
	if c == nil {
		return
	}
	ttl := c.PositiveTTL
	if ttl <= 0 {
		ttl = DefaultPositiveTTL
	}
	if !found {
		ttl = c.NegativeTTL
		if ttl <= 0 {
			ttl = DefaultNegativeTTL
		}
	}
	max := c.MaxEntries
	if max <= 0 {
		max = DefaultMaxEntries
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if c.m == nil {
		c.m = make(map[string]cacheEntry)
	}
	if _, ok := c.m[user]; !ok && len(c.m) >= max {
		for k := range c.m { // map order is random enough for eviction
			delete(c.m, k)
			break
		}
	}
	c.m[user] = cacheEntry{rec: rec, found: found, expires: time.Now().Add(ttl)}
}

// Delete drops user's entry.
func (c *Cache) Delete(user string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.m, user)
}

// Flush drops every entry.
func (c *Cache) Flush() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.m)
}

// Len reports the number of entries, expired ones included.
func (c *Cache) Len() int {
	if c == nil {
		return 0
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// DefaultFleetRefresh is how often an Invalidator reloads the fleet state
// when FleetRefresh is zero.
const DefaultFleetRefresh = 30 * time.Second

// Invalidator applies the changes published on InvalidateChannel(Prefix)
// to this proxy's Cache and Fleet:
//
//	inv := &routing.Invalidator{Client: rdb, Cache: cache, Fleet: fleet}
//	go inv.Run(ctx)
//
// A message is a user name (drop that user's entry), InvalidateAll (flush
// the cache) or InvalidateBackends (reload the fleet). Pub/sub delivery is
// at most once, and messages sent while the subscription was down are
// lost, so every subscription, the first and each one after a reconnect,
// flushes the whole cache and reloads the fleet.
type Invalidator struct {
	Client redis.UniversalClient
	// Prefix must be the one of the Redis router and the Fleet; empty
	// means DefaultRedisPrefix.
	Prefix string
	Cache  *Cache // may be nil
	Fleet  *Fleet // may be nil
	// FleetRefresh reloads the fleet state this often as well, in case a
	// notification was lost; zero means DefaultFleetRefresh.
	FleetRefresh time.Duration
	// Logger receives reconnects and Redis errors; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Run subscribes and applies changes until ctx is done. It returns
// ctx.Err(); go-redis reconnects by itself when the connection drops.
func (iv *Invalidator) Run(ctx context.Context) error {
	log := iv.Logger
	if log == nil {
		log = slog.Default()
	}
	refresh := iv.FleetRefresh
	if refresh <= 0 {
		refresh = DefaultFleetRefresh
	}
	channel := InvalidateChannel(iv.Prefix)
	ps := iv.Client.Subscribe(ctx, channel)
	defer ps.Close()
	ch := ps.ChannelWithSubscriptions(redis.WithChannelSize(1024))
	tick := time.NewTicker(refresh)
	defer tick.Stop()

	loadFleet := func() {
		if iv.Fleet == nil {
			return
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := iv.Fleet.Load(lctx); err != nil && ctx.Err() == nil {
			log.Warn("routing: fleet state not refreshed", "err", err)
		}
	}
	subscribed := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			loadFleet()
		case m, ok := <-ch:
			if !ok {
				return ctx.Err()
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind != "subscribe" {
					continue
				}
				if subscribed {
					log.Info("routing: invalidation channel resubscribed, route cache flushed", "channel", channel)
				}
				subscribed = true
				iv.Cache.Flush()
				loadFleet()
			case *redis.Message:
				switch m.Payload {
				case InvalidateAll:
					iv.Cache.Flush()
				case InvalidateBackends:
					loadFleet()
				default:
					iv.Cache.Delete(m.Payload)
				}
			}
		}
	}
}
