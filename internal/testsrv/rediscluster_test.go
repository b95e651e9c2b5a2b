package testsrv

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestRedisCluster(t *testing.T) {
	start := time.Now()
	c := StartRedisCluster(t, 3)
	t.Logf("cluster of %d masters ready in %v", len(c.Addrs), time.Since(start))

	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: c.Addrs, DisableIdentity: true})
	defer rdb.Close()
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		t.Fatalf("NewUniversalClient with %d addrs = %T, want *redis.ClusterClient", len(c.Addrs), rdb)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	const n = 60
	for i := range n {
		if err := rdb.Set(ctx, fmt.Sprintf("k%d", i), i, 0).Err(); err != nil {
			t.Fatalf("SET k%d: %v", i, err)
		}
	}
	for i := range n {
		v, err := rdb.Get(ctx, fmt.Sprintf("k%d", i)).Int()
		if err != nil || v != i {
			t.Fatalf("GET k%d = %d, %v; want %d", i, v, err, i)
		}
	}
	// The keys must really be spread: every master holds some of them.
	for _, addr := range c.Addrs {
		node := adminClient(addr)
		size, err := node.DBSize(ctx).Result()
		node.Close()
		if err != nil || size == 0 {
			t.Errorf("master %s holds %d keys (%v), want > 0", addr, size, err)
		}
	}

	script := redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('INCRBY', KEYS[2], tonumber(ARGV[1]))`)
	keys := []string{"rl:{alice}:last", "rl:{alice}:sum"}
	for want := int64(5); want <= 10; want += 5 {
		got, err := script.Run(ctx, rdb, keys, 5).Int64()
		if err != nil || got != want {
			t.Fatalf("script on hash-tagged keys = %d, %v; want %d", got, err, want)
		}
	}
	// Untagged keys land in different slots, which a script may not touch.
	err := script.Run(ctx, rdb, []string{"k1", "k2"}, 1).Err()
	if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("script on keys of two slots: err = %v, want CROSSSLOT", err)
	}

	c.Stop()
	c.Stop() // idempotent
}

func TestRedisClusterReplicas(t *testing.T) {
	start := time.Now()
	c := StartRedisClusterOpts(t, RedisClusterOptions{Masters: 3, ReplicasPerMaster: 1})
	t.Logf("cluster of %d masters + %d replicas ready in %v", len(c.Addrs), len(c.ReplicaAddrs), time.Since(start))

	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs, ReadOnly: true, DisableIdentity: true})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var replicas atomic.Int32 // ForEachSlave calls fn concurrently
	err := rdb.ForEachSlave(ctx, func(ctx context.Context, r *redis.Client) error {
		replicas.Add(1)
		return nil
	})
	if err != nil || replicas.Load() != 3 {
		t.Fatalf("ForEachSlave saw %d replicas (%v), want 3", replicas.Load(), err)
	}
	if err := rdb.Set(ctx, "x", "1", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	// ReadOnly may send the GET to a replica that has not caught up yet.
	err = poll(ctx, func() (bool, error) {
		v, err := rdb.Get(ctx, "x").Result()
		return v == "1", err
	})
	if err != nil {
		t.Fatalf("GET x: %v", err)
	}
}
