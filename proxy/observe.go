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
	MechUserPass  = "user"       // POP3 USER and PASS
)

// LoginEvent describes one login attempt once it is answered. The times
// of the phases are zero for phases the login did not reach.
type LoginEvent struct {
	Result    LoginResult
	Mechanism string // MechLogin, MechPlain, MechSASLLogin, MechUserPass, MechXOAUTH2 or MechOAUTHBEARER
	Protocol  string // "imap" or "pop3": the listener's
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
		ev.Protocol = s.ln.Mode.Protocol()
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

// Stats counts connections and bytes. Under the server's lock it only
// copies the list of logged-in sessions (about 1 ms per 100,000); reading
// their state costs more, tens of milliseconds per 100,000 sessions
// scattered in memory, and is done after the lock is released. Call it
// per scrape, not per event.
func (s *Server) Stats() Stats {
	s.init()
	type counts struct{ total, spliced, parked int }
	byName := make(map[string]*counts)
	of := func(name string) *counts {
		c := byName[name]
		if c == nil {
			c = new(counts)
			byName[name] = c
		}
		return c
	}
	st := Stats{Backends: make(map[string]int)}
	s.mu.Lock()
	st.Serving = len(s.listeners)
	st.BytesToBackend, st.BytesToClient = s.endedToBackend, s.endedToClient
	for _, lp := range s.listeners {
		of(lp.Load().Name)
	}
	for ln, n := range s.conns {
		of(ln.Name).total += n
	}
	spliced := make([]*session, 0, len(s.spliced))
	for sess := range s.spliced {
		spliced = append(spliced, sess)
	}
	s.mu.Unlock()

	// What is read here was set before the session joined s.spliced
	// (ln, sp, backend) or is atomic. A session that has ended since the
	// lock was released is counted as running; its final bytes are not
	// yet in the ended sums read above, so the byte counters never go back.
	for _, sess := range spliced {
		c := of(sess.ln.Name)
		p := sess.sp
		if p.dirs[dirUp].state.Load() == dirParked && p.dirs[dirDown].state.Load() == dirParked {
			c.parked++
		} else {
			c.spliced++
		}
		st.Backends[backendKey(sess.backend)]++
		st.BytesToBackend += p.toBackend.Load()
		st.BytesToClient += p.toClient.Load()
	}
	for name, c := range byName {
		st.Listeners = append(st.Listeners, ListenerStats{
			Name: name, Preauth: max(c.total-c.spliced-c.parked, 0), Spliced: c.spliced, Parked: c.parked,
		})
	}
	return st
}
