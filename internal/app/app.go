package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/auth"
	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/fleet"
	"github.com/portico-mail/portico/limits"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// App is what a config turns into: everything but the sockets.
//
// A reload builds a new App from the running one (Next): the parts that
// live as long as the process (the proxy.Server with its sessions, Redis,
// the fleet registry, ACME) are shared, the others are new; see reload.go.
type App struct {
	Server      *proxy.Server
	Listeners   []Listener
	cfg         *config.Config
	settings    proxy.Config          // the Server's configuration from this App
	Redis       redis.UniversalClient // nil without Redis
	RedisPrefix string

	// TLS towards clients; see tls.go.
	tlsConfig *tls.Config
	Store     *ptls.Store // file certificates, nil without
	pairs     []ptls.Pair
	ACME      *ptls.ACME // nil without ACME
	acmeCfg   *config.ACME
	// acmeHostnames puts a reload's tls.acme.hostnames in service (the
	// manager is prev's); nil when they did not change.
	acmeHostnames func() (added []string)
	tickets       *ptls.TicketKeys
	tlsCfg        config.TLS
	// certReload reloads the certificate files now (SIGHUP); set by the
	// Process that runs this App.
	certReload func()
	// stopChallenges closes the ACME challenge listeners; nil without.
	stopChallenges context.CancelFunc
	// sockets are the process's listening sockets, for upgrades; nil
	// outside a Process.
	sockets *sockets

	// Routing; see routing.go.
	router      routing.Router
	RedisRouter *routing.Redis // nil without Redis
	backends    []*routing.Backend
	health      *routing.Health  // nil when disabled
	spares      *upstream.Spares // nil when no backend has spare_connections
	// spareCounters outlive reloads: the metrics' counts keep growing.
	spareCounters *upstream.SpareCounters
	FleetState    *routing.Fleet // nil without Redis
	routeCache    *routing.Cache // nil when disabled or without Redis
	fleet         *fleet.Fleet   // nil without Redis

	// Limiter limits failed logins; nil when limits.brute_force is
	// disabled. See limits.go.
	Limiter    *limits.Limiter
	limiterCfg limiterConfig

	// authHTTP is auth.http's client, whose idle connections Close drops;
	// nil without it. See auth_http.go.
	authHTTP *auth.HTTP
}

// Listener is one client listener to open.
type Listener struct {
	Addr   string
	Config proxy.Listener
}

func (rt *App) Close() {
	rt.spares.Close()
	if rt.Redis != nil {
		rt.Redis.Close()
	}
	if rt.authHTTP != nil {
		rt.authHTTP.Close()
	}
}

// NewLogger builds the process logger from the config.
func NewLogger(c config.Log, w io.Writer) *slog.Logger {
	return newLogger(c, w, c.SlogLevel())
}

// newLogger is NewLogger with the level given apart: a *slog.LevelVar
// lets a reload change it.
func newLogger(c config.Log, w io.Writer, level slog.Leveler) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Build turns a validated config into a server and its listeners without
// opening any socket or contacting anything, so check-config can run it
// too.
func Build(cfg *config.Config, logger *slog.Logger) (*App, error) {
	if logger == nil {
		logger = NewLogger(cfg.Log, os.Stderr)
	}
	return build(cfg, logger, nil)
}

// build is Build, or with prev the next App of a reload, which shares
// prev's process-wide parts and leaves prev.Server as it is: Next's
// caller applies the new settings when it commits.
func build(cfg *config.Config, logger *slog.Logger, prev *App) (*App, error) {
	rt := &App{cfg: cfg}
	srv := &proxy.Server{
		DefaultDomain: cfg.Routing.DefaultDomain,
		Logger:        logger,
		Limits: proxy.Limits{
			MaxLine:          cfg.Limits.MaxLineLength,
			MaxLiteral:       cfg.Limits.MaxLiteralSize,
			MaxAuthLine:      cfg.Limits.MaxAuthLineLength,
			PreauthTimeout:   cfg.Limits.PreauthTimeout,
			HandshakeTimeout: cfg.Limits.HandshakeTimeout,
			MaxBadCommands:   cfg.Limits.MaxBadCommands,
			MaxAuthFailures:  cfg.Limits.MaxAuthFailures,
			AuthFailureDelay: cfg.Limits.AuthFailureDelay,
			LookupTimeout:    cfg.Routing.LookupTimeout,
			IdleTimeout:      cfg.Limits.IdleTimeout,

			MaxConnections:       cfg.Limits.MaxConnections,
			MaxPreauthPerIP:      cfg.Limits.MaxPreauthConnectionsPerIP,
			IPv6Prefix:           cfg.Limits.IPv6Prefix,
			MaxSessionsPerUser:   cfg.Limits.MaxSessionsPerUser,
			MaxSessionsPerUserIP: cfg.Limits.MaxSessionsPerUserIP,
			MaxLoginsInProgress:  cfg.Limits.MaxLoginsInProgress,
			MaxLoginsPerBackend:  cfg.Limits.MaxLoginsInProgressPerBackend,
		},
	}
	if srv.Limits.MaxConnections == 0 {
		// The default: what fits in the open-file limit.
		srv.Limits.MaxConnections = proxy.FileLimitConnections()
	}
	var err error
	if srv.TrustedNetworks, err = prefixes(cfg.Limits.TrustedNetworks); err != nil {
		return nil, fmt.Errorf("limits.trusted_networks: %w", err)
	}
	if prev != nil {
		// Redis and the fleet registry stay as the process started them
		// (restartNeeded names their changes).
		rt.Redis, rt.RedisPrefix = prev.Redis, prev.RedisPrefix
	} else if rc := cfg.Routing.Redis; rc != nil {
		opts := routing.RedisOptions{
			Addrs: rc.Addrs, MasterName: rc.MasterName, Username: rc.Username,
			Password: rc.Password.Value, DB: rc.DB, DialTimeout: rc.DialTimeout,
			ReadTimeout: rc.ReadTimeout, WriteTimeout: rc.WriteTimeout, PoolSize: rc.PoolSize,
		}
		if rc.TLS != nil {
			c, err := ptls.ClientConfig(clientOptions(rc.TLS))
			if err != nil {
				return nil, fmt.Errorf("routing.redis.tls: %w", err)
			}
			opts.TLSConfig = c
		}
		redis.SetLogger(redisLogger{logger})
		rt.Redis = routing.NewRedisClient(opts)
		rt.RedisPrefix = rc.KeyPrefix
	}
	if err := rt.buildTLS(cfg, logger, prev); err != nil {
		return nil, err
	}
	srv.TLSConfig = rt.tlsConfig

	if err := rt.buildRouting(cfg, logger, prev); err != nil {
		return nil, err
	}
	srv.Router = rt.router
	if rt.buildSpares(prev); rt.spares != nil {
		srv.Login, srv.LoginPOP3 = rt.spares.Login, rt.spares.LoginPOP3
	}
	srv.Login = rt.loginWithHealth(srv.Login, upstream.Login)
	srv.LoginPOP3 = rt.loginWithHealth(srv.LoginPOP3, upstream.LoginPOP3)
	if err := rt.buildLimits(cfg, srv, logger, prev); err != nil {
		return nil, err
	}
	if err := rt.buildAuth(cfg, srv, logger); err != nil {
		return nil, err
	}
	srv.OAuth = oauthOffer(cfg)
	rt.settings = proxy.Config{
		Router: srv.Router, TLSConfig: srv.TLSConfig, DefaultDomain: srv.DefaultDomain, Limits: srv.Limits,
		Login: srv.Login, LoginPOP3: srv.LoginPOP3, Limiter: srv.Limiter, Authenticator: srv.Authenticator, OAuth: srv.OAuth,
		TrustedNetworks: srv.TrustedNetworks,
	}
	if prev != nil {
		rt.fleet = prev.fleet
		srv = prev.Server
	} else {
		rt.buildFleet(cfg, srv, logger)
	}
	rt.joinLimiter(cfg, prev)

	for _, l := range cfg.Listeners {
		pl := proxy.Listener{Name: l.Name, Mode: listenerMode(l.Mode)}
		if pl.CleartextLogin, err = prefixes(l.CleartextLoginNetworks); err != nil {
			return nil, fmt.Errorf("listener %q: cleartext_login_networks: %w", l.Name, err)
		}
		if pp := l.ProxyProtocol; pp != nil {
			if pl.ProxyProtocolFrom, err = prefixes(pp.TrustedNetworks); err != nil {
				return nil, fmt.Errorf("listener %q: proxy_protocol.trusted_networks: %w", l.Name, err)
			}
		}
		rt.Listeners = append(rt.Listeners, Listener{Addr: l.Address, Config: pl})
	}
	rt.Server = srv
	return rt, nil
}

// prefixes parses CIDR networks.
func prefixes(nets []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, n := range nets {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func clientOptions(c *config.ClientTLS) ptls.ClientOptions {
	return ptls.ClientOptions{
		CAFile: c.CAFile, ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify,
		CertFile: c.CertFile, KeyFile: c.KeyFile, PinSHA256: c.PinSHA256,
	}
}

// listenerMode maps a validated config mode to the proxy's.
func listenerMode(m string) proxy.Mode {
	switch m {
	case "imap":
		return proxy.StartTLS
	case "pop3s":
		return proxy.POP3S
	case "pop3":
		return proxy.POP3
	}
	return proxy.ImplicitTLS
}

// backend turns backend options into a routing.Backend.
func backend(name, addr string, o config.BackendOptions) (*routing.Backend, error) {
	mode, err := routing.ParseTLSMode(strings.ToLower(o.Security))
	if err != nil {
		return nil, err
	}
	b := &routing.Backend{
		Name: name, Addr: addr, TLS: mode, ForwardID: o.ForwardID, ProxyProtocol: o.ProxyProtocol,
		ConnectTimeout: o.ConnectTimeout, LoginTimeout: o.LoginTimeout, POP3Port: o.POP3Port,
	}
	if o.POP3Port > 0 && addr != "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		b.POP3Addr = net.JoinHostPort(host, strconv.Itoa(o.POP3Port))
	}
	// backend_defaults may carry TLS settings next to security "plain":
	// they serve the route records that choose starttls or tls.
	if mode != routing.Plain || o.TLS != nil {
		opts := ptls.ClientOptions{}
		if o.TLS != nil {
			opts = clientOptions(o.TLS)
		}
		if b.TLSConfig, err = ptls.ClientConfig(opts); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// redisLogger sends go-redis' own messages (failed dials and the like) to
// slog at warning level instead of its global stderr logger.
type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.l.WarnContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}
