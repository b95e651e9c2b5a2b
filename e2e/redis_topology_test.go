package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/fleet"
	"github.com/portico-mail/portico/internal/app"
	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// portico is one Portico instance wired the way cmd/portico wires a config
// with Redis (internal/app): a Redis router with pools, the
// route cache, fleet state, passive and active health, the invalidator, and
// the fleet registry with its login gate. The static-route Guard that
// cmd/portico puts in front is left out: it has no routes here.
type portico struct {
	addr   string
	srv    *proxy.Server
	rdb    redis.UniversalClient
	router *routing.Redis
	logs   *testsrv.Buffer
}

type porticoOptions struct {
	redis       routing.RedisOptions // each instance has its own client, as each process would
	backends    []*routing.Backend
	pools       []*routing.Pool
	defaultPool *routing.Pool
	noCache     bool
	id          string        // fleet proxy id
	lookup      time.Duration // routing.lookup_timeout; zero means 2s, the config's default
	quiet       bool          // format log lines but keep none (benchmarks)
}

// serverCert is one self-signed certificate for every instance of the
// process: generating a key per benchmark run would only add noise.
var serverCert struct {
	once  sync.Once
	store *ptls.Store
	roots *x509.CertPool
	err   error
}

func porticoTLS(tb testing.TB) (*ptls.Store, *tls.Config) {
	tb.Helper()
	serverCert.once.Do(func() {
		cert, err := ptls.SelfSigned("localhost", "127.0.0.1")
		if err != nil {
			serverCert.err = err
			return
		}
		serverCert.roots = ptls.CertPool(cert)
		serverCert.store, serverCert.err = ptls.NewStore(cert)
	})
	if serverCert.err != nil {
		tb.Fatal(serverCert.err)
	}
	return serverCert.store, &tls.Config{RootCAs: serverCert.roots, ServerName: "localhost", NextProtos: []string{"imap"}}
}

func startPortico(tb testing.TB, o porticoOptions) *portico {
	tb.Helper()
	store, _ := porticoTLS(tb)
	p := &portico{logs: &testsrv.Buffer{}}
	var w io.Writer = p.logs
	if o.quiet {
		w = io.Discard
	}
	logger := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if o.lookup == 0 {
		o.lookup = 2 * time.Second
	}

	p.rdb = routing.NewRedisClient(o.redis)
	named := make(map[string]*routing.Backend, len(o.backends))
	for _, b := range o.backends {
		named[b.Name] = b
	}
	pools := make(map[string]*routing.Pool, len(o.pools))
	for _, pl := range o.pools {
		pools[pl.Name] = pl
	}
	health := &routing.Health{Logger: logger}
	state := &routing.Fleet{Client: p.rdb}
	var cache *routing.Cache
	if !o.noCache {
		cache = &routing.Cache{}
	}
	p.router = &routing.Redis{
		Client:      p.rdb,
		Backends:    named,
		Defaults:    routing.Backend{ForwardID: true},
		Timeout:     o.lookup,
		Pools:       pools,
		DefaultPool: o.defaultPool,
		Health:      health,
		Fleet:       state,
		Cache:       cache,
	}
	p.srv = &proxy.Server{
		Router:    p.router,
		TLSConfig: ptls.ServerConfig(store, 0),
		Limits:    proxy.Limits{LookupTimeout: o.lookup},
		Logger:    logger,
		Login:     app.ReportHealth(health, nil),
	}
	f := &fleet.Fleet{Client: p.rdb, ProxyID: o.id, Logger: logger}
	app.JoinFleet(p.srv, f)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { health.Run(ctx, o.backends...) })
	wg.Go(func() { f.Run(ctx) })
	inv := &routing.Invalidator{Client: p.rdb, Cache: cache, Fleet: state, Logger: logger}
	wg.Go(func() { inv.Run(ctx) })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	p.addr = ln.Addr().String()
	wg.Go(func() { p.srv.Serve(ln, proxy.Listener{Name: "imaps", Mode: proxy.ImplicitTLS}) })
	tb.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		p.srv.Shutdown(sctx)
		cancel()
		wg.Wait()
		p.rdb.Close()
	})
	return p
}

// imapsConn is a minimal IMAP client over implicit TLS that returns errors
// instead of failing the test, so that any goroutine may use it.
type imapsConn struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialIMAPS connects from clientIP, completes the TLS handshake and reads
// the greeting; deadline bounds everything done on the connection.
func dialIMAPS(addr string, cfg *tls.Config, deadline time.Time) (*imapsConn, error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(deadline)
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	ic := &imapsConn{conn: tc, br: bufio.NewReader(tc)}
	g, err := ic.line()
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(g, "* OK ") {
		tc.Close()
		return nil, fmt.Errorf("greeting: %q", g)
	}
	return ic, nil
}

func (c *imapsConn) line() (string, error) {
	l, err := c.br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read: %w (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n"), nil
}

// cmd sends tag+" "+line and returns the tagged reply, skipping untagged
// ones (a BYE among them is an error unless the command is LOGOUT).
func (c *imapsConn) cmd(tag, line string) (string, error) {
	if _, err := io.WriteString(c.conn, tag+" "+line+"\r\n"); err != nil {
		return "", fmt.Errorf("write %s: %w", strings.Fields(line)[0], err)
	}
	for {
		l, err := c.line()
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(l, tag+" ") {
			return l, nil
		}
		if strings.HasPrefix(l, "* BYE") && !strings.HasPrefix(line, "LOGOUT") {
			return "", fmt.Errorf("unexpected %q", l)
		}
	}
}

func (c *imapsConn) close() { c.conn.Close() }

// expectOK runs a command that must succeed.
func (c *imapsConn) expectOK(tag, line string) error {
	r, err := c.cmd(tag, line)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(r, tag+" OK") {
		return fmt.Errorf("%s: %q", strings.Fields(line)[0], r)
	}
	return nil
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// Outcomes of a login attempt in the failover stream.
const (
	outcomeOK          = "OK"
	outcomeUnavailable = "UNAVAILABLE"
)

type loginAttempt struct {
	start     time.Time
	loginTook time.Duration // LOGIN sent to tagged reply
	outcome   string        // outcomeOK, outcomeUnavailable or the odd reply
	err       error         // anything but a tagged reply: a hang, a reset
}

// fullLogin does TLS, LOGIN, and after an OK, SELECT INBOX and LOGOUT.
func fullLogin(addr string, cfg *tls.Config, user, pass string) loginAttempt {
	a := loginAttempt{start: time.Now()}
	c, err := dialIMAPS(addr, cfg, a.start.Add(15*time.Second))
	if err != nil {
		a.err = err
		return a
	}
	defer c.close()
	sent := time.Now()
	r, err := c.cmd("a", "LOGIN "+quote(user)+" "+quote(pass))
	a.loginTook = time.Since(sent)
	switch {
	case err != nil:
		a.err = fmt.Errorf("LOGIN: %w", err)
		return a
	case strings.HasPrefix(r, "a OK"):
		a.outcome = outcomeOK
	case strings.HasPrefix(r, "a NO [UNAVAILABLE]"):
		a.outcome = outcomeUnavailable
		c.cmd("z", "LOGOUT")
		return a
	default:
		a.outcome = r
		return a
	}
	if err := c.expectOK("b", "SELECT INBOX"); err != nil {
		a.err = err
		return a
	}
	if err := c.expectOK("c", "LOGOUT"); err != nil {
		a.err = err
	}
	return a
}

func userN(i int) string { return fmt.Sprintf("u%d@example.test", i) }
func passN(i int) string { return fmt.Sprintf("pw-%d", i) }

// TestSentinelFailoverDuringLogins runs a stream of logins through Portico
// while Redis Sentinel first promotes the replica (SENTINEL FAILOVER) and
// then loses the new master to a crash. A login may be told
// NO [UNAVAILABLE] while there is no master, but never that its password is
// wrong, never waits longer than the lookup timeout allows, succeeds again
// once the sentinels agree on a master, and a session spliced before the
// failover never notices it.
//
// The assertions hold with and without the route cache. With it, cache
// hits hide a dead master from logins, but not entirely: the invalidator
// resubscribes to the new master and flushes the cache, and go-redis'
// main pool may still dial the dead master for a few hundred milliseconds
// after that, so a few logins get NO [UNAVAILABLE] (about 20 against
// about 130 without the cache, on a two-core machine under -race).
func TestSentinelFailoverDuringLogins(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cache bool
	}{{"nocache", false}, {"cache", true}} {
		t.Run(tc.name, func(t *testing.T) { testSentinelFailover(t, tc.cache) })
	}
}

func testSentinelFailover(t *testing.T, cache bool) {
	const (
		users   = 5
		workers = 4
		// lookup is routing.lookup_timeout; the bound adds 3 s for the
		// login gate's own Redis call (1 s at most), the TLS handshake and
		// the backend login on a loaded machine.
		lookup = 2 * time.Second
		bound  = lookup + 3*time.Second
		// settle is how long after the sentinels agree on a new master a
		// login may still fail: go-redis retries failed dials once a
		// second.
		settle    = 2 * time.Second
		after     = 5 * time.Second // logins go on this long after the last event
		maxPerRun = 3000            // per worker, so that the stream is bounded
	)
	sentinel := testsrv.StartRedisSentinel(t)
	dovecotUsers := map[string]string{}
	var memUsers []membackend.User
	for i := 0; i < users; i++ {
		if i%2 == 0 {
			dovecotUsers[userN(i)] = passN(i)
		} else {
			memUsers = append(memUsers, membackend.User{Name: userN(i), Password: passN(i)})
		}
	}
	dc := testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: dovecotUsers})
	mem, err := membackend.Start("127.0.0.1:0", memUsers...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	backends := []*routing.Backend{
		{Name: "dovecot1", Addr: dc.Addr, ForwardID: true, LoginTimeout: 10 * time.Second},
		{Name: "mem1", Addr: mem.Addr(), LoginTimeout: 10 * time.Second},
	}

	baseline := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, baseline) })
	p := startPortico(t, porticoOptions{
		redis:    routing.RedisOptions{MasterName: sentinel.MasterName, Addrs: sentinel.SentinelAddrs},
		backends: backends, noCache: !cache, id: "sentinel-" + t.Name(), lookup: lookup,
	})
	if _, ok := p.rdb.(*redis.Client); !ok {
		t.Fatalf("UniversalClient with MasterName is a %T, want the failover *redis.Client", p.rdb)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("portico log:\n%s", p.logs.String())
		}
	})
	ctx := context.Background()
	for i := 0; i < users; i++ {
		rec := routing.Record{Backend: "mem1"}
		if i%2 == 0 {
			rec = routing.Record{Backend: "dovecot1"}
		}
		if err := p.router.SetRoute(ctx, userN(i), rec); err != nil {
			t.Fatal(err)
		}
	}
	// The routes must be on the replica before it is promoted, or a
	// missing route would be Redis' data loss, not Portico's doing.
	if n, err := p.rdb.Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n < 1 {
		t.Fatalf("WAIT for the replica: %d, %v", n, err)
	}
	_, clientTLS := porticoTLS(t)

	// A session spliced before the failover.
	est, err := dialIMAPS(p.addr, clientTLS, time.Now().Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer est.close()
	if err := est.expectOK("e1", "LOGIN "+quote(userN(0))+" "+quote(passN(0))); err != nil {
		t.Fatal(err)
	}
	if err := est.expectOK("e2", "SELECT INBOX"); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	results := make([][]loginAttempt, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for i := 0; i < maxPerRun; i++ {
				select {
				case <-stop:
					return
				default:
				}
				u := (w + i) % users
				results[w] = append(results[w], fullLogin(p.addr, clientTLS, userN(u), passN(u)))
			}
		})
	}

	time.Sleep(1500 * time.Millisecond)
	eventsStart := time.Now()
	old := sentinel.MasterAddr()
	sentinel.Failover(t)
	t.Logf("SENTINEL FAILOVER %s -> %s took %v", old, sentinel.MasterAddr(), time.Since(eventsStart).Round(time.Millisecond))
	failoverDone := time.Now()
	time.Sleep(time.Second)
	killed := time.Now()
	old = sentinel.MasterAddr()
	sentinel.KillMaster(t)
	eventsDone := time.Now()
	t.Logf("master %s killed, %s promoted after %v", old, sentinel.MasterAddr(), eventsDone.Sub(killed).Round(time.Millisecond))
	time.Sleep(after)
	close(stop)
	wg.Wait()

	var all []loginAttempt
	for _, r := range results {
		all = append(all, r...)
	}
	var ok, unavailable, during, afterSettle int
	var unavailableFailover, unavailableCrash int // by the time the login began
	var slowest time.Duration
	for _, a := range all {
		slowest = max(slowest, a.loginTook)
		if a.err != nil {
			t.Errorf("login at +%v: %v", a.start.Sub(eventsStart).Round(time.Millisecond), a.err)
			continue
		}
		switch a.outcome {
		case outcomeOK:
			ok++
		case outcomeUnavailable:
			unavailable++
			if a.start.Before(failoverDone) {
				unavailableFailover++
			} else {
				unavailableCrash++
			}
		default:
			// AUTHENTICATIONFAILED would tell a user with a route that
			// the password is wrong, because Redis failed over.
			t.Errorf("login at +%v: %q", a.start.Sub(eventsStart).Round(time.Millisecond), a.outcome)
		}
		if a.loginTook > bound {
			t.Errorf("login at +%v took %v, more than %v", a.start.Sub(eventsStart).Round(time.Millisecond), a.loginTook, bound)
		}
		if !a.start.Before(eventsStart) && a.start.Before(eventsDone) {
			during++
		}
		if a.start.After(eventsDone.Add(settle)) {
			afterSettle++
			if a.outcome != outcomeOK {
				t.Errorf("login at +%v, %v after the new master: %q %v", a.start.Sub(eventsStart).Round(time.Millisecond),
					a.start.Sub(eventsDone).Round(time.Millisecond), a.outcome, a.err)
			}
		}
	}
	t.Logf("cache=%v: %d logins: %d OK, %d NO [UNAVAILABLE] (%d up to the end of SENTINEL FAILOVER, %d later); %d during the failover and the crash, %d after; slowest LOGIN %v",
		cache, len(all), ok, unavailable, unavailableFailover, unavailableCrash, during, afterSettle, slowest.Round(time.Millisecond))
	if during == 0 {
		t.Errorf("no login ran during the failover")
	}
	if afterSettle < 2*workers {
		t.Errorf("only %d logins after the failover settled", afterSettle)
	}

	// The session spliced before is untouched: the backend still answers.
	if err := est.expectOK("e3", "NOOP"); err != nil {
		t.Errorf("established session after the failover: %v", err)
	}
	if err := est.expectOK("e4", "SELECT INBOX"); err != nil {
		t.Errorf("established session after the failover: %v", err)
	}
	if err := est.expectOK("e5", "LOGOUT"); err != nil {
		t.Errorf("established session LOGOUT: %v", err)
	}
}

// TestRedisCluster runs Portico against a three-master Redis Cluster:
// route keys spread over the masters (they carry no hash tag), logins of
// routed users succeed through two instances, and pool assignment (a Lua
// script and a PUBLISH) writes the record on the master that owns its slot.
func TestRedisCluster(t *testing.T) {
	cluster := testsrv.StartRedisCluster(t, 3)
	const routed, assigned = 12, 6
	var mem1Users, mem2Users []membackend.User
	for i := 0; i < routed; i++ {
		u := membackend.User{Name: userN(i), Password: passN(i)}
		if i%2 == 0 {
			mem1Users = append(mem1Users, u)
		} else {
			mem2Users = append(mem2Users, u)
		}
	}
	// Users without a route exist on both backends with a password that
	// names the backend, so that a successful login shows where it landed.
	for i := 0; i < assigned; i++ {
		mem1Users = append(mem1Users, membackend.User{Name: newUserN(i), Password: "at-mem1"})
		mem2Users = append(mem2Users, membackend.User{Name: newUserN(i), Password: "at-mem2"})
	}
	mem1, err := membackend.Start("127.0.0.1:0", mem1Users...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem1.Close() })
	mem2, err := membackend.Start("127.0.0.1:0", mem2Users...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem2.Close() })
	backends := []*routing.Backend{{Name: "mem1", Addr: mem1.Addr()}, {Name: "mem2", Addr: mem2.Addr()}}
	pool := &routing.Pool{Name: "main", Members: backends, Policy: routing.PolicyAssign}

	baseline := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, baseline) })
	var ps []*portico
	for i := 0; i < 2; i++ {
		p := startPortico(t, porticoOptions{
			redis:    routing.RedisOptions{Addrs: cluster.Addrs},
			backends: backends, pools: []*routing.Pool{pool}, defaultPool: pool,
			id: fmt.Sprintf("cluster-%d", i),
		})
		if _, ok := p.rdb.(*redis.ClusterClient); !ok {
			t.Fatalf("UniversalClient with %d addresses is a %T, want *redis.ClusterClient", len(cluster.Addrs), p.rdb)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("portico %d log:\n%s", i, p.logs.String())
			}
		})
		ps = append(ps, p)
	}
	ctx := context.Background()
	router := ps[0].router

	// Which master owns each route key, asked of the cluster itself.
	admin := redis.NewClient(&redis.Options{Addr: cluster.Addrs[0]})
	defer admin.Close()
	slots, err := admin.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	owner := func(key string) string {
		t.Helper()
		slot, err := admin.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range slots {
			if int64(s.Start) <= slot && slot <= int64(s.End) {
				return s.Nodes[0].Addr
			}
		}
		t.Fatalf("no master owns slot %d of %q", slot, key)
		return ""
	}
	// onNode reads a route straight from one node, not through the
	// cluster client, to show where the record physically is.
	onNode := func(node, key string) map[string]string {
		t.Helper()
		c := redis.NewClient(&redis.Options{Addr: node})
		defer c.Close()
		f, err := c.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatalf("HGETALL %s on %s: %v", key, node, err)
		}
		return f
	}

	masters := map[string]int{}
	for i := 0; i < routed; i++ {
		rec := routing.Record{Backend: "mem1"}
		if i%2 == 1 {
			rec = routing.Record{Backend: "mem2"}
		}
		if err := router.SetRoute(ctx, userN(i), rec); err != nil {
			t.Fatal(err)
		}
		key := router.Key(userN(i))
		node := owner(key)
		masters[node]++
		if f := onNode(node, key); f[routing.FieldBackend] != rec.Backend {
			t.Errorf("%s on its master %s: %v, want backend %s", key, node, f, rec.Backend)
		}
	}
	t.Logf("route keys per master: %v", masters)
	if len(masters) < 2 {
		t.Errorf("route keys all on one master: %v", masters)
	}

	_, clientTLS := porticoTLS(t)
	for i := 0; i < routed; i++ {
		a := fullLogin(ps[i%2].addr, clientTLS, userN(i), passN(i))
		if a.err != nil || a.outcome != outcomeOK {
			t.Errorf("login of %s through instance %d: %q %v", userN(i), i%2, a.outcome, a.err)
		}
	}

	// Assignment: the first login (through instance 0) picks a member by
	// rendezvous hashing and writes it; a login through instance 1 then
	// goes to the same backend.
	assignedTo := map[string]int{}
	for i := 0; i < assigned; i++ {
		user := newUserN(i)
		want := pool.Pick(user, nil, nil).Name
		for j, p := range ps {
			a := fullLogin(p.addr, clientTLS, user, "at-"+want)
			if a.err != nil || a.outcome != outcomeOK {
				t.Errorf("login %d of unrouted %s (expected on %s): %q %v", j+1, user, want, a.outcome, a.err)
			}
		}
		key := router.Key(user)
		node := owner(key)
		f := onNode(node, key)
		if f[routing.FieldBackend] != want || f[routing.FieldAssignedPool] != "main" || f[routing.FieldAssignedAt] == "" {
			t.Errorf("assigned route of %s on its master %s: %v, want backend %s in pool main", user, node, f, want)
		}
		assignedTo[want]++
		masters[node]++
	}
	t.Logf("assigned users per backend: %v; all route keys per master: %v", assignedTo, masters)
}

func newUserN(i int) string { return fmt.Sprintf("new%d@example.test", i) }
