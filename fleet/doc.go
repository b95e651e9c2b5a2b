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
// "portico:"). Times are Unix milliseconds. A running proxy is an
// instance, "PROXYID/INCARNATION": a proxy draws a new incarnation when it
// starts and whenever Redis has lost its entry, so a restarted proxy never
// counts the sessions of its previous life.
//
//	P instances        ZSET   member INSTANCE, score = expiry, set by each
//	                          heartbeat to now+3*heartbeat from the Redis
//	                          server's clock (TIME in a script). An instance
//	                          with a score in the past is dead, for good: its
//	                          heartbeat refuses to bring it back.
//	P live:{USER}      ZSET   member "SESSIONID@INSTANCE", score = session
//	                          start. Added when a session starts, removed
//	                          when it ends. The user's fleet-wide session
//	                          count is the number of members whose instance
//	                          is live: one ZRANGE of a few members, filtered
//	                          by the live instances.
//	P inst:{INSTANCE}  HASH   field SESSIONID = the session's details, tab
//	                          separated: user, client, listener, backend,
//	                          since, bytes to backend, bytes to client.
//	                          Written when the session starts, deleted when
//	                          it ends; byte counts are refreshed by the
//	                          reconciliation (Fleet.Reconcile).
//	P sweeper          STRING the sweeper's lease (SET NX PX 3*heartbeat).
//	P move:{USER}      STRING a move's hold, "BACKEND TOKEN", with a TTL
//	                          (MoveOptions.Hold). New logins of USER wait
//	                          while it exists.
//	P moves            HASH   field USER = "BACKEND UNTIL TOKEN" (UNTIL in
//	                          ms): the moves under way, read by every proxy
//	                          at each resync so that a missed message does
//	                          not let logins past a hold.
//	P drainkicks       HASH   field BACKEND = "DEADLINE WINDOW" (ms, ms):
//	                          pending drain-kicks, for proxies that were not
//	                          listening when one was published. The key's
//	                          TTL covers the latest deadline+window plus a
//	                          minute; readers skip fields past theirs.
//	P hot              ZSET   member "ip NET" | "user USER" | "sessions USER",
//	                          score = until (ms, the marking proxy's clock):
//	                          the hot set, what logins must ask Redis about
//	                          (Fleet.Cold, Fleet.MarkHot). ZADD GT (Redis
//	                          6.2), so the later expiry wins; read at each
//	                          resync of every proxy (at most MaxHot+1
//	                          members), pruned of expired members by the
//	                          sweeper.
//	P control          pub/sub channel of JSON messages {"op": "kick" |
//	                          "move" | "release" | "drain" | "undrain" |
//	                          "ping" | "hot", ...}; a hot message is
//	                          {"op": "hot", "key": KEY, "until": ms}.
//
// The braces are Redis Cluster hash tags: a user's sessions and move hold
// live in one slot, each instance's hash in another. No command or script
// touches more than one key, so the schema works unchanged on a standalone
// server, Sentinel or a Cluster (where PUBLISH reaches every node).
//
// # Cost
//
// The registry's cost follows session churn, not session count:
//
//   - a session start is one ZADD and one HSET, an end one ZREM and one
//     HDEL, pipelined in batches of at most 500 sessions;
//   - a heartbeat is one short script call per proxy, whatever its number
//     of sessions (it also returns the live instances, which the proxy
//     keeps for per-user counts: Fleet.UserSessions);
//   - a reconciliation walks the proxy's own hash with HSCAN, a few hundred
//     fields a step at Fleet.WriteRate sessions per second, every
//     Fleet.Reconcile (5 minutes by default);
//   - no command touches more than a few hundred fields, so none blocks
//     Redis for long; listings of every session (ScanSessions) page through
//     the hashes with HSCAN.
//
// # Failures
//
// A proxy that stops cleanly retires its instance (Retire): readers ignore
// its sessions at once. A proxy that crashes stops its heartbeat: within
// three heartbeats every reader ignores its sessions. The sweeper, one proxy elected with SET NX
// PX, then deletes them in paced chunks and removes the dead instance.
//
// SessionStarted and SessionEnded never block: they record a pending
// change that the writer writes within milliseconds. A change whose write
// fails stays pending and is retried with backoff; a start and an end of
// the same session that were never written cancel out. Pending changes are
// bounded (MaxPending); past that they are dropped and counted (Dropped),
// and a reconciliation, which compares the proxy's entries with
// Local.Sessions, repairs the registry. Nothing is ever rewritten whole
// because one write failed.
//
// When Redis restarts empty or fails over to a replica that lacks the
// proxy's entries, the next heartbeat finds the instance gone: the proxy
// registers a new incarnation and restores its sessions under it in
// chunks of at most 1,000 commands, each with its own deadline, at
// Fleet.WriteRate sessions per second (100,000 sessions in 20 s by
// default), while new changes go on being written. The same happens after
// an outage longer than three heartbeats, since readers have meanwhile
// taken the proxy for dead.
//
// Pub/sub delivery is at most once, so on every (re)subscription, and
// every heartbeat, a proxy re-reads the pending drain-kicks, the moves
// under way and the hot set, and publishes a ping that it expects back:
// while its pings come back, it knows every move hold from memory and a
// login costs no Redis read for the gate; otherwise LoginGate reads the
// hold key.
//
// # Hot set
//
// The same rule spares most logins the brute-force limiter's read and
// the per-user session count. A proxy whose failure counters for an
// address or a user come near a limit, or whose registry writes find a
// user with many sessions, marks the key hot (MarkHot): written to P hot,
// then announced. Every proxy asks Redis about a login only when one of
// its keys is hot, or when it cannot be sure that none is (Cold: control
// channel unhealthy, not resynced, or more than MaxHot keys). The set's
// size and its writes follow failures and crowded users, never the
// number of sessions.
package fleet
