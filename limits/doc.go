// Package limits limits failed logins across a fleet of proxies: per
// client address (IPv6 per prefix, /64 by default), per user and address,
// and per user, with counters in Redis shared by every proxy, or in
// memory without Redis.
//
// A Limiter is a proxy.LoginLimiter:
//
//	l := limits.New(limits.DefaultConfig(), rdb, "portico:", logger)
//	l.Hot = f // a running fleet.Fleet: cold logins cost no Redis command
//	srv.Limiter = l
//
// The server asks Check before routing a login (one Redis round trip:
// the address's and the user's scripts in one pipeline), and tells Failed
// or Succeeded the outcome. Past a tier's DelayAfter failures an attempt
// waits first, Delay doubling per failure up to MaxDelay; the failure
// that reaches BlockAfter blocks the address, the user and address, or
// the user for BlockFor: attempts are then refused unverified and not
// counted. Counters drain continuously, BlockAfter failures per Window.
//
// The user tier does not lock the real user out: an address the user
// logged in from within KnownAddressTTL is known, and a known address is
// exempt from the user and the address tiers (not from user_ip). The
// same wrong password sent again for a user within RepeatWindow (a phone
// retrying an old saved password) counts once; it is recognised by an
// HMAC-SHA256 under Config.HashKey over the user and the password, cut
// to 64 bits: never the password, never a plain hash. Trusted networks
// are exempt.
//
// When Redis cannot be reached, the limiter either decides with this
// proxy's own counters (FailClosed false, the default), which record
// every outcome all along (bounded by Config.MaxEntries), or refuses
// logins with NO [UNAVAILABLE]. After
// an error Redis is left alone for a second, so that logins meanwhile
// are answered at once; then one login tries it again.
//
// # Redis schema
//
// P is the key prefix (routing.redis.key_prefix, "portico:"). NET is an
// address's network as written by netip.Prefix (203.0.113.7/32,
// 2001:db8:1:2::/64), USER the normalised user name. A counter is a
// string "COUNT T BLOCKEDUNTIL": the failures as of T, and the end of a
// block (0 for none), times in Unix ms of the Redis server's clock.
//
//	P bf:ip:{NET}       STRING  the address's counter; expires when it has
//	                            drained and no block runs.
//	P bf:user:{USER}    HASH    field "*": the user's counter; field NET:
//	                            the user's counter for that address (at
//	                            most 256; idle ones are dropped first).
//	                            Expires with the longest of them.
//	P bf:known:{USER}   ZSET    known addresses NET, scored by expiry; at
//	                            most KnownAddresses.
//	P bf:pw:{USER}      ZSET    the user's recent wrong passwords as keyed
//	                            hashes (16 hex digits), scored by last use;
//	                            at most 32, none older than RepeatWindow.
//
// The braces are Redis Cluster hash tags. Every script touches the keys
// of one slot: an address's, or a user's. A check is one EVALSHA per slot,
// sent together; a failure two, one after the other (the user's first: a
// repeat counts nowhere); a success one, not waited for.
//
// # Fleet hot set
//
// With Limiter.Hot (a fleet.Fleet), most checks cost no Redis command: a
// failure whose counters come within one failure of a delay marks the
// address ("ip NET") or the user ("user USER") hot on every proxy, until
// the counter has drained below that or its block has ended, and only
// the checks of a hot address or user (or of one with failures on this
// proxy) read the counters. Whenever the fleet cannot be sure of the set
// (control channel down, not resynced, overflowed) and while Redis is
// unreachable, checks work as without it. Stats.Cold and Stats.FromRedis
// count the two kinds of checks.
package limits
