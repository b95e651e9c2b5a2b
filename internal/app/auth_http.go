package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"github.com/portico-mail/portico/auth"
	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// buildHTTPAuth builds the authenticator of auth.http, for auth.passwords
// "http": an auth_http service as nginx's mail proxy asks it.
func (rt *App) buildHTTPAuth(cfg *config.Config, master auth.Master, logger *slog.Logger) (proxy.Authenticator, error) {
	c := cfg.Auth.HTTP
	h := &auth.HTTP{
		URL: c.URL, Timeout: c.Timeout, Master: master,
		KeepRouting: c.Backend == config.HTTPAuthBackendRouting,
		Logger:      logger,
	}
	for _, kv := range c.HeaderList() {
		// A value from {env:} or {file:} was not seen by check-config;
		// the message leaves it out, as it may be a key.
		if strings.ContainsFunc(kv[1], func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
			return nil, fmt.Errorf("headers.%s: the value contains control characters", kv[0])
		}
		h.Headers = append(h.Headers, auth.Header{Name: kv[0], Value: kv[1]})
	}
	if c.TLS != nil {
		tc, err := ptls.ClientConfig(clientOptions(c.TLS))
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		h.TLSConfig = tc
	}
	if !h.KeepRouting {
		b, err := rt.answerBackends(cfg)
		if err != nil {
			return nil, err
		}
		h.Backend = b
	}
	rt.authHTTP = h
	return h, nil
}

// answerBackends turns the Auth-Server and Auth-Port of an answer into a
// backend: the configured backend with that address, so that its
// settings, health, drain state, fallback and per-backend limits apply
// under its name; else one made from backend_defaults and named by its
// address, as a route record's literal "addr" is. Either must be up and
// not drained, as a routed backend must.
func (rt *App) answerBackends(cfg *config.Config) (func(context.Context, netip.AddrPort) (*routing.Backend, error), error) {
	defaults, err := backend("", "", cfg.BackendDefaults)
	if err != nil {
		return nil, fmt.Errorf("backend_defaults: %w", err)
	}
	byAddr := make(map[netip.AddrPort]*routing.Backend, len(rt.backends))
	for _, b := range rt.backends {
		// Only addresses written as IP:port can match: Auth-Server is
		// an IP address, and nothing is resolved while building.
		if ap, err := netip.ParseAddrPort(b.Addr); err == nil {
			ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			if _, dup := byAddr[ap]; !dup {
				byAddr[ap] = b
			}
		}
	}
	health, fleet := rt.health, rt.FleetState
	return func(ctx context.Context, ap netip.AddrPort) (*routing.Backend, error) {
		b := byAddr[ap]
		if b == nil {
			nb := *defaults
			nb.Addr = net.JoinHostPort(ap.Addr().String(), fmt.Sprint(ap.Port()))
			b = &nb
		}
		g := routing.Guard{Next: fixedRouter{b}, Health: health, Fleet: fleet}
		return g.Lookup(ctx, "")
	}, nil
}

// fixedRouter answers every lookup with one backend.
type fixedRouter struct{ b *routing.Backend }

func (f fixedRouter) Lookup(context.Context, string) (*routing.Backend, error) { return f.b, nil }
