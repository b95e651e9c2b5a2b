package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/routing"
)

// fakeLocal is a proxy's session table. With endOnKick, KickUser ends the
// user's sessions after endDelay and reports them to the fleet, as the
// real server does.
type fakeLocal struct {
	mu           sync.Mutex
	sessions     map[string]SessionInfo
	kicks        []string
	backendKicks []backendKick
	fleet        *Fleet
	endOnKick    bool
	endDelay     time.Duration
	ended        time.Time // when the last kicked session ended
}

type backendKick struct {
	name   string
	window time.Duration
	at     time.Time
}

func newLocal() *fakeLocal { return &fakeLocal{sessions: make(map[string]SessionInfo)} }

func (l *fakeLocal) add(s SessionInfo) {
	l.mu.Lock()
	l.sessions[s.ID] = s
	l.mu.Unlock()
}

func (l *fakeLocal) remove(id string) {
	l.mu.Lock()
	delete(l.sessions, id)
	l.mu.Unlock()
}

func (l *fakeLocal) Sessions() []SessionInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []SessionInfo
	for _, s := range l.sessions {
		out = append(out, s)
	}
	return out
}

func (l *fakeLocal) KickUser(user, reason string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.kicks = append(l.kicks, user)
	var victims []SessionInfo
	for _, s := range l.sessions {
		if s.User == user {
			victims = append(victims, s)
		}
	}
	if l.endOnKick && len(victims) > 0 {
		go func() {
			time.Sleep(l.endDelay)
			l.mu.Lock()
			for _, s := range victims {
				delete(l.sessions, s.ID)
			}
			l.ended = time.Now()
			l.mu.Unlock()
			for _, s := range victims {
				l.fleet.SessionEnded(s)
			}
		}()
	}
	return len(victims)
}

func (l *fakeLocal) KickBackend(name string, window time.Duration) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.backendKicks = append(l.backendKicks, backendKick{name, window, time.Now()})
	return 0
}

func (l *fakeLocal) kicked() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.kicks...)
}

func (l *fakeLocal) drained() []backendKick {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]backendKick(nil), l.backendKicks...)
}

func newClient(t testing.TB, addrs ...string) redis.UniversalClient {
	t.Helper()
	c := routing.NewRedisClient(routing.RedisOptions{Addrs: addrs})
	t.Cleanup(func() { c.Close() })
	return c
}

func redisClient(t testing.TB) (redis.UniversalClient, *testsrv.Redis) {
	t.Helper()
	r := testsrv.StartRedis(t)
	return newClient(t, r.Addr), r
}

// newFleet makes a fleet around a fresh fake Local.
func newFleet(c redis.UniversalClient, id string, hb time.Duration) (*Fleet, *fakeLocal, *testsrv.Buffer) {
	l := newLocal()
	lb := &testsrv.Buffer{}
	f := &Fleet{Client: c, ProxyID: id, Heartbeat: hb, Local: l,
		Logger: slog.New(slog.NewTextHandler(lb, nil))}
	l.fleet = f
	return f, l, lb
}

// run starts f.Run and returns a stop function, also registered as a
// cleanup, that cancels it and waits for it to return.
func run(t testing.TB, f *Fleet) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	waitFor(t, 5*time.Second, "subscription", func() bool { return f.subs.Load() > 0 })
	return stop
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("no %s after %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func count(t testing.TB, c redis.UniversalClient, user string) int {
	t.Helper()
	n, err := CountSessions(context.Background(), c, "", user)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func list(t testing.TB, c redis.UniversalClient, user string) []Record {
	t.Helper()
	recs, err := ListSessions(context.Background(), c, "", user)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func session(id, user, backend string) SessionInfo {
	return SessionInfo{ID: id, User: user, Client: "192.0.2.7:5555", Listener: "imaps",
		Backend: backend, Since: time.UnixMilli(time.Now().UnixMilli()), BytesToBackend: 10, BytesToClient: 2000}
}

func TestRegistryFollowsEvents(t *testing.T) {
	c, _ := redisClient(t)
	f, l, _ := newFleet(c, "p1", time.Minute) // only events can be fast enough
	run(t, f)
	waitFor(t, 2*time.Second, "first heartbeat", func() bool {
		p, _ := Proxies(context.Background(), c, "")
		return len(p) == 1
	})

	s := session("s1", "alice@example.com", "imap1")
	l.add(s)
	f.SessionStarted(s)
	if d := waitFor(t, 200*time.Millisecond, "registered session", func() bool { return count(t, c, s.User) == 1 }); d > 200*time.Millisecond {
		t.Errorf("registered after %v", d)
	}
	recs := list(t, c, s.User)
	want := Record{Proxy: "p1", SessionInfo: s}
	if len(recs) != 1 || recs[0] != want {
		t.Fatalf("ListSessions(alice) = %+v, want %+v", recs, want)
	}
	if all := list(t, c, ""); len(all) != 1 || all[0] != want {
		t.Fatalf("ListSessions(all) = %+v, want %+v", all, want)
	}
	if n, _ := CountSessions(context.Background(), c, "", ""); n != 1 {
		t.Errorf("CountSessions(all) = %d, want 1", n)
	}

	l.remove(s.ID)
	f.SessionEnded(s)
	waitFor(t, 200*time.Millisecond, "removal", func() bool { return count(t, c, s.User) == 0 && len(list(t, c, "")) == 0 })
	if f.Dropped() != 0 {
		t.Errorf("Dropped = %d", f.Dropped())
	}
}

func TestReconcileRepairsAndCrashIsSwept(t *testing.T) {
	c, _ := redisClient(t)
	ctx := context.Background()
	const hb = 200 * time.Millisecond
	f, l, _ := newFleet(c, "p1", hb)
	f.Reconcile = 300 * time.Millisecond
	// Sessions the fleet never heard of: the first registration writes them.
	l.add(session("a1", "alice", "imap1"))
	l.add(session("a2", "alice", "imap2"))
	l.add(session("b1", "bob", "imap1"))
	stop := run(t, f)
	waitFor(t, time.Second, "restore", func() bool { return count(t, c, "alice") == 2 && count(t, c, "bob") == 1 })

	// Byte counts and silently ended sessions follow the next
	// reconciliation, and so does an entry nobody should have written.
	s := session("a1", "alice", "imap1")
	s.BytesToClient = 1 << 20
	l.add(s)
	l.remove("b1")
	inst := f.instance()
	c.ZAdd(ctx, keysFor("").live("zed"), redis.Z{Score: 1, Member: member("ghost", inst)})
	c.HSet(ctx, keysFor("").inst(inst), "ghost", encodeDetail(session("ghost", "zed", "imap1")))
	waitFor(t, 2*time.Second, "reconciliation", func() bool {
		recs := list(t, c, "")
		for _, r := range recs {
			if r.ID == "a1" && r.BytesToClient != 1<<20 {
				return false
			}
		}
		return len(recs) == 2 && count(t, c, "bob") == 0 && count(t, c, "zed") == 0
	})
	if st := f.Stats(); st.Reconciled == 0 || st.Repaired < 2 || st.Incarnations != 1 {
		t.Errorf("Stats = %+v, want reconciliations that repaired 2 entries", st)
	}

	// A crash: Run ends without cleaning up, and nothing refreshes.
	stop()
	crashed := time.Now()
	if n := count(t, c, "alice"); n != 2 {
		t.Fatalf("right after the crash: %d sessions, want 2", n)
	}
	d := waitFor(t, 3*hb+time.Second, "expiry", func() bool {
		p, _ := Proxies(ctx, c, "")
		return count(t, c, "alice") == 0 && len(list(t, c, "")) == 0 && len(p) == 0
	})
	if d < hb {
		t.Errorf("entries expired %v after the crash; want about 3 heartbeats", time.Since(crashed))
	}
	// The keys themselves go once another proxy sweeps them.
	if n, _ := c.Exists(ctx, keysFor("").live("alice"), keysFor("").inst(inst)).Result(); n != 2 {
		t.Fatalf("%d of the crashed proxy's keys left before any sweeper ran, want 2", n)
	}
	sweeper, _, _ := newFleet(c, "p2", hb)
	run(t, sweeper)
	waitFor(t, 3*time.Second, "sweep", func() bool {
		n, _ := c.Exists(ctx, keysFor("").live("alice"), keysFor("").inst(inst)).Result()
		dead, _ := c.ZScore(ctx, keysFor("").instances, inst).Result()
		return n == 0 && dead == 0
	})
	if st := sweeper.Stats(); st.Swept != 2 {
		t.Errorf("swept %d sessions, want 2", st.Swept)
	}
}

// TestRetire: a proxy that shuts down cleanly leaves no session counted,
// at once, and its entries are swept.
func TestRetire(t *testing.T) {
	c, _ := redisClient(t)
	ctx := context.Background()
	const hb = 200 * time.Millisecond
	f, l, _ := newFleet(c, "p1", hb)
	l.add(session("r1", "rita", "imap1"))
	stop := run(t, f)
	waitFor(t, time.Second, "registration", func() bool { return count(t, c, "rita") == 1 })
	inst := f.instance()
	stop()
	if err := f.Retire(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(t, c, "rita"); n != 0 {
		t.Errorf("%d sessions right after Retire, want 0", n)
	}
	sweeper, _, _ := newFleet(c, "p2", hb)
	run(t, sweeper)
	waitFor(t, 3*time.Second, "sweep", func() bool {
		n, _ := c.Exists(ctx, keysFor("").inst(inst), keysFor("").live("rita")).Result()
		return n == 0
	})
	if p, _ := Proxies(ctx, c, ""); len(p) != 1 || p[0] != "p2" {
		t.Errorf("Proxies = %q, want [p2]", p)
	}
}

func TestEventsNeverBlock(t *testing.T) {
	f := &Fleet{}
	for i := range MaxPending + 10 {
		f.SessionStarted(session(strconv.Itoa(i), "u", "b"))
	}
	if f.Dropped() != 10 {
		t.Errorf("Dropped = %d, want 10", f.Dropped())
	}
	// An end of a start never written cancels it.
	f.SessionEnded(session("0", "u", "b"))
	if st := f.Stats(); st.Pending != MaxPending-1 {
		t.Errorf("Pending = %d, want %d", st.Pending, MaxPending-1)
	}
	var nilFleet *Fleet
	nilFleet.SessionStarted(session("x", "u", "b"))
	nilFleet.SessionEnded(session("x", "u", "b"))
	if err := nilFleet.LoginGate(context.Background(), "u"); err != nil {
		t.Error(err)
	}
}

func TestKickReachesEveryProxy(t *testing.T) {
	c, _ := redisClient(t)
	var locals []*fakeLocal
	for i := range 3 {
		f, l, _ := newFleet(c, fmt.Sprintf("p%d", i), time.Second)
		run(t, f)
		locals = append(locals, l)
	}
	if err := Kick(context.Background(), c, "", "carol"); err != nil {
		t.Fatal(err)
	}
	for i, l := range locals {
		waitFor(t, time.Second, fmt.Sprintf("kick on p%d", i), func() bool { return len(l.kicked()) > 0 })
	}
	time.Sleep(300 * time.Millisecond)
	for i, l := range locals {
		if k := l.kicked(); len(k) != 1 || k[0] != "carol" {
			t.Errorf("p%d kicks = %q, want [carol]", i, k)
		}
	}
}

func TestMove(t *testing.T) {
	c, _ := redisClient(t)
	ctx := context.Background()
	routes := &routing.Redis{Client: c}
	if err := routes.SetRoute(ctx, "dave", routing.Record{Backend: "imap1"}); err != nil {
		t.Fatal(err)
	}
	a, la, _ := newFleet(c, "a", time.Second)
	la.endOnKick, la.endDelay = true, 300*time.Millisecond
	s := session("d1", "dave", "imap1")
	la.add(s)
	run(t, a)
	a.SessionStarted(s)
	b, _, _ := newFleet(c, "b", time.Second)
	run(t, b)
	waitFor(t, time.Second, "registration", func() bool { return count(t, c, "dave") == 1 })

	moveDone := make(chan error, 1)
	var moved time.Time
	go func() {
		err := Move(ctx, c, "", routes, "dave", "imap2", MoveOptions{Hold: 5 * time.Second, Wait: 4 * time.Second})
		moved = time.Now()
		moveDone <- err
	}()
	waitFor(t, time.Second, "hold", func() bool { return c.Exists(ctx, keysFor("").move("dave")).Val() == 1 })
	// b learns of the hold through the control channel a moment after the
	// key is set; a login in that moment is caught by the proxy's second
	// ask after registering it (proxy.TestLoginGate).
	waitFor(t, 3*time.Second, "b knows the hold", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, ok := b.moving["dave"]
		return ok
	})

	// A new login of dave on proxy b waits for the old session to go.
	gateDone := make(chan error, 1)
	var gated time.Time
	go func() {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		err := b.LoginGate(gctx, "dave")
		gated = time.Now()
		gateDone <- err
	}()
	select {
	case err := <-gateDone:
		t.Fatalf("LoginGate returned %v during the hold", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := <-moveDone; err != nil {
		t.Fatalf("Move: %v", err)
	}
	if err := <-gateDone; err != nil {
		t.Fatalf("LoginGate: %v", err)
	}
	la.mu.Lock()
	ended := la.ended
	la.mu.Unlock()
	if ended.IsZero() || gated.Before(ended) {
		t.Errorf("login released at %v, before the old session ended at %v", gated, ended)
	}
	if d := gated.Sub(moved); d > 200*time.Millisecond {
		t.Errorf("login released %v after the move finished", d)
	}
	if rec, err := routes.GetRoute(ctx, "dave"); err != nil || rec.Backend != "imap2" {
		t.Errorf("route = %+v, %v; want imap2", rec, err)
	}
	if n := count(t, c, "dave"); n != 0 {
		t.Errorf("CountSessions = %d after the move", n)
	}
	if c.Exists(ctx, keysFor("").move("dave")).Val() != 0 {
		t.Error("hold left behind")
	}
	if k := la.kicked(); len(k) == 0 {
		t.Error("old session not kicked")
	}
}

func TestMoveTimeoutAndHolds(t *testing.T) {
	c, _ := redisClient(t)
	ctx := context.Background()
	routes := &routing.Redis{Client: c}
	a, la, _ := newFleet(c, "a", time.Second) // ignores kicks
	s := session("e1", "erin", "imap1")
	la.add(s)
	run(t, a)
	a.SessionStarted(s)
	waitFor(t, time.Second, "registration", func() bool { return count(t, c, "erin") == 1 })

	start := time.Now()
	err := Move(ctx, c, "", routes, "erin", "imap2", MoveOptions{Hold: 3 * time.Second, Wait: 700 * time.Millisecond})
	if !errors.Is(err, ErrSessionsOpen) || !strings.Contains(err.Error(), "1 session(s)") {
		t.Fatalf("Move = %v, want ErrSessionsOpen with 1 session", err)
	}
	if d := time.Since(start); d < 700*time.Millisecond || d > 2*time.Second {
		t.Errorf("Move gave up after %v, want about 700ms", d)
	}
	if c.Exists(ctx, keysFor("").move("erin")).Val() != 0 {
		t.Error("hold left behind after the timeout")
	}
	if rec, _ := routes.GetRoute(ctx, "erin"); rec.Backend != "imap2" {
		t.Errorf("route = %+v, want imap2", rec)
	}
	if len(la.kicked()) == 0 {
		t.Error("session not kicked")
	}
	if err := a.LoginGate(ctx, "erin"); err != nil {
		t.Errorf("LoginGate after the move: %v", err)
	}

	// A hold in place, as a Move that crashed leaves it, learnt by the
	// proxy at its next resync: a second move refuses, a login gives up
	// with its ctx.
	key := keysFor("").move("frank")
	announce(t, c, a, "frank", 5*time.Second)
	if err := Move(ctx, c, "", routes, "frank", "imap2", MoveOptions{}); !errors.Is(err, ErrMoveInProgress) {
		t.Errorf("Move during a hold = %v, want ErrMoveInProgress", err)
	}
	gctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = a.LoginGate(gctx, "frank")
	cancel()
	if !errors.Is(err, ErrMoveInProgress) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("LoginGate = %v, want ErrMoveInProgress and DeadlineExceeded", err)
	}
	// A hold that simply expires (its mover crashed) lets the login go.
	c.Del(ctx, key)
	announce(t, c, a, "frank", 400*time.Millisecond)
	start = time.Now()
	if err := a.LoginGate(ctx, "frank"); err != nil {
		t.Errorf("LoginGate = %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > time.Second {
		t.Errorf("LoginGate waited %v for a 400ms hold", d)
	}
}

// announce leaves a hold of user for d as a Move would, without its
// message, and waits until f has learnt it from a resync.
func announce(t *testing.T, c redis.UniversalClient, f *Fleet, user string, d time.Duration) {
	t.Helper()
	ctx := context.Background()
	k := keysFor("")
	c.Set(ctx, k.move(user), "imap9 tok", d)
	c.HSet(ctx, k.moves, user, fmt.Sprintf("imap9 %d tok", time.Now().Add(d).UnixMilli()))
	waitFor(t, 3*f.hb, "hold learnt at a resync", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		_, ok := f.moving[user]
		return ok
	})
}

// commandCalls returns how many times Redis has run cmd (lower case, as
// INFO commandstats names it).
func commandCalls(t *testing.T, c redis.UniversalClient, cmd string) int {
	t.Helper()
	s, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(s, "cmdstat_"+cmd+":calls=")
	if !ok {
		return 0
	}
	n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
	return n
}

// TestLoginGateWithoutRedis: while the control channel is healthy, a
// login of a user who is not moving costs no Redis command; when it is
// not (before Run, or Redis gone), the gate reads the hold key.
func TestLoginGateWithoutRedis(t *testing.T) {
	c, _ := redisClient(t)
	ctx := context.Background()
	f, _, _ := newFleet(c, "p1", 200*time.Millisecond)
	if err := f.LoginGate(ctx, "ann"); err != nil {
		t.Fatal(err)
	}
	if n := commandCalls(t, c, "pttl"); n != 1 {
		t.Errorf("%d PTTL before Run, want 1 (no control channel yet)", n)
	}
	run(t, f)
	waitFor(t, 2*time.Second, "healthy control channel", f.controlHealthy)
	before := commandCalls(t, c, "pttl")
	for range 100 {
		if err := f.LoginGate(ctx, "ann"); err != nil {
			t.Fatal(err)
		}
	}
	if n := commandCalls(t, c, "pttl") - before; n != 0 {
		t.Errorf("%d PTTL for 100 logins with a healthy control channel, want 0", n)
	}
	// Stays healthy over several heartbeats: the pings come back.
	time.Sleep(time.Second)
	if !f.controlHealthy() {
		t.Error("control channel unhealthy after a second")
	}
}

func TestStaleSessionDuringMoveIsKicked(t *testing.T) {
	f, l, _ := newFleet(nil, "p", time.Second)
	f.init()
	f.handle(`{"op":"move","user":"gina","backend":"imap2","hold":5000}`)
	waitFor(t, time.Second, "move kick", func() bool { return len(l.kicked()) == 1 })
	f.SessionStarted(session("g1", "gina", "imap2")) // new route: fine
	time.Sleep(50 * time.Millisecond)
	if n := len(l.kicked()); n != 1 {
		t.Fatalf("%d kicks after a session on the new backend, want 1", n)
	}
	f.SessionStarted(session("g2", "gina", "imap1")) // old route: kicked
	waitFor(t, time.Second, "stale kick", func() bool { return len(l.kicked()) == 2 })
	f.handle(`{"op":"release","user":"gina"}`)
	f.SessionStarted(session("g3", "gina", "imap1"))
	time.Sleep(50 * time.Millisecond)
	if n := len(l.kicked()); n != 2 {
		t.Errorf("%d kicks after the release, want 2", n)
	}
}

func TestDrainKick(t *testing.T) {
	c, _ := redisClient(t)
	ctx := context.Background()
	const hb = 200 * time.Millisecond // resyncs every heartbeat must not kick twice
	var locals []*fakeLocal
	for i := range 3 {
		f, l, _ := newFleet(c, fmt.Sprintf("p%d", i), hb)
		run(t, f)
		locals = append(locals, l)
	}
	deadline := time.Now().Add(800 * time.Millisecond)
	const window = 2 * time.Second
	if err := DrainKick(ctx, c, "", "imap1", deadline, window); err != nil {
		t.Fatal(err)
	}
	if err := DrainKick(ctx, c, "", "imap2", deadline, window); err != nil {
		t.Fatal(err)
	}
	if err := CancelDrainKick(ctx, c, "", "imap2"); err != nil {
		t.Fatal(err)
	}
	// A proxy that starts after the message learns it from Redis.
	f, l, _ := newFleet(c, "late", hb)
	run(t, f)
	locals = append(locals, l)
	if p, err := DrainKicks(ctx, c, ""); err != nil || len(p) != 1 || p[0].Backend != "imap1" || p[0].Window != window {
		t.Errorf("DrainKicks = %+v, %v", p, err)
	}

	time.Sleep(time.Until(deadline) + 300*time.Millisecond)
	// And one that starts after the deadline kicks at once.
	f, l, _ = newFleet(c, "later", hb)
	run(t, f)
	waitFor(t, time.Second, "kick by the latest proxy", func() bool { return len(l.drained()) == 1 })
	time.Sleep(3 * hb)
	truncated := time.UnixMilli(deadline.UnixMilli())
	for i, l := range locals {
		k := l.drained()
		if len(k) != 1 || k[0].name != "imap1" || k[0].window != window {
			t.Errorf("proxy %d: KickBackend calls %+v, want one of imap1 over %v", i, k, window)
			continue
		}
		if k[0].at.Before(truncated) || k[0].at.After(deadline.Add(200*time.Millisecond)) {
			t.Errorf("proxy %d kicked at %v, deadline %v", i, k[0].at, deadline)
		}
	}
	k := l.drained()
	if len(k) != 1 || k[0].name != "imap1" || k[0].window >= window-200*time.Millisecond || k[0].window < window/2 {
		t.Errorf("latest proxy: KickBackend calls %+v, want one over what remains of %v", k, window)
	}
}

// startRedisOn starts a redis-server on addr, as testsrv does, for a
// restart on the same port.
func startRedisOn(t *testing.T, addr string) {
	t.Helper()
	bin := testsrv.LookPath(t, "redis-server", "/usr/bin/redis-server")
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", t.TempDir(), "--protected-mode", "no")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := testsrv.WaitDial(addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestRedisRestart(t *testing.T) {
	c, r := redisClient(t)
	ctx := context.Background()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()

	const hb = 200 * time.Millisecond
	f, l, logs := newFleet(c, "p1", hb)
	s := session("h1", "hank", "imap1")
	l.add(s)
	stop := run(t, f)
	f.SessionStarted(s)
	waitFor(t, time.Second, "registration", func() bool { return count(t, c, "hank") == 1 })

	r.Stop()
	// Sessions come and go while Redis is away; nothing blocks.
	for i := range 100 {
		start := time.Now()
		s := session("x"+strconv.Itoa(i), "ivy", "imap1")
		f.SessionStarted(s)
		f.SessionEnded(s)
		if d := time.Since(start); d > 10*time.Millisecond {
			t.Fatalf("SessionStarted+Ended took %v with Redis down", d)
		}
	}
	gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	if err := f.LoginGate(gctx, "hank"); err != nil {
		t.Errorf("LoginGate with Redis down = %v, want the gate open", err)
	}
	cancel()
	time.Sleep(time.Second)

	startRedisOn(t, r.Addr)
	// The empty new Redis gets the registry back from the heartbeat and
	// the subscription comes back.
	waitFor(t, 5*time.Second, "registry repaired", func() bool {
		n, err := CountSessions(ctx, c, "", "hank")
		return err == nil && n == 1
	})
	waitFor(t, 5*time.Second, "resubscription", func() bool { return f.subs.Load() >= 2 })
	if err := Kick(ctx, c, "", "hank"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "kick after the restart", func() bool { return len(l.kicked()) == 1 })
	if n := count(t, c, "ivy"); n != 0 {
		t.Errorf("ivy has %d sessions", n)
	}
	out := logs.String()
	if n := strings.Count(out, "Redis unreachable"); n < 1 || n > 5 {
		t.Errorf("%d outage warnings, want one per component:\n%s", n, out)
	}
	if !strings.Contains(out, "Redis reachable again") {
		t.Errorf("no recovery logged:\n%s", out)
	}

	stop()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%d goroutines after Run, %d before:\n%s", runtime.NumGoroutine(), base, buf[:n])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCluster(t *testing.T) {
	cl := testsrv.StartRedisCluster(t, 3)
	c := newClient(t, cl.Addrs...)
	ctx := context.Background()
	const hb = 200 * time.Millisecond
	a, la, _ := newFleet(c, "a", hb)
	b, lb, _ := newFleet(c, "b", hb)
	la.endOnKick = true
	stopA := run(t, a)
	run(t, b)

	users := []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"}
	slots := map[int64]bool{}
	for i, u := range users {
		slot, err := c.ClusterKeySlot(ctx, keysFor("").live(u)).Result()
		if err != nil {
			t.Fatal(err)
		}
		slots[slot*3/16384] = true
		for j, f := range []*Fleet{a, b} {
			s := session(fmt.Sprintf("%d-%d", i, j), u, "imap1")
			f.Local.(*fakeLocal).add(s)
			f.SessionStarted(s)
		}
	}
	if len(slots) < 2 {
		t.Fatalf("users landed on %d masters only", len(slots))
	}
	waitFor(t, time.Second, "registry", func() bool { return len(list(t, c, "")) == 2*len(users) })
	for _, u := range users {
		if n := count(t, c, u); n != 2 {
			t.Errorf("CountSessions(%s) = %d, want 2", u, n)
		}
		if recs := list(t, c, u); len(recs) != 2 || recs[0].Proxy == recs[1].Proxy || recs[0].Backend != "imap1" {
			t.Errorf("ListSessions(%s) = %+v", u, recs)
		}
	}

	if err := Kick(ctx, c, "", "u3"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "kick on both", func() bool { return len(la.kicked()) == 1 && len(lb.kicked()) == 1 })

	// Drop b's sessions of u5 so that a move can finish.
	lb.remove("5-1")
	b.SessionEnded(SessionInfo{ID: "5-1", User: "u5"})
	routes := &routing.Redis{Client: c}
	if err := Move(ctx, c, "", routes, "u5", "imap2", MoveOptions{Hold: 3 * time.Second}); err != nil {
		t.Fatalf("Move on a cluster: %v", err)
	}
	if rec, _ := routes.GetRoute(ctx, "u5"); rec.Backend != "imap2" || count(t, c, "u5") != 0 {
		t.Errorf("after the move: route %+v, %d sessions", rec, count(t, c, "u5"))
	}

	// a crashes: only b's sessions remain.
	aInst := a.instance()
	stopA()
	waitFor(t, 3*hb+time.Second, "expiry of a's sessions", func() bool {
		for _, r := range list(t, c, "") {
			if r.Proxy == "a" {
				return false
			}
		}
		return count(t, c, "u0") == 1
	})
	if p, err := Proxies(ctx, c, ""); err != nil || len(p) != 1 || p[0] != "b" {
		t.Errorf("Proxies = %q, %v", p, err)
	}
	// b sweeps a's entries, across the masters.
	waitFor(t, 5*time.Second, "sweep of a", func() bool {
		n, _ := c.Exists(ctx, keysFor("").inst(aInst)).Result()
		m, _ := c.ZCard(ctx, keysFor("").live("u0")).Result()
		return n == 0 && m == 1
	})
}

func TestMain(m *testing.M) {
	// Keep go-redis' own reconnect chatter out of the test output.
	redis.SetLogger(quietLogger{})
	os.Exit(m.Run())
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}
