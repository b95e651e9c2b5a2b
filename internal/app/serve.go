package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/portico-mail/portico/proxy"
)

// Start runs what keeps a configured Portico current until ctx ends:
// ACME issuance (done before it returns, so before any listener opens),
// certificate reloads, shared ticket keys, health checks, cache
// invalidation and the fleet registry. It returns the reload function
// for SIGHUP.
func (rt *App) Start(ctx context.Context, logger *slog.Logger) (reload func(), err error) {
	reload, err = rt.startTLS(ctx, logger)
	if err != nil {
		return nil, err
	}
	rt.startRouting(ctx, logger)
	return reload, nil
}

// Serve opens every listener (all or none), serves until ctx ends, then
// shuts down gracefully within timeout.
func (rt *App) Serve(ctx context.Context, timeout time.Duration, logger *slog.Logger) error {
	lns := make([]net.Listener, 0, len(rt.Listeners))
	for _, spec := range rt.Listeners {
		ln, err := proxy.Listen(ctx, spec.Addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("listener %q: %w", spec.Config.Name, err)
		}
		lns = append(lns, ln)
	}
	errc := make(chan error, len(lns))
	for i, ln := range lns {
		spec := rt.Listeners[i]
		logger.Info("listening", "listener", spec.Config.Name, "mode", spec.Config.Mode.String(), "addr", ln.Addr().String())
		go func() { errc <- rt.Server.Serve(ln, spec.Config) }()
	}
	var err error
	select {
	case <-ctx.Done():
		logger.Info("shutting down", "timeout", timeout)
	case err = <-errc:
		logger.Error("listener failed; shutting down", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if serr := rt.Server.Shutdown(sctx); serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
		logger.Warn("shutdown", "err", serr)
	}
	if rt.fleet != nil {
		// The sessions are gone: say so now, not three heartbeats later.
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if rerr := rt.fleet.Retire(rctx); rerr != nil {
			logger.Warn("shutdown: session registry", "err", rerr)
		}
		cancel()
	}
	if errors.Is(err, proxy.ErrServerClosed) {
		err = nil
	}
	return err
}
