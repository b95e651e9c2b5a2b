package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/portico-mail/portico/internal/app"
	"github.com/portico-mail/portico/internal/gcpolicy"
)

func runServe(args []string) error {
	fs := newFlagSet("serve", "-config FILE")
	path := configFlag(fs)
	if _, help, err := parseArgs(fs, args); help || err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go new(gcpolicy.Settler).Run(ctx) // see the package doc

	// The process opens the admin listener (metrics) before the client
	// listeners and hands it each App a reload builds.
	p := &app.Process{ConfigPath: *path, Version: binaryVersion()}
	// systemd (Type=notify): not ctx, the watchdog goes on through the
	// graceful shutdown.
	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc := newService(sctx)
	p.Hooks = app.Hooks{
		Ready:     func(upgraded bool) { svc.ready(p.Logger, p.Server(), upgraded) },
		Reloading: svc.reloading, Reloaded: svc.reloaded, Stopping: svc.stopping,
	}
	// SIGHUP reloads the whole config file (portico reload), SIGUSR2
	// upgrades to the binary now installed at our path (portico upgrade).
	// Each is handled to its end before the next: a burst of signals
	// collapses into one more round.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	go func() {
		for {
			select {
			case sig := <-sigs:
				if sig == syscall.SIGUSR2 {
					p.Upgrade() // logs and reports its outcome itself
				} else {
					p.Reload()
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return p.Run(ctx)
}
