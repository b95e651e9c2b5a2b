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
// A Router is the only thing the proxy knows about routing, so pools,
// balancing, health and caches can be layered behind it later. Static holds
// routes from the config file, Redis reads them from a Redis server, and
// Chain asks several routers in order:
//
//	router := routing.Chain{
//		routing.NewStatic(staticRoutes),
//		&routing.Redis{Client: routing.NewRedisClient(opts), Backends: named, Defaults: defaults},
//	}
//
// # User names
//
// Normalize is applied to every login name before any lookup. It lower-cases
// the name, appends the default domain, and refuses names that could mean
// something to Redis, to a backend's variable expansion or to a log reader
// (control characters, spaces, "\*?[]{}%()). Refused names must get the
// same answer as a wrong password.
//
// # Redis schema
//
// Each user's route is a hash at key <prefix>route:<user>, where <prefix>
// defaults to "portico:" and <user> is the output of Normalize:
//
//	HSET portico:route:alice@example.com backend mx1
//	HSET portico:route:bob@example.com addr 10.0.0.7:993 security tls server_name imap7.example.com
//
// Fields:
//
//	backend      name of a backend in the config file; when present, the
//	             other fields are ignored
//	addr         literal host:port of the backend, reached with the
//	             backend_defaults settings
//	security     optional, for addr: "plain", "starttls" or "tls"
//	             (overrides backend_defaults)
//	server_name  optional, for addr: the name to verify in the backend's
//	             TLS certificate (default: the host of addr)
//
// Other fields are ignored. A missing key means the user does not exist
// (the client is told its login failed, exactly as for a wrong password).
// A record naming an unknown backend, or with a bad addr or security, is a
// data error: the client gets NO [UNAVAILABLE] and the error is logged. So
// does any Redis failure or a lookup slower than the lookup timeout.
//
// Portico only reads the key, with a single HGETALL; the user name travels
// as one RESP argument and is never part of a pattern.
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
