package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/routing"
)

// keys are the Redis names for one prefix; see the package documentation.
type keys struct {
	prefix  string
	proxies string
	drains  string
	control string
}

func keysFor(prefix string) keys {
	if prefix == "" {
		prefix = routing.DefaultRedisPrefix
	}
	return keys{
		prefix:  prefix,
		proxies: prefix + "proxies",
		drains:  prefix + "drainkicks",
		control: prefix + "control",
	}
}

func (k keys) sessions(user string) string { return k.prefix + "sessions:{" + user + "}" }
func (k keys) move(user string) string     { return k.prefix + "move:{" + user + "}" }
func (k keys) proxy(id string) string      { return k.prefix + "proxy:{" + id + "}" }

// ControlChannel is the pub/sub channel of kicks, moves and drain-kicks
// for the key prefix p (empty means routing.DefaultRedisPrefix).
func ControlChannel(p string) string { return keysFor(p).control }

// Every script touches one key, so that it runs on a Cluster, and takes
// "now" from the server, so that proxies' clocks do not matter. Scores are
// formatted with %.0f: Lua would print 1.7e+12.
const luaNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// touchScript drops dead members, adds or refreshes ARGV[2..] with expiry
// now+ARGV[1] ms, and makes the key live as long as its longest member.
var touchScript = redis.NewScript(luaNow + `
local exp = string.format('%.0f', now + tonumber(ARGV[1]))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now))
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], exp, ARGV[i]) end
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] then redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', tonumber(top[2]))) end
return 0`)

// liveScript lists the members that have not expired.
var liveScript = redis.NewScript(luaNow + `
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%.0f', now), '+inf')`)

// countScript counts them.
var countScript = redis.NewScript(luaNow + `
return redis.call('ZCOUNT', KEYS[1], string.format('%.0f', now), '+inf')`)

// replaceScript replaces a hash by the pairs ARGV[2..] with a TTL of
// ARGV[1] ms. HSET goes pair by pair: unpack() of thousands of arguments
// would overflow Lua's stack.
var replaceScript = redis.NewScript(`
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if #ARGV > 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 0`)

// detail is the JSON value of a session in its proxy's hash.
type detail struct {
	User      string `json:"user"`
	Client    string `json:"client,omitempty"`
	Listener  string `json:"listener,omitempty"`
	Backend   string `json:"backend,omitempty"`
	Since     int64  `json:"since,omitempty"` // Unix ms
	ToBackend int64  `json:"to_backend"`
	ToClient  int64  `json:"to_client"`
}

func encodeDetail(s SessionInfo) string {
	d := detail{
		User: s.User, Client: s.Client, Listener: s.Listener, Backend: s.Backend,
		ToBackend: s.BytesToBackend, ToClient: s.BytesToClient,
	}
	if !s.Since.IsZero() {
		d.Since = s.Since.UnixMilli()
	}
	b, _ := json.Marshal(d) // cannot fail: strings and numbers only
	return string(b)
}

func decodeDetail(id, proxy, v string) (Record, error) {
	var d detail
	if err := json.Unmarshal([]byte(v), &d); err != nil {
		return Record{}, fmt.Errorf("fleet: session %s@%s: bad details: %w", id, proxy, err)
	}
	r := Record{Proxy: proxy, SessionInfo: SessionInfo{
		ID: id, User: d.User, Client: d.Client, Listener: d.Listener, Backend: d.Backend,
		BytesToBackend: d.ToBackend, BytesToClient: d.ToClient,
	}}
	if d.Since != 0 {
		r.Since = time.UnixMilli(d.Since)
	}
	return r, nil
}

// Record is a live session as the registry knows it. Byte counts are as of
// the proxy's last heartbeat. A session whose details are missing (its
// proxy's hash is being rewritten or has expired first) has only ID, User
// and Proxy.
type Record struct {
	Proxy string
	SessionInfo
}

// ListSessions returns the live sessions of user, or of every user when
// user is "", sorted by user, start time and proxy. prefix "" means
// routing.DefaultRedisPrefix.
func ListSessions(ctx context.Context, client redis.UniversalClient, prefix, user string) ([]Record, error) {
	k := keysFor(prefix)
	var recs []Record
	var err error
	if user == "" {
		recs, err = listAll(ctx, client, k)
	} else {
		recs, err = listUser(ctx, client, k, user)
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
	members, err := liveScript.Run(ctx, client, []string{k.sessions(user)}).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("fleet: list sessions of %q: %w", user, err)
	}
	byProxy := make(map[string][]string)
	for _, m := range members {
		i := strings.LastIndexByte(m, '@')
		if i < 0 {
			continue
		}
		byProxy[m[i+1:]] = append(byProxy[m[i+1:]], m[:i])
	}
	if len(byProxy) == 0 {
		return nil, nil
	}
	p := client.Pipeline()
	cmds := make(map[string]*redis.SliceCmd, len(byProxy))
	for proxy, ids := range byProxy {
		cmds[proxy] = p.HMGet(ctx, k.proxy(proxy), ids...)
	}
	if _, err := p.Exec(ctx); err != nil {
		return nil, fmt.Errorf("fleet: list sessions of %q: %w", user, err)
	}
	var recs []Record
	for proxy, ids := range byProxy {
		vals := cmds[proxy].Val()
		for i, id := range ids {
			v, _ := vals[i].(string)
			r, err := decodeDetail(id, proxy, v)
			if v == "" || err != nil {
				r = Record{Proxy: proxy, SessionInfo: SessionInfo{ID: id}}
			}
			r.User = user
			recs = append(recs, r)
		}
	}
	return recs, nil
}

func listAll(ctx context.Context, client redis.UniversalClient, k keys) ([]Record, error) {
	proxies, err := Proxies(ctx, client, k.prefix)
	if err != nil {
		return nil, err
	}
	if len(proxies) == 0 {
		return nil, nil
	}
	p := client.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(proxies))
	for i, proxy := range proxies {
		cmds[i] = p.HGetAll(ctx, k.proxy(proxy))
	}
	if _, err := p.Exec(ctx); err != nil {
		return nil, fmt.Errorf("fleet: list sessions: %w", err)
	}
	var recs []Record
	for i, proxy := range proxies {
		for id, v := range cmds[i].Val() {
			r, err := decodeDetail(id, proxy, v)
			if err != nil {
				continue // written by something else; not worth failing the listing
			}
			recs = append(recs, r)
		}
	}
	return recs, nil
}

// CountSessions returns the number of live sessions of user fleet-wide, or
// of every user when user is "".
func CountSessions(ctx context.Context, client redis.UniversalClient, prefix, user string) (int, error) {
	if user == "" {
		recs, err := ListSessions(ctx, client, prefix, "")
		return len(recs), err
	}
	n, err := countScript.Run(ctx, client, []string{keysFor(prefix).sessions(user)}).Int()
	if err != nil {
		return 0, fmt.Errorf("fleet: count sessions of %q: %w", user, err)
	}
	return n, nil
}

// Proxies returns the IDs of the proxies whose heartbeat is current,
// sorted.
func Proxies(ctx context.Context, client redis.UniversalClient, prefix string) ([]string, error) {
	ids, err := liveScript.Run(ctx, client, []string{keysFor(prefix).proxies}).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("fleet: list proxies: %w", err)
	}
	sort.Strings(ids)
	return ids, nil
}
