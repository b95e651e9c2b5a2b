package proxy

import (
	"time"

	"github.com/portico-mail/portico/routing"
)

// An Observer is told what a Server's metrics count per event: TLS
// handshakes and logins. Everything else (connections by state, bytes,
// sessions per backend) is read at scrape time with Server.Stats, at no
// cost to the sessions.
//
// Methods run on session goroutines, once per handshake and once per
// login attempt: they must be cheap (a few atomic adds), must not block
// and must not keep the event.
type Observer interface {
	Handshake(d time.Duration)
	// Login gets the event by value: a pointer would make every login
	// allocate it.
	Login(ev LoginEvent)
}

// LoginResult is how a login attempt was answered.
type LoginResult uint8

const (
	LoginOK              LoginResult = iota // spliced
	LoginAuthFailed                         // NO [AUTHENTICATIONFAILED]: wrong password, unknown user, bad user name
	LoginUnavailable                        // NO [UNAVAILABLE]: Redis, a backend or a kick in the way
	LoginLimited                            // refused by a limit: the failed-login limiter or a session limit
	LoginPrivacyRequired                    // NO [PRIVACYREQUIRED]: credentials offered without TLS
	NumLoginResults
)

var loginResults = [NumLoginResults]string{"ok", "auth_failed", "unavailable", "limit", "privacy_required"}

func (r LoginResult) String() string {
	if r < NumLoginResults {
		return loginResults[r]
	}
	return "unknown"
}

// The mechanisms of LoginEvent.Mechanism.
const (
	MechLogin     = "login"      // the LOGIN command
	MechPlain     = "plain"      // AUTHENTICATE PLAIN
	MechSASLLogin = "login-mech" // AUTHENTICATE LOGIN
)

// LoginEvent describes one login attempt once it is answered. The times
// of the phases are zero for phases the login did not reach.
type LoginEvent struct {
	Result    LoginResult
	Mechanism string // MechLogin, MechPlain or MechSASLLogin
	// Backend was asked to log the user in (nil if none was): the result
	// is then its answer, OK, AuthFailed or Unavailable, except that a
	// login the backend accepted for a user kicked meanwhile is
	// Unavailable.
	Backend *routing.Backend
	// SinceAccept is from the accept to the answer: what a client waited
	// for its session, TLS handshake and earlier attempts included.
	SinceAccept  time.Duration
	Lookup       time.Duration // routing lookup
	BackendLogin time.Duration // connect, greeting, ID, login at the backend
}

func (s *session) observeLogin(ev *LoginEvent) {
	if o := s.srv.Observer; o != nil {
		ev.SinceAccept = time.Since(s.start)
		o.Login(*ev)
	}
}

// Stats is a snapshot of a Server for metrics and readiness checks.
type Stats struct {
	// Listeners counts the client connections of each listener by state:
	// every listener being served, and any other that still has
	// connections (one a reload removed), in no order.
	Listeners []ListenerStats
	// Serving is the number of listeners accepting connections.
	Serving int
	// Backends counts spliced sessions by backend (Backend.Name, or
	// Backend.Addr for a literal address).
	Backends map[string]int
	// Bytes spliced since the Server started, ended and running sessions
	// together: a counter.
	BytesToBackend, BytesToClient int64
}

// ListenerStats counts the connections of one listener. The states do not
// overlap: their sum is the listener's connections.
type ListenerStats struct {
	Name string
	// Preauth is connections not spliced yet: TLS handshake, commands
	// before login, logins in progress.
	Preauth int
	// Spliced is logged-in sessions with at least one direction running
	// in a goroutine.
	Spliced int
	// Parked is logged-in sessions whose two directions both wait in the
	// poller: idle, holding no goroutine and no buffer.
	Parked int
}

// Stats counts connections and bytes. It walks every connection under the
// server's lock, so it costs O(connections), about a millisecond per
// 10,000: call it per scrape, not per event.
func (s *Server) Stats() Stats {
	s.init()
	byName := make(map[string]*ListenerStats)
	ls := func(name string) *ListenerStats {
		l := byName[name]
		if l == nil {
			l = &ListenerStats{Name: name}
			byName[name] = l
		}
		return l
	}
	st := Stats{Backends: make(map[string]int)}
	s.mu.Lock()
	st.Serving = len(s.listeners)
	st.BytesToBackend, st.BytesToClient = s.endedToBackend, s.endedToClient
	for _, lp := range s.listeners {
		ls(lp.Load().Name)
	}
	for sess := range s.sessions {
		l := ls(sess.ln.Name)
		if sess.reg != regSpliced {
			l.Preauth++
			continue
		}
		p := sess.sp
		if p.dirs[dirUp].state.Load() == dirParked && p.dirs[dirDown].state.Load() == dirParked {
			l.Parked++
		} else {
			l.Spliced++
		}
		st.Backends[backendKey(sess.backend)]++
		st.BytesToBackend += p.toBackend.Load()
		st.BytesToClient += p.toClient.Load()
	}
	s.mu.Unlock()
	for _, l := range byName {
		st.Listeners = append(st.Listeners, *l)
	}
	return st
}
