// Package fleet coordinates the live sessions of every Portico proxy that
// shares one Redis: a fleet-wide session registry, kicks, moves of a user to
// another backend, and drain deadlines.
//
// A proxy runs one Fleet next to its server:
//
//	f := &fleet.Fleet{Client: rdb, Local: adapter{srv}}
//	srv.OnSplice = func(s proxy.SessionInfo) { f.SessionStarted(convert(s)) }
//	srv.OnEnd = func(s proxy.SessionInfo) { f.SessionEnded(convert(s)) }
//	srv.LoginGate = f.LoginGate
//	go f.Run(ctx)
//
// and the command line talks to Redis alone, with no proxy running:
//
//	recs, err := fleet.ListSessions(ctx, rdb, "", "alice")
//	err = fleet.Kick(ctx, rdb, "", "alice")
//	err = fleet.Move(ctx, rdb, "", routes, "alice", "imap2", fleet.MoveOptions{})
//	err = fleet.DrainKick(ctx, rdb, "", "imap1", time.Now().Add(time.Hour), 10*time.Minute)
//
// # Redis schema
//
// Every key starts with the prefix P (empty means routing.DefaultRedisPrefix,
// "portico:"). Times are Unix milliseconds. Expiry scores come from the
// Redis server's clock (TIME inside scripts), so the proxies' clocks need
// not agree for the registry; drain deadlines are wall-clock times and
// assume NTP.
//
//	P sessions:{USER}   ZSET   member "SESSIONID@PROXYID", score = expiry.
//	                           Written when a session starts, refreshed by
//	                           every heartbeat of its proxy to now+3*heartbeat,
//	                           removed when the session ends. Members with a
//	                           score in the past are dead; the key's own TTL
//	                           follows the highest score. The user's
//	                           fleet-wide connection count is
//	                           ZCOUNT key now +inf.
//	P proxy:{PROXYID}   HASH   field SESSIONID = JSON details of a session:
//	                           {"user","client","listener","backend",
//	                           "since" (ms),"to_backend","to_client" (bytes)}.
//	                           Rewritten whole by each heartbeat, so the byte
//	                           counts are as of the last heartbeat; key TTL
//	                           3*heartbeat.
//	P proxies           ZSET   member PROXYID, score = expiry (now+3*heartbeat).
//	P move:{USER}       STRING a move's hold, "BACKEND TOKEN", with a TTL
//	                           (MoveOptions.Hold). New logins of USER wait
//	                           while it exists.
//	P drainkicks        HASH   field BACKEND = "DEADLINE WINDOW" (ms, ms):
//	                           pending drain-kicks, for proxies that were not
//	                           listening when one was published. The key's
//	                           TTL covers the latest deadline+window plus a
//	                           minute; readers skip fields past theirs.
//	P control           pub/sub channel of JSON messages {"op": "kick" |
//	                           "move" | "release" | "drain" | "undrain", ...}.
//
// The braces are Redis Cluster hash tags: a user's sessions and move hold
// live in one slot. No command or script touches more than one key, so the
// schema works unchanged on a standalone server, Sentinel or a Cluster (where
// PUBLISH reaches every node).
//
// A proxy that crashes stops refreshing: its members' scores fall into the
// past, its hash and its proxies entry expire, and within three heartbeats
// its sessions are gone from every listing and count.
//
// # Consistency
//
// SessionStarted and SessionEnded never block: they queue an event that a
// background writer applies within milliseconds. When the queue is full,
// or Redis is unreachable, events are dropped and counted (Dropped), and the
// next successful heartbeat, which writes this proxy's whole state from
// Local.Sessions, repairs the registry. Pub/sub delivery is at most once, so
// on every (re)subscription a proxy re-reads the pending drain-kicks and
// re-checks every held login; move holds themselves are always read from
// Redis, never from memory.
package fleet
