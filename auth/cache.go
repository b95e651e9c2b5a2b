package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"time"
)

// CachedStore remembers the passwords Store accepted for a while, as
// Dovecot's auth_cache does: a mail client opens several connections
// and reconnects often, and each would otherwise cost an argon2id check
// or an LDAP bind. Only successes are kept, so every wrong password is
// checked in full (and costs what it always costs); a password changed
// in the store keeps working for at most TTL. Entries are keyed by an
// HMAC of user and password under a key made at start: neither is kept
// in memory.
type CachedStore struct {
	Store Store
	// TTL is how long a success is remembered; zero means a minute.
	TTL time.Duration
	// MaxEntries bounds the memory (about 100 bytes an entry); zero
	// means 10,000. When full, expired entries go first, then any.
	MaxEntries int

	cache successCache
}

// Verify implements Store.
func (c *CachedStore) Verify(ctx context.Context, user, password string) (bool, error) {
	now := time.Now()
	k, hit := c.cache.lookup(user, password, now)
	if hit {
		return true, nil
	}
	ok, err := c.Store.Verify(ctx, user, password)
	if ok && err == nil {
		c.cache.put(k, now.Add(cacheTTL(c.TTL)), now, c.MaxEntries)
	}
	return ok, err
}

// Forget drops every remembered success, for instance after a password
// change that must take effect at once.
func (c *CachedStore) Forget() { c.cache.forget() }

func cacheTTL(ttl time.Duration) time.Duration {
	if ttl <= 0 {
		return time.Minute
	}
	return ttl
}

// successCache remembers accepted (user, secret) pairs until an expiry,
// keyed by an HMAC of both under a key made at first use, so that no
// secret is kept in memory. The zero value is ready to use.
type successCache struct {
	once sync.Once
	key  []byte
	mu   sync.Mutex
	m    map[[sha256.Size]byte]time.Time // expiry
}

// lookup returns the pair's key, for put, and whether it is remembered
// and not expired at now.
func (c *successCache) lookup(user, secret string, now time.Time) ([sha256.Size]byte, bool) {
	c.once.Do(func() {
		c.key = make([]byte, 32)
		rand.Read(c.key)
		c.m = make(map[[sha256.Size]byte]time.Time)
	})
	h := hmac.New(sha256.New, c.key)
	h.Write([]byte(user))
	h.Write([]byte{0})
	h.Write([]byte(secret))
	var k [sha256.Size]byte
	h.Sum(k[:0])
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, hit := c.m[k]
	if hit && !now.Before(exp) {
		delete(c.m, k)
		hit = false
	}
	return k, hit
}

// put remembers k until until, in at most max entries (zero: 10,000).
func (c *successCache) put(k [sha256.Size]byte, until, now time.Time, max int) {
	if max <= 0 {
		max = 10_000
	}
	if !until.After(now) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= max {
		for x, exp := range c.m {
			if !now.Before(exp) {
				delete(c.m, x)
			}
		}
		// Still full: drop entries at random (map order) until there
		// is room; a dropped user pays one full check again.
		for x := range c.m {
			if len(c.m) < max {
				break
			}
			delete(c.m, x)
		}
	}
	c.m[k] = until
}

func (c *successCache) forget() {
	c.mu.Lock()
	clear(c.m)
	c.mu.Unlock()
}
