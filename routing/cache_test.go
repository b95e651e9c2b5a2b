package routing

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/redis/go-redis/v9"
)

func TestCacheEntries(t *testing.T) {
	c := &Cache{PositiveTTL: 50 * time.Millisecond, NegativeTTL: 20 * time.Millisecond, MaxEntries: 3}
	rec := Record{Backend: "mx1"}
	c.put("a", rec, true, c.generation())
	c.put("b", Record{}, false, c.generation())
	if got, found, hit := c.get("a"); !hit || !found || got != rec {
		t.Fatalf("positive: %v %v %v", got, found, hit)
	}
	if _, found, hit := c.get("b"); !hit || found {
		t.Fatalf("negative: %v %v", found, hit)
	}
	time.Sleep(30 * time.Millisecond)
	if _, _, hit := c.get("b"); hit {
		t.Fatal("negative entry outlived NegativeTTL")
	}
	if _, _, hit := c.get("a"); !hit {
		t.Fatal("positive entry expired with the negative TTL")
	}
	time.Sleep(30 * time.Millisecond)
	if _, _, hit := c.get("a"); hit {
		t.Fatal("positive entry outlived PositiveTTL")
	}

	// A put racing with an invalidation is dropped.
	gen := c.generation()
	c.Delete("x")
	c.put("x", rec, true, gen)
	if _, _, hit := c.get("x"); hit {
		t.Fatal("a value read before an invalidation was cached after it")
	}

	// MaxEntries bounds the size.
	for i := range 10 {
		c.put(fmt.Sprint(i), rec, true, c.generation())
	}
	if c.Len() > 3 {
		t.Fatalf("%d entries, max 3", c.Len())
	}
	c.Flush()
	if c.Len() != 0 {
		t.Fatal("Flush left entries")
	}
	var nilCache *Cache
	nilCache.put("a", rec, true, 0)
	if _, _, hit := nilCache.get("a"); hit || nilCache.Len() != 0 {
		t.Fatal("nil cache cached")
	}
}

// proxyInstance is one proxy: a router with a long-lived cache and its
// Invalidator.
func proxyInstance(t testing.TB, addr string) *Redis {
	t.Helper()
	r := fleetRouter(t, addr)
	r.Cache.PositiveTTL = time.Hour
	r.Cache.NegativeTTL = time.Hour
	inv := &Invalidator{Client: r.Client, Cache: r.Cache, Fleet: r.Fleet, Logger: quiet}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { inv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// waitSubscribers waits until n clients listen on the channel.
func waitSubscribers(t testing.TB, raw *redis.Client, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, err := raw.PubSubNumSub(context.Background(), InvalidateChannel("")).Result()
		if err == nil && m[InvalidateChannel("")] == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d subscribers, want %d (%v)", m[InvalidateChannel("")], n, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// eventually polls cond every 10ms for at most d and returns how long it
// took.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// TestInvalidation: three proxies with caches on one Redis see a route
// change, a deletion and a drain within one second; after a forced
// resubscription (CLIENT KILL TYPE pubsub) their caches are flushed.
func TestInvalidation(t *testing.T) {
	srv := testsrv.StartRedis(t)
	ctx := context.Background()
	raw := rawClient(t, srv.Addr)
	var proxies []*Redis
	for range 3 {
		proxies = append(proxies, proxyInstance(t, srv.Addr))
	}
	waitSubscribers(t, raw, 3)
	cli := &Redis{Client: NewRedisClient(RedisOptions{Addrs: []string{srv.Addr}})} // the CLI
	defer cli.Client.Close()

	const user = "inv@closed.example"
	if err := cli.SetRoute(ctx, user, Record{Backend: "mx1"}); err != nil {
		t.Fatal(err)
	}
	onAll := func(want string) func() bool {
		return func() bool {
			for _, p := range proxies {
				b, err := p.Lookup(ctx, user)
				if err != nil || b.Name != want {
					return false
				}
			}
			return true
		}
	}
	eventually(t, time.Second, "first route", onAll("mx1"))
	// Let the notifications in flight (first subscription, SetRoute)
	// arrive, then fill the caches again.
	settle := func(want string) {
		t.Helper()
		time.Sleep(100 * time.Millisecond)
		if !onAll(want)() {
			t.Fatalf("not all on %s", want)
		}
	}
	settle("mx1")

	// The caches are really in use: a change behind Portico's back is not
	// seen.
	if err := raw.HSet(ctx, cli.Key(user), "backend", "mx3").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if !onAll("mx1")() {
		t.Fatal("caches did not hold the route")
	}

	if err := cli.SetRoute(ctx, user, Record{Backend: "mx2"}); err != nil {
		t.Fatal(err)
	}
	d := eventually(t, time.Second, "SetRoute on three proxies", onAll("mx2"))
	t.Logf("route change seen by all three proxies after %v", d)

	if err := cli.DeleteRoute(ctx, user); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "DeleteRoute on three proxies", func() bool {
		for _, p := range proxies {
			if _, err := p.Lookup(ctx, user); !errors.Is(err, ErrNotFound) {
				return false
			}
		}
		return true
	})
	// The negative entries are dropped by the next SetRoute as well.
	if err := cli.SetRoute(ctx, user, Record{Backend: "mx1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "SetRoute after a negative entry", onAll("mx1"))

	// Drains reach every proxy's Fleet.
	fleet := &Fleet{Client: cli.Client}
	if err := fleet.Drain(ctx, "mx1"); err != nil {
		t.Fatal(err)
	}
	d = eventually(t, time.Second, "drain on three proxies", func() bool {
		for _, p := range proxies {
			if _, err := p.Lookup(ctx, user); !errors.Is(err, ErrDrained) {
				return false
			}
		}
		return true
	})
	t.Logf("drain seen by all three proxies after %v", d)
	if err := fleet.Undrain(ctx, "mx1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "undrain on three proxies", onAll("mx1"))
	settle("mx1")

	// Kill the subscriptions: the changes made meanwhile behind
	// Portico's back are seen after the resubscription flushes.
	if err := raw.HSet(ctx, cli.Key(user), "backend", "mx3").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if !onAll("mx1")() {
		t.Fatal("caches did not hold the route")
	}
	killed, err := raw.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Int()
	if err != nil || killed != 3 {
		t.Fatalf("CLIENT KILL TYPE pubsub: %d, %v", killed, err)
	}
	d = eventually(t, 5*time.Second, "flush on resubscription", onAll("mx3"))
	waitSubscribers(t, raw, 3)
	t.Logf("caches flushed %v after the subscriptions were killed", d)
}

func BenchmarkLookupCache(b *testing.B) {
	srv := testsrv.StartRedis(b)
	ctx := context.Background()
	r := fleetRouter(b, srv.Addr)
	if err := r.SetRoute(ctx, "alice@example.com", Record{Backend: "mx1"}); err != nil {
		b.Fatal(err)
	}
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := r.Lookup(ctx, "alice@example.com"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r.Cache.Delete("alice@example.com")
			if _, err := r.Lookup(ctx, "alice@example.com"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pool-hit", func(b *testing.B) {
		if err := r.SetRoute(ctx, "pool@example.com", Record{Pool: "main"}); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := r.Lookup(ctx, "pool@example.com"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("assign", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			if _, err := r.Lookup(ctx, fmt.Sprintf("new%d@example.com", i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
