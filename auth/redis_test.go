package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/routing"
)

func TestRedisStore(t *testing.T) {
	srv := testsrv.StartRedis(t)
	rdb := routing.NewRedisClient(routing.RedisOptions{Addrs: []string{srv.Addr}})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	sha := doveadmPW(t, "SHA512-CRYPT", "alice-pw")
	blf := doveadmPW(t, "BLF-CRYPT", "bob-pw", "-r", "4")
	rdb.HSet(ctx, "portico:route:alice@example.com", "backend", "mx1", "password", sha)
	rdb.HSet(ctx, "portico:route:bob@example.com", "backend", "mx1", "pw", blf)
	rdb.HSet(ctx, "portico:route:nopw@example.com", "backend", "mx1")
	rdb.HSet(ctx, "portico:route:plain@example.com", "backend", "mx1", "password", "{PLAIN}plain-pw")
	rdb.HSet(ctx, "portico:route:broken@example.com", "backend", "mx1", "password", "{MD5}Zm9vYmFy")
	rdb.Set(ctx, "portico:route:string@example.com", "x", 0)
	rdb.Set(ctx, "portico:passwd:carol@example.com", sha, 0)
	rdb.Set(ctx, "portico:passwd:empty@example.com", "", 0)
	rdb.Set(ctx, "portico:passwd:newline@example.com", sha+"\n", 0) // as a careless import writes it

	routes := &routing.Redis{Client: rdb, Prefix: "portico:"}
	field := &RedisStore{Routes: routes, Field: "password"}
	key := &RedisStore{Client: rdb, Prefix: "portico:", Key: "passwd:{user}"}
	for _, tc := range []struct {
		store      *RedisStore
		user, pw   string
		ok         bool
		err, errIs error
	}{
		{field, "alice@example.com", "alice-pw", true, nil, nil},
		{field, "alice@example.com", "wrong", false, nil, nil},
		{field, "nobody@example.com", "alice-pw", false, nil, nil},
		{field, "nopw@example.com", "", false, nil, nil},
		{field, "bob@example.com", "bob-pw", false, nil, nil}, // its hash is in another field
		{&RedisStore{Routes: routes, Field: "pw"}, "bob@example.com", "bob-pw", true, nil, nil},
		{field, "plain@example.com", "plain-pw", false, nil, ErrHashFormat},
		{&RedisStore{Routes: routes, Field: "password", Hashes: Hashes{AllowPlain: true}}, "plain@example.com", "plain-pw", true, nil, nil},
		{field, "broken@example.com", "x", false, nil, ErrHashFormat},
		{key, "carol@example.com", "alice-pw", true, nil, nil},
		{key, "carol@example.com", "Alice-pw", false, nil, nil},
		{key, "empty@example.com", "", false, nil, nil},
		{key, "newline@example.com", "alice-pw", true, nil, nil},
		{key, "alice@example.com", "alice-pw", false, nil, nil},
	} {
		ok, err := tc.store.Verify(ctx, tc.user, tc.pw)
		if ok != tc.ok || (tc.errIs == nil) != (err == nil) || (tc.errIs != nil && !errors.Is(err, tc.errIs)) {
			t.Errorf("%s %q: %v, %v; want %v, %v", tc.user, tc.pw, ok, err, tc.ok, tc.errIs)
		}
		if err != nil && (strings.Contains(err.Error(), "Zm9vYmFy") || strings.Contains(err.Error(), "plain-pw")) {
			t.Errorf("the error shows the stored value: %v", err)
		}
	}
	// A route key of the wrong type, and Redis down: errors, never a
	// refusal (the client is told to try later, not that its password
	// is wrong).
	if ok, err := field.Verify(ctx, "string@example.com", "x"); ok || err == nil {
		t.Errorf("WRONGTYPE: %v, %v", ok, err)
	}
	srv.Stop()
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for _, s := range []*RedisStore{field, key} {
		if ok, err := s.Verify(dctx, "alice@example.com", "alice-pw"); ok || err == nil {
			t.Errorf("redis down: %v, %v", ok, err)
		}
	}
}
