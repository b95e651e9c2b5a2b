package limits

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
)

var ctx = context.Background()

// testConfig has small, distinct thresholds and a long window, so that
// counts barely drain during a test.
func testConfig() Config {
	return Config{
		IP:       Tier{DelayAfter: 3, BlockAfter: 6, Window: time.Hour, BlockFor: time.Hour},
		UserIP:   Tier{DelayAfter: 2, BlockAfter: 4, Window: time.Hour, BlockFor: time.Hour},
		User:     Tier{DelayAfter: 5, BlockAfter: 8, Window: time.Hour, BlockFor: time.Hour},
		Delay:    100 * time.Millisecond,
		MaxDelay: time.Second,
		HashKey:  []byte("test key, long enough to be a key"),
	}
}

// store is a way to keep the counters: in memory, or in Redis (a
// standalone server or a Cluster).
type store struct {
	name string
	rdb  func(t *testing.T) redis.UniversalClient // nil: memory
}

var stores = []store{
	{"memory", nil},
	{"redis", func(t *testing.T) redis.UniversalClient {
		r := testsrv.StartRedis(t)
		rdb := routing.NewRedisClient(routing.RedisOptions{Addrs: []string{r.Addr}})
		t.Cleanup(func() { rdb.Close() })
		return rdb
	}},
	{"cluster", func(t *testing.T) redis.UniversalClient {
		c := testsrv.StartRedisCluster(t, 3)
		rdb := routing.NewRedisClient(routing.RedisOptions{Addrs: c.Addrs})
		t.Cleanup(func() { rdb.Close() })
		return rdb
	}},
}

func (s store) limiter(t *testing.T, cfg Config, logs *bytes.Buffer) *Limiter {
	var rdb redis.UniversalClient
	if s.rdb != nil {
		rdb = s.rdb(t)
	}
	var w bytes.Buffer
	if logs == nil {
		logs = &w
	}
	return New(cfg, rdb, "", slog.New(slog.NewTextHandler(logs, nil)))
}

var (
	addrA = netip.MustParseAddr("192.0.2.1")
	addrB = netip.MustParseAddr("192.0.2.2")
	addrK = netip.MustParseAddr("198.51.100.7")
)

func want(t *testing.T, l *Limiter, client netip.Addr, user string, v proxy.LimitVerdict) {
	t.Helper()
	got := l.Check(ctx, client, user)
	// What the verdict says besides its decision has tests of its own.
	got.Recorded, got.Sessions, got.SessionsCounted = false, 0, false
	if got != v {
		t.Fatalf("Check(%s, %q) = %+v, want %+v", client, user, got, v)
	}
}

var (
	pass    = proxy.LimitVerdict{}
	blocked = proxy.LimitVerdict{Block: true}
)

func delayed(d time.Duration) proxy.LimitVerdict { return proxy.LimitVerdict{Delay: d} }

// TestTiers drives each tier to its delays and its block, with every
// store: the Lua scripts and the in-memory counters must agree.
func TestTiers(t *testing.T) {
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) {
			l := s.limiter(t, testConfig(), nil)
			t.Run("ip", func(t *testing.T) {
				// Spraying: a new user per attempt, so that only the
				// address tier counts up.
				for i := range 6 {
					switch {
					case i < 3:
						want(t, l, addrA, "", pass)
					default:
						want(t, l, addrA, "", delayed(100*time.Millisecond<<(i-3)))
					}
					l.Failed(ctx, addrA, fmt.Sprintf("spray%d@example.com", i), "Summer2024!")
				}
				want(t, l, addrA, "someone@example.com", blocked)
				want(t, l, addrB, "someone@example.com", pass)
			})
			t.Run("user_ip and repeats", func(t *testing.T) {
				u := "carol@example.com"
				// The same wrong password, over and over: counted once.
				for range 20 {
					l.Failed(ctx, addrB, u, "old saved password")
				}
				want(t, l, addrB, u, pass)
				l.Failed(ctx, addrB, u, "guess 2")
				want(t, l, addrB, u, delayed(100*time.Millisecond))
				l.Failed(ctx, addrB, u, "guess 3")
				want(t, l, addrB, u, delayed(200*time.Millisecond))
				l.Failed(ctx, addrB, u, "old saved password") // still a repeat
				l.Failed(ctx, addrB, u, "guess 4")
				want(t, l, addrB, u, blocked)
				// Carol from elsewhere, and others from B, go on (B's
				// four distinct failures delay them a little).
				want(t, l, addrK, u, pass)
				want(t, l, addrB, "dave@example.com", delayed(200*time.Millisecond))
			})
			t.Run("user and known addresses", func(t *testing.T) {
				u := "alice@example.com"
				l.Succeeded(addrK, u, proxy.LimitVerdict{})
				time.Sleep(100 * time.Millisecond) // the success's write is not waited for
				// A distributed attack on alice: one guess per address.
				for i := range 8 {
					a := netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)})
					l.Failed(ctx, a, u, fmt.Sprintf("guess %d", i))
				}
				stranger := netip.MustParseAddr("203.0.113.200")
				want(t, l, stranger, u, blocked)
				want(t, l, stranger, "bob@example.com", pass)
				// The real user, from a known address: no delay, no block.
				want(t, l, addrK, u, pass)
				// A known address is not exempt from user_ip: mistyping
				// there still counts, and a success resets it.
				for i := range 2 {
					l.Failed(ctx, addrK, u, fmt.Sprintf("typo %d", i))
				}
				want(t, l, addrK, u, delayed(100*time.Millisecond))
				l.Succeeded(addrK, u, proxy.LimitVerdict{})
				time.Sleep(100 * time.Millisecond)
				want(t, l, addrK, u, pass)
			})
			t.Run("ipv6 prefix", func(t *testing.T) {
				a1 := netip.MustParseAddr("2001:db8:1:2::1")
				a2 := netip.MustParseAddr("2001:db8:1:2:ffff::9")
				other := netip.MustParseAddr("2001:db8:1:3::1")
				for i := range 6 {
					a := a1
					if i%2 == 1 {
						a = a2
					}
					l.Failed(ctx, a, fmt.Sprintf("v6spray%d@example.com", i), "x")
				}
				want(t, l, a2, "", blocked)
				want(t, l, other, "", pass)
			})
			t.Run("stats", func(t *testing.T) {
				st := l.Stats()
				if st.Repeats < 20 || st.Blocked < 4 || st.Delayed < 4 || st.Successes != 2 {
					t.Errorf("stats = %+v", st)
				}
			})
		})
	}
}

// TestRecorded: a login from an address known recently enough, with no
// failures against it, is Recorded (its success is not written again);
// a failure there, or an expiry grown old, makes the next success write.
func TestRecorded(t *testing.T) {
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.KnownAddressTTL = 4 * time.Second // written again 0.4 s after a success
			l := s.limiter(t, cfg, nil)
			u := "alice@example.com"
			recorded := func(want bool) {
				t.Helper()
				if v := l.Check(ctx, addrK, u); v.Recorded != want {
					t.Fatalf("Check: %+v, want Recorded %v", v, want)
				}
			}
			recorded(false) // never seen
			l.Succeeded(addrK, u, proxy.LimitVerdict{})
			time.Sleep(100 * time.Millisecond) // the write is not waited for
			recorded(true)
			l.Failed(ctx, addrK, u, "typo")
			v := l.Check(ctx, addrK, u)
			if v.Recorded {
				t.Fatalf("Check after a failure: %+v, want a write", v)
			}
			l.Succeeded(addrK, u, v) // resets the failure
			time.Sleep(100 * time.Millisecond)
			recorded(true)
			time.Sleep(600 * time.Millisecond)
			recorded(false) // time to refresh the expiry
			if l.Check(ctx, addrA, u).Recorded {
				t.Fatal("an unknown address is Recorded")
			}
		})
	}
}

// TestCountSessions: with CountSessions set, a check with Redis counts the
// user's sessions in its own round trip.
func TestCountSessions(t *testing.T) {
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) {
			l := s.limiter(t, testConfig(), nil)
			var rdb redis.UniversalClient
			if l.redis != nil {
				rdb = l.redis.rdb
			}
			l.CountSessions = func(pipe redis.Pipeliner, user string) func(context.Context) (int, error) {
				cmd := pipe.ZCard(ctx, "test:sessions:{"+user+"}")
				return func(context.Context) (int, error) {
					n, err := cmd.Result()
					return int(n), err
				}
			}
			u := "alice@example.com"
			if rdb != nil {
				if err := rdb.ZAdd(ctx, "test:sessions:{"+u+"}", redis.Z{Member: "a"}, redis.Z{Member: "b"}, redis.Z{Member: "c"}).Err(); err != nil {
					t.Fatal(err)
				}
			}
			v := l.Check(ctx, addrA, u)
			if want := rdb != nil; v.SessionsCounted != want || (want && v.Sessions != 3) {
				t.Fatalf("Check: %+v, want sessions counted %v (3)", v, want)
			}
			if v := l.Check(ctx, addrA, ""); v.SessionsCounted {
				t.Fatalf("Check without a user counted sessions: %+v", v)
			}
		})
	}
}

// TestBlockEnds: a block lasts BlockFor, and a count that has not
// drained meanwhile delays the next attempts and blocks again at the next
// failure. Blocked attempts are not counted.
func TestBlockEnds(t *testing.T) {
	for _, s := range stores[:2] {
		t.Run(s.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.IP = Tier{DelayAfter: 2, BlockAfter: 3, Window: time.Hour, BlockFor: 700 * time.Millisecond}
			l := s.limiter(t, cfg, nil)
			for i := range 3 {
				l.Failed(ctx, addrA, fmt.Sprintf("u%d@example.com", i), "x")
			}
			want(t, l, addrA, "", blocked)
			time.Sleep(800 * time.Millisecond)
			want(t, l, addrA, "", delayed(200*time.Millisecond))
			l.Failed(ctx, addrA, "u9@example.com", "x")
			want(t, l, addrA, "", blocked)
		})
	}
}

// TestDrain: counters forget BlockAfter failures per Window.
func TestDrain(t *testing.T) {
	for _, s := range stores[:2] {
		t.Run(s.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.IP = Tier{DelayAfter: 2, BlockAfter: 10, Window: 2 * time.Second, BlockFor: time.Hour} // 5 per second
			l := s.limiter(t, cfg, nil)
			for i := range 4 {
				l.Failed(ctx, addrA, fmt.Sprintf("u%d@example.com", i), "x")
			}
			if v := l.Check(ctx, addrA, ""); v.Delay == 0 {
				t.Fatalf("no delay after 4 failures: %+v", v)
			}
			time.Sleep(time.Second)
			want(t, l, addrA, "", pass)
		})
	}
}

// TestTrusted: trusted networks are neither counted nor limited.
func TestTrusted(t *testing.T) {
	cfg := testConfig()
	cfg.Trusted = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	l := stores[0].limiter(t, cfg, nil)
	for i := range 50 {
		l.Failed(ctx, addrA, "alice@example.com", fmt.Sprint(i))
	}
	want(t, l, addrA, "alice@example.com", pass)
	want(t, l, addrK, "alice@example.com", pass)
	if st := l.Stats(); st.Failures != 0 || st.Checks != 1 {
		t.Errorf("stats = %+v", st)
	}
}

// TestLogOnce: a limit is logged once per interval and subject, however
// many attempts it stops.
func TestLogOnce(t *testing.T) {
	var logs bytes.Buffer
	cfg := testConfig()
	cfg.LogInterval = time.Hour
	l := stores[0].limiter(t, cfg, &logs)
	for i := range 6 {
		l.Failed(ctx, addrA, fmt.Sprintf("u%d@example.com", i), "x")
	}
	for range 100 {
		l.Check(ctx, addrA, "x@example.com")
		l.Check(ctx, addrA, "y@example.com")
	}
	out := logs.String()
	if n := strings.Count(out, `msg="login blocked"`); n != 1 {
		t.Errorf("%d block lines:\n%s", n, out)
	}
	if n := strings.Count(out, `msg="login limit reached: blocking" limit=ip client=192.0.2.1/32`); n != 1 {
		t.Errorf("%d lines for the start of the block:\n%s", n, out)
	}
	if n := strings.Count(out, `msg="login delayed"`); n > 3 {
		t.Errorf("%d delay lines:\n%s", n, out)
	}

	// Blocks from many addresses at once: at most maxLogLines a minute.
	logs.Reset()
	for i := range 3 * maxLogLines {
		a := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		for j := range 6 {
			l.Failed(ctx, a, fmt.Sprintf("u%d@example.com", j), a.String()) // not a repeat
		}
		l.Check(ctx, a, "x@example.com")
	}
	if n := strings.Count(logs.String(), `msg="login blocked"`); n != maxLogLines-1 { // one above

		t.Errorf("%d block lines for %d addresses", n, 3*maxLogLines)
	}
}

// TestNoSecretsInRedis: after failures and successes, no key or value in
// Redis holds a password, or an unsalted hash of one in any usual form.
func TestNoSecretsInRedis(t *testing.T) {
	r := testsrv.StartRedis(t)
	rdb := routing.NewRedisClient(routing.RedisOptions{Addrs: []string{r.Addr}})
	defer rdb.Close()
	l := New(testConfig(), rdb, "", nil)
	var passwords []string
	for i := range 30 {
		pw := fmt.Sprintf("Secret-%d-ünï", i)
		passwords = append(passwords, pw)
		user := fmt.Sprintf("user%d@example.com", i%5)
		l.Failed(ctx, netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 7)}), user, pw)
		l.Failed(ctx, addrA, user, pw) // and a repeat
	}
	l.Succeeded(addrK, "user1@example.com", proxy.LimitVerdict{})
	time.Sleep(100 * time.Millisecond)
	dump := testsrv.DumpRedis(t, rdb)
	if !strings.Contains(dump, "bf:pw:{user1@example.com}") {
		t.Fatalf("no wrong-password hashes stored:\n%s", dump)
	}
	if f := findSecrets(dump, passwords); f != "" {
		t.Fatalf("Redis holds %s:\n%s", f, dump)
	}
}

// findSecrets names the first password, or unsalted hash of one (MD5,
// SHA-1, SHA-256, SHA-512, hex or base64, or their first 16 hex digits),
// found in dump.
func findSecrets(dump string, passwords []string) string {
	low := strings.ToLower(dump)
	for _, pw := range passwords {
		if strings.Contains(dump, pw) {
			return fmt.Sprintf("the password %q", pw)
		}
		for _, h := range testsrv.UnsaltedHashes(pw) {
			if strings.Contains(low, strings.ToLower(h.Form)) {
				return fmt.Sprintf("the %s of %q (%s)", h.Name, pw, h.Form)
			}
		}
	}
	return ""
}

// TestRedisDown: failing open, the limiter answers at once from this
// proxy's own counters (which saw the failures) while Redis is gone, and
// within the caller's timeout while Redis hangs; failing closed, it
// answers Unavailable. Redis is used again once it is back.
func TestRedisDown(t *testing.T) {
	for _, closed := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail closed %v", closed), func(t *testing.T) {
			r := testsrv.StartRedis(t)
			rdb := routing.NewRedisClient(routing.RedisOptions{Addrs: []string{r.Addr}})
			defer rdb.Close()
			cfg := testConfig()
			cfg.FailClosed = closed
			var logs bytes.Buffer
			l := New(cfg, rdb, "", slog.New(slog.NewTextHandler(&logs, nil)))
			for i := range 6 {
				l.Failed(ctx, addrA, fmt.Sprintf("u%d@example.com", i), "x")
			}
			want(t, l, addrA, "", blocked)

			// Hanging: the first check waits for its context, the next
			// ones do not wait at all.
			syscall.Kill(r.Pid(), syscall.SIGSTOP)
			defer syscall.Kill(r.Pid(), syscall.SIGCONT)
			down := pass
			if closed {
				down = proxy.LimitVerdict{Unavailable: true}
			}
			for i, timeout := range []time.Duration{300 * time.Millisecond, 10 * time.Millisecond} {
				c, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				start := time.Now()
				v := l.Check(c, addrA, "")
				cancel()
				if d := time.Since(start); d > timeout+200*time.Millisecond {
					t.Errorf("check %d answered after %v", i, d)
				}
				if closed && v != down || !closed && v != blocked {
					t.Errorf("check %d with Redis hanging: %+v", i, v)
				}
			}
			want(t, l, addrB, "", down)
			// Failures go on being counted on this proxy.
			for i := range 6 {
				l.Failed(ctx, addrB, fmt.Sprintf("v%d@example.com", i), "x")
			}
			if !closed {
				want(t, l, addrB, "", blocked)
			}
			if !strings.Contains(logs.String(), "Redis unreachable") || strings.Count(logs.String(), "Redis unreachable") != 1 {
				t.Errorf("logs:\n%s", logs.String())
			}

			// Back: Redis decides again (it never saw B's failures).
			syscall.Kill(r.Pid(), syscall.SIGCONT)
			time.Sleep(redisRetry + 100*time.Millisecond)
			deadline := time.Now().Add(5 * time.Second)
			for l.Check(ctx, addrB, "") != pass {
				if time.Now().After(deadline) {
					t.Fatal("Redis not used again")
				}
				time.Sleep(100 * time.Millisecond)
			}
			want(t, l, addrA, "", blocked)
		})
	}
}

// TestScriptFlush: scripts the server lost (a restart, SCRIPT FLUSH) are
// loaded again, in a pipeline too.
func TestScriptFlush(t *testing.T) {
	r := testsrv.StartRedis(t)
	rdb := routing.NewRedisClient(routing.RedisOptions{Addrs: []string{r.Addr}})
	defer rdb.Close()
	l := New(testConfig(), rdb, "", nil)
	for i := range 6 {
		l.Failed(ctx, addrA, "alice@example.com", fmt.Sprint(i))
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	want(t, l, addrA, "alice@example.com", blocked)
	if st := l.Stats(); st.RedisErrors != 0 {
		t.Errorf("stats = %+v", st)
	}
}

// TestAdmin: what portico limits shows and clears.
func TestAdmin(t *testing.T) {
	r := testsrv.StartRedis(t)
	rdb := routing.NewRedisClient(routing.RedisOptions{Addrs: []string{r.Addr}})
	defer rdb.Close()
	l := New(testConfig(), rdb, "", nil)
	u := "alice@example.com"
	l.Succeeded(addrK, u, proxy.LimitVerdict{})
	time.Sleep(100 * time.Millisecond)
	for i := range 6 {
		l.Failed(ctx, addrA, u, fmt.Sprint(i))
	}
	a, err := l.ShowAddr(ctx, "192.0.2.1")
	if err != nil || a.Net.String() != "192.0.2.1/32" || a.Failures < 5.9 || a.BlockedUntil.Before(time.Now().Add(59*time.Minute)) {
		t.Errorf("ShowAddr = %+v, %v", a, err)
	}
	st, err := l.ShowUser(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	pa := netip.MustParsePrefix("192.0.2.1/32")
	if st.Failures < 5.9 || !st.BlockedUntil.IsZero() || st.ByAddr[pa].BlockedUntil.IsZero() || st.WrongPasswords != 6 {
		t.Errorf("ShowUser = %+v", st)
	}
	if exp := st.Known[netip.MustParsePrefix("198.51.100.7/32")]; exp.Before(time.Now().Add(29 * 24 * time.Hour)) {
		t.Errorf("known = %v", st.Known)
	}
	want(t, l, addrA, u, blocked)
	if _, err := l.ClearAddr(ctx, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	want(t, l, addrA, u, blocked) // the user_ip block remains
	want(t, l, addrA, "bob@example.com", pass)
	if err := l.ClearUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	want(t, l, addrA, u, pass)
	if st, _ := l.ShowUser(ctx, u); len(st.Known) != 1 || st.WrongPasswords != 0 || st.Failures != 0 {
		t.Errorf("after clear: %+v", st)
	}
	for _, bad := range []string{"192.0.2.0/24", "2001:db8::/48", "nonsense"} {
		if _, err := l.ShowAddr(ctx, bad); err == nil {
			t.Errorf("ShowAddr(%q) accepted", bad)
		}
	}
	if n, err := l.ParseNet("2001:db8:1:2::/64"); err != nil || n.String() != "2001:db8:1:2::/64" {
		t.Errorf("ParseNet = %v, %v", n, err)
	}
}

// TestMemoryBound: the in-memory counters hold at most MaxEntries
// addresses and users.
func TestMemoryBound(t *testing.T) {
	cfg := testConfig()
	cfg.MaxEntries = 1000
	l := New(cfg, nil, "", nil)
	for i := range 10_000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		l.Failed(ctx, a, fmt.Sprintf("u%d@example.com", i), "x")
	}
	if n, m := len(l.mem.ips), len(l.mem.users); n > 1000 || m > 1000 {
		t.Errorf("%d addresses, %d users kept", n, m)
	}
}
