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

type memUser struct {
	all   counter
	ips   map[netip.Prefix]*counter
	known map[netip.Prefix]int64 // expiry, Unix ms
	pw    map[string]int64       // wrong-password tag, last seen (Unix ms)
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
		if c := u.ips[net]; c != nil {
			s.userIP = levelOf(*c, now, m.cfg.UserIP.rate())
		}
		s.known = u.known[net] > now
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
			window := m.cfg.RepeatWindow.Milliseconds()
			for t, seen := range u.pw {
				if seen <= now-window {
					delete(u.pw, t)
				}
			}
			_, r.repeat = u.pw[tag]
			if !r.repeat && len(u.pw) >= maxPasswords {
				delete(u.pw, oldest(u.pw))
			}
			u.pw[tag] = now
			if r.repeat {
				return r
			}
		}
		if u.all.fail(now, m.cfg.User) {
			r.began = append(r.began, tierUser)
		}
		r.user = levelOf(u.all, now, m.cfg.User.rate())
		c := u.ips[net]
		if c == nil && len(u.ips) >= maxUserAddresses {
			rate := m.cfg.UserIP.rate()
			for n, c := range u.ips {
				if c.idle(now, rate) {
					delete(u.ips, n)
				}
			}
		}
		if c == nil && len(u.ips) < maxUserAddresses {
			c = &counter{}
			u.ips[net] = c
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
	delete(u.ips, net)
	for n, exp := range u.known {
		if exp <= now {
			delete(u.known, n)
		}
	}
	if _, ok := u.known[net]; !ok && len(u.known) >= m.cfg.KnownAddresses {
		delete(u.known, oldest(u.known))
	}
	u.known[net] = now + m.cfg.KnownAddressTTL.Milliseconds()
}

func (m *memory) user(now int64, name string) *memUser {
	u := m.users[name]
	if u == nil {
		m.makeRoom(now, len(m.users))
		u = &memUser{ips: map[netip.Prefix]*counter{}, known: map[netip.Prefix]int64{}, pw: map[string]int64{}}
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
	for _, c := range u.ips {
		if !c.idle(now, uipRate) {
			return false
		}
	}
	for _, exp := range u.known {
		if exp > now {
			return false
		}
	}
	for _, seen := range u.pw {
		if seen > now-window {
			return false
		}
	}
	return true
}

// oldest returns the key with the smallest value.
func oldest[K comparable](m map[K]int64) K {
	var k K
	first := true
	var v int64
	for kk, vv := range m {
		if first || vv < v {
			k, v, first = kk, vv, false
		}
	}
	return k
}

func nowMs() int64 { return time.Now().UnixMilli() }
