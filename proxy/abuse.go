package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// Connection limits and loop guards (issue 10, parts 2 and 4). Every
// refusal has its IMAP answer and is logged at most once per address (and
// kind of refusal) per limitLogInterval:
//
//	Limits.MaxConnections      * BYE [UNAVAILABLE] (or a close, see Serve)
//	Limits.MaxPreauthPerIP     * BYE [LIMIT]
//	Limits.MaxSessionsPerUser  NO [LIMIT], after the backend accepted the password
//	Limits.MaxSessionsPerUserIP NO [LIMIT], likewise
//	loops, logins in progress  NO [UNAVAILABLE]
//
// A loop is recognised by every cheap signal there is: an x-proxy-ttl
// from a trusted network that has run out, an x-session-id that is one of
// this proxy's own, a backend address that is one of this proxy's
// listeners, a client address that is the local end of one of this
// proxy's own backend logins in progress; and, when none of those is
// there (a loop through a relay or another proxy without ID forwarding),
// more logins of the user from one address in progress than it may have
// sessions, and the bounds on backend logins in progress.

// limitLogInterval is how often one kind of refusal is logged for one
// client address at most.
const limitLogInterval = time.Minute

// maxLimitLogs bounds the lines one kind of refusal logs per interval over
// all addresses (a refusal from many addresses at once); the rest are not
// logged.
const maxLimitLogs = 100

// abuse is the server's state for limits and loop guards.
type abuse struct {
	mu        sync.Mutex
	preauth   map[netip.Prefix]int           // sessions not logged in, by client address
	inflight  map[string]int                 // backend logins in progress, by backend
	total     int                            // the same, in all
	upstreams map[[2]netip.AddrPort]struct{} // local and remote ends of our backend logins in progress
	own       map[netip.AddrPort]string      // listening addresses -> listener name
	ownPorts  map[uint16]string              // ports listened on every address
	logs      map[limitLogKey]*limitLogEntry // last log line per kind and address
	kinds     map[string]*limitLogEntry      // lines per kind this interval
	refusing  int                            // sessions admitted only to be refused (max_connections); guarded by Server.mu
	spare     spareFD                        // kept for when descriptors run out
	ipsOnce   sync.Once
	ips       map[netip.Addr]bool // this host's addresses, for wildcard listeners
}

type limitLogKey struct {
	kind string
	key  string
}

type limitLogEntry struct {
	at         time.Time
	suppressed int
}

// errRefused marks a login that a limit or a loop guard refused; it has
// been logged already.
var errRefused = errors.New("proxy: refused")

// limitError is a login refused with NO [LIMIT].
type limitError struct{ text string }

func (e *limitError) Error() string { return "proxy: limit: " + e.text }

// logLimit logs a refusal of kind for the client address key, unless one
// was logged for them in the last limitLogInterval; the line then says how
// many were not logged since.
func (s *Server) logLimit(kind, key, msg string, attrs ...any) {
	now := time.Now()
	a := &s.ab
	a.mu.Lock()
	if a.logs == nil {
		a.logs = make(map[limitLogKey]*limitLogEntry)
		a.kinds = make(map[string]*limitLogEntry)
	}
	k := limitLogKey{kind, key}
	e := a.logs[k]
	if e != nil && now.Sub(e.at) < limitLogInterval {
		e.suppressed++
		a.mu.Unlock()
		return
	}
	kc := a.kinds[kind]
	if kc == nil || now.Sub(kc.at) >= limitLogInterval {
		kc = &limitLogEntry{at: now}
		a.kinds[kind] = kc
	}
	if kc.suppressed >= maxLimitLogs {
		// Too many addresses this interval: their lines are left out.
		kc.suppressed++
		a.mu.Unlock()
		return
	}
	kc.suppressed++
	suppressed := 0
	if e != nil {
		suppressed = e.suppressed
	}
	if len(a.logs) >= 10000 {
		for k, e := range a.logs {
			if now.Sub(e.at) >= limitLogInterval {
				delete(a.logs, k)
			}
		}
	}
	a.logs[k] = &limitLogEntry{at: now}
	a.mu.Unlock()
	attrs = append(attrs, "limit", kind)
	if suppressed > 0 {
		attrs = append(attrs, "not_logged_since", suppressed)
	}
	s.logger().Warn(msg, attrs...)
}

// clientKey is the key per-address limits count a client under: the
// address, or for IPv6 its Limits.IPv6Prefix.
func (s *Server) clientKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := a.BitLen()
	if a.Is6() {
		bits = s.current().limits.IPv6Prefix
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.PrefixFrom(a, a.BitLen())
	}
	return p
}

func (s *Server) trusted(a netip.Addr) bool { return inNetworks(s.current().trusted, a) }

// countPreauth counts a session that has not logged in under its client
// address, and reports false when that address has too many already.
func (s *Server) countPreauth(sess *session) bool {
	max := sess.set.limits.MaxPreauthPerIP
	if max <= 0 {
		return true
	}
	k := s.clientKey(sess.client.Addr())
	a := &s.ab
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.preauth[k] >= max {
		return false
	}
	if a.preauth == nil {
		a.preauth = make(map[netip.Prefix]int)
	}
	a.preauth[k]++
	sess.ab.preauthKey, sess.ab.preauthCounted = k, true
	return true
}

// releasePreauth uncounts a session that logged in or ended.
func (s *Server) releasePreauth(sess *session) {
	if !sess.ab.preauthCounted {
		return
	}
	sess.ab.preauthCounted = false
	a := &s.ab
	a.mu.Lock()
	defer a.mu.Unlock()
	if n := a.preauth[sess.ab.preauthKey]; n > 1 {
		a.preauth[sess.ab.preauthKey] = n - 1
	} else {
		delete(a.preauth, sess.ab.preauthKey)
	}
}

// addListener records a listening address, to refuse backends that are
// this proxy itself.
func (s *Server) addListener(addr net.Addr, name string) {
	ap, wild, ok := ownKey(addr)
	if !ok {
		return
	}
	a := &s.ab
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.own == nil {
		a.own = make(map[netip.AddrPort]string)
		a.ownPorts = make(map[uint16]string)
	}
	if wild {
		a.ownPorts[ap.Port()] = name
	} else {
		a.own[ap] = name
	}
}

// ownKey is how addListener and removeListener key a listening address:
// a wildcard address by its port, any other by address (unmapped) and
// port.
func ownKey(addr net.Addr) (ap netip.AddrPort, wild, ok bool) {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, false, false
	}
	ap = ta.AddrPort()
	if ap.Addr().IsUnspecified() {
		return ap, true, true
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), false, true
}

// removeListener forgets an address recorded by addListener: a listener
// removed by a reload no longer makes a backend at its address a loop.
func (s *Server) removeListener(addr net.Addr) {
	ap, wild, ok := ownKey(addr)
	if !ok {
		return
	}
	a := &s.ab
	a.mu.Lock()
	defer a.mu.Unlock()
	if wild {
		delete(a.ownPorts, ap.Port())
	} else {
		delete(a.own, ap)
	}
}

// ownListener returns the name of this proxy's listener that addr (a
// backend's) reaches, or "". Only literal addresses and "localhost" are
// recognised: resolving names at every login would cost more than the
// loop it finds, and the other guards end such loops too.
func (s *Server) ownListener(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
	if err != nil {
		if !strings.EqualFold(host, "localhost") {
			return ""
		}
		ap, err = netip.ParseAddrPort(net.JoinHostPort("127.0.0.1", port))
		if err != nil {
			return ""
		}
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
	a := &s.ab
	a.mu.Lock()
	name, ok := a.own[ap]
	wild, wok := a.ownPorts[ap.Port()]
	a.mu.Unlock()
	if ok {
		return name
	}
	if wok && (ap.Addr().IsLoopback() || ap.Addr().IsUnspecified() || s.localAddr(ap.Addr())) {
		return wild
	}
	return ""
}

// localAddr reports whether a is an address of this host, as the
// interfaces had it when first asked.
func (s *Server) localAddr(a netip.Addr) bool {
	ab := &s.ab
	ab.ipsOnce.Do(func() {
		ab.ips = make(map[netip.Addr]bool)
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return
		}
		for _, ad := range addrs {
			if n, ok := ad.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					ab.ips[ip.Unmap()] = true
				}
			}
		}
	})
	return ab.ips[a]
}

// ownUpstream reports whether a is the local end of one of this proxy's
// backend logins in progress: the connection is this proxy logging in to
// itself.
func (s *Server) ownUpstream(peer, local netip.AddrPort) bool {
	ab := &s.ab
	ab.mu.Lock()
	defer ab.mu.Unlock()
	_, ok := ab.upstreams[[2]netip.AddrPort{unmapped(peer), unmapped(local)}]
	return ok
}

func unmapped(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// connected records both ends of a backend login's connection until done
// is called. Both, not only the local end: on one host a client's source
// port may equal the local port of a connection of ours to another
// address (Linux allows it), and that client is no loop.
func (s *Server) connected(local, remote netip.AddrPort) (done func()) {
	key := [2]netip.AddrPort{unmapped(local), unmapped(remote)}
	ab := &s.ab
	ab.mu.Lock()
	if ab.upstreams == nil {
		ab.upstreams = make(map[[2]netip.AddrPort]struct{})
	}
	ab.upstreams[key] = struct{}{}
	ab.mu.Unlock()
	return func() {
		ab.mu.Lock()
		delete(ab.upstreams, key)
		ab.mu.Unlock()
	}
}

// beginBackendLogin counts a backend login in progress, or refuses it
// when too many are under way, to b or in all.
func (s *Server) beginBackendLogin(b *routing.Backend) (done func(), ok bool, why string) {
	key := backendKey(b)
	a := &s.ab
	a.mu.Lock()
	defer a.mu.Unlock()
	lim := &s.current().limits
	if max := lim.MaxLoginsInProgress; max > 0 && a.total >= max {
		return nil, false, fmt.Sprintf("%d backend logins in progress in all (limits.max_logins_in_progress)", a.total)
	}
	if max := lim.MaxLoginsPerBackend; max > 0 && a.inflight[key] >= max {
		return nil, false, fmt.Sprintf("%d logins in progress to this backend (limits.max_logins_in_progress_per_backend)", a.inflight[key])
	}
	if a.inflight == nil {
		a.inflight = make(map[string]int)
	}
	a.inflight[key]++
	a.total++
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.total--
		if n := a.inflight[key]; n > 1 {
			a.inflight[key] = n - 1
		} else {
			delete(a.inflight, key)
		}
	}, true, ""
}

// backendLogin logs in to b for the session, within the loop guards and
// the limits on logins in progress, and then checks the user's session
// limits: those are only told to a client that knows the password.
func (s *session) backendLogin(b *routing.Backend, user string, cred upstream.Credentials) (*upstream.Result, error) {
	srv := s.srv
	if s.ab.loop == "" && srv.ownUpstream(s.ab.peer, addrPort(s.raw.LocalAddr())) {
		// Checked at login, not at accept: the login that connected here
		// is recorded once its connect returns, which may be after the
		// accept, but always before it sends anything.
		s.ab.loop = "the connection is this proxy's own backend login"
	}
	if s.ab.loop != "" {
		srv.logLimit("loop", s.client.Addr().String(), "proxy loop: login refused", "session", s.id, "client", s.client.String(),
			"user", user, "backend", b.String(), "signal", s.ab.loop, "origin_session", s.ab.origin)
		return nil, errRefused
	}
	addr, login := b.Addr, s.set.login
	if s.pop3() {
		addr, login = b.POP3Addr, s.set.loginPOP3
	}
	if name := srv.ownListener(addr); name != "" {
		srv.logLimit("loop", "listener "+name, "routing loop: the backend is this proxy's own listener; login refused", "session", s.id,
			"user", user, "backend", b.String(), "listener", name)
		return nil, errRefused
	}
	if n, max := s.loginsInProgress(user), s.set.limits.MaxSessionsPerUserIP; max > 0 && n >= max {
		// More logins of the user from this address under way than it may
		// have sessions: a routing loop through something that passes no
		// ID (each hop adds one), or a client gone wild.
		srv.logLimit("logins_per_user_ip", user+" "+srv.clientKey(s.client.Addr()).String(),
			"too many logins of the user from one address in progress (a routing loop?); login refused",
			"session", s.id, "client", s.client.String(), "user", user, "backend", b.String(), "in_progress", n)
		return nil, errRefused
	}
	done, ok, why := srv.beginBackendLogin(b)
	if !ok {
		srv.logLimit("logins_in_progress", backendKey(b), "too many backend logins in progress (a routing loop, or a backend that does not answer?); login refused",
			"session", s.id, "user", user, "backend", b.String(), "reason", why)
		return nil, errRefused
	}
	ctx := upstream.WithConnected(srv.ctx, srv.connected)
	res, err := login(ctx, b, cred, s.idInfo())
	done()
	if err != nil {
		return nil, err
	}
	if err := s.checkUserSessions(user); err != nil {
		res.Conn.Close()
		return nil, err
	}
	srv.releasePreauth(s)
	return res, nil
}

// loginsInProgress counts the other logins of user from the session's
// client address that have not been answered yet.
func (s *session) loginsInProgress(user string) int {
	srv := s.srv
	key := srv.clientKey(s.client.Addr())
	n := 0
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for o := range srv.byUser[user] {
		if o != s && o.reg == regLogin && srv.clientKey(o.client.Addr()) == key {
			n++
		}
	}
	return n
}

// checkUserSessions applies Limits.MaxSessionsPerUserIP (counted here) and
// Limits.MaxSessionsPerUser (counted fleet-wide by the LoginLimiter's
// check or else by Server.UserSessions, here without either) to a login
// the backend has accepted.
func (s *session) checkUserSessions(user string) error {
	srv := s.srv
	perIP, perUser := s.set.limits.MaxSessionsPerUserIP, s.set.limits.MaxSessionsPerUser
	if perIP <= 0 && perUser <= 0 {
		return nil
	}
	key := srv.clientKey(s.client.Addr())
	local, fromIP := 0, 0
	srv.mu.Lock()
	for o := range srv.byUser[user] {
		if o == s {
			continue
		}
		local++
		if perIP > 0 && srv.clientKey(o.client.Addr()) == key {
			fromIP++
		}
	}
	srv.mu.Unlock()
	if perIP > 0 && fromIP >= perIP {
		srv.logLimit("sessions_per_user_ip", user+" "+key.String(), "too many sessions of the user from one address; login refused",
			"session", s.id, "client", s.client.String(), "user", user, "sessions", fromIP, "max", perIP)
		return &limitError{"Too many sessions of this user from your address"}
	}
	if perUser <= 0 {
		return nil
	}
	n := local
	if v := s.verdict; v.SessionsCounted {
		n = max(n, v.Sessions)
	} else if f := srv.UserSessions; f != nil {
		ctx, cancel := context.WithTimeout(srv.ctx, s.set.limits.LookupTimeout)
		fleet, err := f(ctx, user)
		cancel()
		if err != nil {
			// Fail open: the registry being down must not lock users out.
			srv.logLimit("sessions_per_user_count", "", "cannot count the user's sessions; login allowed", "user", user, "err", err)
		}
		n = max(n, fleet)
	}
	if n >= perUser {
		srv.logLimit("sessions_per_user", user, "too many sessions of the user; login refused",
			"session", s.id, "client", s.client.String(), "user", user, "sessions", n, "max", perUser)
		return &limitError{"Too many sessions of this user"}
	}
	return nil
}

// limited answers a login refused by a session limit.
func (s *session) limited(tag string, err *limitError) action {
	code := imap.ResponseCodeLimit
	if s.pop3() {
		code = imap.ResponseCodeInUse // IN-USE (RFC 3206): the mailbox is in use elsewhere
	}
	s.writeStatus(tag, imap.StatusResponseTypeNo, code, err.text)
	return actContinue
}

// sessionAbuse is a session's part of the limits and loop guards.
type sessionAbuse struct {
	// peer is the address of whoever speaks IMAP to us: the TCP peer, or
	// the client a trusted balancer's PROXY header names. client may
	// become a front proxy's client later (x-originating-ip); peer stays,
	// for cleartext_login_networks, which is about this connection.
	peer     netip.AddrPort
	trusted  bool // peer is in Server.TrustedNetworks
	overflow bool // admitted past Limits.MaxConnections, to be told BYE
	sniff    bool // refuse a PROXY header in the first bytes (afterGreeting)
	quiet    bool // refused by a limit: the end line is logged at debug level

	preauthKey     netip.Prefix
	preauthCounted bool

	// proxySrc and proxyDst are what a trusted PROXY header named, kept
	// apart from client and local, which a front proxy's ID may change.
	proxySrc, proxyDst netip.AddrPort

	fwd    forwarded // x-originating-* and x-connected-* of the ID being read
	origin string    // x-session-id from a trusted peer
	ttl    int       // x-proxy-ttl from a trusted peer; 0 if none
	loop   string    // the signal that shows this session is a loop, if any
}

// forwarded are the addresses a trusted front proxy sends in ID.
type forwarded struct {
	ip, lip     netip.Addr
	port, lport uint16
}

// forwardTTL is the x-proxy-ttl to send to the backend.
func (s *session) forwardTTL() int {
	if s.ab.ttl > 0 {
		return s.ab.ttl - 1
	}
	return s.set.limits.ProxyTTL
}

// forwardSessionID is the x-session-id to send: the first proxy's, so that
// every hop and the backend log the same one and a loop shows itself.
func (s *session) forwardSessionID() string {
	if s.ab.origin != "" {
		return s.ab.origin
	}
	return s.id
}

// peerAddr is the address cleartext_login_networks is checked against.
func (s *session) peerAddr() netip.Addr {
	if s.ab.peer.IsValid() {
		return s.ab.peer.Addr()
	}
	return s.client.Addr()
}

// ownSessionID reports whether id is one of this process's session ids.
func ownSessionID(id string) bool {
	return strings.HasPrefix(id, sessionPrefix+"-")
}
