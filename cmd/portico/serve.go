package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/proxy"
)

func runServe(args []string) error {
	fs := newFlagSet("serve", "-config FILE")
	path := fs.String("config", "/etc/portico/portico.yaml", "configuration `file`")
	if help, err := parseFlags(fs, args); help || err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	logger := newLogger(cfg.Log, os.Stderr)
	for _, w := range cfg.Warnings() {
		logger.Warn("config: " + w)
	}
	rt, err := build(cfg, logger)
	if err != nil {
		return err
	}
	defer rt.Close()
	if rt.store != nil {
		for _, c := range rt.store.Certificates() {
			logger.Info("certificate loaded", "cert", c)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Certificates first: ACME issuance happens before any listener opens.
	reload, err := rt.startTLS(ctx, logger)
	if err != nil {
		return err
	}
	rt.startRouting(ctx, logger)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				reload()
			case <-ctx.Done():
				return
			}
		}
	}()
	return serveUntilSignal(ctx, rt, cfg.Limits.ShutdownTimeout, logger)
}

// serveUntilSignal opens every listener (all or none), serves until ctx
// ends (SIGINT or SIGTERM), then shuts down gracefully within timeout.
func serveUntilSignal(ctx context.Context, rt *app, timeout time.Duration, logger *slog.Logger) error {
	lns := make([]net.Listener, 0, len(rt.listeners))
	for _, spec := range rt.listeners {
		ln, err := net.Listen("tcp", spec.addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("listener %q: %w", spec.l.Name, err)
		}
		lns = append(lns, ln)
	}
	errc := make(chan error, len(lns))
	for i, ln := range lns {
		spec := rt.listeners[i]
		logger.Info("listening", "listener", spec.l.Name, "mode", spec.l.Mode.String(), "addr", ln.Addr().String())
		go func() { errc <- rt.server.Serve(ln, spec.l) }()
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
	if serr := rt.server.Shutdown(sctx); serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
		logger.Warn("shutdown", "err", serr)
	}
	if errors.Is(err, proxy.ErrServerClosed) {
		err = nil
	}
	return err
}
