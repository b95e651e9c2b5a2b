package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/routing"
)

func publish(ctx context.Context, client redis.UniversalClient, k keys, m message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return client.Publish(ctx, k.control, b).Err()
}

// Kick ends user's sessions on every proxy that is listening: each one
// ends its local sessions of user cleanly. Pub/sub is at most once, so a
// proxy cut off from Redis at that moment misses the kick; check with
// CountSessions.
func Kick(ctx context.Context, client redis.UniversalClient, prefix, user string) error {
	if user == "" {
		return errors.New("fleet: kick: empty user")
	}
	if err := publish(ctx, client, keysFor(prefix), message{Op: opKick, User: user}); err != nil {
		return fmt.Errorf("fleet: kick %q: %w", user, err)
	}
	return nil
}

// DefaultMoveHold is the hold of a move when MoveOptions.Hold is zero.
const DefaultMoveHold = 30 * time.Second

// MoveOptions tune Move. The zero value holds logins for at most 30 s.
type MoveOptions struct {
	// Hold is the TTL of the hold on the user's new logins: however Move
	// ends, even if it crashes, logins wait no longer. Zero means
	// DefaultMoveHold.
	Hold time.Duration
	// Wait bounds the wait for the old sessions to end. Zero means Hold;
	// longer than Hold is cut to Hold.
	Wait time.Duration
}

// ErrSessionsOpen is wrapped by Move's error when some of the user's
// sessions were still open when Wait ran out.
var ErrSessionsOpen = errors.New("sessions still open")

// Timing of Move's wait.
const (
	movePoll   = 100 * time.Millisecond
	moveRekick = time.Second            // kick again while sessions remain
	moveSettle = 250 * time.Millisecond // count must stay at zero this long
)

// Move moves user to backend without the user ever having sessions on two
// backends at once:
//
//  1. it sets the hold P move:{user} (SET NX with TTL Hold); a hold
//     already there means another move is under way (ErrMoveInProgress);
//  2. it announces the hold in P moves and publishes a move: every proxy
//     holds the user's new logins (LoginGate) and ends the user's
//     sessions; a proxy that missed the message learns the hold from P
//     moves at its next resync, and one whose control channel is not
//     healthy reads the hold key for every login;
//  3. it sets the route to backend with routes.SetRoute, which also
//     invalidates every proxy's route cache, and publishes the move again;
//     any session of the user that starts on another backend during the
//     hold (a login that passed the gate before step 2) is ended too;
//  4. it waits until CountSessions(user) has stayed 0 for a moment, kicking
//     again every second while sessions remain, at most Wait;
//  5. it removes the hold and its announcement (only its own) and
//     publishes the release, so that held logins proceed at once, now
//     routed to backend.
//
// On timeout the hold is removed all the same (keeping it would only delay
// logins until its TTL) and the error wraps ErrSessionsOpen and gives the
// number of sessions still open; ListSessions shows them. When ctx ends
// or a step fails, the hold is removed as well. The route stays changed in
// every case after step 3.
func Move(ctx context.Context, client redis.UniversalClient, prefix string, routes *routing.Redis, user, backend string, opts MoveOptions) (err error) {
	if user == "" || backend == "" {
		return fmt.Errorf("fleet: move %q to %q: empty user or backend", user, backend)
	}
	if routes == nil {
		return fmt.Errorf("fleet: move %q: no routes", user)
	}
	k := keysFor(prefix)
	hold := opts.Hold
	if hold <= 0 {
		hold = DefaultMoveHold
	}
	wait := opts.Wait
	if wait <= 0 || wait > hold {
		wait = hold
	}
	start := time.Now()

	var tok [12]byte
	rand.Read(tok[:])
	value := backend + " " + hex.EncodeToString(tok[:])
	ok, err := client.SetNX(ctx, k.move(user), value, hold).Result()
	if err != nil {
		return fmt.Errorf("fleet: move %q: set hold: %w", user, err)
	}
	if !ok {
		return fmt.Errorf("fleet: move %q: %w", user, ErrMoveInProgress)
	}
	until := start.Add(hold)
	announced := backend + " " + strconv.FormatInt(until.UnixMilli(), 10) + " " + hex.EncodeToString(tok[:])
	defer func() {
		// Release even when ctx is done: the hold blocks logins.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		rerr := releaseScript.Run(rctx, client, []string{k.move(user)}, value).Err()
		if rerr == nil {
			rerr = releaseFieldScript.Run(rctx, client, []string{k.moves}, user, announced).Err()
		}
		if rerr == nil {
			rerr = publish(rctx, client, k, message{Op: opRelease, User: user})
		}
		if rerr != nil {
			err = errors.Join(err, fmt.Errorf("fleet: move %q: release hold (it expires by itself within %v): %w", user, hold, rerr))
		}
	}()

	// Announce the hold before the route changes: proxies learn of it
	// from the message, or from the moves hash if they miss it, and hold
	// the user's logins without reading Redis for every login.
	if err := hsetKeepScript.Run(ctx, client, []string{k.moves}, user, announced, (hold + drainGrace).Milliseconds()).Err(); err != nil {
		return fmt.Errorf("fleet: move %q: announce hold: %w", user, err)
	}
	kick := func() error {
		return publish(ctx, client, k, message{Op: opMove, User: user, Backend: backend, Hold: time.Until(until).Milliseconds()})
	}
	if err := kick(); err != nil {
		return fmt.Errorf("fleet: move %q: kick: %w", user, err)
	}
	if err := routes.SetRoute(ctx, user, routing.Record{Backend: backend}); err != nil {
		return fmt.Errorf("fleet: move %q: %w", user, err)
	}
	// Kick again once the route has changed, for a login that passed the
	// gate before the hold and read the old route.
	if err := kick(); err != nil {
		return fmt.Errorf("fleet: move %q: kick: %w", user, err)
	}
	lastKick := time.Now()
	var zeroSince time.Time
	var lastErr error
	n := -1
	t := time.NewTicker(movePoll)
	defer t.Stop()
	for {
		c, cerr := CountSessions(ctx, client, prefix, user)
		now := time.Now()
		switch {
		case cerr != nil:
			lastErr = cerr
		case c == 0:
			n = 0
			if zeroSince.IsZero() {
				zeroSince = now
			}
			if now.Sub(zeroSince) >= moveSettle {
				return nil
			}
		default:
			n = c
			zeroSince = time.Time{}
			if now.Sub(lastKick) >= moveRekick {
				if kerr := kick(); kerr != nil {
					lastErr = kerr
				}
				lastKick = now
			}
		}
		if now.Sub(start) >= wait {
			if n == 0 && lastErr == nil {
				return nil
			}
			if n < 0 {
				return fmt.Errorf("fleet: move %q: sessions not counted within %v: %w", user, wait, lastErr)
			}
			return fmt.Errorf("fleet: move %q: %d session(s) still open after %v: %w", user, n, wait, ErrSessionsOpen)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fleet: move %q: %w", user, ctx.Err())
		case <-t.C:
		}
	}
}

// releaseFieldScript deletes hash field ARGV[1] only if it is still
// ARGV[2].
var releaseFieldScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0`)

// movesUnderWay returns the moves announced in the moves hash whose hold
// has not expired, by user; it deletes the expired ones (left by a Move
// that crashed).
func movesUnderWay(ctx context.Context, client redis.UniversalClient, k keys) (map[string]moveState, error) {
	m, err := client.HGetAll(ctx, k.moves).Result()
	if err != nil {
		return nil, fmt.Errorf("fleet: read moves: %w", err)
	}
	out := make(map[string]moveState, len(m))
	now := time.Now()
	var expired []string
	for user, v := range m {
		f := strings.Fields(v)
		var ms int64
		if len(f) == 3 {
			ms, err = strconv.ParseInt(f[1], 10, 64)
		}
		if len(f) != 3 || err != nil || now.After(time.UnixMilli(ms)) {
			expired = append(expired, user)
			continue
		}
		out[user] = moveState{backend: f[0], until: time.UnixMilli(ms)}
	}
	if len(expired) > 0 {
		client.HDel(ctx, k.moves, expired...) // best effort; readers skip them anyway
	}
	return out, nil
}

// releaseScript deletes a hold only if it is still the caller's.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// drainGrace keeps a drain-kick in Redis after deadline+window, for
// proxies that reconnect just after it.
const drainGrace = time.Minute

// hsetKeepScript stores field ARGV[1] = ARGV[2] and extends the key's TTL
// to at least ARGV[3] ms, so that the hash lives as long as its
// longest-lived field: the pending drain-kicks and the announced moves.
var hsetKeepScript = redis.NewScript(`
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 0`)

// DrainKick arranges for every proxy to end its sessions on backend at
// deadline, spread over window (Local.KickBackend). It publishes the order
// and keeps it in Redis until deadline+window plus a minute, so that a
// proxy that starts or reconnects later honours it too; one that learns of
// it after the deadline kicks at once over what remains of the window. A
// new DrainKick of the same backend replaces the pending one.
func DrainKick(ctx context.Context, client redis.UniversalClient, prefix, backend string, deadline time.Time, window time.Duration) error {
	if backend == "" || window < 0 {
		return fmt.Errorf("fleet: drain-kick %q: empty backend or negative window", backend)
	}
	k := keysFor(prefix)
	dl, w := deadline.UnixMilli(), window.Milliseconds()
	ttl := max(time.Until(deadline)+window+drainGrace, drainGrace)
	err := hsetKeepScript.Run(ctx, client, []string{k.drains}, backend,
		strconv.FormatInt(dl, 10)+" "+strconv.FormatInt(w, 10), ttl.Milliseconds()).Err()
	if err == nil {
		err = publish(ctx, client, k, message{Op: opDrain, Backend: backend, Deadline: dl, Window: w})
	}
	if err != nil {
		return fmt.Errorf("fleet: drain-kick %q: %w", backend, err)
	}
	return nil
}

// CancelDrainKick withdraws a pending drain-kick of backend, for example
// when the backend is undrained before its deadline.
func CancelDrainKick(ctx context.Context, client redis.UniversalClient, prefix, backend string) error {
	k := keysFor(prefix)
	err := client.HDel(ctx, k.drains, backend).Err()
	if err == nil {
		err = publish(ctx, client, k, message{Op: opUndrain, Backend: backend})
	}
	if err != nil {
		return fmt.Errorf("fleet: cancel drain-kick %q: %w", backend, err)
	}
	return nil
}

// PendingDrainKick is a drain-kick kept in Redis.
type PendingDrainKick struct {
	Backend  string
	Deadline time.Time
	Window   time.Duration
}

// DrainKicks returns the drain-kicks that are pending, under way, or ended
// less than a minute ago.
func DrainKicks(ctx context.Context, client redis.UniversalClient, prefix string) ([]PendingDrainKick, error) {
	return drainKicks(ctx, client, keysFor(prefix))
}

func drainKicks(ctx context.Context, client redis.UniversalClient, k keys) ([]PendingDrainKick, error) {
	m, err := client.HGetAll(ctx, k.drains).Result()
	if err != nil {
		return nil, fmt.Errorf("fleet: read drain-kicks: %w", err)
	}
	var out []PendingDrainKick
	now := time.Now()
	for b, v := range m {
		dl, w, ok := strings.Cut(v, " ")
		d, err1 := strconv.ParseInt(dl, 10, 64)
		ms, err2 := strconv.ParseInt(w, 10, 64)
		if !ok || err1 != nil || err2 != nil || ms < 0 {
			continue
		}
		p := PendingDrainKick{Backend: b, Deadline: time.UnixMilli(d), Window: time.Duration(ms) * time.Millisecond}
		if now.After(p.Deadline.Add(p.Window + drainGrace)) {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}
