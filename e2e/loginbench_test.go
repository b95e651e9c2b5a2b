package e2e

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/routing"
)

// BenchmarkLoginsRedis measures full logins per second: a new TCP
// connection, a full TLS handshake (no session resumption: the worst
// case), AUTHENTICATE PLAIN with SASL-IR, the backend login behind it, and
// LOGOUT. The instances are wired as in production (route cache,
// invalidator, fleet registry and login gate, health) and share one
// redis-server; 200 users are routed over two in-memory backends, so the
// figures are Portico's and Redis', not a mail store's.
//
// About 16 clients run at once (SetParallelism(8) on two cores), each
// sending its logins round-robin over the instances of the sub-benchmark.
func BenchmarkLoginsRedis(b *testing.B) {
	const users = 200
	rs := testsrv.StartRedis(b)
	var mem1Users, mem2Users []membackend.User
	for i := 0; i < users; i++ {
		u := membackend.User{Name: userN(i), Password: passN(i)}
		if i%2 == 0 {
			mem1Users = append(mem1Users, u)
		} else {
			mem2Users = append(mem2Users, u)
		}
	}
	mem1, err := membackend.Start("127.0.0.1:0", mem1Users...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { mem1.Close() })
	mem2, err := membackend.Start("127.0.0.1:0", mem2Users...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { mem2.Close() })
	backends := []*routing.Backend{{Name: "mem1", Addr: mem1.Addr()}, {Name: "mem2", Addr: mem2.Addr()}}

	start := func(id string, noCache bool) *portico {
		return startPortico(b, porticoOptions{
			redis:    routing.RedisOptions{Addrs: []string{rs.Addr}},
			backends: backends, noCache: noCache, id: id, quiet: true,
		})
	}
	cached := []*portico{start("bench-1", false), start("bench-2", false), start("bench-3", false)}
	uncached := []*portico{start("bench-nocache", true)}

	ctx := context.Background()
	for i := 0; i < users; i++ {
		if err := cached[0].router.SetRoute(ctx, userN(i), routing.Record{Backend: backends[i%2].Name}); err != nil {
			b.Fatal(err)
		}
	}
	_, clientTLS := porticoTLS(b)
	// Warm up: every instance logs every user in once, so that the cached
	// runs measure cache hits, and any setup error shows before timing.
	for _, p := range append(cached, uncached...) {
		for i := 0; i < users; i++ {
			if err := benchLogin(p.addr, clientTLS, userN(i), passN(i)); err != nil {
				b.Fatalf("warm-up login of %s: %v", userN(i), err)
			}
		}
	}

	for _, bc := range []struct {
		name    string
		proxies []*portico
	}{
		{"1-proxy", cached[:1]},
		{"3-proxies", cached},
		{"1-proxy-nocache", uncached},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var next atomic.Uint64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1)
					p := bc.proxies[i%uint64(len(bc.proxies))]
					u := int(i % users)
					if err := benchLogin(p.addr, clientTLS, userN(u), passN(u)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
		})
	}
}

// benchLogin is one full login: connect, TLS, AUTHENTICATE PLAIN with
// SASL-IR, LOGOUT. It closes the connection, keeping file descriptors
// bounded by the number of clients.
func benchLogin(addr string, cfg *tls.Config, user, pass string) error {
	c, err := dialIMAPS(addr, cfg, time.Now().Add(30*time.Second))
	if err != nil {
		return err
	}
	defer c.close()
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	r, err := c.cmd("a", "AUTHENTICATE PLAIN "+ir)
	if err != nil {
		return fmt.Errorf("AUTHENTICATE %s: %w", user, err)
	}
	if !strings.HasPrefix(r, "a OK") {
		return fmt.Errorf("AUTHENTICATE %s: %q", user, r)
	}
	return c.expectOK("b", "LOGOUT")
}
