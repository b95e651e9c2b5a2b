package limits

import (
	"net/netip"
	"sync"
	"time"
)

// memory keeps the same counters as Redis, for this process alone: the
// limiter of a proxy without Redis, and its fallback while Redis is
// unreachable (fail open). Every failure and success is recorded here
// too, so that the fallback starts from this proxy's own recent view.
type memory struct {
	cfg *Config
	max int // addresses and users kept, each

	mu    sync.Mutex
	ips   map[netip.Prefix]*counter
	users map[string]*memUser
}

// memUser is one user's state. It is kept small, since a proxy may hold
// many: the per-address counters are made at the user's first failure,
// and the few known addresses and wrong passwords are short lists.
type memUser struct {
	all   counter
	ips   []addrCounter        // user_ip counters, at most maxUserAddresses
	known stamps[netip.Prefix] // expiry, Unix ms
	pw    stamps[string]       // wrong-password tag, last seen (Unix ms)
}

type addrCounter struct {
	net netip.Prefix
	c   counter
}

// addr returns the user's counter for net, or nil.
func (u *memUser) addr(net netip.Prefix) *counter {
	for i := range u.ips {
		if u.ips[i].net == net {
			return &u.ips[i].c
		}
	}
	return nil
}

// forget removes the user's counter for net.
func (u *memUser) forget(net netip.Prefix) {
	for i := range u.ips {
		if u.ips[i].net == net {
			u.ips[i] = u.ips[len(u.ips)-1]
			u.ips = u.ips[:len(u.ips)-1]
			return
		}
	}
}

// stamps is a short list of keys with a time each.
type stamps[K comparable] []stamped[K]

type stamped[K comparable] struct {
	k K
	t int64
}

func (s stamps[K]) get(k K) (int64, bool) {
	for _, e := range s {
		if e.k == k {
			return e.t, true
		}
	}
	return 0, false
}

// put sets k's time; a new key beyond max replaces the one with the
// smallest time.
func (s *stamps[K]) put(k K, t int64, max int) {
	for i := range *s {
		if (*s)[i].k == k {
			(*s)[i].t = t
			return
		}
	}
	if len(*s) < max {
		*s = append(*s, stamped[K]{k, t})
		return
	}
	old := 0
	for i, e := range *s {
		if e.t < (*s)[old].t {
			old = i
		}
	}
	(*s)[old] = stamped[K]{k, t}
}

// drop removes the keys whose time is at or before t.
func (s *stamps[K]) drop(t int64) {
	kept := (*s)[:0]
	for _, e := range *s {
		if e.t > t {
			kept = append(kept, e)
		}
	}
	clear((*s)[len(kept):])
	*s = kept
	if len(kept) == 0 {
		*s = nil
	}
}

// Bounds that keep one user's state small whatever an attacker does; the
// same as the Redis scripts'.
const (
	maxUserAddresses = 256 // user_ip counters per user
	maxPasswords     = 32  // recent wrong passwords per user
)

func newMemory(cfg *Config, max int) *memory {
	return &memory{cfg: cfg, max: max, ips: map[netip.Prefix]*counter{}, users: map[string]*memUser{}}
}

func (m *memory) check(now int64, net netip.Prefix, user string) snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	var s snapshot
	if c := m.ips[net]; c != nil {
		s.ip = levelOf(*c, now, m.cfg.IP.rate())
	}
	if u := m.users[user]; u != nil && user != "" {
		s.user = levelOf(u.all, now, m.cfg.User.rate())
		if c := u.addr(net); c != nil {
			s.userIP = levelOf(*c, now, m.cfg.UserIP.rate())
		}
		exp, _ := u.known.get(net)
		s.known = exp > now
		s.knownLeft = time.Duration(max(exp-now, 0)) * time.Millisecond
	}
	return s
}

func (m *memory) fail(now int64, net netip.Prefix, user, tag string) failResult {
	m.mu.Lock()
	defer m.mu.Unlock()
	var r failResult
	if user != "" {
		u := m.user(now, user)
		if tag != "" {
			u.pw.drop(now - m.cfg.RepeatWindow.Milliseconds())
			_, r.repeat = u.pw.get(tag)
			u.pw.put(tag, now, maxPasswords)
			if r.repeat {
				return r
			}
		}
		if u.all.fail(now, m.cfg.User) {
			r.began = append(r.began, tierUser)
		}
		r.user = levelOf(u.all, now, m.cfg.User.rate())
		c := u.addr(net)
		if c == nil && len(u.ips) >= maxUserAddresses {
			rate := m.cfg.UserIP.rate()
			kept := u.ips[:0]
			for _, e := range u.ips {
				if !e.c.idle(now, rate) {
					kept = append(kept, e)
				}
			}
			u.ips = kept
		}
		if c == nil && len(u.ips) < maxUserAddresses {
			u.ips = append(u.ips, addrCounter{net: net})
			c = &u.ips[len(u.ips)-1].c
		}
		if c != nil {
			if c.fail(now, m.cfg.UserIP) {
				r.began = append(r.began, tierUserIP)
			}
			r.userIP = levelOf(*c, now, m.cfg.UserIP.rate())
		}
	}
	c := m.ips[net]
	if c == nil {
		m.makeRoom(now, len(m.ips))
		c = &counter{}
		m.ips[net] = c
	}
	if c.fail(now, m.cfg.IP) {
		r.began = append(r.began, tierIP)
	}
	r.ip = levelOf(*c, now, m.cfg.IP.rate())
	return r
}

func (m *memory) succeed(now int64, net netip.Prefix, user string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.user(now, user)
	u.forget(net)
	u.known.drop(now)
	u.known.put(net, now+m.cfg.KnownAddressTTL.Milliseconds(), m.cfg.KnownAddresses)
}

func (m *memory) user(now int64, name string) *memUser {
	u := m.users[name]
	if u == nil {
		m.makeRoom(now, len(m.users))
		u = &memUser{}
		m.users[name] = u
	}
	return u
}

// makeRoom is called before a new entry is added to a map holding n:
// at the bound it forgets what has expired, and if that is not enough
// an eighth of the entries, so that sweeps stay rare.
func (m *memory) makeRoom(now int64, n int) {
	if n < m.max {
		return
	}
	ipRate, userRate, uipRate := m.cfg.IP.rate(), m.cfg.User.rate(), m.cfg.UserIP.rate()
	for k, c := range m.ips {
		if c.idle(now, ipRate) {
			delete(m.ips, k)
		}
	}
	for k, u := range m.users {
		if u.idle(now, userRate, uipRate, m.cfg.RepeatWindow.Milliseconds()) {
			delete(m.users, k)
		}
	}
	// Map order is random enough to pick the victims.
	keep := m.max * 7 / 8
	for k := range m.ips {
		if len(m.ips) <= keep {
			break
		}
		delete(m.ips, k)
	}
	for k := range m.users {
		if len(m.users) <= keep {
			break
		}
		delete(m.users, k)
	}
}

func (u *memUser) idle(now int64, userRate, uipRate float64, window int64) bool {
	if !u.all.idle(now, userRate) {
		return false
	}
	for _, e := range u.ips {
		if !e.c.idle(now, uipRate) {
			return false
		}
	}
	for _, e := range u.known {
		if e.t > now {
			return false
		}
	}
	for _, e := range u.pw {
		if e.t > now-window {
			return false
		}
	}
	return true
}

func nowMs() int64 { return time.Now().UnixMilli() }
