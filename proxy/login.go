package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/proxy/wire"
	"github.com/portico-mail/portico/routing"
)

func (s *session) handleLogin(cmd *wire.Command) action {
	if len(cmd.Args) != 2 {
		return s.badCommand(cmd.Tag, "LOGIN takes a user name and a password")
	}
	user, ok1 := cmd.Args[0].AString()
	pass, ok2 := cmd.Args[1].AString()
	if !ok1 || !ok2 {
		return s.badCommand(cmd.Tag, "LOGIN takes a user name and a password")
	}
	if !s.canAuth() {
		return s.privacyRequired(cmd.Tag, MechLogin)
	}
	return s.login(cmd.Tag, MechLogin, user, pass)
}

// privacyRequired refuses credentials sent in clear before anything, Redis
// or a backend, is asked about them.
func (s *session) privacyRequired(tag, method string) action {
	s.observeLogin(&LoginEvent{Result: LoginPrivacyRequired, Mechanism: method})
	text := "TLS is required to log in; use STARTTLS"
	if s.pop3() {
		text = "TLS is required to log in; use STLS"
	}
	s.writeStatus(tag, imap.StatusResponseTypeNo, imap.ResponseCodePrivacyRequired, text)
	s.authFails++
	return s.afterAuthFailure()
}

// login is the path every mechanism ends in: normalise the user, find the
// backend, log in there. On success the session is ready to splice.
func (s *session) login(tag, method, rawUser, password string) action {
	// Answers other than those set below are NO [UNAVAILABLE].
	ev := LoginEvent{Result: LoginUnavailable, Mechanism: method}
	act := s.login1(tag, &ev, rawUser, password)
	s.observeLogin(&ev)
	return act
}

func (s *session) login1(tag string, ev *LoginEvent, rawUser, password string) action {
	start := time.Now()
	user, err := routing.Normalize(rawUser, s.set.defaultDomain)
	if err != nil {
		s.limitFailed("", password)
		ev.Result = LoginAuthFailed
		return s.authFailed(tag, start, "", "invalid user name")
	}
	fails := s.authFails
	if act, ok := s.limitCheck(tag, start, user); !ok {
		if s.authFails > fails {
			// Blocked: answered like a wrong password, counted as a limit.
			ev.Result = LoginLimited
		}
		return act
	}
	if act, ok := s.authenticate(tag, ev, start, rawUser, user, password); !ok {
		return act
	}
	if !s.passGate(s.srv.LoginGate, user) {
		return s.unavailable(tag)
	}
	// From here on a kick of the user reaches this login: it is refused
	// rather than spliced to a backend the user may be leaving.
	s.srv.beginLogin(s, user)
	// A move that began between the gate and the registration announced
	// its hold to this proxy before its kick: asking again, now that the
	// kick would find this login, closes that window. (With the fleet's
	// control channel up, asking costs no Redis command.)
	again := s.srv.LoginGateAgain
	if again == nil {
		again = s.srv.LoginGate
	}
	if !s.passGate(again, user) {
		s.srv.unregister(s)
		return s.unavailable(tag)
	}
	act := s.loginTo(tag, ev, user, password, start)
	if act != actSplice {
		s.srv.unregister(s)
	}
	return act
}

// passGate waits while gate (Server.LoginGate) holds the user's logins,
// and reports whether the login may go on.
func (s *session) passGate(gate func(context.Context, string) error, user string) bool {
	if gate == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(s.srv.stopping, s.set.limits.LoginGateTimeout)
	err := gate(ctx, user)
	cancel()
	if err != nil {
		s.srv.logger().Info("login held back", "session", s.id, "user", user, "err", err)
		return false
	}
	return true
}

func (s *session) loginTo(tag string, ev *LoginEvent, user, password string, start time.Time) action {
	t0 := time.Now()
	b, err := s.auth.Backend, error(nil)
	if b == nil {
		ctx, cancel := context.WithTimeout(s.srv.ctx, s.set.limits.LookupTimeout)
		b, err = s.set.router.Lookup(ctx, user)
		cancel()
	}
	t1 := time.Now()
	if s.auth.Backend == nil {
		ev.Lookup = t1.Sub(t0) // no lookup when the Authenticator named the backend
	}
	if errors.Is(err, routing.ErrNotFound) {
		s.limitFailed(user, password)
		ev.Result = LoginAuthFailed
		return s.authFailed(tag, start, user, "unknown user")
	}
	if err != nil {
		s.srv.logger().Warn("routing lookup failed", "session", s.id, "user", user, "err", err)
		return s.unavailable(tag)
	}
	res, err := s.backendLogin(b, user, s.upstreamCredentials(ev, user, password))
	ev.BackendLogin = time.Since(t1)
	ev.Backend = b
	if errors.Is(err, upstream.ErrAuthFailed) {
		s.limitFailed(user, password)
		ev.Result = LoginAuthFailed
		return s.authFailed(tag, start, user, "backend rejected credentials")
	}
	var lim *limitError
	if errors.As(err, &lim) {
		ev.Result = LoginLimited
		return s.limited(tag, lim)
	}
	if errors.Is(err, upstream.ErrInUse) || errors.Is(err, upstream.ErrLoginDelay) {
		// The backend said why, and the client knows these codes (IMAP's
		// INUSE, POP3's IN-USE and LOGIN-DELAY): it retries later rather
		// than ask its user for the password.
		s.srv.logger().Info("backend refused login for now", "session", s.id, "user", user, "backend", b.String(), "err", err)
		code, text := imap.ResponseCodeInUse, "Mailbox in use, try again later"
		if errors.Is(err, upstream.ErrLoginDelay) {
			code, text = pop3LoginDelay, "Logged in too recently, try again later"
		}
		s.writeStatus(tag, imap.StatusResponseTypeNo, code, text)
		return actContinue
	}
	if err != nil {
		if errors.Is(err, errRefused) { // refusals are logged already
			ev.Result, ev.Backend = LoginLimited, nil // not the backend's doing
		} else {
			s.srv.logger().Warn("backend login failed", "session", s.id, "user", user, "backend", b.String(), "err", err)
		}
		return s.unavailable(tag)
	}
	s.limitSucceeded(user)
	s.user, s.backend = user, b
	if !s.srv.commitLogin(s) {
		res.Conn.Close()
		s.srv.logger().Info("login refused: user kicked", "session", s.id, "user", user, "backend", b.String())
		return s.unavailable(tag)
	}
	s.srv.logger().Debug("logged in", "session", s.id, "user", user, "backend", b.String(), "method", ev.Mechanism)
	ev.Result = LoginOK
	s.up, s.loginTag = res, tag
	return actSplice
}

func (s *session) unavailable(tag string) action {
	s.writeStatus(tag, imap.StatusResponseTypeNo, imap.ResponseCodeUnavailable, "Service temporarily unavailable, try again later")
	return actContinue
}

// authFailed answers every kind of failed login identically and no sooner
// than AuthFailureDelay after the attempt began, so that an unknown user
// looks exactly like a wrong password.
func (s *session) authFailed(tag string, start time.Time, user, reason string) action {
	s.srv.logger().Info("login failed", "session", s.id, "client", s.client.String(), "user", user, "reason", reason)
	return s.failLogin(tag, start)
}

// failLogin is authFailed without the log line, for logins a LoginLimiter
// blocked: the answer and its timing are the same.
func (s *session) failLogin(tag string, start time.Time) action {
	if d := s.set.limits.AuthFailureDelay - time.Since(start); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-s.srv.ctx.Done():
		case <-s.srv.done:
		}
		t.Stop()
	}
	// The error challenge comes after the delay, not before it: it tells
	// the client its token failed as surely as the NO does.
	if s.oauthChallenge != "" {
		if act, ok := s.oauthRefusal(tag); !ok {
			return act
		}
	}
	s.writeStatus(tag, imap.StatusResponseTypeNo, imap.ResponseCodeAuthenticationFailed, "Authentication failed")
	s.authFails++
	return s.afterAuthFailure()
}

func (s *session) afterAuthFailure() action {
	if s.authFails >= s.set.limits.MaxAuthFailures {
		s.writeStatus("*", imap.StatusResponseTypeBye, "", "Too many failed logins")
		s.outcome = "too many failed logins"
		return actClose
	}
	return actContinue
}

func (s *session) idInfo() *upstream.IDInfo {
	return &upstream.IDInfo{
		ClientIP:      s.client.Addr().String(),
		ClientPort:    int(s.client.Port()),
		ConnectedIP:   s.local.Addr().String(),
		ConnectedPort: int(s.local.Port()),
		SessionID:     s.forwardSessionID(),
		TTL:           s.forwardTTL(),
		ClientFields:  s.clientID,
	}
}
