package tls

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/acme/autocert"
)

// Certificate caches for ACME (autocert.Cache). The values autocert stores
// are PEM private keys (the ACME account key, each certificate's key)
// followed by chains, so both caches here encrypt them at rest:
//
//	cache := tls.EncryptedCache{Cache: autocert.DirCache("/var/lib/portico/acme"), Key: []byte(secret)}
//	cache := tls.RedisCache{Client: rdb, Prefix: "portico:", Key: []byte(secret)}
//
// A value that does not decrypt (wrong key, corrupted, written in clear by
// another program) is logged and reported as a cache miss, so autocert
// replaces it rather than failing every handshake.

// challengeTTL bounds how long challenge leftovers live in Redis when
// autocert does not get to delete them (a crash in the middle of an order).
const challengeTTL = time.Hour

// sealVersion is the first byte of every encrypted value, so that the
// format can change without misreading old values.
const sealVersion = 1

// sealer encrypts cache values with AES-256-GCM under a key derived from an
// operator secret. The cache key name is the additional data: a value copied
// to another name (another domain, or over the account key) fails to open.
type sealer struct{ aead cipher.AEAD }

func newSealer(secret []byte) (*sealer, error) {
	if len(secret) == 0 {
		return nil, errors.New("tls: cache: empty encryption key")
	}
	// HKDF rather than the raw secret: the configured string need not be 32
	// random bytes, and a derived key is bound to this one use.
	key, err := hkdf.Key(sha256.New, secret, nil, "portico acme cache v1", 32)
	if err != nil {
		return nil, fmt.Errorf("tls: cache: derive key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("tls: cache: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("tls: cache: %w", err)
	}
	return &sealer{aead: aead}, nil
}

// seal returns version || nonce || ciphertext.
func (s *sealer) seal(name string, plain []byte) []byte {
	ns := s.aead.NonceSize()
	out := make([]byte, 1+ns, 1+ns+len(plain)+s.aead.Overhead())
	out[0] = sealVersion
	rand.Read(out[1 : 1+ns]) // never fails (crypto/rand panics instead)
	return s.aead.Seal(out, out[1:1+ns], plain, []byte(name))
}

func (s *sealer) open(name string, sealed []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(sealed) < 1+ns+s.aead.Overhead() {
		return nil, errors.New("value too short to be encrypted")
	}
	if sealed[0] != sealVersion {
		return nil, fmt.Errorf("unknown format version %d", sealed[0])
	}
	plain, err := s.aead.Open(nil, sealed[1:1+ns], sealed[1+ns:], []byte(name))
	if err != nil {
		return nil, errors.New("decryption failed (wrong key or corrupted value)")
	}
	return plain, nil
}

// openOrMiss decrypts a cached value; a value that does not open is logged
// and turned into autocert.ErrCacheMiss, the only error autocert treats as
// "not there" (it compares with ==).
func openOrMiss(logger *slog.Logger, secret []byte, name string, v []byte) ([]byte, error) {
	s, err := newSealer(secret)
	if err != nil {
		return nil, err
	}
	plain, err := s.open(name, v)
	if err != nil {
		loggerOr(logger).Warn("tls: acme cache: ignoring a value that does not decrypt; it will be replaced",
			"key", name, "err", err)
		return nil, autocert.ErrCacheMiss
	}
	return plain, nil
}

// ErrWrongCacheKey means the ACME cache holds an account key that the
// configured cache key cannot open.
var ErrWrongCacheKey = errors.New("tls: acme cache: the stored ACME account key does not decrypt with the configured cache key")

// checkAccountKey is CheckKey for both caches, given the result of reading
// the account key: v, whether it is missing, or the read error.
func checkAccountKey(secret, v []byte, missing bool, err error) error {
	switch {
	case missing:
		return nil
	case err != nil:
		return fmt.Errorf("tls: acme cache: get %q: %w", accountKeyName, err)
	}
	return checkSealed(secret, v)
}

// checkSealed tells whether the account key v opens under secret (or is in
// clear PEM when no secret is set).
func checkSealed(secret, v []byte) error {
	if len(secret) == 0 {
		if bytes.HasPrefix(v, []byte("-----BEGIN")) {
			return nil
		}
		return fmt.Errorf("%w (the value is encrypted but no cache key is set)", ErrWrongCacheKey)
	}
	s, err := newSealer(secret)
	if err != nil {
		return err
	}
	if _, err := s.open(accountKeyName, v); err != nil {
		return fmt.Errorf("%w: %v", ErrWrongCacheKey, err)
	}
	return nil
}

func loggerOr(l *slog.Logger) *slog.Logger {
	if l != nil {
		return l
	}
	return slog.Default()
}

// EncryptedCache encrypts the values of another autocert.Cache, typically an
// autocert.DirCache, with AES-256-GCM under a key derived from Key (any
// length; a long random string from the configuration).
type EncryptedCache struct {
	Cache  autocert.Cache
	Key    []byte
	Logger *slog.Logger // for values that fail to decrypt; nil means slog.Default()
}

// Get returns autocert.ErrCacheMiss for a missing value and for one that
// does not decrypt.
func (c EncryptedCache) Get(ctx context.Context, name string) ([]byte, error) {
	v, err := c.Cache.Get(ctx, name)
	if err != nil {
		return nil, err // ErrCacheMiss must pass through unwrapped
	}
	return openOrMiss(c.Logger, c.Key, name, v)
}

// Put encrypts data and stores it in the underlying cache.
func (c EncryptedCache) Put(ctx context.Context, name string, data []byte) error {
	s, err := newSealer(c.Key)
	if err != nil {
		return err
	}
	return c.Cache.Put(ctx, name, s.seal(name, data))
}

// CheckKey reports ErrWrongCacheKey when the cache holds an ACME account
// key that does not decrypt under Key. See ACME.Obtain.
func (c EncryptedCache) CheckKey(ctx context.Context) error {
	v, err := c.Cache.Get(ctx, accountKeyName)
	return checkAccountKey(c.Key, v, err == autocert.ErrCacheMiss, err)
}

// Delete removes name from the underlying cache.
func (c EncryptedCache) Delete(ctx context.Context, name string) error {
	return c.Cache.Delete(ctx, name)
}

// RedisCache is an autocert.Cache in Redis, shared by every proxy of a fleet:
// the account key, the certificates and the challenge tokens, so that any
// proxy can answer the CA for an order another one placed. Keys are
// Prefix+"acme:"+name. Values are encrypted when Key is set, which a
// deployment always should do.
type RedisCache struct {
	Client redis.UniversalClient
	Prefix string
	Key    []byte
	Logger *slog.Logger // for values that fail to decrypt; nil means slog.Default()
}

func (c RedisCache) key(name string) string { return c.Prefix + "acme:" + name }

// Get returns exactly autocert.ErrCacheMiss for a missing value and for one
// that does not decrypt.
func (c RedisCache) Get(ctx context.Context, name string) ([]byte, error) {
	v, err := c.Client.Get(ctx, c.key(name)).Bytes()
	if err == redis.Nil {
		return nil, autocert.ErrCacheMiss
	}
	if err != nil {
		return nil, fmt.Errorf("tls: acme cache: get %q: %w", name, err)
	}
	if len(c.Key) == 0 {
		return v, nil
	}
	return openOrMiss(c.Logger, c.Key, name, v)
}

// Put stores data; challenge tokens expire after an hour in case autocert
// never deletes them.
func (c RedisCache) Put(ctx context.Context, name string, data []byte) error {
	if len(c.Key) > 0 {
		s, err := newSealer(c.Key)
		if err != nil {
			return err
		}
		data = s.seal(name, data)
	}
	var ttl time.Duration
	if isChallengeKey(name) {
		ttl = challengeTTL
	}
	if err := c.Client.Set(ctx, c.key(name), data, ttl).Err(); err != nil {
		return fmt.Errorf("tls: acme cache: put %q: %w", name, err)
	}
	return nil
}

// CheckKey reports ErrWrongCacheKey when the cache holds an ACME account
// key that does not decrypt under Key, or an encrypted one while Key is
// unset. See ACME.Obtain.
func (c RedisCache) CheckKey(ctx context.Context) error {
	v, err := c.Client.Get(ctx, c.key(accountKeyName)).Bytes()
	return checkAccountKey(c.Key, v, err == redis.Nil, err)
}

// Delete removes name.
func (c RedisCache) Delete(ctx context.Context, name string) error {
	if err := c.Client.Del(ctx, c.key(name)).Err(); err != nil {
		return fmt.Errorf("tls: acme cache: delete %q: %w", name, err)
	}
	return nil
}

// isChallengeKey matches the names autocert gives challenge material:
// "<token>+http-01" and "<domain>+token" (the tls-alpn-01 certificate).
func isChallengeKey(name string) bool {
	return strings.HasSuffix(name, "+http-01") || strings.HasSuffix(name, "+token")
}
