package e2e

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/routing"
)

// TestAssignmentAgreement: 100 simultaneous first logins of one user
// without a route, spread over three Portico instances sharing Redis, all
// land on one backend, and Redis holds exactly that one.
func TestAssignmentAgreement(t *testing.T) {
	r := testsrv.StartRedis(t)
	const user, pass = "newcomer@example.test", "newcomer-pw"
	var backends []*routing.Backend
	for i := 0; i < 3; i++ {
		be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: user, Password: pass})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { be.Close() })
		backends = append(backends, &routing.Backend{Name: fmt.Sprintf("mem%d", i), Addr: be.Addr(), Weight: i + 1})
	}
	pool := &routing.Pool{Name: "main", Members: backends, Policy: routing.PolicyAssign}
	baseline := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, baseline) })
	var ps []*portico
	for i := 0; i < 3; i++ {
		ps = append(ps, startPortico(t, porticoOptions{
			redis:    routing.RedisOptions{Addrs: []string{r.Addr}},
			backends: backends, pools: []*routing.Pool{pool}, defaultPool: pool,
			id: fmt.Sprintf("agree-%d", i), quiet: true,
		}))
	}
	_, cfg := porticoTLS(t)

	const logins = 100
	var wg sync.WaitGroup
	errs := make(chan error, logins)
	conns := make(chan *imapsConn, logins)
	start := make(chan struct{})
	for i := 0; i < logins; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialIMAPS(ps[i%3].addr, cfg, time.Now().Add(30*time.Second))
			if err != nil {
				errs <- err
				return
			}
			<-start
			if err := c.expectOK("a", "LOGIN "+quote(user)+" "+quote(pass)); err != nil {
				c.close()
				errs <- err
				return
			}
			conns <- c // kept open so that every proxy lists its session
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	close(conns)
	for err := range errs {
		t.Fatal(err)
	}
	defer func() {
		for c := range conns {
			c.close()
		}
	}()

	seen := map[string]int{}
	deadline := time.Now().Add(5 * time.Second)
	for {
		clear(seen)
		n := 0
		for _, p := range ps {
			for _, s := range p.srv.Sessions() {
				seen[s.Backend]++
				n++
			}
		}
		if n == logins || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(seen) != 1 {
		t.Fatalf("logins landed on %v, want one backend", seen)
	}
	rec, err := ps[0].router.GetRoute(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	for b, n := range seen {
		if n != logins || rec.Backend != b {
			t.Fatalf("%d sessions on %s; Redis says %s", n, b, rec.Backend)
		}
	}
}
