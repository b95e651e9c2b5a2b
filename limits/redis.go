package limits

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// keys names the limiter's Redis keys. The part in braces is the Redis
// Cluster hash tag: an address's key has a slot of its own, a user's keys
// share the user's slot, and every script touches one slot only.
type keys struct{ prefix string }

func (k keys) ip(net netip.Prefix) string { return k.prefix + "bf:ip:{" + net.String() + "}" }
func (k keys) user(user string) string    { return k.prefix + "bf:user:{" + user + "}" }
func (k keys) known(user string) string   { return k.prefix + "bf:known:{" + user + "}" }
func (k keys) pw(user string) string      { return k.prefix + "bf:pw:{" + user + "}" }

// luaCommon is the Lua version of tier.go's counter: a counter is stored
// as "COUNT T BLOCKEDUNTIL" (T and BLOCKEDUNTIL in Unix ms of the Redis
// server's clock, BLOCKEDUNTIL 0 for no block).
const luaCommon = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function load(v, now, rate)
  if not v then return 0, 0 end
  local n, t, b = string.match(v, '^(%S+) (%S+) (%S+)$')
  if not n then return 0, 0 end
  n = tonumber(n) - (now - tonumber(t)) * rate
  if n < 0 then n = 0 end
  b = tonumber(b)
  if b <= now then b = 0 end
  return n, b
end
local function pack(n, now, b)
  return string.format('%.3f %.0f %.0f', n, now, b)
end
local function fmt(n) return string.format('%.3f', n) end
local function left(b, now)
  if b > now then return b - now end
  return 0
end
-- fail adds one failure; it returns the count, the block's end, 1 if
-- this failure began the block, and how long the counter matters (ms).
local function fail(v, now, rate, limit, blockms)
  local n, b = load(v, now, rate)
  n = n + 1
  local began = 0
  if b == 0 and n + 0.5 >= limit then
    b = now + blockms
    began = 1
  end
  local ttl = math.ceil(n / rate)
  if b - now > ttl then ttl = b - now end
  return n, b, began, ttl
end
`

// checkIPScript reads an address's counter.
// KEYS: ip. ARGV: rate. Returns {count, block ms left}.
var checkIPScript = redis.NewScript(luaCommon + `
local now = now_ms()
local n, b = load(redis.call('GET', KEYS[1]), now, tonumber(ARGV[1]))
return {fmt(n), left(b, now)}
`)

// failIPScript adds a failure to an address's counter.
// KEYS: ip. ARGV: rate, block_after, block_for ms.
// Returns {count, block ms left, began}.
var failIPScript = redis.NewScript(luaCommon + `
local now = now_ms()
local n, b, began, ttl = fail(redis.call('GET', KEYS[1]), now, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
redis.call('SET', KEYS[1], pack(n, now, b), 'PX', ttl + 1000)
return {fmt(n), left(b, now), began}
`)

// checkUserScript reads a user's counter, the user's counter for one
// address and how long that address stays known.
// KEYS: user, known. ARGV: net, user rate, user_ip rate.
// Returns {user count, ms left, user_ip count, ms left, known ms left}.
var checkUserScript = redis.NewScript(luaCommon + `
local now = now_ms()
local v = redis.call('HMGET', KEYS[1], '*', ARGV[1])
local un, ub = load(v[1], now, tonumber(ARGV[2]))
local inn, ib = load(v[2], now, tonumber(ARGV[3]))
local known = redis.call('ZSCORE', KEYS[2], ARGV[1])
if known then known = left(tonumber(known), now) else known = 0 end
return {fmt(un), left(ub, now), fmt(inn), left(ib, now), known}
`)

// failUserScript records a failed login of a user from an address: a
// repeat of a recent wrong password (by its keyed hash) refreshes it and
// counts nothing; anything else counts in the user's and the user and
// address's counters.
// KEYS: user, pw. ARGV: net, tag ("" for none), user rate, user
// block_after, user block_for ms, user_ip rate, user_ip block_after,
// user_ip block_for ms, repeat window ms, max tags, max addresses.
// Returns {1} for a repeat, else {0, user count, ms left, began, user_ip
// count, ms left, began}.
var failUserScript = redis.NewScript(luaCommon + `
local now = now_ms()
local net, tag = ARGV[1], ARGV[2]
if tag ~= '' then
  local pw, window = KEYS[2], tonumber(ARGV[9])
  redis.call('ZREMRANGEBYSCORE', pw, '-inf', now - window)
  local seen = redis.call('ZSCORE', pw, tag)
  redis.call('ZADD', pw, now, tag)
  if not seen then
    local extra = redis.call('ZCARD', pw) - tonumber(ARGV[10])
    if extra > 0 then redis.call('ZREMRANGEBYRANK', pw, 0, extra - 1) end
  end
  redis.call('PEXPIRE', pw, window)
  if seen then return {1} end
end
local h = KEYS[1]
local urate, irate = tonumber(ARGV[3]), tonumber(ARGV[6])
local un, ub, ubegan, ttl = fail(redis.call('HGET', h, '*'), now, urate, tonumber(ARGV[4]), tonumber(ARGV[5]))
redis.call('HSET', h, '*', pack(un, now, ub))
local cur = redis.call('HGET', h, net)
local inn, ib, ibegan = 0, 0, 0
local room = true
if not cur and redis.call('HLEN', h) > tonumber(ARGV[11]) then
  local all = redis.call('HGETALL', h)
  for i = 1, #all, 2 do
    if all[i] ~= '*' then
      local n, b = load(all[i + 1], now, irate)
      if n < 0.5 and b == 0 then redis.call('HDEL', h, all[i]) end
    end
  end
  room = redis.call('HLEN', h) <= tonumber(ARGV[11])
end
if room then
  local ittl
  inn, ib, ibegan, ittl = fail(cur, now, irate, tonumber(ARGV[7]), tonumber(ARGV[8]))
  redis.call('HSET', h, net, pack(inn, now, ib))
  if ittl > ttl then ttl = ittl end
end
if redis.call('PTTL', h) < ttl + 1000 then redis.call('PEXPIRE', h, ttl + 1000) end
return {0, fmt(un), left(ub, now), ubegan, fmt(inn), left(ib, now), ibegan}
`)

// successScript records a login of a user from an address: the address
// becomes known (or stays known longer) and its user_ip counter is
// forgotten.
// KEYS: user, known. ARGV: net, known ttl ms, max known.
var successScript = redis.NewScript(luaCommon + `
local now = now_ms()
local net, ttl = ARGV[1], tonumber(ARGV[2])
redis.call('HDEL', KEYS[1], net)
redis.call('ZADD', KEYS[2], now + ttl, net)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1) end
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
`)

// showUserScript returns what the CLI shows of a user.
// KEYS: user, known, pw. Returns {now, user hash as field/value pairs,
// known addresses with expiry, number of recent wrong passwords}.
var showUserScript = redis.NewScript(luaCommon + `
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return {now, redis.call('HGETALL', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), redis.call('ZCARD', KEYS[3])}
`)

// redisStore keeps the counters in Redis, shared by the fleet.
type redisStore struct {
	rdb  redis.UniversalClient
	keys keys
	cfg  *Config
	args struct{ ipRate, userRate, uipRate string }
}

func newRedisStore(rdb redis.UniversalClient, prefix string, cfg *Config) *redisStore {
	r := &redisStore{rdb: rdb, keys: keys{prefix}, cfg: cfg}
	r.args.ipRate = ftoa(cfg.IP.rate())
	r.args.userRate = ftoa(cfg.User.rate())
	r.args.uipRate = ftoa(cfg.UserIP.rate())
	return r
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// call is one script call of a pipeline.
type call struct {
	script *redis.Script
	keys   []string
	args   []any
	cmd    *redis.Cmd
}

// run runs the calls in one round trip: one EVALSHA, or a pipeline of
// them (on a Cluster, go-redis sends each node its part at once). A
// script the server does not have (it restarted) is sent again with
// EVAL, which loads it.
//
// queue, when not nil, adds other commands to the pipeline; their
// results are theirs to read.
func (r *redisStore) run(ctx context.Context, queue func(redis.Pipeliner), calls ...*call) error {
	if len(calls) == 1 && queue == nil {
		c := calls[0]
		c.cmd = c.script.Run(ctx, r.rdb, c.keys, c.args...)
		return c.cmd.Err()
	}
	pipe := r.rdb.Pipeline()
	for _, c := range calls {
		c.cmd = c.script.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	if queue != nil {
		queue(pipe)
	}
	pipe.Exec(ctx) // errors are per command
	for _, c := range calls {
		if err := c.cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			c.cmd = c.script.Eval(ctx, r.rdb, c.keys, c.args...)
		}
		if err := c.cmd.Err(); err != nil {
			return err
		}
	}
	return nil
}

// check reads what a login is judged by, and runs queue's commands in the
// same round trip.
func (r *redisStore) check(ctx context.Context, net netip.Prefix, user string, queue func(redis.Pipeliner)) (snapshot, error) {
	ip := &call{script: checkIPScript, keys: []string{r.keys.ip(net)}, args: []any{r.args.ipRate}}
	calls := []*call{ip}
	var u *call
	if user != "" {
		u = &call{script: checkUserScript, keys: []string{r.keys.user(user), r.keys.known(user)},
			args: []any{net.String(), r.args.userRate, r.args.uipRate}}
		calls = append(calls, u)
	}
	if err := r.run(ctx, queue, calls...); err != nil {
		return snapshot{}, err
	}
	var s snapshot
	v, err := reply(ip.cmd, 2)
	if err != nil {
		return s, err
	}
	s.ip = level{n: num(v[0]), blocked: ms(v[1])}
	if u != nil {
		if v, err = reply(u.cmd, 5); err != nil {
			return s, err
		}
		s.user = level{n: num(v[0]), blocked: ms(v[1])}
		s.userIP = level{n: num(v[2]), blocked: ms(v[3])}
		s.knownLeft = ms(v[4])
		s.known = s.knownLeft > 0
	}
	return s, nil
}

// fail records a failure: first for the user, who may have sent this
// wrong password before (then nothing else is counted), then for the
// address: two round trips, on the failure path only.
func (r *redisStore) fail(ctx context.Context, net netip.Prefix, user, tag string) (failResult, error) {
	var res failResult
	c := r.cfg
	if user != "" {
		u := &call{script: failUserScript, keys: []string{r.keys.user(user), r.keys.pw(user)}, args: []any{
			net.String(), tag,
			r.args.userRate, c.User.BlockAfter, c.User.BlockFor.Milliseconds(),
			r.args.uipRate, c.UserIP.BlockAfter, c.UserIP.BlockFor.Milliseconds(),
			c.RepeatWindow.Milliseconds(), maxPasswords, maxUserAddresses,
		}}
		if err := r.run(ctx, nil, u); err != nil {
			return res, err
		}
		v, err := reply(u.cmd, 1)
		if err != nil {
			return res, err
		}
		if num(v[0]) == 1 {
			res.repeat = true
			return res, nil
		}
		if len(v) != 7 {
			return res, fmt.Errorf("limits: unexpected reply %v", v)
		}
		res.user = level{n: num(v[1]), blocked: ms(v[2])}
		res.userIP = level{n: num(v[4]), blocked: ms(v[5])}
		if num(v[3]) == 1 {
			res.began = append(res.began, tierUser)
		}
		if num(v[6]) == 1 {
			res.began = append(res.began, tierUserIP)
		}
	}
	ip := &call{script: failIPScript, keys: []string{r.keys.ip(net)},
		args: []any{r.args.ipRate, c.IP.BlockAfter, c.IP.BlockFor.Milliseconds()}}
	if err := r.run(ctx, nil, ip); err != nil {
		return res, err
	}
	v, err := reply(ip.cmd, 3)
	if err != nil {
		return res, err
	}
	res.ip = level{n: num(v[0]), blocked: ms(v[1])}
	if num(v[2]) == 1 {
		res.began = append(res.began, tierIP)
	}
	return res, nil
}

// succeed is the one write of a successful login.
func (r *redisStore) succeed(ctx context.Context, net netip.Prefix, user string) error {
	c := &call{script: successScript, keys: []string{r.keys.user(user), r.keys.known(user)},
		args: []any{net.String(), r.cfg.KnownAddressTTL.Milliseconds(), r.cfg.KnownAddresses}}
	return r.run(ctx, nil, c)
}

// reply returns a script's array reply, which must hold at least n
// elements.
func reply(cmd *redis.Cmd, n int) ([]any, error) {
	v, err := cmd.Slice()
	if err != nil {
		return nil, err
	}
	if len(v) < n {
		return nil, fmt.Errorf("limits: unexpected reply %v", v)
	}
	return v, nil
}

// num reads a number from a script reply: an integer, or a count as a
// string.
func num(v any) float64 {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case string:
		f, _ := strconv.ParseFloat(x, 64)
		return f
	}
	return 0
}

func ms(v any) time.Duration { return time.Duration(num(v)) * time.Millisecond }
