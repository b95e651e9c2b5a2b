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
	for _, name := range []string{"redis", "cold"} {
		b.Run(name, func(b *testing.B) {
			p := newHotProxy(b, r.Addr, name, testConfig())
			if name == "cold" {
				p.run(b)
			}
			b.ReportAllocs()
			for b.Loop() {
				if v := p.l.Check(ctx, addrA, "alice@example.com"); v.Block || v.Delay > 0 {
					b.Fatalf("verdict %+v", v)
				}
			}
			st := p.l.Stats()
			if name == "cold" && st.FromRedis > 0 || name == "redis" && st.Cold > 0 {
				b.Fatalf("stats %+v", st)
			}
		})
	}
}
