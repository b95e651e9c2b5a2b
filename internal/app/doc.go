// Package app assembles a running Portico from a validated config: the
// proxy server and its listeners, TLS (files, reload, ACME, ticket keys),
// routing (static routes, Redis, pools, health, cache) and the fleet
// registry. cmd/portico stays a thin layer of flags and subcommands.
//
// A whole serve process, with reloads and upgrades, is a Process:
//
//	p := &app.Process{ConfigPath: path, Hooks: hooks}
//	go func() { for range hup { p.Reload() } }()     // SIGHUP
//	go func() { for range usr2 { p.Upgrade() } }()   // SIGUSR2
//	err := p.Run(ctx)                                 // until ctx ends or a new process took over
//
// The parts, for tests and tools that need less:
//
//	cfg, err := config.Load(path)
//	a, err := app.Build(cfg, logger) // no socket opened, nothing contacted
//	defer a.Close()
//	reload, err := a.Start(ctx, logger) // ACME issuance, reloads, health, fleet
//	err = a.Serve(ctx, cfg.Limits.ShutdownTimeout, logger)
package app
