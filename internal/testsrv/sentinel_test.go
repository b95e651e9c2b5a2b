package testsrv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestRedisSentinel(t *testing.T) {
	start := time.Now()
	s := StartRedisSentinel(t)
	t.Logf("sentinel setup ready in %v", time.Since(start))

	rdb := redis.NewUniversalClient(&redis.UniversalOptions{
		MasterName: s.MasterName, Addrs: s.SentinelAddrs, DisableIdentity: true,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second,
	})
	defer rdb.Close()
	if _, ok := rdb.(*redis.Client); !ok {
		t.Fatalf("NewUniversalClient with MasterName = %T, want the failover *redis.Client", rdb)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	first := s.MasterAddr()
	writeKeys(t, ctx, rdb, "before", 10)
	// Only replicated writes survive a failover.
	if n, err := rdb.Do(ctx, "WAIT", 1, 2000).Int64(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 = %d, %v", n, err)
	}

	start = time.Now()
	s.Failover(t)
	second := s.MasterAddr()
	t.Logf("SENTINEL FAILOVER %s -> %s in %v", first, second, time.Since(start))
	if second == first {
		t.Fatalf("master is still %s after Failover", first)
	}
	writeKeys(t, ctx, rdb, "after", 10)
	checkKeys(t, ctx, second, "before", 10)
	checkKeys(t, ctx, second, "after", 10)

	// Failover leaves a whole pair behind, so it can be repeated.
	s.Failover(t)
	if m := s.MasterAddr(); m != first {
		t.Fatalf("after a second Failover the master is %s, want %s back", m, first)
	}
	writeKeys(t, ctx, rdb, "again", 10)
	checkKeys(t, ctx, first, "again", 10)

	start = time.Now()
	s.KillMaster(t)
	third := s.MasterAddr()
	t.Logf("KillMaster %s -> %s in %v", first, third, time.Since(start))
	if third != second {
		t.Fatalf("after KillMaster the master is %s, want the replica %s", third, second)
	}
	writeKeys(t, ctx, rdb, "killed", 10)
	checkKeys(t, ctx, third, "killed", 10)

	s.Stop()
	s.Stop() // idempotent
}

// writeKeys writes prefix:0..n-1 through rdb, retrying each for a bounded
// time: right after a failover the client may still hold connections to
// the demoted master (READONLY) or to the dead one.
func writeKeys(t *testing.T, ctx context.Context, rdb redis.UniversalClient, prefix string, n int) {
	t.Helper()
	for i := range n {
		key := fmt.Sprintf("%s:%d", prefix, i)
		var err error
		for try := 0; try < 50; try++ {
			if err = rdb.Set(ctx, key, i, 0).Err(); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("SET %s after 50 tries: %v", key, err)
		}
	}
}

// checkKeys reads prefix:0..n-1 straight from the node at addr, which
// proves that the writes went to that node.
func checkKeys(t *testing.T, ctx context.Context, addr, prefix string, n int) {
	t.Helper()
	c := adminClient(addr)
	defer c.Close()
	for i := range n {
		key := fmt.Sprintf("%s:%d", prefix, i)
		if v, err := c.Get(ctx, key).Int(); err != nil || v != i {
			t.Fatalf("GET %s on %s = %d, %v; want %d", key, addr, v, err, i)
		}
	}
}
