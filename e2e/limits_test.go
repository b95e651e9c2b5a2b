package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/app"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// recordingLimiter passes everything to the server's real limiter and
// notes its verdicts per client address.
type recordingLimiter struct {
	next proxy.LoginLimiter

	mu       sync.Mutex
	checks   map[netip.Addr]int
	blocked  map[netip.Addr]int
	maxDelay map[netip.Addr]time.Duration
	longest  time.Duration // the longest Check
}

func newRecordingLimiter(next proxy.LoginLimiter) *recordingLimiter {
	return &recordingLimiter{next: next, checks: map[netip.Addr]int{}, blocked: map[netip.Addr]int{}, maxDelay: map[netip.Addr]time.Duration{}}
}

func (r *recordingLimiter) Check(ctx context.Context, client netip.Addr, user string) proxy.LimitVerdict {
	start := time.Now()
	v := r.next.Check(ctx, client, user)
	took := time.Since(start)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.longest = max(r.longest, took)
	r.checks[client]++
	if v.Block {
		r.blocked[client]++
	}
	r.maxDelay[client] = max(r.maxDelay[client], v.Delay)
	return v
}

func (r *recordingLimiter) Failed(ctx context.Context, client netip.Addr, user, password string) {
	r.next.Failed(ctx, client, user, password)
}

func (r *recordingLimiter) Succeeded(client netip.Addr, user string, v proxy.LimitVerdict) {
	r.next.Succeeded(client, user, v)
}

// limitsEnv is a Portico assembled from a config by internal/app, as the
// binary does, with the brute-force limits on Redis, in front of one
// Dovecot that logs the passwords it is given (test passwords only), so
// that its log tells which attempts reached it.
type limitsEnv struct {
	redis    *testsrv.Redis
	rt       *app.App
	rdb      redis.UniversalClient
	dovecot  *testsrv.Dovecot
	addr     string // cleartext login from loopback, to spend the CPU on logins
	limiter  *recordingLimiter
	logs     *testsrv.Buffer
	mu       sync.Mutex
	sent     map[string]bool // passwords Portico passed to Dovecot
	backends atomic.Int64
}

func newLimitsEnv(t *testing.T, users map[string]string, limitsYAML string) *limitsEnv {
	t.Helper()
	r := testsrv.StartRedis(t)
	e := &limitsEnv{redis: r, logs: &testsrv.Buffer{}, sent: map[string]bool{}}
	// Dovecot's own auth penalty (up to 15 s per failure from an address)
	// is off: Portico's limits are under test, at the pace of an attack;
	// imap-login runs in high-performance mode (a few processes serve
	// every connection), as a large installation would.
	d := testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: users, Extra: `auth_verbose_passwords = plain
service imap-login {
  service_count = 0
  process_min_avail = 2
}
` + dovecotNoAuthPenalty})
	dir := t.TempDir()
	_, certFile, keyFile := testcert.Files(t, dir, "localhost", "127.0.0.1")
	var static strings.Builder
	for u := range users {
		fmt.Fprintf(&static, "    - {user: %q, backend: dovecot}\n", u)
	}
	cfg, err := config.Parse([]byte(`
listeners:
  - {mode: imap, address: "127.0.0.1:0", cleartext_login_networks: [127.0.0.0/8]}
tls:
  certificates:
    - {cert_file: `+certFile+`, key_file: `+keyFile+`}
limits:
`+limitsYAML+`
routing:
  static:
`+static.String()+`  redis: {addrs: ["`+r.Addr+`"]}
  health: {disabled: true}
  lookup_timeout: 500ms
backends:
  - {name: dovecot, address: "`+d.Addr+`", forward_id: true}
`), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e.dovecot = d
	t.Cleanup(func() {
		for pw := range users {
			if strings.Contains(e.logs.String(), users[pw]) {
				t.Errorf("a password reached Portico's log")
			}
		}
	})
	logger := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var addrs []string
	e.rt, addrs = startApp(t, cfg, logger, func(srv *proxy.Server) {
		e.limiter = newRecordingLimiter(srv.Limiter)
		srv.Limiter = e.limiter
		next := srv.Login
		srv.Login = func(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error) {
			e.backends.Add(1)
			e.mu.Lock()
			e.sent[cred.Secret] = true
			e.mu.Unlock()
			return next(ctx, b, cred, id)
		}
	})
	e.addr = addrs[0]
	e.rdb = e.rt.Redis
	return e
}

// limitsConn is an IMAP client from a chosen loopback address that
// returns errors instead of failing, for any goroutine.
type limitsConn struct {
	conn net.Conn
	br   *bufio.Reader
	n    int
}

func dialFrom(addr, from string) (*limitsConn, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	lc := &limitsConn{conn: c, br: bufio.NewReader(c)}
	if g, err := lc.br.ReadString('\n'); err != nil || !strings.HasPrefix(g, "* OK ") {
		c.Close()
		return nil, fmt.Errorf("greeting %q: %v", g, err)
	}
	return lc, nil
}

// login sends LOGIN and returns the tagged reply; bye is set when the
// server said BYE (too many failures on this connection).
func (c *limitsConn) login(user, pass string) (reply string, bye bool, err error) {
	c.n++
	tag := fmt.Sprintf("a%d", c.n)
	if _, err := fmt.Fprintf(c.conn, "%s LOGIN %q %q\r\n", tag, user, pass); err != nil {
		return "", false, err
	}
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			return reply, bye, err
		}
		l = strings.TrimRight(l, "\r\n")
		switch {
		case strings.HasPrefix(l, tag+" "):
			reply = strings.TrimPrefix(l, tag+" ")
			if strings.HasPrefix(reply, "NO") {
				// A BYE follows at once when that was the last failure
				// the connection may have.
				c.conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				if b, err := c.br.ReadString('\n'); err == nil && strings.HasPrefix(b, "* BYE") {
					bye = true
				}
				c.conn.SetDeadline(time.Now().Add(60 * time.Second))
			}
			return reply, bye, nil
		case strings.HasPrefix(l, "* BYE"):
			bye = true
		}
	}
}

func (c *limitsConn) close() {
	io.WriteString(c.conn, "z LOGOUT\r\n")
	c.conn.Close()
}

// TestBruteForceLoad: 10,000 failed logins from 50 addresses, spread
// over 20 users (the real user among them), against Portico with the
// default brute-force thresholds in front of Dovecot; meanwhile the real
// user logs in again and again from an address known from a login
// before the attack, never delayed or refused. Afterwards: Dovecot saw
// exactly the attempts Portico let through, none of the blocked ones and
// at most ip.block_after from each attacking address; a stranger with
// the real user's password is refused without Dovecot hearing of it; and
// Redis holds no password, nor an unsalted hash of one, in any key or
// value. Delays are scaled down (2 ms doubling to 50 ms) to keep the
// test short; thresholds, windows and blocks are the defaults.
func TestBruteForceLoad(t *testing.T) {
	const (
		attackers = 50
		attempts  = 10_000
		realUser  = "alice@example.test"
		realPass  = "alice-real-password"
		realAddr  = "127.0.0.200"
		stranger  = "127.0.0.201"
	)
	users := map[string]string{realUser: realPass}
	var names []string
	for i := range 19 {
		u := fmt.Sprintf("user%02d@example.test", i)
		users[u] = fmt.Sprintf("pw-of-user%02d", i)
		names = append(names, u)
	}
	names = append(names, realUser)
	e := newLimitsEnv(t, users, `  auth_failure_delay: 5ms
  max_auth_failures: 10
  brute_force:
    delay: 2ms
    max_delay: 50ms
    password_hash_key: "load-test-key-0123456789abcdef"
`)
	ipBlockAfter := e.rt.Limiter.Config().IP.BlockAfter

	realLogin := func() (time.Duration, error) {
		start := time.Now()
		c, err := dialFrom(e.addr, realAddr)
		if err != nil {
			return 0, err
		}
		defer c.close()
		r, _, err := c.login(realUser, realPass)
		if err != nil {
			return 0, err
		}
		if !strings.HasPrefix(r, "OK") {
			return 0, fmt.Errorf("real user's login: %q", r)
		}
		return time.Since(start), nil
	}
	// The real user's address becomes known.
	if _, err := realLogin(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the success's write is not waited for

	e.rdb.ConfigResetStat(context.Background())
	var passwords []string
	for w := range attackers {
		for j := range attempts / attackers {
			passwords = append(passwords, fmt.Sprintf("Guess%02dx%04d", w, j))
		}
	}

	// The real user, every 100 ms during the attack.
	start := time.Now()
	stop := make(chan struct{})
	var realTimes []time.Duration
	var realErr error
	var realWG sync.WaitGroup
	realWG.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			d, err := realLogin()
			if err != nil {
				realErr = err
				return
			}
			realTimes = append(realTimes, d)
		}
	})

	var wg sync.WaitGroup
	var answered, failedAnswers, connections atomic.Int64
	errs := make(chan error, attackers)
	for w := range attackers {
		from := fmt.Sprintf("127.0.0.%d", 10+w)
		wg.Go(func() {
			var c *limitsConn
			defer func() {
				if c != nil {
					c.close()
				}
			}()
			for j := range attempts / attackers {
				if c == nil {
					var err error
					if c, err = dialFrom(e.addr, from); err != nil {
						errs <- err
						return
					}
					connections.Add(1)
				}
				user := names[(w*7+j)%len(names)]
				r, bye, err := c.login(user, passwords[w*(attempts/attackers)+j])
				if err != nil {
					errs <- fmt.Errorf("%s attempt %d: %w", from, j, err)
					return
				}
				answered.Add(1)
				if r == "NO [AUTHENTICATIONFAILED] Authentication failed" {
					failedAnswers.Add(1)
				} else {
					errs <- fmt.Errorf("%s: %q", from, r)
					return
				}
				if bye {
					c.conn.Close()
					c = nil
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	realWG.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if realErr != nil {
		t.Fatalf("the real user: %v", realErr)
	}
	if failedAnswers.Load() != attempts {
		t.Fatalf("%d of %d attempts answered as failures", failedAnswers.Load(), attempts)
	}

	// The real user: never delayed, never refused, logged in quickly.
	var slowest, total time.Duration
	for _, d := range realTimes {
		slowest = max(slowest, d)
		total += d
	}
	realIP := netip.MustParseAddr(realAddr)
	e.limiter.mu.Lock()
	realDelay, realBlocked := e.limiter.maxDelay[realIP], e.limiter.blocked[realIP]
	var blocked int
	for a, n := range e.limiter.blocked {
		if a != realIP {
			blocked += n
		}
	}
	e.limiter.mu.Unlock()
	if len(realTimes) < 5 || realDelay != 0 || realBlocked != 0 || slowest > time.Second {
		t.Errorf("real user: %d logins, slowest %v, delay %v, blocked %d", len(realTimes), slowest, realDelay, realBlocked)
	}

	// A stranger with alice's right password: alice's account is under
	// attack, the address unknown: refused, Dovecot not asked.
	before := e.backends.Load()
	c, err := dialFrom(e.addr, stranger)
	if err != nil {
		t.Fatal(err)
	}
	if r, _, err := c.login(realUser, realPass); err != nil || r != "NO [AUTHENTICATIONFAILED] Authentication failed" {
		t.Errorf("stranger with the right password: %q, %v", r, err)
	}
	c.close()
	if e.backends.Load() != before {
		t.Errorf("the stranger's login reached Dovecot")
	}

	// Redis commands, counted before the stranger.
	stats := commandStats(t, e.rdb)
	st := e.rt.Limiter.Stats()

	// Dovecot's log: the given passwords, and the addresses.
	time.Sleep(500 * time.Millisecond) // the log is written asynchronously
	log := e.dovecot.Log()
	given := regexp.MustCompile(`passwd-file\([^,]*,([0-9.]+),[^)]*\): Password mismatch \(given password: (\S+)\)`).FindAllStringSubmatch(log, -1)
	seen := map[string]bool{}
	perAddr := map[string]int{}
	for _, m := range given {
		seen[m[2]] = true
		perAddr[m[1]]++
	}
	e.mu.Lock()
	sent := len(e.sent)
	var lost, leaked int
	for pw := range e.sent {
		if pw != realPass && !seen[pw] {
			lost++
		}
	}
	for pw := range seen {
		if !e.sent[pw] {
			leaked++
		}
	}
	e.mu.Unlock()
	reached := len(seen)
	if lost != 0 || leaked != 0 {
		t.Errorf("Portico passed %d passwords to Dovecot, Dovecot logged %d: %d missing from its log, %d it saw but Portico did not send", sent, reached, lost, leaked)
	}
	if reached+blocked != attempts {
		t.Errorf("%d attempts reached Dovecot and %d were blocked: %d, not %d", reached, blocked, reached+blocked, attempts)
	}
	for a, n := range perAddr {
		if n > ipBlockAfter {
			t.Errorf("Dovecot saw %d attempts from %s, past ip.block_after %d", n, a, ipBlockAfter)
		}
	}
	if strings.Contains(log, "given password: "+realPass) || strings.Contains(log, "rip="+stranger) || strings.Contains(log, ","+stranger+",") {
		t.Errorf("Dovecot saw the stranger's attempt")
	}

	// Redis: no password, no unsalted hash, in any key or value.
	dump := testsrv.DumpRedis(t, e.rdb)
	if !strings.Contains(dump, "bf:pw:{alice@example.test}") {
		t.Errorf("no wrong-password hashes in Redis:\n%.2000s", dump)
	}
	if f := findSecrets(dump, append(passwords, realPass)); f != "" {
		t.Errorf("Redis holds %s", f)
	}

	evalsha := stats["evalsha"] + stats["eval"]
	var all int64
	for _, n := range stats {
		all += n
	}
	limitLines := strings.Count(e.logs.String(), `msg="login blocked"`) + strings.Count(e.logs.String(), `msg="login delayed"`) + strings.Count(e.logs.String(), `msg="login limit reached`)
	most := 0
	for _, n := range perAddr {
		most = max(most, n)
	}
	t.Logf("%d attempts from %d addresses over %d connections in %v (%.0f/s); %d reached Dovecot (at most %d from one address; ip.block_after is %d), %d blocked unverified; limiter: %+v",
		attempts, attackers, connections.Load(), elapsed.Round(time.Millisecond), float64(attempts)/elapsed.Seconds(), reached, most, ipBlockAfter, blocked, st)
	t.Logf("real user: %d logins during the attack, mean %v, slowest %v, delay 0", len(realTimes), (total / time.Duration(max(len(realTimes), 1))).Round(time.Millisecond), slowest.Round(time.Millisecond))
	logins := float64(attempts + len(realTimes))
	t.Logf("Redis: %d EVALSHA/EVAL for %d logins (%.2f per login: check 2, failure +2, success +1), %d commands counting those run by scripts and the session registry (%.1f per login); by command: %v",
		evalsha, int(logins), float64(evalsha)/logins, all, float64(all)/logins, stats)
	if strings.Contains(e.logs.String(), "Guess") {
		t.Errorf("an attacker's password reached Portico's log")
	}
	t.Logf("limiter log lines: %d (each limit at most once per minute per address, user, or both)", limitLines)
	if limitLines > attackers+len(names)+attackers*len(names) {
		t.Errorf("%d limiter log lines", limitLines)
	}
}

// commandStats returns INFO commandstats' calls per command.
func commandStats(t *testing.T, rdb redis.UniversalClient) map[string]int64 {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, l := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(l), ":calls=")
		if !ok {
			continue
		}
		var n int64
		fmt.Sscan(strings.SplitN(rest, ",", 2)[0], &n)
		out[strings.TrimPrefix(name, "cmdstat_")] = n
	}
	return out
}

// findSecrets names the first password, or unsalted hash of one (MD5,
// SHA-1, SHA-256, SHA-512; hex, its first 16 digits, or base64), among
// the words of dump.
func findSecrets(dump string, passwords []string) string {
	words := map[string]bool{}
	for _, w := range regexp.MustCompile(`[A-Za-z0-9+/=_-]+`).FindAllString(dump, -1) {
		words[w] = true
		words[strings.ToLower(w)] = true
	}
	for _, pw := range passwords {
		if words[pw] {
			return fmt.Sprintf("the password %q", pw)
		}
		for _, h := range testsrv.UnsaltedHashes(pw) {
			if words[h.Form] {
				return fmt.Sprintf("the %s of %q (%s)", h.Name, pw, h.Form)
			}
		}
	}
	return ""
}

// TestBruteForceRedisDown: with Redis hanging, the limiter answers
// within routing.lookup_timeout, and at once for the next logins:
// failing open the login goes on (static route, this proxy's own
// counters), failing closed it gets NO [UNAVAILABLE].
func TestBruteForceRedisDown(t *testing.T) {
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			const user, pass = "alice@example.test", "alice-pw"
			e := newLimitsEnv(t, map[string]string{user: pass}, "  brute_force: {on_redis_error: "+mode+"}\n")
			syscall.Kill(e.redis.Pid(), syscall.SIGSTOP)
			defer syscall.Kill(e.redis.Pid(), syscall.SIGCONT)
			want := "OK"
			if mode == "closed" {
				want = "NO [UNAVAILABLE]"
			}
			for i := range 3 {
				start := time.Now()
				c, err := dialFrom(e.addr, clientIP)
				if err != nil {
					t.Fatal(err)
				}
				r, _, err := c.login(user, pass)
				c.close()
				d := time.Since(start)
				if err != nil || !strings.HasPrefix(r, want) {
					t.Fatalf("login %d with Redis hanging: %q, %v", i, r, err)
				}
				e.limiter.mu.Lock()
				longest := e.limiter.longest
				e.limiter.longest = 0
				e.limiter.mu.Unlock()
				limit := 500*time.Millisecond + 100*time.Millisecond // lookup_timeout
				if i > 0 {
					limit = 50 * time.Millisecond // Redis is left alone a second
				}
				if longest > limit {
					t.Errorf("login %d: the limiter answered after %v", i, longest)
				}
				// The session registry's own Redis reads wait too when the
				// login goes on (fail open).
				if d > 3*time.Second {
					t.Errorf("login %d answered after %v", i, d)
				}
				t.Logf("login %d with Redis hanging: %q after %v, of which the limiter %v", i, r[:min(len(r), 16)], d.Round(time.Millisecond), longest.Round(time.Millisecond))
			}
		})
	}
}
