package routing

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// hgetalls counts the HGETALL commands the server has run.
func hgetalls(t *testing.T, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`cmdstat_hgetall:calls=(\d+)`).FindStringSubmatch(info)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestFieldsPrimesTheCache: the read of a password hash next to the route
// is the login's only Redis read.
func TestFieldsPrimesTheCache(t *testing.T) {
	r, srv := newRedisRouter(t)
	r.Cache = &Cache{PositiveTTL: time.Minute, NegativeTTL: time.Minute}
	ctx := context.Background()
	raw := rawClient(t, srv.Addr)
	raw.HSet(ctx, "portico:route:alice@example.com", "backend", "mx1", "password", "{SHA512-CRYPT}$6$x$y")

	before := hgetalls(t, raw)
	f, err := r.Fields(ctx, "alice@example.com")
	if err != nil || f["password"] != "{SHA512-CRYPT}$6$x$y" || f["backend"] != "mx1" {
		t.Fatalf("Fields = %v, %v", f, err)
	}
	b, err := r.Lookup(ctx, "alice@example.com")
	if err != nil || b.Name != "mx1" {
		t.Fatalf("Lookup = %v, %v", b, err)
	}
	if n := hgetalls(t, raw) - before; n != 1 {
		t.Errorf("%d HGETALLs for Fields and Lookup, want 1", n)
	}
	// Fields always reads Redis: a changed hash is seen at once.
	raw.HSet(ctx, "portico:route:alice@example.com", "password", "new")
	if f, _ := r.Fields(ctx, "alice@example.com"); f["password"] != "new" {
		t.Errorf("Fields served a stale password field: %v", f)
	}
}

// TestPasswordFieldIsNotARoute: a route hash that holds only a password
// hash is a user without a route, and the route tools keep the field.
func TestPasswordFieldIsNotARoute(t *testing.T) {
	r, srv := newRedisRouter(t)
	ctx := context.Background()
	raw := rawClient(t, srv.Addr)
	key := "portico:route:bob@example.com"
	raw.HSet(ctx, key, "password", "hash")

	if _, err := r.Lookup(ctx, "bob@example.com"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup: %v, want ErrNotFound", err)
	}
	if _, err := r.GetRoute(ctx, "bob@example.com"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetRoute: %v, want ErrNotFound", err)
	}
	if err := r.SetRoute(ctx, "bob@example.com", Record{Backend: "mx2"}); err != nil {
		t.Fatal(err)
	}
	if got := raw.HGetAll(ctx, key).Val(); got["password"] != "hash" || got["backend"] != "mx2" || len(got) != 2 {
		t.Errorf("after SetRoute: %v", got)
	}
	if err := r.SetRoute(ctx, "bob@example.com", Record{Addr: "10.0.0.1:143"}); err != nil {
		t.Fatal(err)
	}
	if got := raw.HGetAll(ctx, key).Val(); got["password"] != "hash" || got["addr"] != "10.0.0.1:143" || len(got) != 2 {
		t.Errorf("after a second SetRoute: %v", got)
	}
	if err := r.DeleteRoute(ctx, "bob@example.com"); err != nil {
		t.Fatal(err)
	}
	if got := raw.HGetAll(ctx, key).Val(); got["password"] != "hash" || len(got) != 1 {
		t.Errorf("after DeleteRoute: %v", got)
	}

	// Assignment writes the route next to the password.
	pool := &Pool{Name: "main", Members: []*Backend{r.Backends["mx1"]}, Policy: PolicyAssign}
	r.DefaultPool = pool
	b, err := r.Lookup(ctx, "bob@example.com")
	if err != nil || b.Name != "mx1" {
		t.Fatalf("assignment: %v, %v", b, err)
	}
	if got := raw.HGetAll(ctx, key).Val(); got["password"] != "hash" || got["backend"] != "mx1" || got["assigned_pool"] != "main" {
		t.Errorf("after assignment: %v", got)
	}
	// A route that exists is not overwritten, and its record comes back
	// without the password.
	raw.HSet(ctx, "portico:route:carol@example.com", "backend", "mx2", "password", "hash")
	rec, won, err := r.assign(ctx, "carol@example.com", "portico:route:carol@example.com", pool, r.Backends["mx1"])
	if err != nil || won || rec != (Record{Backend: "mx2"}) {
		t.Errorf("assign over a route: %+v, %v, %v", rec, won, err)
	}
}
