package proxy

import (
	"context"
	"net/netip"
	"time"
)

// LoginLimiter guards logins against password guessing across a fleet
// (package limits implements it, with Redis). A Server without one has
// only the per-connection limits of Limits.
//
// Check is asked before a login is routed or verified; Failed and
// Succeeded are told the outcome once a backend (or the router, for an
// unknown user) has answered. client is the client's address as the
// session knows it.
type LoginLimiter interface {
	// Check answers within ctx, which ends after Limits.LookupTimeout.
	Check(ctx context.Context, client netip.Addr, user string) LimitVerdict
	// Failed records a failed login: a wrong password, an unknown user, or
	// an invalid user name (user ""). The password serves only to
	// recognise the same wrong password sent again; it must never be
	// stored or logged.
	Failed(ctx context.Context, client netip.Addr, user, password string)
	// Succeeded records a login the backend accepted; v is what Check
	// answered for it. It must not block.
	Succeeded(client netip.Addr, user string, v LimitVerdict)
}

// LimitVerdict is a LoginLimiter's answer about one login.
type LimitVerdict struct {
	// Delay is waited before the login is routed and verified.
	Delay time.Duration
	// Block refuses the login without routing it or asking a backend:
	// the client gets the answer of a wrong password, after the same
	// delay, so that a blocked attacker learns nothing.
	Block bool
	// Unavailable refuses the login with NO [UNAVAILABLE]: the limiter
	// cannot decide and is configured to fail closed.
	Unavailable bool

	// Recorded says that a success of this login would change nothing
	// the limiter keeps (the address is known for the user, recently
	// enough, and has no failures against it), so Succeeded need not
	// write anything: the common login costs the limiter one read.
	Recorded bool

	// Sessions is the user's sessions across the fleet when the limiter
	// counted them (SessionsCounted) in the round trip of its own reads,
	// which spares the login a second one for Limits.MaxSessionsPerUser.
	Sessions        int
	SessionsCounted bool
}

// limitCheck asks the server's limiter about a login. When it returns
// false the answer is written and act says what comes next.
func (s *session) limitCheck(tag string, start time.Time, user string) (act action, ok bool) {
	l := s.set.limiter
	if l == nil {
		return actContinue, true
	}
	ctx, cancel := context.WithTimeout(s.srv.ctx, s.set.limits.LookupTimeout)
	v := l.Check(ctx, s.client.Addr(), user)
	cancel()
	s.verdict = v
	switch {
	case v.Unavailable:
		return s.unavailable(tag), false
	case v.Block:
		// Not logged here: the limiter logs each block once per interval.
		return s.failLogin(tag, start), false
	case v.Delay > 0 && !s.pause(v.Delay):
		return s.unavailable(tag), false // shutting down
	}
	return actContinue, true
}

// limitFailed tells the limiter about a failed login, before the client
// is answered, so that its next attempt is judged by the new counts.
func (s *session) limitFailed(user, password string) {
	if l := s.set.limiter; l != nil {
		ctx, cancel := context.WithTimeout(s.srv.ctx, s.set.limits.LookupTimeout)
		l.Failed(ctx, s.client.Addr(), user, password)
		cancel()
	}
}

func (s *session) limitSucceeded(user string) {
	if l := s.set.limiter; l != nil {
		l.Succeeded(s.client.Addr(), user, s.verdict)
	}
}

// pause waits d, or less if the server shuts down (then it returns
// false).
func (s *session) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.srv.ctx.Done():
	case <-s.srv.done:
	}
	return false
}
