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

	once sync.Once
	key  []byte
	mu   sync.Mutex
	m    map[[sha256.Size]byte]time.Time // expiry
}

// Verify implements Store.
func (c *CachedStore) Verify(ctx context.Context, user, password string) (bool, error) {
	c.once.Do(func() {
		c.key = make([]byte, 32)
		rand.Read(c.key)
		c.m = make(map[[sha256.Size]byte]time.Time)
	})
	k := c.entry(user, password)
	now := time.Now()
	c.mu.Lock()
	exp, hit := c.m[k]
	if hit && now.After(exp) {
		delete(c.m, k)
		hit = false
	}
	c.mu.Unlock()
	if hit {
		return true, nil
	}
	ok, err := c.Store.Verify(ctx, user, password)
	if ok && err == nil {
		c.put(k, now)
	}
	return ok, err
}

func (c *CachedStore) entry(user, password string) [sha256.Size]byte {
	h := hmac.New(sha256.New, c.key)
	h.Write([]byte(user))
	h.Write([]byte{0})
	h.Write([]byte(password))
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (c *CachedStore) put(k [sha256.Size]byte, now time.Time) {
	ttl, max := c.TTL, c.MaxEntries
	if ttl <= 0 {
		ttl = time.Minute
	}
	if max <= 0 {
		max = 10_000
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= max {
		for x, exp := range c.m {
			if now.After(exp) {
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
	c.m[k] = now.Add(ttl)
}

// Forget drops every remembered success, for instance after a password
// change that must take effect at once.
func (c *CachedStore) Forget() {
	c.mu.Lock()
	clear(c.m)
	c.mu.Unlock()
}
