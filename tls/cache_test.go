package tls

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/acme/autocert"

	"github.com/portico-mail/portico/internal/testsrv"
)

var secretPEM = []byte("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI...\n-----END EC PRIVATE KEY-----\n")

// exercise checks the contract autocert relies on, for any cache.
func exercise(t *testing.T, c autocert.Cache) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Get(ctx, "mail.test"); err != autocert.ErrCacheMiss {
		t.Fatalf("Get of a missing key = %v, want exactly autocert.ErrCacheMiss", err)
	}
	if err := c.Put(ctx, "mail.test", secretPEM); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, "mail.test")
	if err != nil || !bytes.Equal(got, secretPEM) {
		t.Fatalf("Get after Put = %q, %v", got, err)
	}
	if err := c.Delete(ctx, "mail.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "mail.test"); err != autocert.ErrCacheMiss {
		t.Fatalf("Get after Delete = %v, want autocert.ErrCacheMiss", err)
	}
}

func TestEncryptedDirCache(t *testing.T) {
	dir := t.TempDir()
	c := EncryptedCache{Cache: autocert.DirCache(dir), Key: []byte("correct horse battery staple"), Logger: testLogger(t)}
	exercise(t, c)

	ctx := context.Background()
	if err := c.Put(ctx, "mail.test", secretPEM); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "mail.test"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("PRIVATE KEY")) || raw[0] != sealVersion {
		t.Fatalf("stored value is not encrypted: %q", raw)
	}

	// Wrong key, a value moved to another name, a corrupted value, a value
	// in clear: all a plain miss, never a crash or another error.
	wrong := EncryptedCache{Cache: autocert.DirCache(dir), Key: []byte("wrong"), Logger: testLogger(t)}
	if _, err := wrong.Get(ctx, "mail.test"); err != autocert.ErrCacheMiss {
		t.Errorf("wrong key: %v, want autocert.ErrCacheMiss", err)
	}
	os.WriteFile(filepath.Join(dir, "other.test"), raw, 0o600)
	if _, err := c.Get(ctx, "other.test"); err != autocert.ErrCacheMiss {
		t.Errorf("value copied to another name: %v, want autocert.ErrCacheMiss", err)
	}
	bad := bytes.Clone(raw)
	bad[len(bad)-1] ^= 1
	os.WriteFile(filepath.Join(dir, "bad.test"), bad, 0o600)
	if _, err := c.Get(ctx, "bad.test"); err != autocert.ErrCacheMiss {
		t.Errorf("corrupted value: %v, want autocert.ErrCacheMiss", err)
	}
	os.WriteFile(filepath.Join(dir, "clear.test"), secretPEM, 0o600)
	if _, err := c.Get(ctx, "clear.test"); err != autocert.ErrCacheMiss {
		t.Errorf("value in clear: %v, want autocert.ErrCacheMiss", err)
	}

	// Two writes of the same value differ: the nonce is random.
	c.Put(ctx, "a", secretPEM)
	a, _ := os.ReadFile(filepath.Join(dir, "a"))
	c.Put(ctx, "a", secretPEM)
	b, _ := os.ReadFile(filepath.Join(dir, "a"))
	if bytes.Equal(a, b) {
		t.Error("two encryptions of one value are identical")
	}
}

func TestRedisCache(t *testing.T) {
	r := testsrv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()

	c := RedisCache{Client: rdb, Prefix: "p:", Key: []byte("secret"), Logger: testLogger(t)}
	exercise(t, c)

	c.Put(ctx, "mail.test", secretPEM)
	raw, err := rdb.Get(ctx, "p:acme:mail.test").Bytes()
	if err != nil {
		t.Fatalf("value not under Prefix+acme:: %v", err)
	}
	if bytes.Contains(raw, []byte("PRIVATE KEY")) {
		t.Fatalf("stored value is not encrypted: %q", raw)
	}
	if ttl := rdb.TTL(ctx, "p:acme:mail.test").Val(); ttl != -1 {
		t.Errorf("certificate TTL = %v, want none", ttl)
	}
	for _, k := range []string{"tok123+http-01", "mail.test+token"} {
		c.Put(ctx, k, []byte("challenge"))
		if ttl := rdb.TTL(ctx, "p:acme:"+k).Val(); ttl <= 0 || ttl > time.Hour {
			t.Errorf("%s TTL = %v, want up to 1h", k, ttl)
		}
	}

	wrong := RedisCache{Client: rdb, Prefix: "p:", Key: []byte("other"), Logger: testLogger(t)}
	if _, err := wrong.Get(ctx, "mail.test"); err != autocert.ErrCacheMiss {
		t.Errorf("wrong key: %v, want autocert.ErrCacheMiss", err)
	}

	// Without Key, values are stored as given.
	clear := RedisCache{Client: rdb, Prefix: "q:"}
	exercise(t, clear)
	clear.Put(ctx, "x", secretPEM)
	if v := rdb.Get(ctx, "q:acme:x").Val(); v != string(secretPEM) {
		t.Errorf("unencrypted value = %q", v)
	}

	// Redis down: an error, but not a miss (which would make autocert
	// order a new certificate).
	r.Stop()
	if _, err := c.Get(ctx, "mail.test"); err == nil || err == autocert.ErrCacheMiss {
		t.Errorf("Get with redis down = %v, want an error that is not a miss", err)
	}
}

func TestRedisLocker(t *testing.T) {
	r := testsrv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	l1 := RedisLocker{Client: rdb, Prefix: "p:"}
	l2 := RedisLocker{Client: rdb, Prefix: "p:"}

	rel, ok, err := l1.TryLock(ctx, "mail.test", time.Minute)
	if err != nil || !ok {
		t.Fatalf("first TryLock = %v, %v", ok, err)
	}
	if pttl := rdb.PTTL(ctx, "p:acme:lock:mail.test").Val(); pttl <= 0 || pttl > time.Minute {
		t.Errorf("lock PTTL = %v", pttl)
	}
	if _, ok, _ := l2.TryLock(ctx, "mail.test", time.Minute); ok {
		t.Fatal("second TryLock succeeded while the lock is held")
	}
	rel()
	rel2, ok, err := l2.TryLock(ctx, "mail.test", 100*time.Millisecond)
	if err != nil || !ok {
		t.Fatalf("TryLock after release = %v, %v", ok, err)
	}
	time.Sleep(200 * time.Millisecond) // l2's lock expires...
	rel3, ok, _ := l1.TryLock(ctx, "mail.test", time.Minute)
	if !ok {
		t.Fatal("TryLock after expiry failed")
	}
	rel2() // ...so its late release must not delete l1's lock
	if rdb.Exists(ctx, "p:acme:lock:mail.test").Val() != 1 {
		t.Fatal("an expired holder's release deleted its successor's lock")
	}
	rel3()
	if rdb.Exists(ctx, "p:acme:lock:mail.test").Val() != 0 {
		t.Fatal("release left the lock")
	}
}

// A proxy started with a mistyped cache key must not register a new ACME
// account and replace its fleet's certificates: Obtain refuses to start,
// before any request to the CA.
func TestObtainRefusesWrongCacheKey(t *testing.T) {
	r := testsrv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	dir := t.TempDir()

	caches := map[string]func(key string) autocert.Cache{
		"dir": func(key string) autocert.Cache {
			return EncryptedCache{Cache: autocert.DirCache(dir), Key: []byte(key), Logger: testLogger(t)}
		},
		"redis": func(key string) autocert.Cache {
			return RedisCache{Client: rdb, Prefix: "p:", Key: []byte(key), Logger: testLogger(t)}
		},
	}
	for name, cache := range caches {
		t.Run(name, func(t *testing.T) {
			check := func(c autocert.Cache) error {
				return c.(interface{ CheckKey(context.Context) error }).CheckKey(ctx)
			}
			if err := check(cache("right")); err != nil {
				t.Fatalf("empty cache: CheckKey = %v", err)
			}
			if err := cache("right").Put(ctx, accountKeyName, secretPEM); err != nil {
				t.Fatal(err)
			}
			if err := check(cache("right")); err != nil {
				t.Errorf("right key: CheckKey = %v", err)
			}
			if err := check(cache("wrong")); !errors.Is(err, ErrWrongCacheKey) {
				t.Errorf("wrong key: CheckKey = %v, want ErrWrongCacheKey", err)
			}

			// The CA address is closed: reaching it would be a different error.
			a, err := NewACME(ACMEOptions{
				Hostnames:    []string{"mail.example.test"},
				DirectoryURL: "http://127.0.0.1:1/dir",
				Cache:        cache("wrong"),
				Logger:       testLogger(t),
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := a.Obtain(ctx); !errors.Is(err, ErrWrongCacheKey) {
				t.Errorf("Obtain with a wrong key = %v, want ErrWrongCacheKey", err)
			}
			// portico certs says so too, instead of listing nothing.
			if _, err := a.Cached(ctx); !errors.Is(err, ErrWrongCacheKey) {
				t.Errorf("Cached with a wrong key = %v, want ErrWrongCacheKey", err)
			}
		})
	}

	// A Redis cache without a key that finds encrypted values is the same
	// mistake (cache_key left out of one proxy's config).
	clear := RedisCache{Client: rdb, Prefix: "p:"}
	if err := clear.CheckKey(ctx); !errors.Is(err, ErrWrongCacheKey) {
		t.Errorf("no key over encrypted values: CheckKey = %v, want ErrWrongCacheKey", err)
	}
}
