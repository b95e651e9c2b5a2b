package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/routing"
)

// RedisStore is a Store of password hashes in Redis (auth.redis), in one
// of two places:
//
//   - Field of the user's route hash (Routes.Key(user)): read whole,
//     with the route, through Routes.Fields, which puts the route in the
//     route cache so that the login's route lookup needs no second read;
//   - a string key of its own, Prefix + Key with "{user}" replaced: one
//     GET.
//
// A user without a hash (no key, no field, an empty value) is an unknown
// user. Hashes are as described at VerifyHash.
type RedisStore struct {
	// Routes is the router whose route hashes hold Field.
	Routes *routing.Redis
	Field  string
	// Client, Prefix and Key are for hashes in keys of their own.
	Client redis.UniversalClient
	Prefix string
	Key    string
	// Hashes verifies; its zero value is fine.
	Hashes Hashes
}

// Verify implements Store.
func (s *RedisStore) Verify(ctx context.Context, user, password string) (bool, error) {
	encoded, err := s.read(ctx, user)
	if err != nil {
		return false, err
	}
	ok, err := s.Hashes.Verify(ctx, encoded, password)
	if err != nil {
		// The error names the scheme and the place, never the hash.
		return false, fmt.Errorf("auth: password of %q in redis: %w", user, err)
	}
	return ok, nil
}

// read returns user's stored hash, "" when there is none.
func (s *RedisStore) read(ctx context.Context, user string) (string, error) {
	if s.Key != "" {
		if s.Client == nil {
			return "", errors.New("auth: redis password store: no client")
		}
		key := s.Prefix + strings.ReplaceAll(s.Key, "{user}", user)
		v, err := s.Client.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("auth: redis get %q: %w", key, err)
		}
		return strings.TrimRight(v, "\r\n"), nil
	}
	if s.Routes == nil || s.Field == "" {
		return "", errors.New("auth: redis password store: neither a key nor a route field")
	}
	f, err := s.Routes.Fields(ctx, user)
	if err != nil {
		return "", fmt.Errorf("auth: %w", err)
	}
	// A final newline is an import's, never part of a hash.
	return strings.TrimRight(f[s.Field], "\r\n"), nil
}
