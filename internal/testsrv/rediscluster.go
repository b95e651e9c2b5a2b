package testsrv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterSlots is the fixed number of hash slots in a Redis Cluster.
const clusterSlots = 16384

// RedisClusterOptions configures StartRedisClusterOpts. The zero value
// starts three masters without replicas.
type RedisClusterOptions struct {
	Masters           int // 0 means 3, the smallest cluster redis-cli accepts
	ReplicasPerMaster int
}

// RedisCluster is a Redis Cluster of redis-server processes owned by a test.
type RedisCluster struct {
	// Addrs are the masters, in slot order: Addrs[0] serves the lowest
	// slots. Any of them is a valid seed for a cluster client; go-redis
	// needs more than one (or IsClusterMode) to pick a cluster client.
	Addrs []string
	// ReplicaAddrs are the replicas, ReplicasPerMaster per master in
	// master order.
	ReplicaAddrs []string
	Dir          string // config files and logs, one per node

	nodes    []*Redis
	stopOnce sync.Once
}

// StartRedisCluster starts a Redis Cluster of masters nodes (no replicas)
// on random loopback ports, waits until every node reports cluster_state:ok,
// and stops it in t.Cleanup:
//
//	c := testsrv.StartRedisCluster(t, 3)
//	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: c.Addrs})
func StartRedisCluster(t testing.TB, masters int) *RedisCluster {
	t.Helper()
	return StartRedisClusterOpts(t, RedisClusterOptions{Masters: masters})
}

// StartRedisClusterOpts is StartRedisCluster with replicas.
//
// The slots are assigned with CLUSTER ADDSLOTSRANGE and the nodes joined
// with CLUSTER MEET rather than with `redis-cli --cluster create`: it needs
// no second binary and skips redis-cli's one-second polling.
func StartRedisClusterOpts(t testing.TB, opts RedisClusterOptions) *RedisCluster {
	t.Helper()
	if opts.Masters == 0 {
		opts.Masters = 3
	}
	if opts.Masters < 1 || opts.ReplicasPerMaster < 0 {
		t.Fatalf("testsrv: redis cluster: bad options %+v", opts)
	}
	bin := LookPath(t, "redis-server", "/usr/bin/redis-server")
	c := &RedisCluster{Dir: t.TempDir()}
	t.Cleanup(c.Stop)

	total := opts.Masters * (1 + opts.ReplicasPerMaster)
	busPorts := make([]int, total)
	for i := 0; i < total; i++ {
		r := startRedisNode(t, bin, c.Dir, "cluster", func(port int) []string {
			// The bus port is chosen explicitly: the default port+10000 can
			// be taken or even exceed 65535 for a high ephemeral port.
			busPorts[i] = FreePort(t)
			return append(redisBaseArgs(port, c.Dir),
				"--cluster-enabled", "yes",
				"--cluster-config-file", fmt.Sprintf("nodes-%d.conf", port),
				"--cluster-node-timeout", "2000",
				"--cluster-port", strconv.Itoa(busPorts[i]),
				"--cluster-announce-ip", "127.0.0.1",
				// Replicas appear in CLUSTER SLOTS only once their
				// replication offset is non-zero, and on an idle master
				// only its pings to replicas (default every 10 s) move it.
				"--repl-ping-replica-period", "1")
		})
		c.nodes = append(c.nodes, r)
		if i < opts.Masters {
			c.Addrs = append(c.Addrs, r.Addr)
		} else {
			c.ReplicaAddrs = append(c.ReplicaAddrs, r.Addr)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clients := make([]*redis.Client, total)
	for i, n := range c.nodes {
		clients[i] = adminClient(n.Addr)
		defer clients[i].Close()
	}
	ids := make([]string, total)
	for i, rdb := range clients {
		id, err := rdb.Do(ctx, "CLUSTER", "MYID").Text()
		if err != nil {
			c.fatalf(t, "CLUSTER MYID on %s: %v", c.nodes[i].Addr, err)
		}
		ids[i] = id
		// Distinct epochs before the nodes meet, as redis-cli does, spare
		// the cluster a round of epoch-collision resolution.
		if err := rdb.Do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1).Err(); err != nil {
			c.fatalf(t, "CLUSTER SET-CONFIG-EPOCH on %s: %v", c.nodes[i].Addr, err)
		}
	}
	for i := 0; i < opts.Masters; i++ {
		lo := i * clusterSlots / opts.Masters
		hi := (i+1)*clusterSlots/opts.Masters - 1
		if err := clients[i].Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			c.fatalf(t, "CLUSTER ADDSLOTSRANGE %d %d on %s: %v", lo, hi, c.nodes[i].Addr, err)
		}
	}
	for i := 1; i < total; i++ {
		port := c.nodes[i].Addr[strings.LastIndexByte(c.nodes[i].Addr, ':')+1:]
		if err := clients[0].Do(ctx, "CLUSTER", "MEET", "127.0.0.1", port, busPorts[i]).Err(); err != nil {
			c.fatalf(t, "CLUSTER MEET %s: %v", c.nodes[i].Addr, err)
		}
	}

	// CLUSTER REPLICATE needs the master to be known to the replica, so
	// every node must first see every other one.
	c.waitAll(t, ctx, clients, "all nodes known", func(rdb *redis.Client) (bool, error) {
		s, err := rdb.Do(ctx, "CLUSTER", "NODES").Text()
		if err != nil {
			return false, err
		}
		lines := strings.Split(strings.TrimSpace(s), "\n")
		return len(lines) == total && !strings.Contains(s, "handshake") && !strings.Contains(s, "noaddr"), nil
	})
	for i := opts.Masters; i < total; i++ {
		master := (i - opts.Masters) / opts.ReplicasPerMaster
		if err := clients[i].Do(ctx, "CLUSTER", "REPLICATE", ids[master]).Err(); err != nil {
			c.fatalf(t, "CLUSTER REPLICATE on %s: %v", c.nodes[i].Addr, err)
		}
	}

	// A master turns cluster_state:ok no sooner than two seconds after it
	// started (CLUSTER_WRITABLE_DELAY in redis): the whole setup takes
	// about 2 s, and 4 s with replicas.
	c.waitAll(t, ctx, clients, "cluster_state:ok", func(rdb *redis.Client) (bool, error) {
		s, err := rdb.Do(ctx, "CLUSTER", "INFO").Text()
		if err != nil {
			return false, err
		}
		if infoField(s, "cluster_state") != "ok" || infoField(s, "cluster_known_nodes") != strconv.Itoa(total) {
			return false, nil
		}
		return true, nil
	})
	if opts.ReplicasPerMaster == 0 {
		return c
	}
	for i := opts.Masters; i < total; i++ {
		c.waitAll(t, ctx, clients[i:i+1], "replica link up", func(rdb *redis.Client) (bool, error) {
			s, err := rdb.Info(ctx, "replication").Result()
			return infoField(s, "master_link_status") == "up", err
		})
	}
	// A client reads the topology from CLUSTER SLOTS on any node, which
	// lists a replica only once that node has heard, by gossip, of a
	// non-zero replication offset for it.
	c.waitAll(t, ctx, clients, "replicas in CLUSTER SLOTS", func(rdb *redis.Client) (bool, error) {
		slots, err := rdb.ClusterSlots(ctx).Result()
		if err != nil {
			return false, err
		}
		for _, s := range slots {
			if len(s.Nodes) != 1+opts.ReplicasPerMaster {
				return false, nil
			}
		}
		return len(slots) == opts.Masters, nil
	})
	return c
}

// Stop kills every node; it is safe to call more than once.
func (c *RedisCluster) Stop() {
	c.stopOnce.Do(func() {
		for _, n := range c.nodes {
			n.Stop()
		}
	})
}

// waitAll polls cond on every client until it holds everywhere or ctx ends.
func (c *RedisCluster) waitAll(t testing.TB, ctx context.Context, clients []*redis.Client, what string, cond func(*redis.Client) (bool, error)) {
	t.Helper()
	for _, rdb := range clients {
		if err := poll(ctx, func() (bool, error) { return cond(rdb) }); err != nil {
			c.fatalf(t, "waiting for %s on %s: %v", what, rdb.Options().Addr, err)
		}
	}
}

func (c *RedisCluster) fatalf(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Fatalf("testsrv: redis cluster: %s\n%s", fmt.Sprintf(format, args...), tailLogs(c.Dir))
}

// redisBaseArgs are the flags every data node gets: loopback only, no
// persistence, and an address announced as 127.0.0.1 for replicas.
func redisBaseArgs(port int, dir string) []string {
	return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--protected-mode", "no", "--save", "", "--appendonly", "no",
		"--dir", dir, "--replica-announce-ip", "127.0.0.1",
		// The default waits 5 s for more replicas before a full sync.
		"--repl-diskless-sync-delay", "0"}
}

// adminClient is a go-redis client for setup commands: no retries, so
// that poll sees every failure, and no HELLO or CLIENT SETINFO noise.
func adminClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr: addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		PoolSize: 1,
	})
}

// poll calls cond every 50 ms until it returns true or ctx ends; the last
// error, if any, explains the timeout.
func poll(ctx context.Context, cond func() (bool, error)) error {
	var lastErr error
	for {
		ok, err := cond()
		if ok && err == nil {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), lastErr)
			}
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// infoField returns the value of "key:value" in INFO or CLUSTER INFO output.
func infoField(info, key string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+":"); ok {
			return v
		}
	}
	return ""
}

// tailLogs returns the last lines of every log in dir, for a failure message.
func tailLogs(dir string) string {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	var b strings.Builder
	for _, p := range logs {
		data, _ := os.ReadFile(p)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", filepath.Base(p), strings.Join(lines, "\n"))
	}
	return b.String()
}
