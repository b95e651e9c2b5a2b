package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/app"
	"github.com/portico-mail/portico/internal/gcpolicy"
)

func runServe(args []string) error {
	fs := newFlagSet("serve", "-config FILE")
	path := configFlag(fs)
	if _, help, err := parseArgs(fs, args); help || err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	logger := app.NewLogger(cfg.Log, os.Stderr)
	for _, w := range cfg.Warnings() {
		logger.Warn("config: " + w)
	}
	rt, err := app.Build(cfg, logger)
	if err != nil {
		return err
	}
	defer rt.Close()
	if rt.Store != nil {
		for _, c := range rt.Store.Certificates() {
			logger.Info("certificate loaded", "cert", c)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go new(gcpolicy.Settler).Run(ctx) // see the package doc
	ops, err := app.StartOps(ctx, cfg.Admin, binaryVersion(), logger)
	if err != nil {
		return err
	}
	ops.Attach(rt)
	// Certificates first: ACME issuance happens before any listener opens.
	reload, err := rt.Start(ctx, logger)
	if err != nil {
		return err
	}
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
	return rt.Serve(ctx, cfg.Limits.ShutdownTimeout, logger)
}
