// Package app assembles a running Portico from a validated config: the
// proxy server and its listeners, TLS (files, reload, ACME, ticket keys),
// routing (static routes, Redis, pools, health, cache) and the fleet
// registry. cmd/portico stays a thin layer of flags and subcommands.
//
// Typical use:
//
//	cfg, err := config.Load(path)
//	a, err := app.Build(cfg, logger) // no socket opened, nothing contacted
//	defer a.Close()
//	reload, err := a.Start(ctx, logger) // ACME issuance, reloads, health, fleet
//	err = a.Serve(ctx, cfg.Limits.ShutdownTimeout, logger)
package app
