package testsrv

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// DumpRedis returns every key of a standalone server with its value, one
// "key (type) = value" line each, for tests that check what Redis holds.
func DumpRedis(t testing.TB, rdb redis.UniversalClient) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		typ, _ := rdb.Type(ctx, k).Result()
		var v any
		var err error
		switch typ {
		case "string":
			v, err = rdb.Get(ctx, k).Result()
		case "hash":
			v, err = rdb.HGetAll(ctx, k).Result()
		case "zset":
			v, err = rdb.ZRangeWithScores(ctx, k, 0, -1).Result()
		case "set":
			v, err = rdb.SMembers(ctx, k).Result()
		case "list":
			v, err = rdb.LRange(ctx, k, 0, -1).Result()
		default:
			v = typ
		}
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s (%s) = %v\n", k, typ, v)
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// UnsaltedHash is one way a careless store could keep a password.
type UnsaltedHash struct{ Name, Form string }

// UnsaltedHashes lists pw's MD5, SHA-1, SHA-256 and SHA-512, each in hex,
// its first 16 hex digits, and base64 with and without padding.
func UnsaltedHashes(pw string) []UnsaltedHash {
	m5, s1, s256, s512 := md5.Sum([]byte(pw)), sha1.Sum([]byte(pw)), sha256.Sum256([]byte(pw)), sha512.Sum512([]byte(pw))
	var out []UnsaltedHash
	for _, h := range []struct {
		name string
		sum  []byte
	}{{"md5", m5[:]}, {"sha1", s1[:]}, {"sha256", s256[:]}, {"sha512", s512[:]}} {
		x := hex.EncodeToString(h.sum)
		for _, f := range []string{x, x[:16], base64.StdEncoding.EncodeToString(h.sum), base64.RawStdEncoding.EncodeToString(h.sum)} {
			out = append(out, UnsaltedHash{h.name, f})
		}
	}
	return out
}
