package routing

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Payloads on the invalidation channel besides user names. Normalize
// refuses '*', so neither can be a user.
const (
	InvalidateAll      = "*"         // flush every cached route
	InvalidateBackends = "*backends" // reload the fleet state
)

// Fields of the fleet hash <prefix>backends.
const (
	fleetDrained = "drained:" // + name = unix seconds of the drain
	fleetWeight  = "weight:"  // + name = weight override
)

// MaxWeight bounds Backend.Weight overrides, so that one typo cannot send
// every new user to one backend for ever.
const MaxWeight = 1_000_000

// BackendState is the fleet-wide operational state of one backend, kept in
// Redis so that every proxy sees the same.
type BackendState struct {
	Drained      bool
	DrainedSince time.Time // zero if not drained
	Weight       int       // override of Backend.Weight; 0 means none
}

// Fleet holds the drain flags and weight overrides of the backends. Writers
// (the CLI) call Drain, Undrain and SetWeight, which update Redis and
// publish on the invalidation channel; proxies keep a copy in memory,
// loaded by Load, which an Invalidator calls on every (re)subscription, on
// every notification and periodically. Until the first Load, no backend is
// drained and no weight is overridden.
//
// A nil *Fleet has no drains and no overrides.
type Fleet struct {
	Client redis.UniversalClient
	// Prefix starts every key; empty means DefaultRedisPrefix.
	Prefix string

	state atomic.Pointer[map[string]BackendState]
}

// Key is the Redis hash holding every backend's state.
func (f *Fleet) Key() string { return prefix(f.Prefix) + "backends" }

func prefix(p string) string {
	if p == "" {
		return DefaultRedisPrefix
	}
	return p
}

// InvalidateChannel is the pub/sub channel of route and fleet changes for
// the key prefix p (empty means DefaultRedisPrefix).
func InvalidateChannel(p string) string { return prefix(p) + "invalidate" }

// Drained reports whether b is drained, from the copy in memory.
func (f *Fleet) Drained(b *Backend) bool {
	if f == nil || b == nil {
		return false
	}
	if m := f.state.Load(); m != nil {
		return (*m)[b.key()].Drained
	}
	return false
}

// Weight is b's weight: the fleet's override, else Backend.Weight, else 1.
func (f *Fleet) Weight(b *Backend) int {
	if f != nil {
		if m := f.state.Load(); m != nil {
			if w := (*m)[b.key()].Weight; w > 0 {
				return w
			}
		}
	}
	return b.weight()
}

// Snapshot returns the copy in memory (nil before the first Load). The
// map must not be modified.
func (f *Fleet) Snapshot() map[string]BackendState {
	if f == nil {
		return nil
	}
	if m := f.state.Load(); m != nil {
		return *m
	}
	return nil
}

// Load replaces the copy in memory with the state in Redis.
func (f *Fleet) Load(ctx context.Context) error {
	m, err := f.List(ctx)
	if err != nil {
		return err
	}
	f.state.Store(&m)
	return nil
}

// List reads every backend's state from Redis with one HGETALL. Backends
// without any state are absent; unparsable fields are skipped, so that a
// bad manual edit cannot take routing down.
func (f *Fleet) List(ctx context.Context) (map[string]BackendState, error) {
	if f.Client == nil {
		return nil, errors.New("routing: fleet: no redis client")
	}
	fields, err := f.Client.HGetAll(ctx, f.Key()).Result()
	if err != nil {
		return nil, fmt.Errorf("routing: fleet %q: %w", f.Key(), err)
	}
	m := make(map[string]BackendState)
	for k, v := range fields {
		if name, ok := strings.CutPrefix(k, fleetDrained); ok {
			st := m[name]
			st.Drained = true
			if sec, err := strconv.ParseInt(v, 10, 64); err == nil {
				st.DrainedSince = time.Unix(sec, 0)
			}
			m[name] = st
		} else if name, ok := strings.CutPrefix(k, fleetWeight); ok {
			if w, err := strconv.Atoi(v); err == nil && w > 0 && w <= MaxWeight {
				st := m[name]
				st.Weight = w
				m[name] = st
			}
		}
	}
	return m, nil
}

// Drain marks the backend called name as drained on every proxy: it takes
// no new assignments, pools skip it, and logins of users routed to it fail
// with ErrDrained (or go to a fallback). Draining a drained backend keeps
// its original time.
func (f *Fleet) Drain(ctx context.Context, name string) error {
	return f.write(ctx, "drain", name, func(p redis.Pipeliner) {
		p.HSetNX(ctx, f.Key(), fleetDrained+name, strconv.FormatInt(time.Now().Unix(), 10))
	})
}

// Undrain lets the backend take logins again.
func (f *Fleet) Undrain(ctx context.Context, name string) error {
	return f.write(ctx, "undrain", name, func(p redis.Pipeliner) {
		p.HDel(ctx, f.Key(), fleetDrained+name)
	})
}

// SetWeight overrides the backend's configured weight on every proxy; 0
// removes the override. Users already assigned stay where they are.
func (f *Fleet) SetWeight(ctx context.Context, name string, weight int) error {
	if weight < 0 || weight > MaxWeight {
		return fmt.Errorf("routing: fleet set weight %q: weight must be from 0 to %d, not %d", truncate(name), MaxWeight, weight)
	}
	return f.write(ctx, "set weight", name, func(p redis.Pipeliner) {
		if weight == 0 {
			p.HDel(ctx, f.Key(), fleetWeight+name)
		} else {
			p.HSet(ctx, f.Key(), fleetWeight+name, weight)
		}
	})
}

// write runs one change and the notification in a MULTI/EXEC, so that no
// proxy can see the change without being told.
func (f *Fleet) write(ctx context.Context, what, name string, change func(redis.Pipeliner)) error {
	if name == "" || len(name) > 255 || !printable(name) {
		return fmt.Errorf("routing: fleet %s: bad backend name %q", what, truncate(name))
	}
	if f.Client == nil {
		return fmt.Errorf("routing: fleet %s %q: no redis client", what, name)
	}
	_, err := f.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		change(p)
		p.Publish(ctx, InvalidateChannel(f.Prefix), InvalidateBackends)
		return nil
	})
	if err != nil {
		return fmt.Errorf("routing: fleet %s %q: %w", what, name, err)
	}
	return nil
}

// Guard applies health and drain state to the answers of another router,
// typically Static, whose backends Redis does not check itself:
//
//	routing.Chain{&routing.Guard{Next: static, Health: h, Fleet: f}, redisRouter}
//
// A down or drained backend is replaced by its Fallback when that one is
// usable; otherwise the lookup fails with ErrBackendDown or ErrDrained.
type Guard struct {
	Next   Router
	Health *Health
	Fleet  *Fleet
}

// Lookup asks Next and checks its answer.
func (g *Guard) Lookup(ctx context.Context, user string) (*Backend, error) {
	b, err := g.Next.Lookup(ctx, user)
	if err != nil || b == nil {
		return b, err
	}
	return usable(b, b.Fallback, g.Health, g.Fleet, nil)
}

// usable returns b if it may take a login, else fallback if that one may,
// else an error wrapping ErrDrained or ErrBackendDown. ex, when not nil,
// records the reasoning.
func usable(b, fallback *Backend, h *Health, f *Fleet, ex *Explanation) (*Backend, error) {
	check := func(b *Backend) error {
		switch {
		case f.Drained(b):
			return fmt.Errorf("routing: backend %s: %w", b, ErrDrained)
		case !h.Up(b):
			return fmt.Errorf("routing: backend %s: %w", b, ErrBackendDown)
		}
		return nil
	}
	err := check(b)
	if err == nil {
		ex.add("backend %s: up, not drained", b)
		return b, nil
	}
	ex.add("backend %s: %v", b, errors.Unwrap(err))
	if fallback == nil || fallback == b {
		return nil, err
	}
	if ferr := check(fallback); ferr != nil {
		ex.add("fallback %s: %v", fallback, errors.Unwrap(ferr))
		return nil, err
	}
	ex.add("fallback %s: up, not drained: used", fallback)
	return fallback, nil
}
