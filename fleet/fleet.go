package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultHeartbeat is the heartbeat interval when Fleet.Heartbeat is zero.
// A proxy whose heartbeat is three intervals old is dead to every reader.
const DefaultHeartbeat = 10 * time.Second

// Reasons given to Local.KickUser, sent to the client in its BYE.
const (
	ReasonKick = "Session ended by the administrator"
	ReasonMove = "Your mailbox is moving, please reconnect"
)

// ErrMoveInProgress is returned by LoginGate when its ctx ends while the
// user's logins are held by a move, and by Move when a move of the same
// user is already under way.
var ErrMoveInProgress = errors.New("move in progress")

// SessionInfo describes one spliced session of this proxy. Backend should
// be the backend's name as routes know it: Move compares it with its
// target.
type SessionInfo struct {
	ID, User, Client, Listener, Backend string
	Since                               time.Time
	BytesToBackend, BytesToClient       int64
}

// Local is this proxy's view of its own sessions.
type Local interface {
	// Sessions lists the spliced sessions.
	Sessions() []SessionInfo
	// KickUser ends the user's sessions cleanly and returns their number.
	KickUser(user, reason string) int
	// KickBackend ends the sessions on backend, spread over window.
	KickBackend(name string, window time.Duration) int
}

// Fleet registers this proxy's sessions in Redis and carries out the kicks,
// moves and drain-kicks published by other proxies or the command line.
// Only Client is required; Local may be nil for a proxy without sessions.
// The zero value of every other field works. SessionStarted, SessionEnded
// and LoginGate may be called before and after Run, and on a nil *Fleet.
type Fleet struct {
	Client redis.UniversalClient
	// Prefix starts every key; empty means routing.DefaultRedisPrefix.
	Prefix string
	// ProxyID names this proxy in the registry; empty means
	// "hostname:pid". It must contain neither '@' nor '/'.
	ProxyID string
	// Heartbeat is how often the proxy tells Redis it is alive (one small
	// script call, whatever the number of sessions); zero means
	// DefaultHeartbeat. Readers ignore the sessions of a proxy whose
	// heartbeat is three intervals old.
	Heartbeat time.Duration
	// Reconcile is how often the proxy compares its entries in Redis with
	// its sessions and repairs the difference, refreshing byte counts on
	// the way; zero means DefaultReconcile.
	Reconcile time.Duration
	// WriteRate bounds the sessions per second that a restore, a
	// reconciliation or a sweep writes or deletes; zero means
	// DefaultWriteRate. Session starts and ends are never held back by it.
	WriteRate int
	Local     Local
	// Logger receives Redis outages and recoveries, once each; nil means
	// slog.Default().
	Logger *slog.Logger

	initOnce  sync.Once
	running   atomic.Bool
	ctlToken  string       // this fleet's pings on the control channel
	ctlSynced atomic.Bool  // subscribed, and the last resync worked
	ctlEcho   atomic.Int64 // when our last ping came back, Unix ns
	subs      atomic.Int64 // subscriptions so far, for tests
	dropped   atomic.Uint64
	log       *slog.Logger
	id        string
	hb        time.Duration
	reconcile time.Duration
	rate      int
	keys      keys
	wake      chan struct{} // a change is pending
	newInst   chan struct{} // the heartbeat registered a new instance

	pmu      sync.Mutex // guards the registry state below
	pending  map[string]change
	inflight int             // changes taken from pending, being written
	repair   bool            // changes were dropped: reconcile soon
	track    *tracker        // while a pass runs
	inst     string          // the registered instance; "" before the first heartbeat
	retired  bool            // Retire was called: no more heartbeats
	live     map[string]bool // live instances at the last heartbeat
	notLive  map[string]bool // instances found not live since
	liveAt   time.Time
	stats    Stats

	mu      sync.Mutex
	closed  bool                   // Run has returned; no more timers
	drains  map[string]*drainState // by backend
	moving  map[string]moveState   // by user, from move messages
	release chan struct{}          // closed and replaced to wake LoginGate

	gateHealth health

	hot         hotSet       // see hot.go
	hotSessions atomic.Int64 // SetHotSessions
}

type drainState struct {
	deadline time.Time
	window   time.Duration
	timer    *time.Timer
	done     bool
}

type moveState struct {
	backend string
	until   time.Time
}

func (f *Fleet) init() {
	f.initOnce.Do(func() {
		f.pending = make(map[string]change)
		f.wake = make(chan struct{}, 1)
		f.newInst = make(chan struct{}, 1)
		f.log = f.Logger
		if f.log == nil {
			f.log = slog.Default()
		}
		f.id = f.ProxyID
		if f.id == "" {
			host, _ := os.Hostname()
			f.id = host + ":" + strconv.Itoa(os.Getpid())
		}
		f.log = f.log.With("proxy", f.id)
		f.hb = f.Heartbeat
		if f.hb <= 0 {
			f.hb = DefaultHeartbeat
		}
		f.reconcile = f.Reconcile
		if f.reconcile <= 0 {
			f.reconcile = DefaultReconcile
		}
		f.rate = f.WriteRate
		if f.rate <= 0 {
			f.rate = DefaultWriteRate
		}
		f.keys = keysFor(f.Prefix)
		var tok [8]byte
		rand.Read(tok[:])
		f.ctlToken = hex.EncodeToString(tok[:])
		f.drains = make(map[string]*drainState)
		f.moving = make(map[string]moveState)
		f.release = make(chan struct{})
		f.gateHealth = health{log: f.log, what: "move holds"}
		f.hot.init()
	})
}

// ID returns the proxy's name in the registry.
func (f *Fleet) ID() string { f.init(); return f.id }

// Dropped returns the number of session changes dropped because
// MaxPending were waiting; a reconciliation repairs what they missed.
func (f *Fleet) Dropped() uint64 {
	if f == nil {
		return 0
	}
	return f.dropped.Load()
}

// Run keeps the registry fresh and carries out the published kicks, moves
// and drain-kicks until ctx ends; it then returns ctx.Err() without
// removing this proxy's entries: readers ignore them three heartbeats
// later, and the sweeper of another proxy deletes them. A Redis outage
// is logged once and retried with backoff; it never stops Run nor delays a
// session.
func (f *Fleet) Run(ctx context.Context) error {
	if f.Client == nil {
		return errors.New("fleet: run: no Redis client")
	}
	f.init()
	if strings.ContainsAny(f.id, "@/") {
		return fmt.Errorf("fleet: run: proxy id %q contains '@' or '/'", f.id)
	}
	if !f.running.CompareAndSwap(false, true) {
		return errors.New("fleet: run: already running")
	}
	defer f.running.Store(false)
	f.mu.Lock()
	f.closed = false
	f.mu.Unlock()

	var wg sync.WaitGroup
	wg.Go(func() { f.heartbeats(ctx) })
	wg.Go(func() { f.writer(ctx) })
	wg.Go(func() { f.sweeper(ctx) })
	wg.Go(func() { f.control(ctx) })
	wg.Go(func() { f.hotWriter(ctx) })
	wg.Wait()

	f.mu.Lock()
	f.closed = true
	for b, d := range f.drains {
		d.timer.Stop()
		delete(f.drains, b)
	}
	f.mu.Unlock()
	return ctx.Err()
}

func (f *Fleet) pruneMoving() {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	for u, m := range f.moving {
		if now.After(m.until) {
			delete(f.moving, u)
		}
	}
}

// control follows the control channel. go-redis resubscribes by itself
// after a reconnect and then delivers a *redis.Subscription, the signal
// that messages may have been lost, so each one triggers a resync.
func (f *Fleet) control(ctx context.Context) {
	h := health{log: f.log, what: "control channel"}
	ps := f.Client.Subscribe(ctx, f.keys.control)
	defer ps.Close()
	ch := ps.ChannelWithSubscriptions(redis.WithChannelSize(1024))
	// Resync on a timer as well: a message can be lost without a
	// reconnect (go-redis drops one when the channel stays full).
	retry := time.NewTimer(f.hb)
	defer retry.Stop()
	subscribed := false
	defer f.ctlSynced.Store(false)
	resync := func() {
		err := f.resync(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil && subscribed && !f.ctlSynced.Load() {
			// Subscribed before the read: whatever the read missed
			// arrives as a message.
			f.ctlEcho.Store(time.Now().UnixNano())
			f.ctlSynced.Store(true)
		}
		retry.Reset(h.next(err, f.hb))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			resync()
		case m, ok := <-ch:
			if !ok {
				return
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind != "subscribe" {
					continue
				}
				if subscribed {
					f.log.Info("fleet: control channel resubscribed", "channel", f.keys.control)
				}
				subscribed = true
				f.ctlSynced.Store(false)
				f.subs.Add(1)
				f.wakeGates()
				resync()
			case *redis.Message:
				f.handle(m.Payload)
			}
		}
	}
}

// message is the JSON payload on the control channel.
type message struct {
	Op       string `json:"op"`
	User     string `json:"user,omitempty"`
	Backend  string `json:"backend,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Deadline int64  `json:"deadline,omitempty"` // Unix ms
	Window   int64  `json:"window,omitempty"`   // ms
	Hold     int64  `json:"hold,omitempty"`     // ms
	From     string `json:"from,omitempty"`     // a ping's sender
	Key      string `json:"key,omitempty"`      // a hot key
	Until    int64  `json:"until,omitempty"`    // Unix ms, a hot key's expiry
}

const (
	opKick    = "kick"
	opMove    = "move"
	opRelease = "release"
	opDrain   = "drain"
	opUndrain = "undrain"
	opPing    = "ping"
	opHot     = "hot"
)

func (f *Fleet) handle(payload string) {
	var m message
	if err := json.Unmarshal([]byte(payload), &m); err != nil {
		f.log.Warn("fleet: bad control message", "err", err)
		return
	}
	switch m.Op {
	case opPing:
		if m.From == f.ctlToken {
			f.ctlEcho.Store(time.Now().UnixNano())
		}
	case opKick:
		f.kickUser(m.User, orDefault(m.Reason, ReasonKick))
	case opMove:
		f.hold(m.User, m.Backend, time.Now().Add(time.Duration(m.Hold)*time.Millisecond))
		f.kickUser(m.User, ReasonMove)
	case opRelease:
		f.mu.Lock()
		delete(f.moving, m.User)
		f.mu.Unlock()
		f.wakeGates()
	case opDrain:
		f.scheduleDrain(m.Backend, time.UnixMilli(m.Deadline), time.Duration(m.Window)*time.Millisecond)
	case opUndrain:
		f.cancelDrain(m.Backend)
	case opHot:
		if u := time.UnixMilli(m.Until); m.Key != "" && time.Now().Before(u) {
			f.hot.mu.Lock()
			f.hot.addLocked(m.Key, u)
			f.hot.mu.Unlock()
		}
	default:
		f.log.Warn("fleet: unknown control message", "op", m.Op)
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// kickUser calls Local off the control loop: a kick waits for a response
// boundary, and the loop must keep reading.
func (f *Fleet) kickUser(user, reason string) {
	if f.Local == nil || user == "" {
		return
	}
	go func() {
		if n := f.Local.KickUser(user, reason); n > 0 {
			f.log.Info("fleet: kicked", "user", user, "sessions", n, "reason", reason)
		}
	}()
}

// resync re-reads the pending drain-kicks, the moves under way and the
// hot set, which messages may have missed, and pings the channel to prove
// it still listens. Four small commands per heartbeat, whatever the
// fleet's size (the hot set's read is bounded by MaxHot).
func (f *Fleet) resync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, f.opTimeout())
	defer cancel()
	pending, err := drainKicks(ctx, f.Client, f.keys)
	if err != nil {
		return err
	}
	moves, err := movesUnderWay(ctx, f.Client, f.keys)
	if err != nil {
		return err
	}
	if err := f.readHot(ctx); err != nil {
		return err
	}
	if err := publish(ctx, f.Client, f.keys, message{Op: opPing, From: f.ctlToken}); err != nil {
		return err
	}
	seen := make(map[string]bool, len(pending))
	for _, d := range pending {
		seen[d.Backend] = true
		f.scheduleDrain(d.Backend, d.Deadline, d.Window)
	}
	var learnt []string
	released := false
	f.mu.Lock()
	for b, d := range f.drains {
		if !seen[b] {
			d.timer.Stop()
			delete(f.drains, b)
		}
	}
	for user, m := range moves {
		if _, known := f.moving[user]; !known {
			learnt = append(learnt, user)
		}
		f.moving[user] = m
	}
	for user := range f.moving {
		if _, ok := moves[user]; !ok {
			delete(f.moving, user) // released while we were not listening
			released = true
		}
	}
	f.mu.Unlock()
	if released {
		f.wakeGates()
	}
	// A move this proxy missed: its sessions of the user may be on the old
	// backend, as its logins may have gone there.
	for _, user := range learnt {
		f.kickUser(user, ReasonMove)
	}
	return nil
}

// hold records a move of user to backend until the given time.
func (f *Fleet) hold(user, backend string, until time.Time) {
	f.mu.Lock()
	f.moving[user] = moveState{backend: backend, until: until}
	f.mu.Unlock()
}

// controlHealthy says whether this proxy knows every move hold from the
// control channel: subscribed, resynced since, and its own last ping came
// back recently. Otherwise LoginGate asks Redis.
func (f *Fleet) controlHealthy() bool {
	if !f.running.Load() || !f.ctlSynced.Load() {
		return false
	}
	return time.Since(time.Unix(0, f.ctlEcho.Load())) < 2*f.hb+time.Second
}

// scheduleDrain arranges Local.KickBackend at deadline. A drain-kick
// learnt after its deadline runs at once, spread over what remains of its
// window. Scheduling the same drain-kick again does nothing, so resyncs
// never kick twice.
func (f *Fleet) scheduleDrain(backend string, deadline time.Time, window time.Duration) {
	if backend == "" {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	if d, ok := f.drains[backend]; ok {
		if d.deadline.Equal(deadline) && d.window == window {
			return
		}
		d.timer.Stop()
	}
	d := &drainState{deadline: deadline, window: window}
	f.drains[backend] = d
	delay := time.Until(deadline)
	if delay < 0 {
		window = max(window+delay, 0)
		delay = 0
	}
	d.timer = time.AfterFunc(delay, func() {
		f.mu.Lock()
		if f.closed || f.drains[backend] != d {
			f.mu.Unlock()
			return
		}
		d.done = true
		f.mu.Unlock()
		if f.Local == nil {
			return
		}
		n := f.Local.KickBackend(backend, window)
		f.log.Info("fleet: drain deadline reached", "backend", backend, "sessions", n, "window", window)
	})
}

func (f *Fleet) cancelDrain(backend string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d, ok := f.drains[backend]; ok {
		d.timer.Stop()
		delete(f.drains, backend)
	}
}

// wakeGates makes every waiting LoginGate look at Redis again.
func (f *Fleet) wakeGates() {
	f.mu.Lock()
	close(f.release)
	f.release = make(chan struct{})
	f.mu.Unlock()
}

// gatePoll is how often a held login looks at its hold when no release
// message arrives (the hold may simply expire).
const gatePoll = 250 * time.Millisecond

// gateTimeout bounds each Redis call of LoginGate.
const gateTimeout = time.Second

// LoginGate returns nil at once unless a move holds the user's logins; it
// then waits until the hold is gone and returns nil, so that the login
// proceeds with the new route. If ctx ends first it returns an error
// wrapping ErrMoveInProgress (the client should get NO [UNAVAILABLE]).
//
// While the control channel is healthy (controlHealthy), holds are known
// from its messages and from the resync every heartbeat, and a login of a
// user who is not moving costs no Redis command. Otherwise, and while a
// hold is known, the hold key is read from Redis. A Redis failure opens
// the gate: holds last seconds, and a login cannot be routed without
// Redis anyway.
func (f *Fleet) LoginGate(ctx context.Context, user string) error {
	if f == nil || f.Client == nil {
		return nil
	}
	f.init()
	if f.controlHealthy() {
		f.mu.Lock()
		m, held := f.moving[user]
		f.mu.Unlock()
		if !held || time.Now().After(m.until) {
			return nil
		}
	}
	key := f.keys.move(user)
	for {
		f.mu.Lock()
		wake := f.release
		f.mu.Unlock()
		gctx, cancel := context.WithTimeout(ctx, gateTimeout)
		ttl, err := f.Client.PTTL(gctx, key).Result()
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("fleet: login of %q: %w", user, errors.Join(ErrMoveInProgress, ctx.Err()))
			}
			f.gateHealth.fail(err)
			return nil
		}
		f.gateHealth.ok()
		if ttl == -2 { // no such key; go-redis keeps Redis' -2 as is
			return nil
		}
		wait := gatePoll
		if ttl > 0 && ttl < wait {
			wait = ttl
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("fleet: login of %q held by a move: %w", user, errors.Join(ErrMoveInProgress, ctx.Err()))
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// LoginGateAgain is LoginGate for a login's second ask, once the proxy
// has registered it. With the control channel up it answers from the
// holds it announced, like LoginGate; without, the first ask read Redis
// and a kick may not arrive anyway, so it does not read Redis again (with
// Redis hanging, that would add gateTimeout to every login).
func (f *Fleet) LoginGateAgain(ctx context.Context, user string) error {
	if f == nil || f.Client == nil {
		return nil
	}
	f.init()
	if !f.controlHealthy() {
		return nil
	}
	return f.LoginGate(ctx, user)
}

// health logs a Redis outage once, when it starts, and once when it ends.
type health struct {
	mu      sync.Mutex
	log     *slog.Logger
	what    string
	failing bool
	backoff time.Duration // used by next only, from one goroutine
}

// next records the result of an attempt and says when to make the next
// one: after interval when it worked, sooner with a growing backoff (from
// 100ms up to interval) when it failed.
func (h *health) next(err error, interval time.Duration) time.Duration {
	if err == nil {
		h.ok()
		h.backoff = 0
		return interval
	}
	h.fail(err)
	h.backoff = min(max(2*h.backoff, 100*time.Millisecond), interval)
	return h.backoff
}

func (h *health) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.failing {
		h.log.Warn("fleet: Redis unreachable, retrying", "for", h.what, "err", err)
	}
	h.failing = true
}

func (h *health) ok() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failing {
		h.log.Info("fleet: Redis reachable again", "for", h.what)
	}
	h.failing = false
}
