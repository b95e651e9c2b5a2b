package tls

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	stdtls "crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// TicketKeys shares session ticket keys among the proxies of a fleet
// through Redis, so that a client resumes its TLS session on whichever
// proxy it reaches next:
//
//	tk := &tls.TicketKeys{Client: rdb, Secret: []byte(cfg.SessionTickets.Key.Value), Logger: logger}
//	go tk.Run(ctx, serverConfig)
//
// Time is cut into periods of Rotation. Each period has one random 32-byte
// key, stored encrypted under Secret in the hash <Prefix>tls:tickets, in
// the field named by the period number (Unix time / Rotation). The first
// proxy that needs a period's key creates it with HSETNX; the others read
// the winner's. New tickets are encrypted with the current period's key;
// tickets from the two previous periods are still accepted, so a ticket
// lives between two and three periods. The next period's key is created a
// little before the period begins, and accepted as soon as it exists, so
// proxies whose clocks differ by less than that still understand each
// other's tickets.
//
// When Redis is unavailable, the keys in use stay in use (logged once) and
// Run retries; before the first successful read, the configurations keep
// crypto/tls's own per-process keys.
type TicketKeys struct {
	Client redis.UniversalClient
	// Prefix starts the Redis key; "" means "portico:".
	Prefix string
	// Secret encrypts the keys at rest (hashed to an AES-256 key). Every
	// proxy of the fleet needs the same one. Required.
	Secret []byte
	// Rotation is the period of one key; zero means 12h.
	Rotation time.Duration
	// Logger receives Redis failures and recoveries; nil means
	// slog.Default().
	Logger *slog.Logger

	mu      sync.Mutex
	keys    [][32]byte // in use, current period first
	periods []int64    // the periods of keys, same order; for tests
}

// ticketKeyLen is what crypto/tls wants for SetSessionTicketKeys.
const ticketKeyLen = 32

func (t *TicketKeys) rotation() time.Duration {
	if t.Rotation > 0 {
		return t.Rotation
	}
	return 12 * time.Hour
}

func (t *TicketKeys) redisKey() string {
	p := t.Prefix
	if p == "" {
		p = "portico:"
	}
	return p + "tls:tickets"
}

func (t *TicketKeys) logger() *slog.Logger {
	if t.Logger != nil {
		return t.Logger
	}
	return slog.Default()
}

// Run keeps the session ticket keys of cfgs up to date until ctx is done.
// It never returns early: errors are logged and retried.
func (t *TicketKeys) Run(ctx context.Context, cfgs ...*stdtls.Config) {
	if t.Client == nil || len(t.Secret) == 0 {
		t.logger().Error("tls: shared session tickets need a Redis client and a key; each process uses its own ticket keys")
		<-ctx.Done()
		return
	}
	aead := ticketAEAD(t.Secret)
	rot := t.rotation()
	every := min(time.Minute, rot/4)
	failing := false
	var applied [][32]byte
	for {
		next, err := t.refresh(ctx, aead, time.Now())
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				t.logger().Warn("tls: cannot refresh the shared session ticket keys; keeping the keys in use and retrying", "err", err)
				failing = true
			} else {
				t.logger().Debug("tls: session ticket keys still unavailable", "err", err)
			}
			next = min(every, 5*time.Second)
		case failing:
			t.logger().Info("tls: shared session ticket keys available again")
			failing = false
		}
		if keys, _ := t.keysInUse(); err == nil && len(keys) > 0 && !slices.Equal(keys, applied) {
			for _, cfg := range cfgs {
				cfg.SetSessionTicketKeys(keys)
			}
			applied = keys
		}
		timer := time.NewTimer(max(min(next, every), 10*time.Millisecond))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// refresh reads (and creates when missing) the keys for now and stores
// them in t. It returns how long until the keys must be refreshed again.
func (t *TicketKeys) refresh(ctx context.Context, aead cipher.AEAD, now time.Time) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rot := t.rotation()
	p := now.UnixNano() / int64(rot)
	end := time.Unix(0, (p+1)*int64(rot))
	// The next key is made this long before its period: more than the
	// clock skew of a sane fleet, and more than one refresh interval.
	lead := min(rot/10, 2*time.Minute)

	key := t.redisKey()
	fields := []string{field(p), field(p + 1), field(p - 1), field(p - 2)}
	vals, err := t.Client.HMGet(ctx, key, fields...).Result()
	if err != nil {
		return 0, fmt.Errorf("tls: session ticket keys: redis HMGET %s: %w", key, err)
	}
	raw := make([]string, len(vals))
	for i, v := range vals {
		raw[i], _ = v.(string)
	}
	if raw[0] == "" {
		if raw[0], err = t.create(ctx, aead, key, p); err != nil {
			return 0, err
		}
	}
	if raw[1] == "" && !now.Before(end.Add(-lead)) {
		if raw[1], err = t.create(ctx, aead, key, p+1); err != nil {
			return 0, err
		}
	}

	periods := []int64{p, p + 1, p - 1, p - 2}
	var keys [][32]byte
	var used []int64
	for i, v := range raw {
		if v == "" {
			continue
		}
		k, err := openTicketKey(aead, key, periods[i], v)
		if err != nil {
			return 0, err
		}
		keys = append(keys, k)
		used = append(used, periods[i])
	}
	t.mu.Lock()
	t.keys, t.periods = keys, used
	t.mu.Unlock()

	next := end.Sub(now)
	if pre := end.Add(-lead).Sub(now); raw[1] == "" && pre > 0 {
		next = pre
	}
	return next, nil
}

// create makes the key of period p unless another proxy did first, and
// returns the stored (winning) value.
func (t *TicketKeys) create(ctx context.Context, aead cipher.AEAD, key string, p int64) (string, error) {
	var k [ticketKeyLen]byte
	rand.Read(k[:])
	sealed := sealTicketKey(aead, key, p, k)
	won, err := t.Client.HSetNX(ctx, key, field(p), sealed).Result()
	if err != nil {
		return "", fmt.Errorf("tls: session ticket keys: redis HSETNX %s %s: %w", key, field(p), err)
	}
	if !won {
		v, err := t.Client.HGet(ctx, key, field(p)).Result()
		if err != nil {
			return "", fmt.Errorf("tls: session ticket keys: redis HGET %s %s: %w", key, field(p), err)
		}
		return v, nil
	}
	// The creator of a period tidies up: periods older than any proxy
	// could still accept go, and the whole hash disappears if the fleet
	// stops for long (its keys are useless by then).
	rot := t.rotation()
	if names, err := t.Client.HKeys(ctx, key).Result(); err == nil {
		var old []string
		for _, n := range names {
			if q, err := strconv.ParseInt(n, 10, 64); err != nil || q < p-3 {
				old = append(old, n)
			}
		}
		if len(old) > 0 {
			t.Client.HDel(ctx, key, old...)
		}
	}
	t.Client.PExpire(ctx, key, 5*rot)
	return sealed, nil
}

// keysInUse returns the keys in use, current period first, and their
// periods; nil before the first successful refresh.
func (t *TicketKeys) keysInUse() ([][32]byte, []int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.keys), slices.Clone(t.periods)
}

func field(p int64) string { return strconv.FormatInt(p, 10) }

func ticketAEAD(secret []byte) cipher.AEAD {
	k := sha256.Sum256(append([]byte("portico tls session ticket keys\x00"), secret...))
	block, err := aes.NewCipher(k[:])
	if err != nil {
		panic(err) // cannot happen: the key is 32 bytes
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return aead
}

// The period is authenticated with the key, so that a value copied to
// another field (or another prefix's hash) does not decrypt.
func ticketAAD(redisKey string, p int64) []byte {
	return []byte(redisKey + "\x00" + field(p))
}

func sealTicketKey(aead cipher.AEAD, redisKey string, p int64, k [ticketKeyLen]byte) string {
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+ticketKeyLen+aead.Overhead())
	rand.Read(nonce)
	return base64.StdEncoding.EncodeToString(aead.Seal(nonce, nonce, k[:], ticketAAD(redisKey, p)))
}

var errTicketKey = errors.New("cannot decrypt (is the session ticket key the same on every proxy?)")

func openTicketKey(aead cipher.AEAD, redisKey string, p int64, v string) ([ticketKeyLen]byte, error) {
	var k [ticketKeyLen]byte
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil || len(b) != aead.NonceSize()+ticketKeyLen+aead.Overhead() {
		return k, fmt.Errorf("tls: session ticket key %s %s: malformed value", redisKey, field(p))
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, b[:n], b[n:], ticketAAD(redisKey, p))
	if err != nil {
		return k, fmt.Errorf("tls: session ticket key %s %s: %w", redisKey, field(p), errTicketKey)
	}
	copy(k[:], plain)
	return k, nil
}
