package tls

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Locker is a lock shared by the proxies of a fleet. ACME takes it, per
// certificate, around issuance and renewal, so that N proxies starting (or
// renewing) together place one order, not N.
type Locker interface {
	// TryLock takes the lock called name for at most ttl, without waiting.
	// ok is false when someone else holds it. release gives the lock back
	// if it is still ours (it may have expired and been taken since).
	TryLock(ctx context.Context, name string, ttl time.Duration) (release func(), ok bool, err error)
}

// RedisLocker is a Locker in Redis: SET <Prefix>acme:lock:<name> <random> NX
// PX ttl, released by a compare-and-delete script so that a holder whose
// lock expired cannot release its successor's.
type RedisLocker struct {
	Client redis.UniversalClient
	Prefix string
}

var unlockScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0`)

// TryLock implements Locker.
func (l RedisLocker) TryLock(ctx context.Context, name string, ttl time.Duration) (func(), bool, error) {
	var b [16]byte
	rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	key := l.Prefix + "acme:lock:" + name
	ok, err := l.Client.SetNX(ctx, key, token, ttl).Result()
	if err != nil {
		return nil, false, fmt.Errorf("tls: acme lock %q: %w", name, err)
	}
	if !ok {
		return nil, false, nil
	}
	release := func() {
		// Not the caller's context: a release must happen even when the
		// work it guarded was cancelled.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		unlockScript.Run(ctx, l.Client, []string{key}, token)
	}
	return release, true, nil
}
