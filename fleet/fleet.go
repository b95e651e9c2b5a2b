package fleet

import (
	"context"
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
// Registry entries expire after three heartbeats.
const DefaultHeartbeat = 10 * time.Second

// EventBuffer is the number of session events SessionStarted and
// SessionEnded queue before they drop (and count) further ones.
const EventBuffer = 4096

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
	// "hostname:pid". It must not contain '@'.
	ProxyID string
	// Heartbeat is how often the whole local state is written; zero means
	// DefaultHeartbeat. Entries expire after three heartbeats.
	Heartbeat time.Duration
	Local     Local
	// Logger receives Redis outages and recoveries, once each; nil means
	// slog.Default().
	Logger *slog.Logger

	initOnce sync.Once
	events   chan event
	dropped  atomic.Uint64
	running  atomic.Bool
	subs     atomic.Int64 // subscriptions so far, for tests
	log      *slog.Logger
	id       string
	hb       time.Duration
	keys     keys

	mu      sync.Mutex
	closed  bool                   // Run has returned; no more timers
	drains  map[string]*drainState // by backend
	moving  map[string]moveState   // by user, from move messages
	release chan struct{}          // closed and replaced to wake LoginGate

	gateHealth health
}

type event struct {
	start bool
	info  SessionInfo
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
		f.events = make(chan event, EventBuffer)
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
		f.keys = keysFor(f.Prefix)
		f.drains = make(map[string]*drainState)
		f.moving = make(map[string]moveState)
		f.release = make(chan struct{})
		f.gateHealth = health{log: f.log, what: "move holds"}
	})
}

// ID returns the proxy's name in the registry.
func (f *Fleet) ID() string { f.init(); return f.id }

// Dropped returns the number of session events dropped because the queue
// was full or Redis unreachable; heartbeats repair what they missed.
func (f *Fleet) Dropped() uint64 {
	if f == nil {
		return 0
	}
	return f.dropped.Load()
}

// SessionStarted queues the registration of a new session. It never blocks.
func (f *Fleet) SessionStarted(info SessionInfo) {
	if f == nil || info.ID == "" {
		return
	}
	f.init()
	f.enqueue(event{start: true, info: info})
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

// SessionEnded queues the removal of a session. It never blocks.
func (f *Fleet) SessionEnded(info SessionInfo) {
	if f == nil || info.ID == "" {
		return
	}
	f.init()
	f.enqueue(event{info: info})
}

func (f *Fleet) enqueue(ev event) {
	select {
	case f.events <- ev:
	default:
		f.dropped.Add(1)
	}
}

// Run keeps the registry fresh and carries out the published kicks, moves
// and drain-kicks until ctx ends; it then returns ctx.Err() without
// removing this proxy's entries, which expire by themselves. A Redis outage
// is logged once and retried with backoff; it never stops Run nor delays a
// session.
func (f *Fleet) Run(ctx context.Context) error {
	if f.Client == nil {
		return errors.New("fleet: run: no Redis client")
	}
	f.init()
	if strings.Contains(f.id, "@") {
		return fmt.Errorf("fleet: run: proxy id %q contains '@'", f.id)
	}
	if !f.running.CompareAndSwap(false, true) {
		return errors.New("fleet: run: already running")
	}
	defer f.running.Store(false)
	f.mu.Lock()
	f.closed = false
	f.mu.Unlock()

	var wg sync.WaitGroup
	wg.Go(func() { f.writer(ctx) })
	wg.Go(func() { f.control(ctx) })
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

// opTimeout bounds one round of Redis writes.
func (f *Fleet) opTimeout() time.Duration {
	return min(max(f.hb, time.Second), 5*time.Second)
}

func (f *Fleet) ttl() time.Duration { return 3 * f.hb }

// writer applies session events as they come and writes the whole local
// state every heartbeat. Being the only writer of this proxy's entries, it
// needs no locking against itself, and a heartbeat cannot undo an event
// that came after its snapshot.
func (f *Fleet) writer(ctx context.Context) {
	h := health{log: f.log, what: "session registry"}
	written := make(map[string]string) // session ID -> user, maybe in Redis
	timer := time.NewTimer(0)
	defer timer.Stop()
	batch := make([]event, 0, 256)
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			err := f.heartbeat(ctx, written)
			if ctx.Err() != nil {
				return
			}
			timer.Reset(h.next(err, f.hb))
		case ev := <-f.events:
			batch = append(batch[:0], ev)
		drain:
			for len(batch) < cap(batch) {
				select {
				case ev := <-f.events:
					batch = append(batch, ev)
				default:
					break drain
				}
			}
			if h.failing {
				// Redis is down: do not stall on it; the heartbeat that
				// finds it back writes everything.
				for _, ev := range batch {
					if ev.start {
						written[ev.info.ID] = ev.info.User
					}
				}
				f.dropped.Add(uint64(len(batch)))
				continue
			}
			if err := f.writeEvents(ctx, batch, written); err != nil && ctx.Err() == nil {
				h.fail(err)
				// Retry soon rather than a whole heartbeat later.
				timer.Reset(100 * time.Millisecond)
			}
		}
	}
}

func (f *Fleet) member(id string) string { return id + "@" + f.id }

func (f *Fleet) writeEvents(ctx context.Context, batch []event, written map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, f.opTimeout())
	defer cancel()
	ttl := f.ttl().Milliseconds()
	p := f.Client.Pipeline()
	pk := f.keys.proxy(f.id)
	started := false
	for _, ev := range batch {
		sk := f.keys.sessions(ev.info.User)
		if ev.start {
			started = true
			written[ev.info.ID] = ev.info.User
			touchScript.Eval(ctx, p, []string{sk}, ttl, f.member(ev.info.ID))
			p.HSet(ctx, pk, ev.info.ID, encodeDetail(ev.info))
		} else {
			p.ZRem(ctx, sk, f.member(ev.info.ID))
			p.HDel(ctx, pk, ev.info.ID)
		}
	}
	if started {
		p.PExpire(ctx, pk, f.ttl())
		touchScript.Eval(ctx, p, []string{f.keys.proxies}, ttl, f.id)
	}
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("fleet: write session events: %w", err)
	}
	for _, ev := range batch {
		if !ev.start {
			delete(written, ev.info.ID)
		}
	}
	return nil
}

// heartbeat writes the whole local state: every session's member and
// details, this proxy's liveness, and the removal of sessions that ended
// without a (successful) event.
func (f *Fleet) heartbeat(ctx context.Context, written map[string]string) error {
	var sessions []SessionInfo
	if f.Local != nil {
		sessions = f.Local.Sessions()
	}
	ctx, cancel := context.WithTimeout(ctx, f.opTimeout())
	defer cancel()
	ttl := f.ttl().Milliseconds()
	current := make(map[string]string, len(sessions))
	byUser := make(map[string][]any)
	details := []any{ttl}
	for _, s := range sessions {
		if s.ID == "" {
			continue
		}
		current[s.ID] = s.User
		if byUser[s.User] == nil {
			byUser[s.User] = []any{ttl}
		}
		byUser[s.User] = append(byUser[s.User], f.member(s.ID))
		details = append(details, s.ID, encodeDetail(s))
	}
	p := f.Client.Pipeline()
	for user, args := range byUser {
		touchScript.Eval(ctx, p, []string{f.keys.sessions(user)}, args...)
	}
	for id, user := range written {
		if _, ok := current[id]; !ok {
			p.ZRem(ctx, f.keys.sessions(user), f.member(id))
		}
	}
	replaceScript.Eval(ctx, p, []string{f.keys.proxy(f.id)}, details...)
	touchScript.Eval(ctx, p, []string{f.keys.proxies}, ttl, f.id)
	if _, err := p.Exec(ctx); err != nil {
		// Whatever may have been written is still to be removed later.
		for id, user := range current {
			written[id] = user
		}
		return fmt.Errorf("fleet: heartbeat: %w", err)
	}
	clear(written)
	for id, user := range current {
		written[id] = user
	}
	f.pruneMoving()
	return nil
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
	resync := func() {
		err := f.resync(ctx)
		if ctx.Err() != nil {
			return
		}
		retry.Reset(h.next(err, f.hb))
	}
	subscribed := false
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
}

const (
	opKick    = "kick"
	opMove    = "move"
	opRelease = "release"
	opDrain   = "drain"
	opUndrain = "undrain"
)

func (f *Fleet) handle(payload string) {
	var m message
	if err := json.Unmarshal([]byte(payload), &m); err != nil {
		f.log.Warn("fleet: bad control message", "err", err)
		return
	}
	switch m.Op {
	case opKick:
		f.kickUser(m.User, orDefault(m.Reason, ReasonKick))
	case opMove:
		f.mu.Lock()
		f.moving[m.User] = moveState{backend: m.Backend, until: time.Now().Add(time.Duration(m.Hold) * time.Millisecond)}
		f.mu.Unlock()
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

// resync re-reads the pending drain-kicks: schedules the new ones and
// cancels the ones withdrawn while this proxy was not listening.
func (f *Fleet) resync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, f.opTimeout())
	defer cancel()
	pending, err := drainKicks(ctx, f.Client, f.keys)
	if err != nil {
		return err
	}
	seen := make(map[string]bool, len(pending))
	for _, d := range pending {
		seen[d.Backend] = true
		f.scheduleDrain(d.Backend, d.Deadline, d.Window)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for b, d := range f.drains {
		if !seen[b] {
			d.timer.Stop()
			delete(f.drains, b)
		}
	}
	return nil
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
// A Redis failure opens the gate: holds last seconds, and a login cannot
// be routed without Redis anyway.
func (f *Fleet) LoginGate(ctx context.Context, user string) error {
	if f == nil || f.Client == nil {
		return nil
	}
	f.init()
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
