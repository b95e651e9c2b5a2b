package testsrv

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisSentinel is a Sentinel-managed Redis owned by a test: one master, one
// replica and three sentinels with a quorum of two, all on loopback:
//
//	s := testsrv.StartRedisSentinel(t)
//	rdb := redis.NewUniversalClient(&redis.UniversalOptions{
//		MasterName: s.MasterName, Addrs: s.SentinelAddrs,
//	})
//	s.Failover(t) // the replica becomes master; rdb follows it
//
// The sentinels run as `redis-server <conf> --sentinel`, so the Debian
// redis-sentinel package is not needed.
type RedisSentinel struct {
	MasterName    string
	SentinelAddrs []string
	Dir           string // configs and logs

	mu         sync.Mutex
	data       map[string]*Redis // master and replica by address
	lastMaster string            // what the sentinels last agreed on
	sentinels  []*Redis
	stopOnce   sync.Once
}

// Sentinel timings: short enough for tests, long enough not to flap on a
// loaded two-core machine.
const (
	sentinelDownAfter       = 1000 * time.Millisecond
	sentinelFailoverTimeout = 3000 * time.Millisecond
	sentinelQuorum          = 2
	sentinelCount           = 3
)

// StartRedisSentinel starts the master, the replica and the sentinels, waits
// until every sentinel knows the replica and the other sentinels (so that a
// failover can get a quorum), and stops them all in t.Cleanup.
func StartRedisSentinel(t testing.TB) *RedisSentinel {
	t.Helper()
	bin := LookPath(t, "redis-server", "/usr/bin/redis-server")
	s := &RedisSentinel{MasterName: "portico-test", Dir: t.TempDir(), data: map[string]*Redis{}}
	t.Cleanup(s.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	master := startRedisNode(t, bin, s.Dir, "master", func(port int) []string {
		return redisBaseArgs(port, s.Dir)
	})
	mhost, mport, _ := net.SplitHostPort(master.Addr)
	replica := startRedisNode(t, bin, s.Dir, "replica", func(port int) []string {
		return append(redisBaseArgs(port, s.Dir), "--replicaof", mhost, mport)
	})
	s.data[master.Addr], s.data[replica.Addr] = master, replica
	s.lastMaster = master.Addr

	// A sentinel learns of replicas from the master's INFO, which it reads
	// on connect and then only every 10 s: the replica must be attached
	// before the sentinels start, or they would not see it for 10 s.
	if err := waitReplicaUp(ctx, replica.Addr); err != nil {
		s.fatalf(t, "replica %s never synced with %s: %v", replica.Addr, master.Addr, err)
	}

	for i := 0; i < sentinelCount; i++ {
		r := startRedisNode(t, bin, s.Dir, "sentinel", func(port int) []string {
			conf := filepath.Join(s.Dir, fmt.Sprintf("sentinel-%d.conf", port))
			// Sentinel rewrites its config file, so it must be its own.
			text := fmt.Sprintf(`port %d
bind 127.0.0.1
protected-mode no
dir %s
sentinel resolve-hostnames no
sentinel announce-ip 127.0.0.1
sentinel monitor %s %s %s %d
sentinel down-after-milliseconds %[3]s %[7]d
sentinel failover-timeout %[3]s %[8]d
sentinel parallel-syncs %[3]s 1
`, port, s.Dir, s.MasterName, mhost, mport, sentinelQuorum,
				sentinelDownAfter.Milliseconds(), sentinelFailoverTimeout.Milliseconds())
			if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
				t.Fatalf("testsrv: sentinel config: %v", err)
			}
			return []string{conf, "--sentinel"}
		})
		s.sentinels = append(s.sentinels, r)
		s.SentinelAddrs = append(s.SentinelAddrs, r.Addr)
	}

	// The sentinels find each other through hello messages every 2 s.
	if err := s.waitSentinels(ctx, master.Addr, 1); err != nil {
		s.fatalf(t, "sentinels not ready: %v", err)
	}
	return s
}

// MasterAddr returns the master's address as the sentinels report it, or,
// if none answers, the address they last agreed on.
func (s *RedisSentinel) MasterAddr() string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, addr := range s.SentinelAddrs {
		if m, err := s.askMaster(ctx, addr); err == nil {
			return m
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastMaster
}

// Failover makes the sentinels promote the replica with SENTINEL FAILOVER
// and waits until every sentinel reports it as the master and the old
// master has become its replica, so that Failover can be called again.
func (s *RedisSentinel) Failover(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	old := s.MasterAddr()
	// NOGOODSLAVE or INPROG can happen right after a previous failover, while
	// the sentinels still reconfigure: try again until ctx ends.
	err := poll(ctx, func() (bool, error) {
		c := s.sentinelClient(s.SentinelAddrs[0])
		defer c.Close()
		return true, c.Failover(ctx, s.MasterName).Err()
	})
	if err != nil {
		s.fatalf(t, "SENTINEL FAILOVER: %v", err)
	}
	newMaster := s.waitNewMaster(t, ctx, old)
	// The sentinels demote the old master only when their INFO, sent to a
	// replica every 10 s, shows it still claims to be master. Until then
	// it accepts writes that will be lost. Send it the REPLICAOF they
	// would send, so that the pair is whole again in milliseconds.
	host, port, _ := net.SplitHostPort(newMaster)
	oc := adminClient(old)
	err = oc.ReplicaOf(ctx, host, port).Err()
	oc.Close()
	if err != nil {
		s.fatalf(t, "REPLICAOF %s on the old master %s: %v", newMaster, old, err)
	}
	if err := waitReplicaUp(ctx, old); err != nil {
		s.fatalf(t, "old master %s did not become a replica of %s: %v", old, newMaster, err)
	}
	if err := s.waitSentinels(ctx, newMaster, 1); err != nil {
		s.fatalf(t, "sentinels after failover: %v", err)
	}
}

// KillMaster kills the master process, as a crash would, and waits until
// the sentinels agree on the promoted replica (after down-after-milliseconds,
// a quorum and a leader election: about 3 s). The killed node stays down, so
// a later Failover or KillMaster has no replica left to promote.
func (s *RedisSentinel) KillMaster(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	old := s.MasterAddr()
	s.mu.Lock()
	r := s.data[old]
	s.mu.Unlock()
	if r == nil {
		s.fatalf(t, "the sentinels' master %s is not one of ours", old)
	}
	r.Stop()
	s.waitNewMaster(t, ctx, old)
}

// Stop kills the sentinels first, so that they do not react to the data
// nodes going away, then the data nodes; it is safe to call more than once.
func (s *RedisSentinel) Stop() {
	s.stopOnce.Do(func() {
		for _, r := range s.sentinels {
			r.Stop()
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, r := range s.data {
			r.Stop()
		}
	})
}

// waitNewMaster waits until every sentinel names the same master, other
// than old, and that node says it is a master.
func (s *RedisSentinel) waitNewMaster(t testing.TB, ctx context.Context, old string) string {
	t.Helper()
	var agreed string
	err := poll(ctx, func() (bool, error) {
		agreed = ""
		for _, addr := range s.SentinelAddrs {
			m, err := s.askMaster(ctx, addr)
			if err != nil {
				return false, err
			}
			if m == old || (agreed != "" && m != agreed) {
				return false, nil
			}
			agreed = m
		}
		c := adminClient(agreed)
		defer c.Close()
		info, err := c.Info(ctx, "replication").Result()
		return infoField(info, "role") == "master", err
	})
	if err != nil {
		s.fatalf(t, "waiting for a new master instead of %s: %v", old, err)
	}
	s.mu.Lock()
	s.lastMaster = agreed
	s.mu.Unlock()
	return agreed
}

// waitSentinels waits until every sentinel sees master as the master, the
// two other sentinels, and at least replicas replicas.
func (s *RedisSentinel) waitSentinels(ctx context.Context, master string, replicas int) error {
	for _, addr := range s.SentinelAddrs {
		err := poll(ctx, func() (bool, error) {
			c := s.sentinelClient(addr)
			defer c.Close()
			m, err := c.Master(ctx, s.MasterName).Result()
			if err != nil {
				return false, err
			}
			at := net.JoinHostPort(m["ip"], m["port"])
			others, _ := strconv.Atoi(m["num-other-sentinels"])
			slaves, _ := strconv.Atoi(m["num-slaves"])
			return at == master && m["flags"] == "master" && others == sentinelCount-1 && slaves >= replicas, nil
		})
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", addr, err)
		}
	}
	return nil
}

func (s *RedisSentinel) askMaster(ctx context.Context, sentinel string) (string, error) {
	c := s.sentinelClient(sentinel)
	defer c.Close()
	hp, err := c.GetMasterAddrByName(ctx, s.MasterName).Result()
	if err != nil {
		return "", err
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("sentinel %s: odd master address %q", sentinel, hp)
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

func (s *RedisSentinel) sentinelClient(addr string) *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{
		Addr: addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		PoolSize: 1,
	})
}

func (s *RedisSentinel) fatalf(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Fatalf("testsrv: redis sentinel: %s\n%s", fmt.Sprintf(format, args...), tailLogs(s.Dir))
}

// waitReplicaUp waits until the node at addr is a replica whose link to its
// master is up.
func waitReplicaUp(ctx context.Context, addr string) error {
	c := adminClient(addr)
	defer c.Close()
	return poll(ctx, func() (bool, error) {
		info, err := c.Info(ctx, "replication").Result()
		return infoField(info, "role") == "slave" && infoField(info, "master_link_status") == "up", err
	})
}
