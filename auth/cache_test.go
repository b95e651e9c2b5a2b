package auth

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// countingStore accepts password "right" and counts the checks.
type countingStore struct {
	n   int
	err error
}

func (s *countingStore) Verify(_ context.Context, user, password string) (bool, error) {
	s.n++
	return password == "right-"+user, s.err
}

func TestCachedStore(t *testing.T) {
	ctx := context.Background()
	inner := &countingStore{}
	c := &CachedStore{Store: inner, TTL: 100 * time.Millisecond, MaxEntries: 3}
	for range 3 {
		if ok, err := c.Verify(ctx, "u", "right-u"); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	if inner.n != 1 {
		t.Errorf("%d checks for three logins with the same password, want 1", inner.n)
	}
	// Wrong passwords are never remembered: each is checked in full.
	for range 3 {
		if ok, _ := c.Verify(ctx, "u", "wrong"); ok {
			t.Fatal("wrong password accepted")
		}
	}
	if inner.n != 4 {
		t.Errorf("%d checks, want 4", inner.n)
	}
	// Another user with the same password is not the cached one.
	if ok, _ := c.Verify(ctx, "v", "right-u"); ok {
		t.Error("another user's password accepted from the cache")
	}
	// Expiry.
	time.Sleep(150 * time.Millisecond)
	n := inner.n
	c.Verify(ctx, "u", "right-u")
	if inner.n != n+1 {
		t.Error("an expired success was used")
	}
	// Bounded.
	for i := range 10 {
		u := fmt.Sprint("user", i)
		c.Verify(ctx, u, "right-"+u)
	}
	if len(c.cache.m) > 3 {
		t.Errorf("%d entries, max 3", len(c.cache.m))
	}
	// Errors are passed on and not remembered.
	c.Forget()
	inner.err = errors.New("down")
	if ok, err := c.Verify(ctx, "u", "right-u"); err == nil {
		t.Error(ok, err)
	}
	inner.err = nil
	n = inner.n
	c.Verify(ctx, "u", "right-u")
	if inner.n != n+1 {
		t.Error("a result with an error was remembered")
	}
}
