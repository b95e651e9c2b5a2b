package proxy

import (
	"math/rand/v2"
	"strings"
	"time"

	"github.com/portico-mail/portico/routing"
)

// SessionInfo describes a logged-in (spliced) session.
type SessionInfo struct {
	ID       string // as in the session's log lines and the backend's x-session-id
	User     string // normalised
	Client   string // client address, ip:port
	Listener string // Listener.Name
	Backend  string // Backend.Name, or Backend.Addr for a literal address
	Since    time.Time
	// Bytes spliced so far; a snapshot while the session runs.
	BytesToBackend, BytesToClient int64
}

func (s *session) info() SessionInfo {
	return SessionInfo{
		ID:             s.id,
		User:           s.user,
		Client:         s.client.String(),
		Listener:       s.ln.Name,
		Backend:        backendKey(s.backend),
		Since:          s.since,
		BytesToBackend: s.sp.toBackend.Load(),
		BytesToClient:  s.sp.toClient.Load(),
	}
}

// backendKey names a backend as routing's health and fleet state do.
func backendKey(b *routing.Backend) string {
	if b == nil {
		return ""
	}
	if b.Name != "" {
		return b.Name
	}
	return b.Addr
}

// Registration. A kick must reach every session of a user that may end
// up talking to the user's backend, including logins still in progress,
// so sessions are registered from the moment their login passes
// LoginGate. The states, guarded by Server.mu:
//
//	regLogin:     routing and backend login in progress; a kick marks the
//	              session, and commitLogin then refuses the login with
//	              NO [UNAVAILABLE] (the client may retry, and goes through
//	              LoginGate and routing again);
//	regCommitted: the login reply is being sent; a kick is kept for when
//	              the splice starts;
//	regSpliced:   the splice runs; a kick goes to the splicer at once.
type regState int8

const (
	regNone regState = iota
	regLogin
	regCommitted
	regSpliced
)

func (s *Server) beginLogin(sess *session, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unregisterLocked(sess)
	sess.reg, sess.regUser = regLogin, user
	m := s.byUser[user]
	if m == nil {
		m = make(map[*session]struct{}, 1)
		s.byUser[user] = m
	}
	m[sess] = struct{}{}
}

// commitLogin reports whether the login may be answered with OK: false
// when the user was kicked while it was in progress.
func (s *Server) commitLogin(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess.reg != regLogin || sess.pendingBye != nil {
		s.unregisterLocked(sess)
		return false
	}
	sess.reg = regCommitted
	return true
}

// startSplice marks the session as running and returns the BYE of a kick
// that came before, if any.
func (s *Server) startSplice(sess *session) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess.reg = regSpliced
	s.spliced[sess] = struct{}{}
	bye := sess.pendingBye
	sess.pendingBye = nil
	return bye
}

func (s *Server) unregister(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unregisterLocked(sess)
}

func (s *Server) unregisterLocked(sess *session) {
	if sess.reg == regNone {
		return
	}
	if sess.reg == regSpliced {
		// Its directions are over: the counts are final.
		s.endedToBackend += sess.sp.toBackend.Load()
		s.endedToClient += sess.sp.toClient.Load()
	}
	delete(s.spliced, sess)
	if m := s.byUser[sess.regUser]; m != nil {
		delete(m, sess)
		if len(m) == 0 {
			delete(s.byUser, sess.regUser)
		}
	}
	if sess.kickTimer != nil {
		sess.kickTimer.Stop()
		sess.kickTimer = nil
	}
	sess.reg, sess.regUser, sess.pendingBye = regNone, "", nil
}

// kickLocked kicks sess in whatever state it is, or reports false when it
// is not registered. The splicer itself is kicked outside the lock, by the
// caller, when kickLocked returns it.
func (s *Server) kickLocked(sess *session, bye []byte) (*splicer, bool) {
	switch sess.reg {
	case regLogin, regCommitted:
		if sess.pendingBye == nil {
			sess.pendingBye = bye
		}
		return nil, true
	case regSpliced:
		return sess.sp, true
	}
	return nil, false
}

// Sessions lists the logged-in sessions of this server, with their byte
// counts at the time of the call. Sessions that have not logged in yet are
// not listed.
func (s *Server) Sessions() []SessionInfo {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SessionInfo, 0, len(s.spliced))
	for sess := range s.spliced {
		out = append(out, sess.info())
	}
	return out
}

// KickUser ends every logged-in session of user on this server and returns
// how many it found. user is normalised as at login. A login of the user
// in progress (past LoginGate, not yet answered) is refused with
// NO [UNAVAILABLE] instead, and counted. Each client receives
// `* BYE [UNAVAILABLE] reason` between two responses (never inside one),
// then both connections close; a session using COMPRESS is closed without
// a BYE. KickUser does not wait for the sessions to end: that takes until
// the next response boundary, at most Limits.KickTimeout. Their log lines
// say "kicked".
func (s *Server) KickUser(user, reason string) int {
	s.init()
	cur := s.current()
	u, err := routing.Normalize(user, cur.defaultDomain)
	if err != nil {
		return 0
	}
	bye := byeLine(reason, "Session ended by the administrator")
	s.mu.Lock()
	n := 0
	var running []*splicer
	for sess := range s.byUser[u] {
		if p, ok := s.kickLocked(sess, bye); ok {
			n++
			if p != nil {
				running = append(running, p)
			}
		}
	}
	s.mu.Unlock()
	for _, p := range running {
		p.kick(bye, cur.limits.KickTimeout)
	}
	return n
}

// KickBackend ends every logged-in session on the backend called name
// (Backend.Name, or Backend.Addr for a literal address), each at a random
// moment within window, so that the clients do not all reconnect at once.
// The sessions end as with KickUser. It returns how many were scheduled.
func (s *Server) KickBackend(name string, window time.Duration) int {
	bye := byeLine("", "Backend maintenance, please reconnect")
	return s.kickSpread(bye, window, func(sess *session) bool { return backendKey(sess.backend) == name })
}

// KickAll ends every logged-in session of this server as KickBackend does,
// each at a random moment within window, with `* BYE [UNAVAILABLE]
// reason`. It is the end of an upgrade: the sessions the old process still
// holds go, spread out, and their clients reconnect to the new one.
func (s *Server) KickAll(reason string, window time.Duration) int {
	bye := byeLine(reason, "Server restarting, please reconnect")
	return s.kickSpread(bye, window, func(*session) bool { return true })
}

// kickSpread schedules a kick of every logged-in session that match
// accepts, at a random moment within window.
func (s *Server) kickSpread(bye []byte, window time.Duration, match func(*session) bool) int {
	s.init()
	timeout := s.current().limits.KickTimeout
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for sess := range s.sessions {
		if sess.reg < regCommitted || !match(sess) {
			continue
		}
		n++
		if sess.kickTimer != nil {
			continue // already scheduled by an earlier call
		}
		var d time.Duration
		if window > 0 {
			d = rand.N(window)
		}
		sess.kickTimer = time.AfterFunc(d, func() {
			s.mu.Lock()
			p, _ := s.kickLocked(sess, bye)
			s.mu.Unlock()
			if p != nil {
				p.kick(bye, timeout)
			}
		})
	}
	return n
}

// byeLine makes the BYE response of a kick: reason as printable ASCII on
// one line, or def.
func byeLine(reason, def string) []byte {
	reason = strings.TrimSpace(reason)
	if len(reason) > 200 {
		reason = reason[:200]
	}
	if reason == "" {
		reason = def
	}
	b := make([]byte, 0, len("* BYE [UNAVAILABLE] \r\n")+len(reason))
	b = append(b, "* BYE [UNAVAILABLE] "...)
	for i := 0; i < len(reason); i++ {
		c := reason[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b = append(b, c)
	}
	return append(b, "\r\n"...)
}
