// Package routing decides which backend IMAP server holds a user's mailbox.
//
// Typical use:
//
//	user, err := routing.Normalize(raw, "example.com")
//	if err != nil { /* answer like a wrong password */ }
//	b, err := router.Lookup(ctx, user)
//	switch {
//	case errors.Is(err, routing.ErrNotFound): // same answer as a wrong password
//	case err != nil:                          // NO [UNAVAILABLE], the client may retry
//	}
//
// A Router is the only thing the proxy knows about routing. Static holds
// routes from the config file, Redis reads them from a Redis server, Chain
// asks several routers in order, and Guard applies health and drains to
// another router's answers:
//
//	health := &routing.Health{}                // active and passive checks
//	go health.Run(ctx, allBackends...)
//	fleet := &routing.Fleet{Client: rdb}       // drains and weights, fleet-wide
//	cache := &routing.Cache{}                  // records in memory
//	go (&routing.Invalidator{Client: rdb, Cache: cache, Fleet: fleet}).Run(ctx)
//	router := routing.Chain{
//		&routing.Guard{Next: routing.NewStatic(staticRoutes), Health: health, Fleet: fleet},
//		&routing.Redis{Client: rdb, Backends: named, Defaults: defaults,
//			Pools: pools, DomainPools: byDomain, DefaultPool: def,
//			Health: health, Fleet: fleet, Cache: cache},
//	}
//
// The proxy reports failed connects and greetings with
// health.ReportFailure, and successful ones with ReportSuccess. Tools (the
// portico CLI) use Redis.SetRoute, GetRoute, DeleteRoute and Explain, and
// Fleet.Drain, Undrain, SetWeight and List; every change is published, and
// every proxy's Invalidator applies it within milliseconds.
//
// # User names
//
// Normalize is applied to every login name before any lookup. It lower-cases
// the name, appends the default domain, and refuses names that could mean
// something to Redis, to a backend's variable expansion or to a log reader
// (control characters, spaces, "\*?[]{}%()). Refused names must get the
// same answer as a wrong password.
//
// # Pools and assignment
//
// A pool is a named group of backends with weights. A route may name a
// backend, a pool or a literal address:
//
//   - a backend is fixed: the user always goes there;
//   - a pool means "any member": the member is chosen on each lookup by
//     weighted rendezvous hashing of the user name over the members that
//     are up and not drained, and is never written down. This suits
//     backends that share storage; when a member fails or returns, its
//     users move.
//   - a literal address is reached with the backend_defaults settings.
//
// A user without a route belongs to the pool of its domain (DomainPools),
// or else to DefaultPool. With PolicyReject, or without a pool, it gets
// ErrNotFound. With PolicyAssign, the proxy chooses a member by weighted
// rendezvous hashing over the members that are up and not drained and
// writes it as the user's backend with a Lua script that writes only if
// the route does not exist (first writer wins). A proxy that loses the race
// uses the stored route, so all proxies agree, and the user stays on that
// backend even when the pool changes later. The weighted score of a member
// is -weight/ln(u), with u in (0,1) from a 64-bit hash of user and member
// name; the highest score wins, so each member receives a share of new
// users proportional to its weight, and adding or removing a member only
// moves users to or from that member.
//
// # Health, drains and fallbacks
//
// Health marks a backend down after Fall failed checks in a row (active
// probes or passive reports) and up again after Rise good checks. Fleet
// holds the drain flag and weight override of each backend. A login whose
// route names a backend that is down fails at once with ErrBackendDown,
// and one whose backend is drained with ErrDrained (a drained backend takes
// no new logins, not even of users already routed there; the operator
// moves them), unless the route's fallback backend, or else the backend's
// own Backend.Fallback, is up and not drained. Pools skip members that are
// down or drained, and new users are never assigned to them. Both errors
// mean NO [UNAVAILABLE] for the client.
//
// # Route cache
//
// Cache keeps route records (found for PositiveTTL, missing for
// NegativeTTL) in memory. Health, drains and pool choices are applied after
// the cache, on every lookup, so they take effect without waiting for a
// TTL. Every writer publishes on the invalidation channel, and each
// proxy's Invalidator drops the user's entry; on every (re)subscription it
// flushes the whole cache and reloads the fleet state, since messages sent
// while it was disconnected are lost.
//
// # Redis schema
//
// <prefix> defaults to "portico:"; <user> is the output of Normalize.
//
// Routes: one hash per user at <prefix>route:<user>.
//
//	HSET portico:route:alice@example.com backend mx1
//	HSET portico:route:carol@example.com pool replicated fallback mx9
//	HSET portico:route:bob@example.com addr 10.0.0.7:993 security tls server_name imap7.example.com
//
//	backend        name of a backend in the config file; wins over pool
//	               and addr
//	pool           name of a pool in the config file; wins over addr
//	addr           literal host:port of the backend, reached with the
//	               backend_defaults settings
//	security       optional, for addr: "plain", "starttls" or "tls"
//	               (overrides backend_defaults)
//	server_name    optional, for addr: the name to verify in the backend's
//	               TLS certificate (default: the host of addr)
//	fallback       optional: name of a configured backend that takes the
//	               user's logins while the route's backend is down or
//	               drained, or no pool member is usable
//	assigned_pool  written by assignment, for operators: the pool the
//	               backend was chosen from
//	assigned_at    written by assignment: unix seconds
//
// Other fields are ignored, and kept by SetRoute, DeleteRoute and
// assignment: the hash may hold the user's password hash (auth.redis), read
// with the route by Fields. A missing key, or a hash without any of the
// fields above, means the user has no route:
// ErrNotFound (the client is told its login failed, exactly as for a wrong
// password) or an assignment, as above. A record naming an unknown backend,
// pool or fallback, or with a bad addr or security, is a data error: the
// client gets NO [UNAVAILABLE] and the error is logged. So does any Redis
// failure or a lookup slower than the lookup timeout.
//
// Fleet state: one hash at <prefix>backends.
//
//	HSET portico:backends drained:mx1 1767225600   (unix seconds of the drain)
//	HSET portico:backends weight:mx2 5             (overrides the configured weight)
//
// Invalidation: pub/sub channel <prefix>invalidate. A message is a user
// name (drop that user's cached record), "*" (flush every cache) or
// "*backends" (reload the fleet state). Normalize refuses '*', so neither
// can be a user name. SetRoute and DeleteRoute publish in the same
// MULTI/EXEC as their change, the assignment script publishes when it
// writes, and Fleet publishes "*backends".
//
// Redis Cluster: each script and transaction touches a single key (one
// route, or the fleet hash), so no hash tags are needed, and route keys
// deliberately have none, so that users spread over all slots. PUBLISH
// takes a channel, not a key, and is broadcast to the whole cluster.
//
// Portico reads a route with a single HGETALL; the user name travels as one
// RESP argument and is never part of a pattern.
package routing

import (
	"context"
	"crypto/tls"
	"errors"
	"time"
)

// ErrNotFound means the router has no backend for the user. The proxy must
// answer it exactly like a wrong password, so that users cannot be enumerated.
var ErrNotFound = errors.New("routing: no route for user")

// ErrBackendDown means the user's backend is known to be down (Health) and
// there is no usable fallback, or a pool has no healthy member left. The
// proxy answers NO [UNAVAILABLE] at once instead of waiting for a connect
// timeout.
var ErrBackendDown = errors.New("routing: backend is down")

// ErrDrained means the user's backend is drained (Fleet.Drain): it takes no
// new logins, and there is no usable fallback. The proxy answers
// NO [UNAVAILABLE]; the operator is expected to move the user.
var ErrDrained = errors.New("routing: backend is drained")

// Router maps a normalised user name to the backend that holds the mailbox.
// Any error other than one wrapping ErrNotFound is a temporary failure.
type Router interface {
	Lookup(ctx context.Context, user string) (*Backend, error)
}

// TLSMode says how Portico reaches a backend.
type TLSMode int

const (
	Plain       TLSMode = iota // cleartext TCP (trusted network only)
	StartTLS                   // cleartext, then STARTTLS before any credential
	ImplicitTLS                // TLS from the first byte (port 993 style)
)

func (m TLSMode) String() string {
	switch m {
	case Plain:
		return "plain"
	case StartTLS:
		return "starttls"
	case ImplicitTLS:
		return "tls"
	}
	return "unknown"
}

// ParseTLSMode parses the spelling used in the config file and in Redis.
func ParseTLSMode(s string) (TLSMode, error) {
	switch s {
	case "", "plain":
		return Plain, nil
	case "starttls":
		return StartTLS, nil
	case "tls", "imaps":
		return ImplicitTLS, nil
	}
	return 0, errors.New(`routing: tls mode must be "plain", "starttls" or "tls"`)
}

// Backend is one IMAP server and how to reach it. Backends are shared and
// must not be modified once handed to a Router.
type Backend struct {
	// Name is the backend's name in the config, or "" for a literal address
	// found in a route record.
	Name string
	// Addr is host:port.
	Addr string
	TLS  TLSMode
	// TLSConfig is used for StartTLS and ImplicitTLS. Nil means the system
	// roots with the host of Addr as server name.
	TLSConfig *tls.Config
	// ForwardID says the backend trusts Portico (Dovecot's
	// login_trusted_networks), so Portico sends an ID command carrying the
	// real client address before logging in.
	ForwardID bool
	// ConnectTimeout bounds the TCP connect and TLS handshake; zero means 10s.
	ConnectTimeout time.Duration
	// LoginTimeout bounds everything from the greeting to the login reply;
	// zero means 30s (Dovecot delays a failed login by about 2s).
	LoginTimeout time.Duration
	// ProxyProtocol says the backend expects a PROXY protocol v2 header as
	// the first bytes of every connection (Dovecot's haproxy = yes), used
	// instead of ForwardID to pass on the client address. Health probes
	// send a LOCAL header to such backends.
	ProxyProtocol bool
	// Weight is the backend's share of new users in a pool, relative to
	// the other members; zero means 1. Fleet.SetWeight overrides it for
	// the whole fleet.
	Weight int
	// POP3Addr is host:port of the backend's POP3 service, reached with
	// the same TLS mode, PROXY header and forwarding choice as Addr; ""
	// means the backend serves no POP3, and POP3 logins routed to it
	// fail as unavailable.
	POP3Addr string
	// POP3Port, where set, gives a literal address found in a route
	// record (Redis.Defaults) a POP3Addr: the record's host and this port.
	POP3Port int
	// SpareConnections is how many connections to the backend, greeted
	// and with TLS set up, upstream.Spares keeps waiting for logins, per
	// service (Addr, POP3Addr); zero means none. Never used with
	// ProxyProtocol: the header names a client not known yet.
	SpareConnections int
	// SpareMaxIdle is how long a spare connection may wait, and how long
	// the backend keeps spares without a login; zero means 60s.
	SpareMaxIdle time.Duration
	// Fallback, when not nil, receives the logins of users routed to this
	// backend while it is down or drained. Only one level is followed: the
	// fallback's own Fallback is ignored, so fallbacks cannot loop.
	Fallback *Backend
}

// weight is Weight with its default applied.
func (b *Backend) weight() int {
	if b.Weight <= 0 {
		return 1
	}
	return b.Weight
}

// key names the backend in health and fleet state: its configured name,
// or its address for a literal one.
func (b *Backend) key() string {
	if b.Name != "" {
		return b.Name
	}
	return b.Addr
}

// String names the backend for log lines.
func (b *Backend) String() string {
	if b == nil {
		return ""
	}
	if b.Name != "" {
		return b.Name + "(" + b.Addr + ")"
	}
	return b.Addr
}
