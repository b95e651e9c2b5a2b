package fleet

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/routing"
)

// keys are the Redis names for one prefix; see the package documentation.
type keys struct {
	prefix    string
	instances string
	sweeper   string
	drains    string
	moves     string
	control   string
	hot       string
}

func keysFor(prefix string) keys {
	if prefix == "" {
		prefix = routing.DefaultRedisPrefix
	}
	return keys{
		prefix:    prefix,
		instances: prefix + "instances",
		sweeper:   prefix + "sweeper",
		drains:    prefix + "drainkicks",
		moves:     prefix + "moves",
		control:   prefix + "control",
		hot:       prefix + "hot",
	}
}

func (k keys) live(user string) string { return k.prefix + "live:{" + user + "}" }
func (k keys) move(user string) string { return k.prefix + "move:{" + user + "}" }
func (k keys) inst(inst string) string { return k.prefix + "inst:{" + inst + "}" }

// ControlChannel is the pub/sub channel of kicks, moves and drain-kicks
// for the key prefix p (empty means routing.DefaultRedisPrefix).
func ControlChannel(p string) string { return keysFor(p).control }

// member is a session's member in its user's live set.
func member(id, inst string) string { return id + "@" + inst }

// splitMember undoes member; the instance never contains '@'.
func splitMember(m string) (id, inst string, ok bool) {
	i := strings.LastIndexByte(m, '@')
	if i < 0 {
		return "", "", false
	}
	return m[:i], m[i+1:], true
}

// instSep separates a proxy's ID from its incarnation in an instance name.
const instSep = '/'

// proxyOf returns the proxy ID of an instance name.
func proxyOf(inst string) string {
	if i := strings.LastIndexByte(inst, instSep); i >= 0 {
		return inst[:i]
	}
	return inst
}

// Scripts touch one key each, so that they run on a Cluster, and take
// "now" from the server, so that the proxies' clocks do not matter for
// liveness. Scores are formatted with %.0f: Lua would print 1.7e+12.
const luaNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// heartbeatScript refreshes instance ARGV[1] in the instances set to
// expire ARGV[2] ms from now. With ARGV[3] = "1" it registers a new
// instance (and fails with -2 if the name is taken); otherwise it refuses
// with -1 to bring back an instance that is gone or has expired, because
// the sweeper may already be deleting its sessions. On success it returns
// {1, live instances...}, which the proxy keeps for per-user counts.
var heartbeatScript = redis.NewScript(luaNow + `
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  if s then return {-2} end
elseif (not s) or tonumber(s) < now then
  return {-1}
end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%.0f', now), '+inf')
table.insert(live, 1, 1)
return live`)

// liveScript lists the instances whose heartbeat is current.
var liveScript = redis.NewScript(luaNow + `
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%.0f', now), '+inf')`)

// deadScript lists the instances whose heartbeat has expired.
var deadScript = redis.NewScript(luaNow + `
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now))`)

// forgetScript removes instance ARGV[1] from the set if it is still dead.
var forgetScript = redis.NewScript(luaNow + `
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) < now then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0`)

// A session's details in its instance's hash: tab-separated, to keep
// Redis memory per session small (a JSON object would cost ~60 bytes
// more per session at 2 million sessions). Fields: user, client,
// listener, backend, since (Unix ms), bytes to backend, bytes to client.
const detailFields = 7

func encodeDetail(s SessionInfo) string {
	var since int64
	if !s.Since.IsZero() {
		since = s.Since.UnixMilli()
	}
	b := make([]byte, 0, 96)
	for _, f := range [...]string{s.User, s.Client, s.Listener, s.Backend} {
		b = append(b, noTabs(f)...)
		b = append(b, '\t')
	}
	b = strconv.AppendInt(b, since, 10)
	b = append(b, '\t')
	b = strconv.AppendInt(b, s.BytesToBackend, 10)
	b = append(b, '\t')
	b = strconv.AppendInt(b, s.BytesToClient, 10)
	return string(b)
}

// noTabs keeps a field from breaking the format; none of them should
// hold a tab (users are validated, the rest come from the config).
func noTabs(s string) string {
	if strings.IndexByte(s, '\t') < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\t", " ")
}

var errBadDetail = errors.New("bad session details")

func decodeDetail(id, inst, v string) (Record, error) {
	f := strings.SplitN(v, "\t", detailFields)
	if len(f) != detailFields {
		return Record{}, fmt.Errorf("fleet: session %s@%s: %w", id, inst, errBadDetail)
	}
	var n [3]int64
	for i := range n {
		var err error
		if n[i], err = strconv.ParseInt(f[4+i], 10, 64); err != nil {
			return Record{}, fmt.Errorf("fleet: session %s@%s: %w", id, inst, errBadDetail)
		}
	}
	r := Record{Proxy: proxyOf(inst), SessionInfo: SessionInfo{
		ID: id, User: f[0], Client: f[1], Listener: f[2], Backend: f[3],
		BytesToBackend: n[1], BytesToClient: n[2],
	}}
	if n[0] != 0 {
		r.Since = time.UnixMilli(n[0])
	}
	return r, nil
}

// detailUser returns the user of an encoded detail without decoding the
// rest, for the sweeper.
func detailUser(v string) string {
	u, _, _ := strings.Cut(v, "\t")
	return u
}

// Record is a live session as the registry knows it. Byte counts are as of
// the owning proxy's last reconciliation (Fleet.Reconcile), not live. A
// session whose details are missing (a write of its start only half
// landed) has only ID, User and Proxy.
type Record struct {
	Proxy string // the proxy's ID (Fleet.ProxyID)
	SessionInfo
}

// liveInstances returns the set of instances whose heartbeat is current.
func liveInstances(ctx context.Context, client redis.UniversalClient, k keys) (map[string]bool, error) {
	ids, err := liveScript.Run(ctx, client, []string{k.instances}).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("fleet: list proxies: %w", err)
	}
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m, nil
}

// userMembers returns the user's live set as session ID and instance
// pairs, keeping only the instances in live.
func userMembers(ctx context.Context, client redis.UniversalClient, k keys, user string, live map[string]bool) ([][2]string, error) {
	ms, err := client.ZRange(ctx, k.live(user), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("fleet: sessions of %q: %w", user, err)
	}
	var out [][2]string
	for _, m := range ms {
		if id, inst, ok := splitMember(m); ok && live[inst] {
			out = append(out, [2]string{id, inst})
		}
	}
	return out, nil
}

// ListSessions returns the live sessions of user, or of every user when
// user is "", sorted by user, start time and proxy. prefix "" means
// routing.DefaultRedisPrefix. For every user it holds the whole fleet's
// sessions in memory: at hundreds of thousands of sessions use
// ScanSessions, which streams them.
func ListSessions(ctx context.Context, client redis.UniversalClient, prefix, user string) ([]Record, error) {
	var recs []Record
	var err error
	if user == "" {
		err = ScanSessions(ctx, client, prefix, func(r Record) error {
			recs = append(recs, r)
			return nil
		})
	} else {
		recs, err = listUser(ctx, client, keysFor(prefix), user)
	}
	if err != nil {
		return nil, err
	}
	sort.Slice(recs, func(i, j int) bool {
		a, b := recs[i], recs[j]
		if a.User != b.User {
			return a.User < b.User
		}
		if !a.Since.Equal(b.Since) {
			return a.Since.Before(b.Since)
		}
		if a.Proxy != b.Proxy {
			return a.Proxy < b.Proxy
		}
		return a.ID < b.ID
	})
	return recs, nil
}

func listUser(ctx context.Context, client redis.UniversalClient, k keys, user string) ([]Record, error) {
	live, err := liveInstances(ctx, client, k)
	if err != nil {
		return nil, err
	}
	members, err := userMembers(ctx, client, k, user, live)
	if err != nil || len(members) == 0 {
		return nil, err
	}
	p := client.Pipeline()
	cmds := make([]*redis.SliceCmd, len(members))
	for i, m := range members {
		cmds[i] = p.HMGet(ctx, k.inst(m[1]), m[0])
	}
	if _, err := p.Exec(ctx); err != nil {
		return nil, fmt.Errorf("fleet: list sessions of %q: %w", user, err)
	}
	recs := make([]Record, 0, len(members))
	for i, m := range members {
		v, _ := cmds[i].Val()[0].(string)
		r, err := decodeDetail(m[0], m[1], v)
		if err != nil {
			r = Record{Proxy: proxyOf(m[1]), SessionInfo: SessionInfo{ID: m[0]}}
		}
		r.User = user
		recs = append(recs, r)
	}
	return recs, nil
}

// scanCount is the COUNT of each HSCAN: a few hundred fields keep every
// command far below a millisecond of Redis time.
const scanCount = 500

// ScanSessions calls fn for every live session of the fleet, proxy by
// proxy and in no particular order, reading each proxy's sessions in
// pages with HSCAN so that neither Redis nor the caller ever handles the
// whole registry at once. A session that starts or ends during the scan
// may or may not be seen; one present throughout is seen exactly once,
// unless its proxy dies during the scan. fn's error stops the scan and is
// returned.
func ScanSessions(ctx context.Context, client redis.UniversalClient, prefix string, fn func(Record) error) error {
	k := keysFor(prefix)
	live, err := liveInstances(ctx, client, k)
	if err != nil {
		return err
	}
	insts := make([]string, 0, len(live))
	for inst := range live {
		insts = append(insts, inst)
	}
	sort.Strings(insts)
	// HSCAN may return a field twice; the IDs seen are kept per instance.
	for _, inst := range insts {
		seen := make(map[string]struct{})
		var cursor uint64
		for {
			kv, next, err := client.HScan(ctx, k.inst(inst), cursor, "", scanCount).Result()
			if err != nil {
				return fmt.Errorf("fleet: scan sessions of %s: %w", inst, err)
			}
			for i := 0; i+1 < len(kv); i += 2 {
				if _, dup := seen[kv[i]]; dup {
					continue
				}
				seen[kv[i]] = struct{}{}
				r, err := decodeDetail(kv[i], inst, kv[i+1])
				if err != nil {
					continue // written by something else; not worth failing the listing
				}
				if err := fn(r); err != nil {
					return err
				}
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
	}
	return nil
}

// CountSessions returns the number of live sessions of user fleet-wide, or
// of every user when user is "". Either costs two small reads: the live
// proxies, then the user's set or the length of each proxy's hash.
func CountSessions(ctx context.Context, client redis.UniversalClient, prefix, user string) (int, error) {
	k := keysFor(prefix)
	live, err := liveInstances(ctx, client, k)
	if err != nil {
		return 0, err
	}
	if user != "" {
		m, err := userMembers(ctx, client, k, user, live)
		if err != nil {
			return 0, fmt.Errorf("fleet: count sessions of %q: %w", user, err)
		}
		return len(m), nil
	}
	p := client.Pipeline()
	var cmds []*redis.IntCmd
	for inst := range live {
		cmds = append(cmds, p.HLen(ctx, k.inst(inst)))
	}
	if len(cmds) == 0 {
		return 0, nil
	}
	if _, err := p.Exec(ctx); err != nil {
		return 0, fmt.Errorf("fleet: count sessions: %w", err)
	}
	n := 0
	for _, c := range cmds {
		n += int(c.Val())
	}
	return n, nil
}

// Proxies returns the IDs of the proxies whose heartbeat is current,
// sorted.
func Proxies(ctx context.Context, client redis.UniversalClient, prefix string) ([]string, error) {
	live, err := liveInstances(ctx, client, keysFor(prefix))
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(live))
	ids := make([]string, 0, len(live))
	for inst := range live {
		if id := proxyOf(inst); !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}
