package routing

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/redis/go-redis/v9"
)

// newRedisRouter starts a redis-server and returns a router on it with two
// named backends and TLS defaults, plus the server for tests that stop it.
func newRedisRouter(t testing.TB) (*Redis, *testsrv.Redis) {
	t.Helper()
	srv := testsrv.StartRedis(t)
	c := NewRedisClient(RedisOptions{Addrs: []string{srv.Addr}})
	t.Cleanup(func() { c.Close() })
	r := &Redis{
		Client: c,
		Backends: map[string]*Backend{
			"mx1": {Name: "mx1", Addr: "127.0.0.1:1143"},
			"mx2": {Name: "mx2", Addr: "127.0.0.1:2993", TLS: ImplicitTLS},
		},
		Defaults: Backend{
			Name:           "ignored",
			TLS:            StartTLS,
			TLSConfig:      &tls.Config{ServerName: "default.example", MinVersion: tls.VersionTLS13},
			ForwardID:      true,
			ConnectTimeout: 3 * time.Second,
			LoginTimeout:   7 * time.Second,
		},
		Timeout: 500 * time.Millisecond,
	}
	return r, srv
}

// rawClient is a second connection for setting up data and misbehaving.
func rawClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRedisLookup(t *testing.T) {
	r, srv := newRedisRouter(t)
	ctx := context.Background()
	raw := rawClient(t, srv.Addr)
	set := func(user string, kv ...string) {
		t.Helper()
		args := make([]any, len(kv))
		for i, s := range kv {
			args[i] = s
		}
		if err := raw.HSet(ctx, "portico:route:"+user, args...).Err(); err != nil {
			t.Fatal(err)
		}
	}

	set("alice@example.com", "backend", "mx2")
	b, err := r.Lookup(ctx, "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if b != r.Backends["mx2"] {
		t.Fatalf("backend name: got %v, want the configured mx2", b)
	}

	// backend wins over addr.
	set("both@example.com", "backend", "mx1", "addr", "10.1.1.1:143", "security", "bogus")
	if b, err := r.Lookup(ctx, "both@example.com"); err != nil || b != r.Backends["mx1"] {
		t.Fatalf("backend and addr: got %v, %v; want mx1", b, err)
	}

	// Literal address with the defaults.
	set("bob@example.com", "addr", "192.0.2.7:143", "unknown_field", "x")
	b, err = r.Lookup(ctx, "bob@example.com")
	if err != nil {
		t.Fatal(err)
	}
	want := r.Defaults
	want.Name, want.Addr = "", "192.0.2.7:143"
	if *b != want {
		t.Fatalf("literal addr: got %+v, want %+v", *b, want)
	}

	// Literal address with security and server_name: the default TLS
	// config is cloned, not modified.
	set("carol@example.com", "addr", "[::1]:993", "security", "tls", "server_name", "imap7.example.com")
	b, err = r.Lookup(ctx, "carol@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if b.Addr != "[::1]:993" || b.TLS != ImplicitTLS || b.Name != "" || !b.ForwardID || b.LoginTimeout != 7*time.Second {
		t.Fatalf("literal addr with security: got %+v", *b)
	}
	if b.TLSConfig == r.Defaults.TLSConfig || b.TLSConfig.ServerName != "imap7.example.com" || b.TLSConfig.MinVersion != tls.VersionTLS13 {
		t.Fatalf("server_name: got config %p (defaults %p) name %q", b.TLSConfig, r.Defaults.TLSConfig, b.TLSConfig.ServerName)
	}
	if r.Defaults.TLSConfig.ServerName != "default.example" {
		t.Fatalf("defaults modified: %q", r.Defaults.TLSConfig.ServerName)
	}

	// server_name without a default TLS config still takes effect.
	r2 := *r
	r2.Defaults.TLSConfig = nil
	b, err = r2.Lookup(ctx, "carol@example.com")
	if err != nil || b.TLSConfig == nil || b.TLSConfig.ServerName != "imap7.example.com" {
		t.Fatalf("server_name without defaults: %+v, %v", b, err)
	}

	// Missing key.
	_, err = r.Lookup(ctx, "nobody@example.com")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing key: got %v, want ErrNotFound", err)
	}
}

func TestRedisMalformedRecords(t *testing.T) {
	r, srv := newRedisRouter(t)
	ctx := context.Background()
	raw := rawClient(t, srv.Addr)
	cases := map[string][]any{
		"unknown-backend":   {"backend", "mx9"},
		"no-port":           {"addr", "10.0.0.1"},
		"bad-port":          {"addr", "10.0.0.1:http"},
		"zero-port":         {"addr", "10.0.0.1:0"},
		"big-port":          {"addr", "10.0.0.1:65536"},
		"empty-host":        {"addr", ":143"},
		"space-host":        {"addr", "a b:143"},
		"crlf-host":         {"addr", "a\r\nb:143"},
		"bad-security":      {"addr", "10.0.0.1:143", "security", "ssl3"},
		"bad-server-name":   {"addr", "10.0.0.1:993", "server_name", "a\nb"},
		"neither":           {"security", "tls"},
		"empty-fields":      {"backend", "", "addr", ""},
		"long-garbage-addr": {"addr", strings.Repeat("x", 10000)},
	}
	for user, kv := range cases {
		if err := raw.HSet(ctx, "portico:route:"+user, kv...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// A key of the wrong type is Redis' WRONGTYPE error.
	if err := raw.Set(ctx, "portico:route:wrongtype", "mx1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	cases["wrongtype"] = nil

	for user := range cases {
		t.Run(user, func(t *testing.T) {
			b, err := r.Lookup(ctx, user)
			if err == nil {
				t.Fatalf("got %+v, want an error", b)
			}
			if errors.Is(err, ErrNotFound) {
				t.Fatalf("got ErrNotFound (%v), want a data error", err)
			}
			if !strings.Contains(err.Error(), `"portico:route:`+user+`"`) {
				t.Errorf("error %q does not name the key", err)
			}
			if len(err.Error()) > 300 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
		})
	}
}

func TestRedisDown(t *testing.T) {
	r, srv := newRedisRouter(t)
	ctx := context.Background()
	if err := r.SetRoute(ctx, "alice@example.com", Record{Backend: "mx1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lookup(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	// Twice: the first lookup finds a pooled connection that is now dead,
	// the second has to dial.
	for i := range 2 {
		start := time.Now()
		_, err := r.Lookup(ctx, "alice@example.com")
		elapsed := time.Since(start)
		if err == nil || errors.Is(err, ErrNotFound) {
			t.Fatalf("lookup %d with Redis down: got %v, want a failure", i, err)
		}
		if !strings.HasPrefix(err.Error(), `routing: redis lookup "portico:route:alice@example.com": `) {
			t.Errorf("error lacks context: %v", err)
		}
		if elapsed > r.Timeout+time.Second {
			t.Fatalf("lookup %d took %v, timeout is %v", i, elapsed, r.Timeout)
		}
	}
}

func TestRedisSlow(t *testing.T) {
	r, srv := newRedisRouter(t)
	ctx := context.Background()
	if err := r.SetRoute(ctx, "alice@example.com", Record{Backend: "mx1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lookup(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	// CLIENT PAUSE holds every other client's commands for 3s.
	if err := rawClient(t, srv.Addr).Do(ctx, "CLIENT", "PAUSE", "3000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := r.Lookup(ctx, "alice@example.com")
	elapsed := time.Since(start)
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup against a paused Redis: got %v, want a timeout", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Errorf("error is not a timeout: %v", err)
	}
	if elapsed < r.Timeout/2 || elapsed > r.Timeout+time.Second {
		t.Fatalf("lookup took %v, timeout is %v", elapsed, r.Timeout)
	}

	// A caller's shorter deadline wins over Timeout.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := r.Lookup(cctx, "alice@example.com"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v, want a timeout", err)
	}
	if elapsed := time.Since(start); elapsed > r.Timeout {
		t.Fatalf("lookup with a 100ms context took %v", elapsed)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestRedisOddKey checks that a user name, even one Normalize would refuse,
// reaches Redis as exactly one key argument of exactly one HGETALL.
func TestRedisOddKey(t *testing.T) {
	r, srv := newRedisRouter(t)
	ctx := context.Background()
	raw := rawClient(t, srv.Addr)
	odd := "a b\r\nPING\r\n*?[x]{tag}%u\"\\\x00\xffé@example.com"
	if err := r.SetRoute(ctx, odd, Record{Backend: "mx2"}); err != nil {
		t.Fatal(err)
	}
	// The stored key is exact, and nothing else was created.
	keys, err := raw.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "portico:route:"+odd {
		t.Fatalf("keys = %q", keys)
	}
	// A glob-looking name must not match the odd key.
	if _, err := r.Lookup(ctx, "*"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup of * = %v, want ErrNotFound", err)
	}
	// Warm the pool so MONITOR sees no connection handshake.
	if _, err := r.Lookup(ctx, odd); err != nil {
		t.Fatal(err)
	}

	mon, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	mon.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(mon)
	fmt.Fprint(mon, "*1\r\n$7\r\nMONITOR\r\n")
	if line, err := br.ReadString('\n'); err != nil || line != "+OK\r\n" {
		t.Fatalf("MONITOR: %q, %v", line, err)
	}

	b, err := r.Lookup(ctx, odd)
	if err != nil || b != r.Backends["mx2"] {
		t.Fatalf("lookup of odd key: %v, %v", b, err)
	}
	if err := r.Client.Echo(ctx, "end-of-test").Err(); err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("MONITOR read: %v (so far %q)", err, cmds)
		}
		if strings.Contains(line, `"end-of-test"`) {
			break
		}
		// +1700000000.123456 [0 127.0.0.1:port] "hgetall" "..."
		_, cmd, _ := strings.Cut(line, "] ")
		cmds = append(cmds, strings.TrimSuffix(cmd, "\r\n"))
	}
	want := `"hgetall" "` + monitorRepr("portico:route:"+odd) + `"`
	if len(cmds) != 1 || cmds[0] != want {
		t.Fatalf("MONITOR saw %q, want exactly [%s]", cmds, want)
	}
}

// monitorRepr quotes s like Redis' sdscatrepr does in MONITOR output.
func monitorRepr(s string) string {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '"':
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case '\n':
			sb.WriteString(`\n`)
		case '\r':
			sb.WriteString(`\r`)
		case '\t':
			sb.WriteString(`\t`)
		case '\a':
			sb.WriteString(`\a`)
		case '\b':
			sb.WriteString(`\b`)
		default:
			if c >= 0x20 && c < 0x7f {
				sb.WriteByte(c)
			} else {
				fmt.Fprintf(&sb, `\x%02x`, c)
			}
		}
	}
	return sb.String()
}

func TestRedisRouteHelpers(t *testing.T) {
	r, srv := newRedisRouter(t)
	ctx := context.Background()
	r.Prefix = "test:"
	user := "dave@example.com"

	if _, err := r.GetRoute(ctx, user); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetRoute of a missing route: %v", err)
	}
	rec := Record{Addr: "10.0.0.1:993", Security: "tls", ServerName: "imap.example.com"}
	if err := r.SetRoute(ctx, user, rec); err != nil {
		t.Fatal(err)
	}
	if got, err := r.GetRoute(ctx, user); err != nil || got != rec {
		t.Fatalf("GetRoute = %+v, %v; want %+v", got, err, rec)
	}
	// Set replaces the whole record: no stale addr is left behind.
	if err := r.SetRoute(ctx, user, Record{Backend: "mx1"}); err != nil {
		t.Fatal(err)
	}
	f, err := rawClient(t, srv.Addr).HGetAll(ctx, "test:route:"+user).Result()
	if err != nil || len(f) != 1 || f["backend"] != "mx1" {
		t.Fatalf("stored hash = %v, %v", f, err)
	}
	if b, err := r.Lookup(ctx, user); err != nil || b != r.Backends["mx1"] {
		t.Fatalf("Lookup with prefix: %v, %v", b, err)
	}

	for _, bad := range []Record{{}, {Addr: "nope"}, {Addr: "10.0.0.1:143", Security: "ssl"}, {Security: "tls"}} {
		if err := r.SetRoute(ctx, user, bad); err == nil {
			t.Errorf("SetRoute(%+v) succeeded", bad)
		}
	}
	if got, err := r.GetRoute(ctx, user); err != nil || got.Backend != "mx1" {
		t.Fatalf("a refused SetRoute changed the record: %+v, %v", got, err)
	}

	if err := r.DeleteRoute(ctx, user); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteRoute(ctx, user); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := r.Lookup(ctx, user); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup after delete: %v", err)
	}
}

func TestRedisNoClient(t *testing.T) {
	var r Redis
	if _, err := r.Lookup(context.Background(), "a"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("zero Redis: %v", err)
	}
}

// TestRedisNoGoroutineLeak runs lookups through success, miss, timeout and
// a dead server, closes the client, and expects the goroutine count back
// where it was.
func TestRedisNoGoroutineLeak(t *testing.T) {
	srv := testsrv.StartRedis(t)
	ctx := context.Background()
	before := runtime.NumGoroutine()

	c := NewRedisClient(RedisOptions{Addrs: []string{srv.Addr}})
	r := &Redis{Client: c, Backends: map[string]*Backend{"mx1": {Name: "mx1"}}, Timeout: 300 * time.Millisecond}
	if err := r.SetRoute(ctx, "a", Record{Backend: "mx1"}); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := r.Lookup(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Lookup(ctx, "b"); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
	}
	pauser := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	if err := pauser.Do(ctx, "CLIENT", "PAUSE", "1000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	pauser.Close()
	if _, err := r.Lookup(ctx, "a"); err == nil {
		t.Fatal("lookup against a paused server succeeded")
	}
	srv.Stop()
	if _, err := r.Lookup(ctx, "a"); err == nil {
		t.Fatal("lookup against a stopped server succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after Close:\n%s",
				before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func BenchmarkRedisLookup(b *testing.B) {
	r, _ := newRedisRouter(b)
	ctx := context.Background()
	if err := r.SetRoute(ctx, "alice@example.com", Record{Backend: "mx1"}); err != nil {
		b.Fatal(err)
	}
	if err := r.SetRoute(ctx, "bob@example.com", Record{Addr: "10.0.0.7:993", Security: "tls", ServerName: "imap7.example.com"}); err != nil {
		b.Fatal(err)
	}
	for _, user := range []string{"alice@example.com", "bob@example.com", "nobody@example.com"} {
		b.Run(strings.SplitN(user, "@", 2)[0], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Lookup(ctx, user); err != nil && !errors.Is(err, ErrNotFound) {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := r.Lookup(ctx, "alice@example.com"); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
