// Package proxy is Portico's front door: it accepts IMAP and POP3 clients,
// speaks the protocol until they log in, logs in to their backend and
// splices the two connections together.
//
// Typical use:
//
//	srv := &proxy.Server{
//		Router:    router,    // a routing.Router: user -> backend
//		TLSConfig: tlsConfig, // for implicit TLS and STARTTLS
//	}
//	ln, _ := proxy.Listen(ctx, ":993") // keep-alive set once, inherited
//	                                    // by every accepted connection
//	go srv.Serve(ln, proxy.Listener{Name: "imaps", Mode: proxy.ImplicitTLS})
//	...
//	srv.Shutdown(ctx) // BYE to clients not logged in; spliced sessions may finish
//
// Serve is the one place where connections are accepted, and splice the
// one place where they are joined. In between, a session owns the client
// connection: it answers CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN and
// AUTHENTICATE itself (one file per command), refuses everything else, and
// enforces the pre-auth limits in Limits. On a successful login the session
// writes the client's tagged OK with the backend's capabilities, passes on
// the bytes each side sent past the login exchange, and hands both
// connections to a splicer, which owns them until they close. On Linux,
// each direction of a splice that has been silent for a second gives its
// goroutine up to the server's epoll set (poller_linux.go), so that an
// idle session costs no goroutine at all; Shutdown releases the set once
// the last session has ended.
//
// POP3 listeners (Mode POP3S and POP3) run the same sessions: admission,
// TLS, limits, the login path, upstream dialing (Server.LoginPOP3) and the
// splice are shared; only the commands read before login differ
// (pop3*.go: CAPA, STLS, USER/PASS, AUTH, QUIT beside IMAP's files), and
// the answers of the shared path are worded for POP3 by writeStatus.
//
// A spliced session can be listed (Sessions), observed (OnSplice, OnEnd)
// and ended cleanly (KickUser, KickBackend): the splicer follows the
// backend's stream by line and literal boundaries so that a BYE never
// lands inside a literal.
//
// Before a session speaks, admit (admit.go) reads a trusted balancer's
// PROXY header where Listener.ProxyProtocolFrom asks for one and applies
// the connection limits; at login, backendLogin (abuse.go) applies the
// loop guards, the bounds on backend logins in progress and, once the
// backend has accepted the password, the per-user session limits. Every
// refusal has its IMAP answer and is logged at most once a minute per
// client address. Before routing, a Server.Limiter (limit.go; package
// limits) may delay a login or block it, and is told every failure and
// success: failed logins limited per address and user across the fleet.
package proxy
