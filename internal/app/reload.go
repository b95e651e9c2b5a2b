package app

import (
	"log/slog"
	"reflect"

	"github.com/portico-mail/portico/config"
)

// What a reload changes. A reload builds a new App from the file (Next)
// and, when that worked, makes it current: new client connections are
// accepted under the new backends, pools, routes, limits and TLS
// settings, listeners are opened and closed to match the file, and the
// log level changes. Connections accepted before keep what they were
// accepted with (proxy.Server.Reconfigure), and spliced sessions are not
// touched at all.
//
// The parts that live as long as the process cannot change without a
// restart or an upgrade (which is a restart that keeps the sessions);
// restartNeeded names them so that the log says which changes waited.

// Next builds the App of a reload from cfg, sharing rt's process-wide
// parts. Like Build it opens no socket and contacts nothing, and it
// changes nothing in rt: an error leaves the running configuration as it
// was.
func (rt *App) Next(cfg *config.Config, logger *slog.Logger) (*App, error) {
	next, err := build(cfg, logger, rt)
	if err != nil {
		return nil, err
	}
	next.sockets = rt.sockets
	next.stopChallenges = rt.stopChallenges
	return next, nil
}

// restartNeeded lists the config keys that differ between old and new and
// that only a restart or an upgrade applies.
func restartNeeded(old, new *config.Config) []string {
	var keys []string
	diff := func(key string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			keys = append(keys, key)
		}
	}
	diff("routing.redis", old.Routing.Redis, new.Routing.Redis)
	diff("fleet", old.Fleet, new.Fleet)
	if a, b := old.TLS.ACME, new.TLS.ACME; a == nil || b == nil || !acmeEqualButHostnames(*a, *b) {
		// The hostnames alone a reload applies.
		diff("tls.acme", a, b)
	}
	diff("log.format", old.Log.Format, new.Log.Format)
	diff("pid_file", old.PIDFile, new.PIDFile)
	diff("admin", old.Admin, new.Admin)
	return keys
}
