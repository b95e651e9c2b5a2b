package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/admin"
	"github.com/portico-mail/portico/metrics"
)

// Ops is what lives as long as the process, across reloads of the
// configuration: the metrics and the admin listener. Attach hands it each
// App built.
type Ops struct {
	Metrics *metrics.Metrics
	cur     atomic.Pointer[App]
	// Addr is the admin listener's address; nil without one.
	Addr fmt.Stringer

	mu     sync.Mutex
	hooked redis.UniversalClient // the last client given the metrics hook
}

// StartOps makes the metrics and, when cfg is not nil, opens the admin
// listener and serves it until ctx ends. It opens before the client
// listeners (and before ACME issuance), so that /healthz answers and
// /readyz says what is missing from the start.
func StartOps(ctx context.Context, cfg *config.Admin, version string, logger *slog.Logger) (*Ops, error) {
	return startOps(ctx, cfg, version, logger, nil)
}

// startOps is StartOps with the admin socket taken from socks, where an
// upgrade hands it on like the client listeners.
func startOps(ctx context.Context, cfg *config.Admin, version string, logger *slog.Logger, socks *sockets) (*Ops, error) {
	o := &Ops{Metrics: metrics.New(version)}
	if cfg == nil {
		return o, nil
	}
	h := admin.NewHandler(admin.Options{Token: cfg.Token.Value, Metrics: o.Metrics.Handler(), Ready: o.ready})
	key := "admin " + cfg.Address
	ln, _, err := socks.listen(ctx, key, func(ctx context.Context) (net.Listener, error) {
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", cfg.Address)
		if err != nil {
			return nil, fmt.Errorf("admin: listen %q: %w", cfg.Address, err)
		}
		return ln, nil
	})
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { socks.closed(key) })
	srv := admin.NewServer(ln, h, logger)
	o.Addr = srv.Addr()
	logger.Info("admin: listening", "addr", srv.Addr().String(), "token", cfg.Token.Value != "")
	go func() {
		if err := srv.Serve(ctx); err != nil {
			logger.Error("admin listener failed", "err", err)
		}
	}()
	return o, nil
}

// Attach makes rt the App that the metrics and /readyz describe, and
// connects its server and Redis client to the metrics. Call it after
// Build, before rt.Start and rt.Serve, and again with each App a reload
// builds. rt.Server must be the server that serves (after a reload that
// Reconfigures the running server, set rt.Server to it first): the
// connection metrics count its sessions. A server or Redis client that is
// already connected is left as it is, so Attach may see them again.
func (o *Ops) Attach(rt *App) {
	if rt.Server.Observer != o.Metrics {
		rt.Server.Observer = o.Metrics // before the server serves: no lock
	}
	if rt.Redis != nil {
		o.mu.Lock()
		if o.hooked != rt.Redis {
			o.hooked = rt.Redis
			rt.Redis.AddHook(o.Metrics.RedisHook())
		}
		o.mu.Unlock()
	}
	o.Metrics.SetSource(metrics.Source{
		Server:   rt.Server,
		Backends: rt.backends,
		Health:   rt.health,
		Fleet:    rt.FleetState,
		Cache:    rt.routeCache,
		Registry: rt.fleet,
		Limiter:  rt.Limiter,
		Store:    rt.Store,
		ACME:     rt.ACME,
		Spares:   rt.spareCounters,
	})
	o.cur.Store(rt)
}

func (o *Ops) ready(ctx context.Context) (problems, notes []string) {
	rt := o.cur.Load()
	if rt == nil {
		return []string{"starting: configuration not built yet"}, nil
	}
	return rt.Ready(ctx)
}

// Ready lists what keeps rt from serving logins (empty: ready) and what
// is degraded but serving: the client listeners open, certificates
// loaded, Redis reachable. Without Redis, a route cache still serves the
// users it holds; without one, every user routed by Redis is turned away.
func (rt *App) Ready(ctx context.Context) (problems, notes []string) {
	if n, _ := rt.Server.Counts(); n < len(rt.Listeners) {
		problems = append(problems, fmt.Sprintf("listeners: %d of %d open", n, len(rt.Listeners)))
	}
	if rt.tlsConfig != nil && !rt.hasCertificates() {
		problems = append(problems, "certificates: none loaded")
	}
	if rt.Redis != nil {
		if err := rt.Redis.Ping(ctx).Err(); err != nil {
			if rt.routeCache != nil {
				notes = append(notes, fmt.Sprintf("redis: unreachable (%v); logins use the route cache and static routes", err))
			} else {
				problems = append(problems, fmt.Sprintf("redis: unreachable (%v) and no route cache: users routed by Redis cannot log in", err))
			}
		}
	}
	return problems, notes
}

func (rt *App) hasCertificates() bool {
	return rt.Store != nil && len(rt.Store.Certificates()) > 0 ||
		rt.ACME != nil && len(rt.ACME.Certificates()) > 0
}
