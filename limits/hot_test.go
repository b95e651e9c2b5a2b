package limits

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/fleet"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/routing"
)

// hotProxy is one proxy of a test fleet: its Fleet and its Limiter.
type hotProxy struct {
	f    *fleet.Fleet
	l    *Limiter
	stop func()
}

func newHotProxy(t testing.TB, addr, id string, cfg Config) *hotProxy {
	t.Helper()
	rdb := routing.NewRedisClient(routing.RedisOptions{Addrs: []string{addr}})
	t.Cleanup(func() { rdb.Close() })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	f := &fleet.Fleet{Client: rdb, ProxyID: id, Heartbeat: 200 * time.Millisecond, Logger: quiet}
	l := New(cfg, rdb, "", quiet)
	l.Hot = f
	return &hotProxy{f: f, l: l}
}

// run starts the proxy's fleet and waits until it trusts its hot set.
func (p *hotProxy) run(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.f.Run(ctx) }()
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v", err)
			}
		})
	}
	t.Cleanup(p.stop)
	poll(t, "a healthy control channel", func() bool { return p.f.Cold() })
}

func poll(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("no %s after 5s", what)
		}
	}
}

// evalCalls returns how many script calls Redis has run.
func evalCalls(t *testing.T, rdb redis.UniversalClient) int {
	t.Helper()
	s, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, cmd := range []string{"evalsha", "eval"} {
		if _, rest, ok := strings.Cut(s, "cmdstat_"+cmd+":calls="); ok {
			c, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			n += c
		}
	}
	return n
}

// TestHotSet: two proxies on one Redis, each with its fleet and limiter.
// A login of an address and a user nobody failed with costs no Redis
// command; failures through one proxy make the other's checks go to
// Redis and get their delay and block; without a trusted hot set (fleet
// not running, overflow) every check goes to Redis.
func TestHotSet(t *testing.T) {
	r := testsrv.StartRedis(t)
	a := newHotProxy(t, r.Addr, "a", testConfig())
	b := newHotProxy(t, r.Addr, "b", testConfig())
	rdb := a.l.redis.rdb

	// Not running: no trusted hot set, every check asks Redis.
	want(t, b.l, addrB, "bob@example.com", pass)
	if st := b.l.Stats(); st.FromRedis != 1 || st.Cold != 0 {
		t.Fatalf("before Run: stats %+v, want one check from Redis", st)
	}
	a.run(t)
	b.run(t)

	t.Run("cold costs no Redis command", func(t *testing.T) {
		before, st0 := evalCalls(t, rdb), b.l.Stats()
		for range 100 {
			want(t, b.l, addrB, "bob@example.com", pass)
			want(t, b.l, addrB, "", pass)
		}
		st := b.l.Stats()
		if n := evalCalls(t, rdb) - before; n != 0 {
			t.Errorf("%d script calls for 200 cold checks, want 0", n)
		}
		if st.Cold-st0.Cold != 200 || st.FromRedis != st0.FromRedis {
			t.Errorf("stats %+v after %+v, want 200 more cold checks", st, st0)
		}
	})

	t.Run("failures on a reach b", func(t *testing.T) {
		// Spraying from addrA through a: the address tier (delay after
		// 3, block at 6) is marked hot at 2 failures.
		for i := range 3 {
			a.l.Failed(ctx, addrA, fmt.Sprintf("spray%d@example.com", i), "x")
		}
		poll(t, "the delay on b", func() bool {
			return b.l.Check(ctx, addrA, "") == delayed(100*time.Millisecond)
		})
		for i := 3; i < 6; i++ {
			a.l.Failed(ctx, addrA, fmt.Sprintf("spray%d@example.com", i), "x")
		}
		want(t, b.l, addrA, "someone@example.com", blocked)
		// Guessing carol's password from addrK: the user_ip tier (delay
		// after 2) is marked hot at the first failure.
		u := "carol@example.com"
		a.l.Failed(ctx, addrK, u, "guess 1")
		a.l.Failed(ctx, addrK, u, "guess 2")
		poll(t, "the user's delay on b", func() bool {
			return b.l.Check(ctx, addrK, u) == delayed(100*time.Millisecond)
		})
		// Others stay cold on b.
		st0 := b.l.Stats()
		want(t, b.l, addrB, "dave@example.com", pass)
		if st := b.l.Stats(); st.Cold != st0.Cold+1 {
			t.Errorf("a cold login after the attacks: stats %+v, want one more cold", st)
		}
	})

	t.Run("a proxy that starts later learns at resync", func(t *testing.T) {
		c := newHotProxy(t, r.Addr, "c", testConfig())
		c.run(t) // Cold() true: resynced
		if c.f.Cold("ip "+netip.PrefixFrom(addrA, 32).String()) || c.f.Cold("user carol@example.com") {
			t.Fatal("c does not know the keys marked before it started")
		}
		want(t, c.l, addrA, "", blocked)
	})

	t.Run("expiry", func(t *testing.T) {
		key := "user erin@example.com"
		a.f.MarkHot(key, time.Now().Add(400*time.Millisecond))
		poll(t, "the mark on b", func() bool { return !b.f.Cold(key) })
		before := evalCalls(t, rdb)
		want(t, b.l, addrB, "erin@example.com", pass)
		if evalCalls(t, rdb) == before {
			t.Error("a hot user's check made no script call")
		}
		poll(t, "the mark's expiry", func() bool { return b.f.Cold(key) })
		before = evalCalls(t, rdb)
		want(t, b.l, addrB, "erin@example.com", pass)
		if n := evalCalls(t, rdb) - before; n != 0 {
			t.Errorf("%d script calls once the mark expired, want 0", n)
		}
	})

	t.Run("overflow", func(t *testing.T) {
		until := float64(time.Now().Add(time.Hour).UnixMilli())
		zs := make([]redis.Z, fleet.MaxHot+1)
		for i := range zs {
			zs[i] = redis.Z{Score: until, Member: fmt.Sprintf("ip 198.18.%d.%d/32", i/256, i%256)}
		}
		if err := rdb.ZAdd(ctx, "portico:hot", zs...).Err(); err != nil {
			t.Fatal(err)
		}
		poll(t, "overflow on b", func() bool { return b.f.Stats().HotOverflow })
		st0 := b.l.Stats()
		want(t, b.l, addrB, "bob@example.com", pass)
		if st := b.l.Stats(); st.FromRedis != st0.FromRedis+1 {
			t.Errorf("overflowed: stats %+v, want the check from Redis", st)
		}
		for i := range zs {
			zs[i].Score = 1 // long past: the next resync ignores them
		}
		if err := rdb.ZAdd(ctx, "portico:hot", zs...).Err(); err != nil {
			t.Fatal(err)
		}
		poll(t, "the end of the overflow", func() bool { return !b.f.Stats().HotOverflow && b.f.Cold() })
		st0 = b.l.Stats()
		want(t, b.l, addrB, "bob@example.com", pass)
		if st := b.l.Stats(); st.Cold != st0.Cold+1 {
			t.Errorf("after the overflow: stats %+v, want a cold check", st)
		}
	})

	t.Run("control channel down", func(t *testing.T) {
		b.stop()
		st0 := b.l.Stats()
		want(t, b.l, addrB, "bob@example.com", pass)
		if st := b.l.Stats(); st.FromRedis != st0.FromRedis+1 {
			t.Errorf("fleet stopped: stats %+v, want the check from Redis", st)
		}
	})
}

// TestHotRecorded: a cold check says Recorded as a Redis one would, from
// what this proxy's checks and success writes learnt; a failure there
// makes the next success write again.
func TestHotRecorded(t *testing.T) {
	r := testsrv.StartRedis(t)
	p := newHotProxy(t, r.Addr, "p", testConfig())
	p.run(t)
	u := "alice@example.com"
	v := p.l.Check(ctx, addrK, u)
	if v.Recorded {
		t.Fatalf("never seen, Recorded: %+v", v)
	}
	p.l.Succeeded(addrK, u, v)
	poll(t, "the success's write", func() bool {
		p.l.known.mu.Lock()
		defer p.l.known.mu.Unlock()
		return len(p.l.known.m) == 1
	})
	st0 := p.l.Stats()
	if v := p.l.Check(ctx, addrK, u); !v.Recorded {
		t.Fatalf("after a success, a cold check is not Recorded: %+v", v)
	}
	if st := p.l.Stats(); st.Cold != st0.Cold+1 {
		t.Fatalf("stats %+v, want a cold check", st)
	}
	p.l.Failed(ctx, addrK, u, "typo")
	if v := p.l.Check(ctx, addrK, u); v.Recorded {
		t.Fatalf("after a failure, Recorded: %+v", v)
	}
	if v := p.l.Check(ctx, addrA, u); v.Recorded {
		t.Fatalf("unknown address Recorded: %+v", v)
	}
}

// TestHotSessionsCount: a cold check counts the user's sessions through
// CountSessions only when SessionsCold says they need a read; otherwise
// it answers 0, counted, with nothing queued.
func TestHotSessionsCount(t *testing.T) {
	r := testsrv.StartRedis(t)
	p := newHotProxy(t, r.Addr, "p", testConfig())
	queued := 0
	p.l.CountSessions = func(pipe redis.Pipeliner, user string) func(context.Context) (int, error) {
		queued++
		return func(context.Context) (int, error) { return 7, nil }
	}
	crowded := map[string]bool{"bob@example.com": true}
	p.l.SessionsCold = func(user string) bool { return !crowded[user] }
	p.run(t)
	if v := p.l.Check(ctx, addrK, "alice@example.com"); !v.SessionsCounted || v.Sessions != 0 || queued != 0 {
		t.Errorf("cold user: %+v, %d counts queued; want 0 sessions counted, none queued", v, queued)
	}
	if v := p.l.Check(ctx, addrK, "bob@example.com"); !v.SessionsCounted || v.Sessions != 7 || queued != 1 {
		t.Errorf("crowded user: %+v, %d counts queued; want 7 sessions counted, one queued", v, queued)
	}
	if st := p.l.Stats(); st.FromRedis != 0 {
		t.Errorf("stats %+v: want every check cold", st)
	}
}
