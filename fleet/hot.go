package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The hot set names what a login must ask Redis about; everything else a
// proxy decides from memory. Its members ("keys") are
//
//	"ip NET"        failures from the client network NET (netip.Prefix.String)
//	                come near a limit: the brute-force limiter reads its counters
//	"user USER"     failures of USER (from any address) come near a limit
//	"sessions USER" USER has enough sessions that Limits.MaxSessionsPerUser
//	                must be counted fleet-wide (see Fleet.HotSessions)
//
// each with an expiry. A proxy that finds a key hot writes it to Redis
// (P hot) and announces it on the control channel; every proxy keeps the
// set in memory, from the messages and from the resync every heartbeat,
// and trusts its copy under the same rule as the move holds
// (controlHealthy). The set follows failures and crowded users, never
// the number of sessions.

// MaxHot bounds the hot set a proxy trusts. Past it (an attack from a
// great many addresses at once), every proxy stops trusting its copy and
// asks Redis at every login, as it does without a fleet, until a resync
// finds the set small again: memory and resync reads stay bounded (at
// 10,000 members a resync reads about 400 KB per heartbeat), and the
// fallback is the safe one.
const MaxHot = 10_000

// Hot key kinds; a key is the kind, a space and the subject.
const (
	HotIP       = "ip"
	HotUser     = "user"
	HotSessions = "sessions"
)

// HotKey returns the hot-set key of kind for subject.
func HotKey(kind, subject string) string { return kind + " " + subject }

// hotSet is a proxy's copy of the hot set, and the marks it still has
// to write.
type hotSet struct {
	mu       sync.Mutex
	keys     map[string]time.Time // key -> until
	overflow bool                 // more than MaxHot: trust nothing
	pending  map[string]time.Time // marks to write to Redis
	wake     chan struct{}
}

func (h *hotSet) init() {
	h.keys = make(map[string]time.Time)
	h.pending = make(map[string]time.Time)
	h.wake = make(chan struct{}, 1)
}

// add records key as hot until then, keeping the later expiry. A copy
// that would grow past MaxHot overflows instead.
func (h *hotSet) addLocked(key string, until time.Time) {
	if old, ok := h.keys[key]; ok {
		if until.After(old) {
			h.keys[key] = until
		}
		return
	}
	if len(h.keys) >= MaxHot {
		h.pruneLocked(time.Now())
		if len(h.keys) >= MaxHot {
			h.overflow = true
			return
		}
	}
	h.keys[key] = until
}

func (h *hotSet) pruneLocked(now time.Time) {
	for k, u := range h.keys {
		if !now.Before(u) {
			delete(h.keys, k)
		}
	}
}

// Cold says whether none of keys is hot and this proxy can be sure of it:
// its control channel is healthy (as for LoginGate), its copy of the hot
// set was read at a resync since it subscribed, and the set has not
// overflowed. When Cold is false the caller asks Redis, as without a
// fleet. It is false on a nil Fleet and before Run.
func (f *Fleet) Cold(keys ...string) bool {
	if f == nil || f.Client == nil {
		return false
	}
	f.init()
	if !f.controlHealthy() {
		return false
	}
	now := time.Now()
	h := &f.hot
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.overflow {
		return false
	}
	for _, k := range keys {
		if u, ok := h.keys[k]; ok && now.Before(u) {
			return false
		}
	}
	return true
}

// MarkHot makes key hot on every proxy until the given time (a later
// mark of the same key wins). This proxy's copy has it at once; the
// write to Redis and the message are made in the background, so MarkHot
// never blocks: a failed write is retried with backoff, logged once and
// counted (Stats.HotMarkErrors). Other proxies learn the key within a
// round trip, so a caller marks a key one step before it matters.
func (f *Fleet) MarkHot(key string, until time.Time) {
	if f == nil || f.Client == nil || !time.Now().Before(until) {
		return
	}
	f.init()
	h := &f.hot
	h.mu.Lock()
	h.addLocked(key, until)
	if old, ok := h.pending[key]; !ok || until.After(old) {
		if ok || len(h.pending) < MaxHot {
			h.pending[key] = until
		} else {
			h.overflow = true // Redis will not learn it: nobody may trust their copy
		}
	}
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// SetHotSessions, with n positive, lets UserSessions and
// QueueUserSessions count a user's sessions without Redis (they answer 0:
// the caller counts its own) until the registry has n of the user's
// sessions; the user is then hot ("sessions USER") for HotSessionsFor,
// and counted fleet-wide. Half of Limits.MaxSessionsPerUser suits. Zero,
// the default, counts in Redis every time. It may be changed while the
// fleet runs (a reload): a lower n takes effect for the users whose
// sessions are written from then on, so a user crowded already may be
// counted locally until one of its sessions starts or HotSessionsFor.
func (f *Fleet) SetHotSessions(n int) {
	if f == nil {
		return
	}
	f.hotSessions.Store(int64(max(n, 0)))
}

// SessionsCold says whether QueueUserSessions would count user's sessions
// without Redis (see SetHotSessions), so that a caller can skip building
// a pipeline for nothing.
func (f *Fleet) SessionsCold(user string) bool {
	return f.hotSessions.Load() > 0 && f.Cold(HotKey(HotSessions, user))
}

// hotUntil returns until when key is hot in this proxy's copy.
func (f *Fleet) hotUntil(key string) time.Time {
	h := &f.hot
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.keys[key]
}

// hotWriter writes the pending marks: one ZADD GT of all of them, then a
// message each, in one pipeline (writeHot).
func (f *Fleet) hotWriter(ctx context.Context) {
	hl := health{log: f.log, what: "hot set"}
	h := &f.hot
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
		}
		for {
			h.mu.Lock()
			marks := h.pending
			if len(marks) == 0 {
				h.mu.Unlock()
				break
			}
			h.pending = make(map[string]time.Time)
			h.mu.Unlock()
			err := f.writeHot(ctx, marks)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				hl.next(nil, f.hb)
				f.bump(func(s *Stats) { s.HotMarked += uint64(len(marks)) })
				break
			}
			f.bump(func(s *Stats) { s.HotMarkErrors++ })
			h.mu.Lock()
			for k, u := range marks {
				if old, ok := h.pending[k]; !ok || u.After(old) {
					h.pending[k] = u
				}
			}
			h.mu.Unlock()
			t := time.NewTimer(hl.next(err, f.hb))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

func (f *Fleet) writeHot(ctx context.Context, marks map[string]time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, f.opTimeout())
	defer cancel()
	now := time.Now()
	zs := make([]redis.Z, 0, len(marks))
	for k, u := range marks {
		if now.Before(u) {
			zs = append(zs, redis.Z{Score: float64(u.UnixMilli()), Member: k})
		}
	}
	if len(zs) == 0 {
		return nil
	}
	// Written before the messages, in a round trip of its own (on a
	// Cluster a pipeline's commands go to different nodes in no set
	// order): a proxy that misses a message reads the key at its next
	// resync, having subscribed before reading. The set needs no TTL: the
	// sweeper prunes what expired, and Redis deletes it once empty.
	if err := f.Client.ZAddGT(ctx, f.keys.hot, zs...).Err(); err != nil {
		return fmt.Errorf("fleet: mark %d keys hot: %w", len(zs), err)
	}
	p := f.Client.Pipeline()
	for _, z := range zs {
		b, err := json.Marshal(message{Op: opHot, Key: z.Member.(string), Until: int64(z.Score)})
		if err != nil {
			return err
		}
		p.Publish(ctx, f.keys.control, b)
	}
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("fleet: announce %d hot keys: %w", len(zs), err)
	}
	return nil
}

// readHot reads the live hot set at a resync and merges it into this
// proxy's copy. Nothing is removed but what expired: a key is never made
// cold early, and a mark of this proxy's whose write has not landed yet
// stays.
func (f *Fleet) readHot(ctx context.Context) error {
	now := time.Now()
	zs, err := f.Client.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
		Key: f.keys.hot, ByScore: true,
		Start: "(" + strconv.FormatInt(now.UnixMilli(), 10), Stop: "+inf",
		Count: MaxHot + 1,
	}).Result()
	if err != nil {
		return fmt.Errorf("fleet: read hot set: %w", err)
	}
	h := &f.hot
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pruneLocked(now)
	if len(zs) > MaxHot {
		if !h.overflow {
			f.log.Warn("fleet: hot set overflow; every login asks Redis until it shrinks", "max", MaxHot)
		}
		h.overflow = true
		return nil
	}
	was := h.overflow
	h.overflow = false
	for _, z := range zs {
		k, _ := z.Member.(string)
		h.addLocked(k, time.UnixMilli(int64(z.Score)))
	}
	if was && !h.overflow {
		f.log.Info("fleet: hot set small again", "keys", len(h.keys))
	}
	return nil
}

// pruneHot removes the expired members of the hot set; the sweeper does
// it for the fleet.
func (f *Fleet) pruneHot(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, f.opTimeout())
	defer cancel()
	err := f.Client.ZRemRangeByScore(ctx, f.keys.hot, "-inf", strconv.FormatInt(time.Now().UnixMilli(), 10)).Err()
	if err != nil {
		return fmt.Errorf("fleet: prune hot set: %w", err)
	}
	return nil
}
