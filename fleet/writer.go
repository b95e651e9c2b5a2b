package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Registry tuning. The costs they bound are in the package documentation.
const (
	// MaxPending bounds the session starts and ends waiting to be written
	// (while Redis is slow or away). Past it, changes are dropped and
	// counted, and a reconciliation repairs the registry once Redis is
	// back.
	MaxPending = 1 << 18
	// DefaultWriteRate is Fleet.WriteRate's default: sessions per second
	// that a restore, a reconciliation or a sweep may write or delete. At
	// 100,000 sessions a proxy restores its part within 20 s.
	DefaultWriteRate = 5000
	// DefaultReconcile is Fleet.Reconcile's default.
	DefaultReconcile = 5 * time.Minute
	// chunkSessions is the number of sessions in one pipeline: at two
	// commands each, at most 1,000 commands, each pipeline with its own
	// deadline.
	chunkSessions = 500
	// flushLinger gathers the changes of this long into one pipeline:
	// Redis spends more on a round trip than on the few commands in it,
	// and 2 million sessions churn thousands of times a second.
	flushLinger = 50 * time.Millisecond
)

// change is a session start or end still to be written.
type change struct {
	start bool
	// tried: a write of this start was attempted and may have landed, so
	// an end must be written even if the start is never retried.
	tried bool
	info  SessionInfo
}

// tracker records the sessions that start and end while a pass works
// from a snapshot of Local.Sessions, so that the pass neither writes back
// a session that has ended nor deletes one that started after the
// snapshot.
type tracker struct {
	started, ended map[string]struct{}
}

// Stats are counters of the registry writer, for metrics and tests.
type Stats struct {
	Pending    int    // session starts and ends not yet written (queued or in flight)
	Dropped    uint64 // changes dropped because MaxPending was reached
	Heartbeats uint64 // successful heartbeats
	// HeartbeatFailures counts heartbeats that got no answer in time.
	HeartbeatFailures uint64
	LastHeartbeat     time.Duration // how long the last heartbeat took
	// Incarnations counts registrations of this proxy: 1 after the first
	// heartbeat, one more each time Redis lost the proxy's entry (restart,
	// failover, or an outage longer than three heartbeats).
	Incarnations uint64
	// Restoring is true while a restore of this proxy's sessions (after a
	// new incarnation) is under way.
	Restoring bool
	// Reconciled counts completed reconciliation passes.
	Reconciled uint64
	// Repaired counts registry entries a reconciliation added or deleted.
	Repaired uint64
	// Swept counts sessions of dead proxies this proxy deleted as sweeper.
	Swept uint64
	// Hot is the size of this proxy's copy of the hot set, and
	// HotOverflow whether it is not trusted because the set outgrew
	// MaxHot. HotMarked counts keys this proxy wrote hot, HotMarkErrors
	// the failed writes (retried).
	Hot                      int
	HotOverflow              bool
	HotMarked, HotMarkErrors uint64
}

// Stats returns the writer's counters.
func (f *Fleet) Stats() Stats {
	if f == nil {
		return Stats{}
	}
	f.init()
	f.pmu.Lock()
	defer f.pmu.Unlock()
	s := f.stats
	s.Pending = len(f.pending) + f.inflight
	s.Dropped = f.dropped.Load()
	f.hot.mu.Lock()
	s.Hot, s.HotOverflow = len(f.hot.keys), f.hot.overflow
	f.hot.mu.Unlock()
	return s
}

func (f *Fleet) bump(fn func(*Stats)) {
	f.pmu.Lock()
	fn(&f.stats)
	f.pmu.Unlock()
}

// SessionStarted records the registration of a new session, written
// within milliseconds by the background writer. It never blocks.
func (f *Fleet) SessionStarted(info SessionInfo) {
	if f == nil || info.ID == "" {
		return
	}
	f.init()
	f.pmu.Lock()
	if f.track != nil {
		f.track.started[info.ID] = struct{}{}
	}
	f.queueLocked(change{start: true, info: info})
	f.pmu.Unlock()
	f.signal()
	// A session that starts while its user is being moved got past the
	// gate before the hold, with the old route: end it too.
	f.mu.Lock()
	m, ok := f.moving[info.User]
	stale := ok && time.Now().Before(m.until) && info.Backend != m.backend && !f.closed
	f.mu.Unlock()
	if stale && f.Local != nil {
		go f.Local.KickUser(info.User, ReasonMove)
	}
}

// SessionEnded records the removal of a session. It never blocks.
func (f *Fleet) SessionEnded(info SessionInfo) {
	if f == nil || info.ID == "" {
		return
	}
	f.init()
	f.pmu.Lock()
	if f.track != nil {
		f.track.ended[info.ID] = struct{}{}
	}
	if c, ok := f.pending[info.ID]; ok && c.start && !c.tried {
		// Never written: nothing to remove.
		delete(f.pending, info.ID)
	} else {
		f.queueLocked(change{info: SessionInfo{ID: info.ID, User: info.User}})
	}
	f.pmu.Unlock()
	f.signal()
}

func (f *Fleet) queueLocked(c change) {
	if _, ok := f.pending[c.info.ID]; !ok && len(f.pending) >= MaxPending {
		f.dropped.Add(1)
		f.repair = true
		return
	}
	f.pending[c.info.ID] = c
}

func (f *Fleet) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// requeue puts back the changes of a failed write, unless a newer change
// of the same session came in meanwhile.
func (f *Fleet) requeue(cs []change) {
	f.pmu.Lock()
	defer f.pmu.Unlock()
	f.inflight = 0
	for _, c := range cs {
		if _, newer := f.pending[c.info.ID]; newer {
			continue
		}
		c.tried = c.tried || c.start
		f.pending[c.info.ID] = c
	}
}

// takePending returns up to max pending changes and removes them.
func (f *Fleet) takePending(max int) []change {
	f.pmu.Lock()
	defer f.pmu.Unlock()
	if len(f.pending) == 0 {
		return nil
	}
	out := make([]change, 0, min(max, len(f.pending)))
	for id, c := range f.pending {
		out = append(out, c)
		delete(f.pending, id)
		if len(out) == max {
			break
		}
	}
	f.inflight = len(out)
	return out
}

func (f *Fleet) pendingLen() int {
	f.pmu.Lock()
	defer f.pmu.Unlock()
	return len(f.pending)
}

// opTimeout bounds one pipeline or script call.
func (f *Fleet) opTimeout() time.Duration {
	return min(max(f.hb, time.Second), 5*time.Second)
}

func (f *Fleet) ttl() time.Duration { return 3 * f.hb }

// newInstance names a new incarnation of this proxy: its ID and a random
// suffix, so that a restarted proxy with the same ID never counts the
// sessions of its previous life.
func (f *Fleet) newInstance() string {
	var b [4]byte
	rand.Read(b[:])
	return f.id + string(instSep) + hex.EncodeToString(b[:])
}

// heartbeats keeps this proxy's instance alive in Redis: one script call
// per heartbeat, whatever the number of sessions. When Redis has lost the
// instance, it registers a new one and hands it to the writer, which then
// restores every session under it.
func (f *Fleet) heartbeats(ctx context.Context) {
	h := health{log: f.log, what: "proxy heartbeat"}
	var inst string
	fresh := true
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		f.pmu.Lock()
		retired := f.retired
		f.pmu.Unlock()
		if retired {
			return
		}
		if fresh {
			inst = f.newInstance()
		}
		start := time.Now()
		bctx, cancel := context.WithTimeout(ctx, f.opTimeout())
		res, err := heartbeatScript.Run(bctx, f.Client, []string{f.keys.instances},
			inst, f.ttl().Milliseconds(), boolArg(fresh)).Slice()
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil && len(res) == 0 {
			err = fmt.Errorf("fleet: heartbeat: empty reply")
		}
		if err != nil {
			f.bump(func(s *Stats) { s.HeartbeatFailures++ })
			timer.Reset(h.next(fmt.Errorf("fleet: heartbeat: %w", err), f.hb))
			continue
		}
		h.next(nil, f.hb)
		status, _ := res[0].(int64)
		switch status {
		case -2: // name taken, against all odds: draw again
			timer.Reset(0)
			continue
		case -1:
			f.log.Warn("fleet: Redis lost this proxy's registry entry (restart, failover, or an outage longer than three heartbeats); registering again and restoring its sessions", "old_instance", inst)
			fresh = true
			timer.Reset(0)
			continue
		}
		live := make(map[string]bool, len(res)-1)
		for _, v := range res[1:] {
			if s, ok := v.(string); ok {
				live[s] = true
			}
		}
		took := time.Since(start)
		f.pmu.Lock()
		f.stats.Heartbeats++
		f.stats.LastHeartbeat = took
		f.live = live
		f.notLive = nil
		f.liveAt = time.Now()
		if fresh {
			f.stats.Incarnations++
			f.inst = inst
		}
		f.pmu.Unlock()
		if fresh {
			fresh = false
			select {
			case f.newInst <- struct{}{}:
			default:
			}
		}
		f.pruneMoving()
		timer.Reset(f.hb)
	}
}

// retireScript marks instance ARGV[1] dead (score 0) if it is there.
var retireScript = redis.NewScript(`
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[1]) end
return 0`)

// Retire marks this proxy's instance dead at once, for a clean shutdown:
// every reader stops counting its sessions now rather than three
// heartbeats later (a client that reconnects to another proxy is not
// counted twice against a per-user limit meanwhile), and the sweeper
// deletes whatever entries are left. Call it after the server's sessions
// have ended and Run has returned, or is returning: Run does not register
// again after it.
func (f *Fleet) Retire(ctx context.Context) error {
	if f == nil || f.Client == nil {
		return nil
	}
	f.init()
	f.pmu.Lock()
	f.retired = true
	inst := f.inst
	f.pmu.Unlock()
	if inst == "" {
		return nil
	}
	if err := retireScript.Run(ctx, f.Client, []string{f.keys.instances}, inst).Err(); err != nil {
		return fmt.Errorf("fleet: retire %s: %w", inst, err)
	}
	return nil
}

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func (f *Fleet) instance() string {
	f.pmu.Lock()
	defer f.pmu.Unlock()
	return f.inst
}

// UserSessions returns the number of live sessions of user fleet-wide with
// one small read (the user's set), filtered by the live proxies this
// proxy learnt at its last heartbeat; with SetHotSessions, none for a
// user with few sessions (see QueueUserSessions). A member of an instance
// that was not live then (a proxy started since) makes it read the live
// proxies again, once per heartbeat for each such instance; without a
// recent heartbeat it asks Redis for them every time.
func (f *Fleet) UserSessions(ctx context.Context, user string) (int, error) {
	pipe := f.Client.Pipeline()
	count := f.QueueUserSessions(pipe, user)
	if pipe.Len() > 0 {
		pipe.Exec(ctx) // errors are the command's
	}
	return count(ctx)
}

// QueueUserSessions is UserSessions in two halves, so that a caller can
// make its read part of a pipeline of its own (the brute-force limiter's
// check): it queues the read on pipe and returns the function that counts
// once pipe has run. That function may make a round trip of its own, in
// the cases where UserSessions makes a second one.
//
// With SetHotSessions, a user who is not hot for its sessions
// (Cold(HotKey(HotSessions, user))) is not read at all: the count is 0
// and the caller counts its own sessions only (proxy.Server does). The
// count then misses what other proxies hold, which is fewer than
// that number at their last write, plus:
//   - the sessions whose start is still being written (flushLinger, and
//     the message that marks the user, a round trip later), and those
//     shorter than that, which the writer never writes at all (a start
//     and an end not yet written cancel out), as the Redis count misses
//     them too;
//   - the sessions written while the user's mark is in flight.
//
// With SetHotSessions at half of Limits.MaxSessionsPerUser, the limit is
// missed only when proxies register more than that many of the user's
// sessions within about one write interval: that is the tolerance the
// limit documents ("Proxies that take a user's logins at the same moment
// may let a few past the limit").
func (f *Fleet) QueueUserSessions(pipe redis.Pipeliner, user string) func(context.Context) (int, error) {
	f.init()
	if f.SessionsCold(user) {
		return func(context.Context) (int, error) { return 0, nil }
	}
	f.pmu.Lock()
	live, notLive, at := f.live, f.notLive, f.liveAt
	f.pmu.Unlock()
	if live == nil || time.Since(at) > f.ttl() {
		return func(ctx context.Context) (int, error) { return CountSessions(ctx, f.Client, f.Prefix, user) }
	}
	cmd := pipe.ZRange(context.Background(), f.keys.live(user), 0, -1)
	return func(ctx context.Context) (int, error) {
		ms, err := cmd.Result()
		if err != nil {
			return 0, fmt.Errorf("fleet: sessions of %q: %w", user, err)
		}
		n, unknown := countLive(ms, live, notLive)
		if !unknown {
			return n, nil
		}
		if live, err = liveInstances(ctx, f.Client, f.keys); err != nil {
			return 0, err
		}
		f.pmu.Lock()
		if f.notLive == nil {
			f.notLive = make(map[string]bool)
		}
		for _, m := range ms {
			if _, inst, ok := splitMember(m); ok && !live[inst] {
				f.notLive[inst] = true
			}
		}
		f.live = live
		f.pmu.Unlock()
		n, _ = countLive(ms, live, nil)
		return n, nil
	}
}

// countLive counts the members of live instances, and says whether some
// member's instance is neither live nor known not to be.
func countLive(members []string, live, notLive map[string]bool) (n int, unknown bool) {
	for _, m := range members {
		_, inst, ok := splitMember(m)
		switch {
		case !ok:
		case live[inst]:
			n++
		case !notLive[inst]:
			unknown = true
		}
	}
	return n, unknown
}

// writer writes session changes as they come, and works through restores
// and reconciliations in paced chunks between them. It is the only writer
// of this proxy's entries, so it needs no locking against itself.
func (f *Fleet) writer(ctx context.Context) {
	h := health{log: f.log, what: "session registry"}
	var (
		inst      string
		p         *pass
		retryAt   time.Time // no write before, after a failure
		flushed   time.Time // last write of changes, for flushLinger
		stepAt    time.Time // next chunk of the pass, by the write rate
		reconcile = time.Now().Add(f.reconcile)
	)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	defer f.endPass()
	for {
		now := time.Now()
		if inst != "" && !now.Before(later(retryAt, flushed.Add(flushLinger))) {
			n, err := f.flush(ctx, inst)
			if n > 0 {
				flushed = now
			}
			if err == nil && p == nil {
				f.pmu.Lock()
				due := f.repair || !now.Before(reconcile)
				f.repair = false
				f.pmu.Unlock()
				if due {
					p = f.beginPass(false)
					reconcile = now.Add(f.reconcile)
				}
			}
			if err == nil && p != nil && !now.Before(stepAt) {
				var n int
				n, err = p.step(ctx, f, inst)
				stepAt = time.Now().Add(time.Duration(n) * time.Second / time.Duration(f.rate))
				if err == nil && p.done() {
					f.finishPass(p)
					p = nil
				}
			}
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				retryAt = time.Now().Add(h.next(err, f.hb))
			} else {
				h.next(nil, f.hb)
			}
		}
		// Sleep until something is to do.
		wait := time.Hour
		if inst != "" {
			gate := later(retryAt, flushed.Add(flushLinger))
			switch {
			case f.pendingLen() > 0:
				wait = time.Until(gate)
			case p != nil:
				wait = time.Until(later(stepAt, gate))
			default:
				wait = time.Until(later(reconcile, gate))
			}
		}
		if wait <= 0 {
			continue
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-f.newInst:
			// A new incarnation: everything is written again under it;
			// the old one's entries are the sweeper's.
			inst = f.instance()
			f.endPass()
			p = f.beginPass(true)
			stepAt, retryAt = time.Time{}, time.Time{}
		case <-f.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// flush writes every pending change, in chunks, and returns how many it
// wrote.
func (f *Fleet) flush(ctx context.Context, inst string) (int, error) {
	n := 0
	for {
		cs := f.takePending(chunkSessions)
		if len(cs) == 0 {
			return n, nil
		}
		if err := f.writeChanges(ctx, inst, cs); err != nil {
			f.requeue(cs)
			return n, err
		}
		n += len(cs)
		f.pmu.Lock()
		f.inflight = 0
		f.pmu.Unlock()
	}
}

func (f *Fleet) writeChanges(ctx context.Context, inst string, cs []change) error {
	ctx, cancel := context.WithTimeout(ctx, f.opTimeout())
	defer cancel()
	b := f.newBatch(inst)
	for _, c := range cs {
		if c.start {
			b.add(ctx, c.info)
		} else {
			b.remove(ctx, c.info.ID, c.info.User)
		}
	}
	if err := b.exec(ctx); err != nil {
		return fmt.Errorf("fleet: write %d session changes: %w", len(cs), err)
	}
	f.markCrowded(b)
	return nil
}

// HotSessionsFor is how long a user stays hot for its session count
// after the registry last saw it with SetHotSessions's number of sessions:
// the count is then read from Redis at each of its logins. Each write
// of one of its sessions' starts renews it once half of it has passed.
const HotSessionsFor = 10 * time.Minute

// markCrowded marks hot the users whose live set the batch found with
// SetHotSessions's number of members or more. A set's size counts the members of
// dead proxies too, until the sweeper removes them: a user is marked a
// little early, never late.
func (f *Fleet) markCrowded(b *batch) {
	now := time.Now()
	for user, card := range b.cards {
		if n := f.hotSessions.Load(); n <= 0 || card.Val() < n {
			continue
		}
		key := HotKey(HotSessions, user)
		if f.hotUntil(key).Sub(now) > HotSessionsFor/2 {
			continue // marked recently enough
		}
		f.MarkHot(key, now.Add(HotSessionsFor))
	}
}

// batch gathers the writes of one pipeline: a ZADD or ZREM per session
// in its user's set, but a single HSET and a single HDEL for all the
// fields of the instance's hash, because one command of 500 fields costs
// Redis far less than 500 commands of one.
type batch struct {
	p    redis.Pipeliner
	k    keys
	inst string
	set  []any // field, value, …
	del  []string
	// cards, with SetHotSessions, are the sizes of the live sets the
	// batch adds to, read after the adds (for markCrowded): one ZCARD
	// per user and batch.
	cards map[string]*redis.IntCmd
}

func (f *Fleet) newBatch(inst string) *batch {
	b := &batch{p: f.Client.Pipeline(), k: f.keys, inst: inst}
	if f.hotSessions.Load() > 0 {
		b.cards = make(map[string]*redis.IntCmd)
	}
	return b
}

func (b *batch) add(ctx context.Context, s SessionInfo) {
	since := s.Since
	if since.IsZero() {
		since = time.Now()
	}
	b.p.ZAdd(ctx, b.k.live(s.User), redis.Z{Score: float64(since.UnixMilli()), Member: member(s.ID, b.inst)})
	b.set = append(b.set, s.ID, encodeDetail(s))
	if b.cards != nil {
		b.cards[s.User] = nil // read in exec, after every add
	}
}

// update rewrites a session's details only.
func (b *batch) update(s SessionInfo) { b.set = append(b.set, s.ID, encodeDetail(s)) }

func (b *batch) remove(ctx context.Context, id, user string) {
	if user != "" {
		b.p.ZRem(ctx, b.k.live(user), member(id, b.inst))
	}
	b.del = append(b.del, id)
}

func (b *batch) empty() bool { return len(b.set) == 0 && len(b.del) == 0 }

func (b *batch) exec(ctx context.Context) error {
	if b.empty() {
		return nil
	}
	ik := b.k.inst(b.inst)
	if len(b.set) > 0 {
		b.p.HSet(ctx, ik, b.set...)
	}
	if len(b.del) > 0 {
		b.p.HDel(ctx, ik, b.del...)
	}
	for u := range b.cards {
		b.cards[u] = b.p.ZCard(ctx, b.k.live(u))
	}
	_, err := b.p.Exec(ctx)
	return err
}

// beginPass starts tracking session changes, then takes the snapshot the
// pass works from: in that order, so that no session can end unseen
// between the snapshot and the tracking.
func (f *Fleet) beginPass(restore bool) *pass {
	f.pmu.Lock()
	f.track = &tracker{started: make(map[string]struct{}), ended: make(map[string]struct{})}
	if restore {
		f.stats.Restoring = true
	}
	f.pmu.Unlock()
	p := &pass{restore: restore, snap: make(map[string]SessionInfo), scanning: !restore}
	if f.Local != nil {
		for _, s := range f.Local.Sessions() {
			if s.ID != "" {
				p.snap[s.ID] = s
			}
		}
	}
	if restore {
		p.todo = make([]string, 0, len(p.snap))
		for id := range p.snap {
			p.todo = append(p.todo, id)
		}
	} else {
		p.seen = make(map[string]struct{}, len(p.snap))
	}
	return p
}

func (f *Fleet) endPass() {
	f.pmu.Lock()
	f.track = nil
	f.stats.Restoring = false
	f.pmu.Unlock()
}

func (f *Fleet) finishPass(p *pass) {
	f.pmu.Lock()
	f.track = nil
	f.stats.Restoring = false
	if !p.restore {
		f.stats.Reconciled++
	}
	f.stats.Repaired += p.repaired
	f.pmu.Unlock()
	if p.repaired > 0 && !p.restore {
		f.log.Info("fleet: reconciliation repaired the session registry", "entries", p.repaired)
	}
}

// pass is a restore (write every local session) or a reconciliation
// (scan this instance's hash against the local sessions: delete what
// is not local, add what is missing, refresh byte counts), done in chunks
// so that it never blocks Redis or the writer, and resumable after a
// failed chunk.
type pass struct {
	restore  bool
	snap     map[string]SessionInfo
	scanning bool
	cursor   uint64
	seen     map[string]struct{}
	todo     []string // sessions of snap to add
	repaired uint64
}

func (p *pass) done() bool { return !p.scanning && len(p.todo) == 0 }

// step does one chunk and returns the number of sessions it looked at,
// for pacing.
func (p *pass) step(ctx context.Context, f *Fleet, inst string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, f.opTimeout())
	defer cancel()
	if p.scanning {
		return p.scanStep(ctx, f, inst)
	}
	n := min(chunkSessions, len(p.todo))
	chunk := p.todo[len(p.todo)-n:]
	b := f.newBatch(inst)
	added := 0
	f.pmu.Lock()
	for _, id := range chunk {
		if _, ended := f.track.ended[id]; ended {
			continue
		}
		if c, ok := f.pending[id]; ok && c.start {
			continue // the writer has it
		}
		b.add(ctx, p.snap[id])
		added++
	}
	f.pmu.Unlock()
	if err := b.exec(ctx); err != nil {
		return n, fmt.Errorf("fleet: restore %d sessions: %w", added, err)
	}
	f.markCrowded(b)
	p.todo = p.todo[:len(p.todo)-n]
	if !p.restore {
		p.repaired += uint64(added)
	}
	return n, nil
}

func (p *pass) scanStep(ctx context.Context, f *Fleet, inst string) (int, error) {
	ik := f.keys.inst(inst)
	kv, next, err := f.Client.HScan(ctx, ik, p.cursor, "", scanCount).Result()
	if err != nil {
		return 0, fmt.Errorf("fleet: reconcile: scan: %w", err)
	}
	b := f.newBatch(inst)
	var stale uint64
	f.pmu.Lock()
	for i := 0; i+1 < len(kv); i += 2 {
		id, v := kv[i], kv[i+1]
		if _, ok := f.track.ended[id]; ok {
			continue // its end is or was written
		}
		if s, ok := p.snap[id]; ok {
			p.seen[id] = struct{}{}
			if encodeDetail(s) != v {
				b.update(s) // byte counts moved on
			}
			continue
		}
		if _, ok := f.track.started[id]; ok {
			continue // started after the snapshot
		}
		if _, ok := f.pending[id]; ok {
			continue
		}
		b.remove(ctx, id, detailUser(v))
		stale++
	}
	f.pmu.Unlock()
	if err := b.exec(ctx); err != nil {
		return len(kv) / 2, fmt.Errorf("fleet: reconcile: %w", err)
	}
	p.repaired += stale
	p.cursor = next
	if next == 0 {
		p.scanning = false
		for id := range p.snap {
			if _, ok := p.seen[id]; !ok {
				p.todo = append(p.todo, id)
			}
		}
		p.seen = nil
	}
	return len(kv) / 2, nil
}
