package fleet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/routing"
)

// BenchmarkRegistry runs P proxies with N synthetic sessions each against
// one real redis-server, with the production heartbeat (10 s), session
// churn as from 10-minute sessions, and 200 route lookups per second on
// the same Redis, and reports what the registry costs Redis. Run it once:
//
//	go test -run '^$' -bench Registry -benchtime 1x -timeout 30m ./fleet/
//
// Sub-benchmarks: 1x10k, 1x100k, 20x100k (2 million sessions). The
// sessions are in memory only; no connection is opened for them.
// PORTICO_REGISTRY_HOLD sets the steady-state window (default 30s, three
// heartbeats).
func BenchmarkRegistry(b *testing.B) {
	for _, c := range []struct{ proxies, sessions int }{{1, 10_000}, {1, 100_000}, {20, 100_000}} {
		b.Run(fmt.Sprintf("%dx%s", c.proxies, short(c.sessions)), func(b *testing.B) {
			benchRegistry(b, c.proxies, c.sessions)
		})
	}
}

func short(n int) string {
	if n%1000 == 0 {
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

type benchLocal struct {
	mu       sync.Mutex
	sessions map[string]SessionInfo
}

func (l *benchLocal) Sessions() []SessionInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]SessionInfo, 0, len(l.sessions))
	for _, s := range l.sessions {
		out = append(out, s)
	}
	return out
}
func (l *benchLocal) KickUser(string, string) int           { return 0 }
func (l *benchLocal) KickBackend(string, time.Duration) int { return 0 }
func (l *benchLocal) replace(old string, s SessionInfo) SessionInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	ended := l.sessions[old]
	delete(l.sessions, old)
	l.sessions[s.ID] = s
	return ended
}

// benchSession is a session with realistic field sizes.
func benchSession(proxy, i int) SessionInfo {
	return SessionInfo{
		ID:       fmt.Sprintf("%04x%02x-%s", proxy*7919%65536, proxy, strconv.FormatInt(int64(i), 36)),
		User:     fmt.Sprintf("user%07d@example.net", (proxy*1_000_003+i*7)%1_500_000),
		Client:   fmt.Sprintf("198.51.%d.%d:%d", i%256, (i/256)%256, 1024+i%60000),
		Listener: "imaps", Backend: fmt.Sprintf("imap%02d", i%40),
		Since: time.Now().Add(-time.Duration(i%600) * time.Second), BytesToBackend: int64(i % 5000), BytesToClient: int64(i % 900000),
	}
}

func benchRegistry(b *testing.B, proxies, perProxy int) {
	hold := 30 * time.Second
	if v := os.Getenv("PORTICO_REGISTRY_HOLD"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		hold = d
	}
	r := testsrv.StartRedis(b)
	// On this shared 2-core machine, the load generator and 20 proxies
	// preempt Redis in the middle of commands, which SLOWLOG then reports
	// as slow. A production Redis has a core to itself; real-time
	// priority gives it one here (root only; without it the figures are
	// noisier).
	if out, err := exec.Command("chrt", "-f", "-p", "10", strconv.Itoa(r.Pid())).CombinedOutput(); err != nil {
		b.Logf("redis-server stays at normal priority: chrt: %v %s", err, out)
	}
	admin := newClient(b, r.Addr)
	ctx := context.Background()
	admin.ConfigSet(ctx, "slowlog-log-slower-than", "1000")
	admin.ConfigSet(ctx, "slowlog-max-len", "10000")

	routes := &routing.Redis{Client: newClient(b, r.Addr), Backends: map[string]*routing.Backend{"imap1": {Name: "imap1", Addr: "127.0.0.1:1"}}}
	for i := range 1000 {
		if err := routes.SetRoute(ctx, fmt.Sprintf("route%d@example.net", i), routing.Record{Backend: "imap1"}); err != nil {
			b.Fatal(err)
		}
	}
	idleCPU0 := procCPU(b, r.Pid())
	const idleFor = 5 * time.Second
	idleP99 := lookups(ctx, routes, idleFor, nil)
	idleCPU := procCPU(b, r.Pid()) - idleCPU0
	mem0 := infoInt(b, admin, "memory", "used_memory")

	// The proxies, each with its own client as in production, their
	// sessions known locally before Run: the first registration writes
	// them, exactly as a restore after a Redis restart does.
	total := proxies * perProxy
	var fleets []*Fleet
	var locals []*benchLocal
	for p := range proxies {
		l := &benchLocal{sessions: make(map[string]SessionInfo, perProxy)}
		for i := range perProxy {
			s := benchSession(p, i)
			l.sessions[s.ID] = s
		}
		f := &Fleet{Client: newClient(b, r.Addr), ProxyID: fmt.Sprintf("proxy%02d", p), Local: l,
			Logger: quietSlog()}
		fleets = append(fleets, f)
		locals = append(locals, l)
	}
	cpu0 := procCPU(b, r.Pid())
	start := time.Now()
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	for _, f := range fleets {
		wg.Go(func() { f.Run(runCtx) })
	}
	for {
		n, err := CountSessions(ctx, admin, "", "")
		if err == nil && n == total {
			break
		}
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("registry has %d of %d sessions after 5 minutes", n, total)
		}
		time.Sleep(100 * time.Millisecond)
	}
	restore := time.Since(start)
	restoreCPU := procCPU(b, r.Pid()) - cpu0
	// Let the restore's pipelines settle before reading memory.
	time.Sleep(time.Second)
	mem1 := infoInt(b, admin, "memory", "used_memory")

	// Steady state: churn of 10-minute sessions, lookups, heartbeats.
	admin.Do(ctx, "SLOWLOG", "RESET")
	admin.ConfigResetStat(ctx)
	rate := max(20, total/600) // starts (and as many ends) per second, fleet-wide
	net0 := infoInt(b, admin, "stats", "total_net_input_bytes")
	cpu0 = procCPU(b, r.Pid())
	steal0 := stealTime(b)
	hb0 := heartbeats(fleets)
	churnCtx, stopChurn := context.WithTimeout(ctx, hold)
	defer stopChurn()
	var churn sync.WaitGroup
	for p, f := range fleets {
		churn.Go(func() { churnProxy(churnCtx, f, locals[p], p, perProxy, rate/proxies) })
	}
	var lat []time.Duration
	steadyP99 := lookups(ctx, routes, hold, &lat)
	churn.Wait()
	cpu := procCPU(b, r.Pid()) - cpu0
	net := infoInt(b, admin, "stats", "total_net_input_bytes") - net0

	var dropped, failures uint64
	var longestHB time.Duration
	for _, f := range fleets {
		st := f.Stats()
		dropped += st.Dropped
		failures += st.HeartbeatFailures
		longestHB = max(longestHB, st.LastHeartbeat)
	}
	steal := stealTime(b) - steal0
	maxAvg := maxUsecPerCall(b, admin)
	slow, _ := admin.Do(ctx, "SLOWLOG", "GET", "10000").Slice()
	var longest time.Duration
	kinds := map[string]int{}
	for _, e := range slow {
		if f, ok := e.([]any); ok && len(f) > 3 {
			if us, ok := f[2].(int64); ok {
				longest = max(longest, time.Duration(us)*time.Microsecond)
				if args, ok := f[3].([]any); ok && len(args) > 0 {
					kinds[fmt.Sprintf("%v/%d args", args[0], len(args))]++
				}
			}
		}
	}
	b.Logf("commands over 1 ms by kind and size: %v", kinds)
	b.ReportMetric(float64(heartbeats(fleets)-hb0), "heartbeats")
	b.ReportMetric(float64(failures), "hb-failures")
	b.ReportMetric(float64(longestHB.Microseconds())/1000, "hb-ms")
	b.ReportMetric(100*cpu.Seconds()/hold.Seconds(), "redis-cpu-%")
	b.ReportMetric(100*idleCPU.Seconds()/idleFor.Seconds(), "redis-cpu-lookups-only-%")
	b.ReportMetric(maxAvg, "max-avg-cmd-µs")
	b.ReportMetric(100*steal.Seconds()/hold.Seconds()/float64(runtime.NumCPU()), "vm-steal-%")
	b.ReportMetric(float64(net)/hold.Seconds()/1024, "redis-in-KiB/s")
	b.ReportMetric(float64(len(slow)), "cmds>1ms")
	b.ReportMetric(float64(longest.Microseconds())/1000, "longest-cmd-ms")
	b.ReportMetric(float64(idleP99.Microseconds())/1000, "lookup-p99-idle-ms")
	b.ReportMetric(float64(steadyP99.Microseconds())/1000, "lookup-p99-ms")
	b.ReportMetric(float64(dropped), "dropped")
	b.ReportMetric(float64(mem1-mem0)/float64(total), "redis-B/session")
	b.ReportMetric(restore.Seconds(), "restore-s")
	b.ReportMetric(restoreCPU.Seconds(), "restore-redis-cpu-s")
	b.ReportMetric(float64(rate), "churn/s")
}

// churnProxy ends and starts rate sessions per second on one proxy.
func churnProxy(ctx context.Context, f *Fleet, l *benchLocal, p, perProxy, rate int) {
	rng := rand.New(rand.NewPCG(uint64(p), 7))
	next := perProxy
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	var owed float64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		owed += float64(rate) / 100
		for ; owed >= 1; owed-- {
			old := benchSession(p, rng.IntN(next))
			s := benchSession(p, next)
			next++
			ended := l.replace(old.ID, s)
			if ended.ID != "" {
				f.SessionEnded(ended)
			}
			f.SessionStarted(s)
		}
	}
}

func heartbeats(fs []*Fleet) uint64 {
	var n uint64
	for _, f := range fs {
		n += f.Stats().Heartbeats
	}
	return n
}

// lookups runs 200 route lookups per second for d and returns their p99.
func lookups(ctx context.Context, routes *routing.Redis, d time.Duration, all *[]time.Duration) time.Duration {
	var lat []time.Duration
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		<-t.C
		start := time.Now()
		routes.Lookup(ctx, fmt.Sprintf("route%d@example.net", i%1000))
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	if all != nil {
		*all = lat
	}
	if len(lat) == 0 {
		return 0
	}
	return lat[len(lat)*99/100]
}

func infoInt(b *testing.B, c redis.UniversalClient, section, field string) int64 {
	s, err := c.Info(context.Background(), section).Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(s, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatalf("no %s in INFO %s", field, section)
	return 0
}

// registryCommands are the commands of the registry and of route lookups;
// the benchmark's own INFO and SLOWLOG are left out.
var registryCommands = map[string]bool{"zadd": true, "zrem": true, "hset": true, "hdel": true,
	"hscan": true, "evalsha": true, "eval": true, "hgetall": true, "zrange": true, "hlen": true,
	"set": true, "exists": true, "publish": true, "pttl": true}

// maxUsecPerCall returns the highest average execution time of the
// commands Redis ran since the stats were reset: unlike SLOWLOG, which
// on a shared 2-core machine also catches commands whose thread was
// preempted, it shows what a command really costs.
func maxUsecPerCall(b *testing.B, c redis.UniversalClient) float64 {
	s, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var top float64
	var topName string
	defer func() { b.Logf("highest average: %s %.1f µs", topName, top) }()
	for _, line := range strings.Split(s, "\r\n") {
		name, rest, ok := strings.Cut(line, ":")
		cmd, ok2 := strings.CutPrefix(name, "cmdstat_")
		if !ok || !ok2 || !registryCommands[cmd] {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "usec_per_call="); ok {
				us, _ := strconv.ParseFloat(v, 64)
				if us > top {
					top, topName = us, cmd
				}
			}
		}
	}
	return top
}

// stealTime returns the CPU time the hypervisor has taken from this
// machine since boot: on a shared VM it stalls Redis in the middle of
// commands, and SLOWLOG counts those stalls.
func stealTime(b *testing.B) time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(string(data), "\n", 2)[0])
	st, _ := strconv.ParseInt(f[8], 10, 64)
	return time.Duration(st) * time.Second / 100 // USER_HZ
}

// procCPU returns the user+system CPU time of a process.
func procCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

func quietSlog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
