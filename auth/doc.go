// Package auth decides logins at the proxy, so that backends need not
// hold users' passwords.
//
// It provides proxy.Authenticator implementations for proxy.Server
// (Server.Authenticator, or Config.Authenticator on reload):
//
//   - Mux sends each login to the authenticator for its mechanism: OAuth
//     2.0 tokens (XOAUTH2, OAUTHBEARER) to one, passwords (LOGIN, PLAIN)
//     to another. A nil one leaves the decision to the backend.
//   - Passwords checks a password against a Store (hashes in Redis, an
//     LDAP bind) and, when it is right, has the proxy log in to the
//     backend as a master user on the user's behalf (Dovecot's master
//     passdb), so that the backend never sees the user's password.
//   - OAuth validates OAuth 2.0 bearer tokens itself (a JWT against the
//     issuer's keys, or RFC 7662 introspection) and logs in as the master
//     user, so that the backend never sees the token.
//   - HTTP asks an auth service written for nginx's mail proxy
//     (auth_http) about passwords, with nginx's request; its answer may
//     also name the backend and the credentials to log in there with.
//   - The Stores: RedisStore (hashes as Dovecot writes them, see
//     VerifyHash, in a field of the route hash or in keys of their own)
//     and LDAPStore (a bind as the user, with a connection pool).
//
// Typical use, with the hashes in the route hashes of routing.redis
// (router is the *routing.Redis of the server's Router, so that the
// password check and the route lookup share one Redis read):
//
//	store := &auth.RedisStore{Routes: router, Field: "password"}
//	// or: &auth.LDAPStore{URL: "ldap://ldap.example.com", StartTLS: true,
//	//	BindDN: "uid={local},ou=people,dc=example,dc=com"}
//	srv.Authenticator = &auth.Mux{
//		Password: &auth.Passwords{
//			Store:  store,
//			Master: auth.Master{User: "portico", Password: masterPW},
//		},
//		// OAuth: nil — tokens are passed to the backend, which decides.
//	}
//
// Every authenticator here answers a wrong password and an unknown user
// alike (HTTP as its service does), in the same time, with a result
// whose OK is false, never an error: errors mean "could not decide" (the
// client gets NO [UNAVAILABLE]).
// Passwords and hashes never reach a log line or an error message.
package auth
