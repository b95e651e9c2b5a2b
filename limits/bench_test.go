package limits

import (
	"testing"

	"github.com/portico-mail/portico/internal/testsrv"
)

// BenchmarkCheck compares a check read from Redis (a real local
// redis-server: the address's and the user's scripts in one pipeline)
// with one a cold hot set answers without Redis.
func BenchmarkCheck(b *testing.B) {
	r := testsrv.StartRedis(b)
	// cold+sessions: max_sessions_per_user on, the user below half of
	// it, as internal/app wires a fleet and a limiter.
	for _, name := range []string{"redis", "cold", "cold+sessions"} {
		b.Run(name, func(b *testing.B) {
			p := newHotProxy(b, r.Addr, name, testConfig())
			if name == "cold+sessions" {
				p.f.SetHotSessions(5)
				p.l.CountSessions = p.f.QueueUserSessions
				p.l.SessionsCold = p.f.SessionsCold
			}
			if name != "redis" {
				p.run(b)
			}
			b.ReportAllocs()
			for b.Loop() {
				if v := p.l.Check(ctx, addrA, "alice@example.com"); v.Block || v.Delay > 0 {
					b.Fatalf("verdict %+v", v)
				}
			}
			st := p.l.Stats()
			if name != "redis" && st.FromRedis > 0 || name == "redis" && st.Cold > 0 {
				b.Fatalf("stats %+v", st)
			}
		})
	}
}
