package routing

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testsrv"
)

// fleetRouter is one proxy's view: its own Redis client, backends mx1-mx3
// in pool "main" (assign) and "shared" (reject), and Health, Fleet and
// Cache of its own.
func fleetRouter(t testing.TB, addr string) *Redis {
	t.Helper()
	c := NewRedisClient(RedisOptions{Addrs: []string{addr}})
	t.Cleanup(func() { c.Close() })
	backends := map[string]*Backend{}
	var members []*Backend
	for i := 1; i <= 3; i++ {
		b := &Backend{Name: fmt.Sprintf("mx%d", i), Addr: fmt.Sprintf("127.0.0.1:%d", 1142+i), Weight: i}
		backends[b.Name] = b
		members = append(members, b)
	}
	backends["spare"] = &Backend{Name: "spare", Addr: "127.0.0.1:1199"}
	main := &Pool{Name: "main", Members: members, Policy: PolicyAssign}
	shared := &Pool{Name: "shared", Members: members, Policy: PolicyReject}
	return &Redis{
		Client:      c,
		Backends:    backends,
		Pools:       map[string]*Pool{"main": main, "shared": shared},
		DomainPools: map[string]*Pool{"example.com": main, "closed.example": shared},
		Health:      &Health{Rise: 1, Fall: 1, Logger: quiet},
		Fleet:       &Fleet{Client: c},
		Cache:       &Cache{},
		Timeout:     2 * time.Second,
	}
}

// markDown takes b down in r's Health.
func markDown(r *Redis, b *Backend) {
	r.Health.register(b)
	r.Health.ReportFailure(b, errors.New("test"))
}

// TestAssignAgreement: 100 simultaneous first logins of one user spread
// over three proxies whose views of the pool differ all land on one
// backend, and Redis holds exactly that one.
func TestAssignAgreement(t *testing.T) {
	srv := testsrv.StartRedis(t)
	ctx := context.Background()
	var routers []*Redis
	for range 3 {
		routers = append(routers, fleetRouter(t, srv.Addr))
	}
	const user = "first@example.com"
	// Give each proxy a different idea of the weights, as during a
	// config rollout, so that each would choose differently on its own.
	natural := routers[0].DomainPools["example.com"].Pick(user, nil, nil)
	var others []string
	for _, name := range []string{"mx1", "mx2", "mx3"} {
		if name != natural.Name {
			others = append(others, name)
		}
	}
	routers[1].Backends[others[0]].Weight = 1_000_000
	routers[2].Backends[others[1]].Weight = 1_000_000
	picks := map[string]bool{}
	for _, r := range routers {
		ex, err := r.Explain(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		picks[ex.Backend.Name] = true
	}
	if len(picks) != 3 {
		t.Fatalf("the three proxies would choose %v; the test needs three different choices", picks)
	}

	const logins = 100
	got := make([]string, logins)
	errs := make([]error, logins)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range logins {
		wg.Go(func() {
			<-start
			b, err := routers[i%3].Lookup(ctx, user)
			if err == nil {
				got[i] = b.Name
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	for i := range logins {
		if errs[i] != nil {
			t.Fatalf("login %d: %v", i, errs[i])
		}
		if got[i] != got[0] {
			t.Fatalf("login %d landed on %s, login 0 on %s", i, got[i], got[0])
		}
	}
	stored, err := routers[0].GetRoute(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Backend != got[0] || stored.Pool != "" || stored.AssignedPool != "main" || stored.AssignedAt == 0 {
		t.Fatalf("stored %+v, logins landed on %s", stored, got[0])
	}
	t.Logf("all %d logins on %s; proxies would have chosen %v", logins, got[0], picks)
}

func TestAssignSticky(t *testing.T) {
	srv := testsrv.StartRedis(t)
	ctx := context.Background()
	r := fleetRouter(t, srv.Addr)
	const user = "sticky@example.com"
	b, err := r.Lookup(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	// The pool changes: the member leaves it. The user stays.
	pool := r.DomainPools["example.com"]
	var rest []*Backend
	for _, m := range pool.Members {
		if m != b {
			rest = append(rest, m)
		}
	}
	pool.Members = rest
	r.Cache.Flush()
	if b2, err := r.Lookup(ctx, user); err != nil || b2 != b {
		t.Fatalf("after the pool changed: %v, %v; want %v", b2, err, b)
	}
	// A new user is not assigned to the removed member.
	for i := range 20 {
		if b2, err := r.Lookup(ctx, fmt.Sprintf("new%d@example.com", i)); err != nil || b2 == b {
			t.Fatalf("new user: %v, %v", b2, err)
		}
	}
}

func TestAssignPolicies(t *testing.T) {
	srv := testsrv.StartRedis(t)
	ctx := context.Background()
	r := fleetRouter(t, srv.Addr)

	// Reject pool, and no pool at all: ErrNotFound, nothing written.
	for _, user := range []string{"a@closed.example", "a@elsewhere.example", "nodomain"} {
		if _, err := r.Lookup(ctx, user); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: %v, want ErrNotFound", user, err)
		}
		if _, err := r.GetRoute(ctx, user); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: a route was written: %v", user, err)
		}
	}
	// DefaultPool catches the other domains.
	// The negative cache entry holds "no record", not the answer, so the
	// new policy applies at once.
	r.DefaultPool = r.Pools["main"]
	if _, err := r.Lookup(ctx, "a@elsewhere.example"); err != nil {
		t.Fatalf("default pool: %v", err)
	}
	if rec, err := r.GetRoute(ctx, "a@elsewhere.example"); err != nil || rec.Backend == "" {
		t.Fatalf("default pool did not write: %+v, %v", rec, err)
	}
	// A domain mapped to a reject pool is not caught by DefaultPool.
	if _, err := r.Lookup(ctx, "b@closed.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reject domain with a default pool: %v", err)
	}

	// No usable member: ErrBackendDown, nothing written.
	for _, m := range r.Pools["main"].Members {
		markDown(r, m)
	}
	if _, err := r.Lookup(ctx, "late@example.com"); !errors.Is(err, ErrBackendDown) {
		t.Fatalf("pool all down: %v", err)
	}
	if _, err := r.GetRoute(ctx, "late@example.com"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a route was written with no member up: %v", err)
	}
}

// TestPoolRecord: a record naming a pool follows health and drains, and is
// never rewritten.
func TestPoolRecord(t *testing.T) {
	srv := testsrv.StartRedis(t)
	ctx := context.Background()
	r := fleetRouter(t, srv.Addr)
	const user = "p@closed.example"
	if err := r.SetRoute(ctx, user, Record{Pool: "shared", Fallback: "spare"}); err != nil {
		t.Fatal(err)
	}
	first, err := r.Lookup(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	markDown(r, first)
	second, err := r.Lookup(ctx, user)
	if err != nil || second == first {
		t.Fatalf("member down: %v, %v", second, err)
	}
	if err := r.Fleet.Drain(ctx, second.Name); err != nil {
		t.Fatal(err)
	}
	if err := r.Fleet.Load(ctx); err != nil {
		t.Fatal(err)
	}
	third, err := r.Lookup(ctx, user)
	if err != nil || third == first || third == second {
		t.Fatalf("member drained: %v, %v", third, err)
	}
	markDown(r, third)
	if b, err := r.Lookup(ctx, user); err != nil || b != r.Backends["spare"] {
		t.Fatalf("no member left: %v, %v; want the fallback", b, err)
	}
	markDown(r, r.Backends["spare"])
	if _, err := r.Lookup(ctx, user); !errors.Is(err, ErrBackendDown) {
		t.Fatalf("no member and fallback down: %v", err)
	}
	if rec, _ := r.GetRoute(ctx, user); rec != (Record{Pool: "shared", Fallback: "spare"}) {
		t.Fatalf("pool record rewritten: %+v", rec)
	}
}

// TestBackendDownAndDrained: a fixed route to a down or drained backend
// fails at once with the matching error, or goes to the fallback.
func TestBackendDownAndDrained(t *testing.T) {
	srv := testsrv.StartRedis(t)
	ctx := context.Background()
	r := fleetRouter(t, srv.Addr)
	mx1, spare := r.Backends["mx1"], r.Backends["spare"]
	if err := r.SetRoute(ctx, "d@example.com", Record{Backend: "mx1"}); err != nil {
		t.Fatal(err)
	}
	if err := r.SetRoute(ctx, "f@example.com", Record{Backend: "mx1", Fallback: "spare"}); err != nil {
		t.Fatal(err)
	}

	if err := r.Fleet.Drain(ctx, "mx1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Fleet.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lookup(ctx, "d@example.com"); !errors.Is(err, ErrDrained) || errors.Is(err, ErrNotFound) {
		t.Fatalf("drained: %v", err)
	}
	if b, err := r.Lookup(ctx, "f@example.com"); err != nil || b != spare {
		t.Fatalf("drained with fallback: %v, %v", b, err)
	}
	st, err := r.Fleet.List(ctx)
	if err != nil || !st["mx1"].Drained || time.Since(st["mx1"].DrainedSince) > time.Minute {
		t.Fatalf("List: %+v, %v", st, err)
	}
	if err := r.Fleet.Undrain(ctx, "mx1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Fleet.Load(ctx); err != nil {
		t.Fatal(err)
	}

	markDown(r, mx1)
	start := time.Now()
	if _, err := r.Lookup(ctx, "d@example.com"); !errors.Is(err, ErrBackendDown) {
		t.Fatalf("down: %v", err)
	}
	if time.Since(start) > 500*time.Millisecond {
		t.Fatal("a lookup of a down backend was slow")
	}
	if b, err := r.Lookup(ctx, "f@example.com"); err != nil || b != spare {
		t.Fatalf("down with fallback: %v, %v", b, err)
	}
	// The backend's own Fallback applies when the record has none.
	mx1.Fallback = spare
	if b, err := r.Lookup(ctx, "d@example.com"); err != nil || b != spare {
		t.Fatalf("down with the backend's fallback: %v, %v", b, err)
	}
	mx1.Fallback = nil

	// Guard does the same for other routers.
	g := &Guard{Next: NewStatic(map[string]*Backend{"s@example.com": mx1}), Health: r.Health, Fleet: r.Fleet}
	if _, err := g.Lookup(ctx, "s@example.com"); !errors.Is(err, ErrBackendDown) {
		t.Fatalf("guard: %v", err)
	}
	if _, err := g.Lookup(ctx, "x@example.com"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("guard miss: %v", err)
	}
	r.Health.ReportSuccess(mx1)
	if b, err := g.Lookup(ctx, "s@example.com"); err != nil || b != mx1 {
		t.Fatalf("guard, backend back: %v, %v", b, err)
	}

	// Data errors in the new fields.
	for user, rec := range map[string]Record{
		"up@example.com": {Pool: "nosuchpool"},
		"uf@example.com": {Backend: "mx1", Fallback: "nosuch"},
	} {
		if err := r.SetRoute(ctx, user, rec); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Lookup(ctx, user); err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "unknown") {
			t.Fatalf("%+v: %v", rec, err)
		}
	}
}

// TestWeightOverride: Fleet.SetWeight changes the shares of new users.
func TestWeightOverride(t *testing.T) {
	srv := testsrv.StartRedis(t)
	ctx := context.Background()
	r := fleetRouter(t, srv.Addr)
	if err := r.Fleet.SetWeight(ctx, "mx1", 1000); err != nil {
		t.Fatal(err)
	}
	if err := r.Fleet.SetWeight(ctx, "mx1", -1); err == nil {
		t.Fatal("negative weight accepted")
	}
	if err := r.Fleet.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if w := r.Fleet.Weight(r.Backends["mx1"]); w != 1000 {
		t.Fatalf("weight %d", w)
	}
	for i := range 20 {
		ex, err := r.Explain(ctx, fmt.Sprintf("w%d@example.com", i))
		if err != nil {
			t.Fatal(err)
		}
		if ex.Backend.Name != "mx1" {
			t.Fatalf("weight 1000 against 2 and 3 lost: %v", ex.Steps)
		}
	}
	if err := r.Fleet.SetWeight(ctx, "mx1", 0); err != nil {
		t.Fatal(err)
	}
	if err := r.Fleet.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if w := r.Fleet.Weight(r.Backends["mx1"]); w != 1 {
		t.Fatalf("weight after reset: %d", w)
	}
	if err := r.Fleet.Drain(ctx, "bad name"); err == nil {
		t.Fatal("name with a space accepted")
	}
}

// TestExplain: the decision path is complete and Explain writes nothing.
func TestExplain(t *testing.T) {
	srv := testsrv.StartRedis(t)
	ctx := context.Background()
	r := fleetRouter(t, srv.Addr)
	raw := rawClient(t, srv.Addr)
	markDown(r, r.Backends["mx3"])

	ex, err := r.Explain(ctx, "new@example.com")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(ex.Steps, "\n")
	t.Logf("explain:\n%s", text)
	for _, want := range []string{"cache: miss", "no record", "pool main: policy assign", "score=", "mx3", "down", "would assign"} {
		if !strings.Contains(text, want) {
			t.Errorf("explanation lacks %q", want)
		}
	}
	if len(ex.Candidates) != 3 || ex.Candidates[0].Score < ex.Candidates[2].Score {
		t.Errorf("candidates: %v", ex.Candidates)
	}
	if n, err := raw.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Fatalf("Explain wrote %d keys (%v)", n, err)
	}
	if r.Cache.Len() != 0 {
		t.Fatal("Explain filled the cache")
	}
	// The same choice is then made by a real lookup.
	b, err := r.Lookup(ctx, "new@example.com")
	if err != nil || b != ex.Backend {
		t.Fatalf("Lookup chose %v (%v), Explain said %v", b, err, ex.Backend)
	}

	// A cached record shows both the cache and Redis.
	ex, err = r.Explain(ctx, "new@example.com")
	if err != nil || !strings.Contains(ex.Steps[0], "cache: hit") || !strings.Contains(ex.Steps[1], "redis ") {
		t.Fatalf("cached: %q, %v", ex.Steps, err)
	}
	// Errors are explained too.
	markDown(r, b)
	ex, err = r.Explain(ctx, "new@example.com")
	if !errors.Is(err, ErrBackendDown) || ex.Err != err || !strings.Contains(strings.Join(ex.Steps, "\n"), "backend is down") {
		t.Fatalf("down: %q, %v", ex.Steps, err)
	}
}
