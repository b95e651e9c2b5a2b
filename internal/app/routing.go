package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/fleet"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// buildRouting turns backends, pools, static routes and Redis into the
// router chain: static routes first (guarded by health and drain state),
// then Redis with its pools, cache, health and fleet state.
//
// A reload (prev set) keeps prev's fleet state, and its health states and
// route cache when their settings are unchanged: a reload must not make
// every backend look up again, nor send every user to Redis at once.
func (rt *App) buildRouting(cfg *config.Config, logger *slog.Logger, prev *App) error {
	named := make(map[string]*routing.Backend, len(cfg.Backends))
	for _, b := range cfg.Backends {
		rb, err := backend(b.Name, b.Address, b.BackendOptions)
		if err != nil {
			return fmt.Errorf("backends %q: %w", b.Name, err)
		}
		rb.Weight = b.Weight
		rb.SpareConnections, rb.SpareMaxIdle = b.SpareConnections, b.SpareMaxIdle
		named[b.Name] = rb
		rt.backends = append(rt.backends, rb)
	}
	for _, b := range cfg.Backends {
		if b.Fallback != "" {
			named[b.Name].Fallback = named[b.Fallback]
		}
	}
	if h := cfg.Routing.Health; !h.Disabled {
		if prev != nil && prev.health != nil && reflect.DeepEqual(prev.cfg.Routing.Health, h) {
			rt.health = prev.health
		} else {
			rt.health = &routing.Health{Interval: h.Interval, Timeout: h.Timeout, Rise: h.Rise, Fall: h.Fall, Logger: logger}
		}
	}
	if prev != nil {
		rt.FleetState = prev.FleetState
	} else if rt.Redis != nil {
		rt.FleetState = &routing.Fleet{Client: rt.Redis, Prefix: rt.RedisPrefix}
	}

	static := make(map[string]*routing.Backend, len(cfg.Routing.Static))
	for _, r := range cfg.Routing.Static {
		user, err := routing.Normalize(r.User, cfg.Routing.DefaultDomain)
		if err != nil {
			return fmt.Errorf("routing.static user %q: %w", r.User, err)
		}
		static[user] = named[r.Backend]
	}
	chain := routing.Chain{&routing.Guard{Next: routing.NewStatic(static), Health: rt.health, Fleet: rt.FleetState}}

	if rt.Redis != nil {
		defaults, err := backend("", "", cfg.BackendDefaults)
		if err != nil {
			return fmt.Errorf("backend_defaults: %w", err)
		}
		pools := make(map[string]*routing.Pool, len(cfg.Routing.Pools))
		for _, p := range cfg.Routing.Pools {
			policy, err := routing.ParsePolicy(p.Policy)
			if err != nil {
				return fmt.Errorf("routing.pools %q: %w", p.Name, err)
			}
			rp := &routing.Pool{Name: p.Name, Policy: policy}
			for _, m := range p.Backends {
				rp.Members = append(rp.Members, named[m])
			}
			pools[p.Name] = rp
		}
		domainPools := make(map[string]*routing.Pool, len(cfg.Routing.DomainPools))
		for d, p := range cfg.Routing.DomainPools {
			domainPools[d] = pools[p]
		}
		if c := cfg.Routing.Cache; !c.Disabled {
			if prev != nil && prev.routeCache != nil && reflect.DeepEqual(prev.cfg.Routing.Cache, c) {
				// Entries are route records by user, not backends: they
				// mean the same under the new backends and pools.
				rt.routeCache = prev.routeCache
			} else {
				rt.routeCache = &routing.Cache{PositiveTTL: c.PositiveTTL, NegativeTTL: c.NegativeTTL, MaxEntries: c.MaxEntries}
			}
		}
		rt.RedisRouter = &routing.Redis{
			Client:      rt.Redis,
			Prefix:      rt.RedisPrefix,
			Backends:    named,
			Defaults:    *defaults,
			Timeout:     cfg.Routing.LookupTimeout,
			Pools:       pools,
			DomainPools: domainPools,
			DefaultPool: pools[cfg.Routing.DefaultPool],
			Health:      rt.health,
			Fleet:       rt.FleetState,
			Cache:       rt.routeCache,
		}
		chain = append(chain, rt.RedisRouter)
	}
	rt.router = chain
	return nil
}

// buildSpares gives the backends with spare_connections their spare
// connections, which live as long as this App's generation
// (startRoutingChecks): a reload's backends are new ones and get new
// spares, and the old ones are closed. A backend that is down or drained
// holds none.
func (rt *App) buildSpares(prev *App) {
	if prev != nil {
		rt.spareCounters = prev.spareCounters
	} else {
		rt.spareCounters = &upstream.SpareCounters{}
	}
	for _, b := range rt.backends {
		if b.SpareConnections > 0 && !b.ProxyProtocol {
			health, fleet := rt.health, rt.FleetState
			rt.spares = &upstream.Spares{Counters: rt.spareCounters, Usable: func(b *routing.Backend) bool {
				return health.Up(b) && !fleet.Drained(b)
			}}
			return
		}
	}
}

// loginWithHealth wraps the server's login with ReportHealth.
func (rt *App) loginWithHealth(next, def proxy.LoginFunc) proxy.LoginFunc {
	if rt.health == nil {
		return next // nil: the server's default
	}
	if next == nil {
		next = def
	}
	return ReportHealth(rt.health, next)
}

// ReportHealth reports backend logins to h: a failed connect or greeting
// counts towards marking the backend down, so the next logins get
// NO [UNAVAILABLE] at once instead of each waiting for a timeout. A nil
// next means upstream.Login.
func ReportHealth(h *routing.Health, next proxy.LoginFunc) proxy.LoginFunc {
	if next == nil {
		next = upstream.Login
	}
	return func(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error) {
		res, err := next(ctx, b, cred, id)
		switch {
		case err == nil, errors.Is(err, upstream.ErrAuthFailed):
			h.ReportSuccess(b)
		case ctx.Err() == nil:
			h.ReportFailure(b, err)
		}
		return res, err
	}
}

// startRouting runs the health checks and the cache and fleet-state
// invalidation until ctx ends.
func (rt *App) startRouting(ctx context.Context, logger *slog.Logger) {
	if rt.fleet != nil {
		go rt.fleet.Run(ctx)
	}
	rt.startRoutingChecks(ctx, logger)
}

// startRoutingChecks runs this App's health checks and cache and
// fleet-state invalidation until ctx ends: the part of startRouting that
// a reload replaces.
func (rt *App) startRoutingChecks(ctx context.Context, logger *slog.Logger) {
	if rt.spares != nil {
		context.AfterFunc(ctx, rt.spares.Close)
	}
	if rt.health != nil && len(rt.backends) > 0 {
		go rt.health.Run(ctx, rt.backends...)
	}
	if rt.Redis != nil {
		inv := &routing.Invalidator{Client: rt.Redis, Prefix: rt.RedisPrefix, Cache: rt.routeCache, Fleet: rt.FleetState, Logger: logger}
		go inv.Run(ctx)
	}
}

// buildFleet connects the server to the fleet-wide session registry and
// control channel (kick, move, drain deadlines) in Redis.
func (rt *App) buildFleet(cfg *config.Config, srv *proxy.Server, logger *slog.Logger) {
	if rt.Redis == nil {
		return
	}
	id := cfg.Fleet.ProxyID
	if id == "" {
		host, _ := os.Hostname()
		id = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	f := &fleet.Fleet{
		Client: rt.Redis, Prefix: rt.RedisPrefix, ProxyID: id,
		Heartbeat: cfg.Fleet.Heartbeat, Reconcile: cfg.Fleet.Reconcile,
		WriteRate: cfg.Fleet.WriteRate, Logger: logger,
	}
	JoinFleet(srv, f)
	rt.fleet = f
}

// joinLimiter lets the limiter and the session count use the fleet's hot
// set: a login of a user and an address that nobody has failed with of
// late, of a user with few sessions, costs no Redis command. It is on
// whenever the fleet runs; whenever the fleet cannot be sure (control
// channel down, not resynced, hot set overflowed), logins ask Redis as
// before. A limiter kept by a reload already has it.
func (rt *App) joinLimiter(cfg *config.Config, prev *App) {
	f := rt.fleet
	if f == nil {
		return
	}
	perUser := cfg.Limits.MaxSessionsPerUser
	if perUser > 0 {
		// A user is counted fleet-wide once the registry holds half of
		// its limit; below, the proxy counts its own sessions.
		f.SetHotSessions(max(perUser/2, 1))
	} else {
		f.SetHotSessions(0)
	}
	if rt.Limiter == nil || (prev != nil && prev.Limiter == rt.Limiter) {
		return
	}
	rt.Limiter.Hot = f
	if perUser > 0 {
		// The login's session count travels with the limiter's read: one
		// round trip to Redis per login instead of two.
		rt.Limiter.CountSessions = f.QueueUserSessions
		rt.Limiter.SessionsCold = f.SessionsCold
	}
}

// JoinFleet connects srv and f both ways: the fleet sees and kicks the
// server's sessions, and the server reports sessions to the registry and
// holds logins during moves.
func JoinFleet(srv *proxy.Server, f *fleet.Fleet) {
	f.Local = localServer{srv}
	srv.OnSplice = func(i proxy.SessionInfo) { f.SessionStarted(fleet.SessionInfo(i)) }
	srv.OnEnd = func(i proxy.SessionInfo) { f.SessionEnded(fleet.SessionInfo(i)) }
	srv.LoginGate = f.LoginGate
	srv.LoginGateAgain = f.LoginGateAgain
	srv.UserSessions = f.UserSessions
}

// localServer shows a proxy.Server to the fleet package.
type localServer struct{ s *proxy.Server }

func (l localServer) Sessions() []fleet.SessionInfo {
	ss := l.s.Sessions()
	out := make([]fleet.SessionInfo, len(ss))
	for i, s := range ss {
		out[i] = fleet.SessionInfo(s)
	}
	return out
}

func (l localServer) KickUser(user, reason string) int { return l.s.KickUser(user, reason) }

func (l localServer) KickBackend(name string, window time.Duration) int {
	return l.s.KickBackend(name, window)
}
