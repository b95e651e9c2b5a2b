package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Bounds for pools, the route cache, health checks and the fleet.
const (
	minWeight = 1
	// maxWeight leaves room for Fleet weight overrides (routing.MaxWeight)
	// while keeping a typo from sending every new user to one backend.
	maxWeight        = 1000
	maxPositiveTTL   = time.Hour
	minCacheEntries  = 100
	maxCacheEntries  = 10_000_000
	minHealthRecheck = time.Second
	maxHealthRecheck = time.Hour
	maxRiseFall      = 100
	maxProxyID       = 128
)

// validateBackendPool checks the settings of backend b, at path p, that
// pools and health use: weight and fallback.
func (c *Config) validateBackendPool(v *validator, p string, b *Backend) {
	checkInt(v, p+".weight", b.Weight, minWeight, maxWeight)
	switch {
	case b.Fallback == "":
	case b.Fallback == b.Name:
		v.add(p+".fallback", "%q is this backend itself; name another backend that reaches the same mailboxes", b.Fallback)
	case !c.hasBackend(b.Fallback):
		v.add(p+".fallback", "%q is not defined in backends%s", b.Fallback, knownNames(c.Backends))
	}
}

func (c *Config) hasBackend(name string) bool {
	for _, b := range c.Backends {
		if b.Name == name {
			return true
		}
	}
	return false
}

func (c *Config) validatePools(v *validator) {
	r := &c.Routing
	pools := make(map[string]bool, len(r.Pools))
	seen := make(map[string]string, len(r.Pools))
	for i, pl := range r.Pools {
		p := fmt.Sprintf("routing.pools[%d]", i)
		switch {
		case pl.Name == "":
			v.add(p+".name", "is required")
		case !validName(pl.Name):
			v.add(p+".name", "%q must contain only letters, digits, '.', '_' and '-'", pl.Name)
		default:
			pools[pl.Name] = true
			k := strings.ToLower(pl.Name)
			if prev, ok := seen[k]; ok {
				v.add(p+".name", "%q is already the name of %s (names are compared case-insensitively)", pl.Name, prev)
			} else {
				seen[k] = p
			}
		}
		if len(pl.Backends) == 0 {
			v.add(p+".backends", "at least one backend is required: names of entries in backends")
		}
		members := make(map[string]string, len(pl.Backends))
		for j, m := range pl.Backends {
			mp := fmt.Sprintf("%s.backends[%d]", p, j)
			switch prev, dup := members[m]; {
			case m == "":
				v.add(mp, "must name an entry in backends")
			case !c.hasBackend(m):
				v.add(mp, "%q is not defined in backends%s", m, knownNames(c.Backends))
			case dup:
				v.add(mp, "%q is already listed as %s; use weight to give a backend a larger share", m, prev)
			default:
				members[m] = mp
			}
		}
		switch pl.Policy {
		case "reject":
		case "assign":
			if r.Redis == nil {
				v.add(p+".policy", `"assign" needs routing.redis, where assignments are written, which is not configured`)
			}
		default:
			v.add(p+".policy", `must be "reject" or "assign", not %q`, pl.Policy)
		}
	}

	domains := make([]string, 0, len(r.DomainPools))
	for d := range r.DomainPools {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	for _, d := range domains {
		p := "routing.domain_pools[" + strconv.Quote(d) + "]"
		if msg := checkDomain(d); msg != "" {
			v.add(p, "%q %s", d, msg)
		}
		checkPoolRef(v, p, r.DomainPools[d], pools, r.Pools)
	}
	if r.DefaultPool != "" {
		checkPoolRef(v, "routing.default_pool", r.DefaultPool, pools, r.Pools)
	}

	rc := &r.Cache
	checkDur(v, "routing.cache.positive_ttl", rc.PositiveTTL, time.Millisecond, maxPositiveTTL)
	if pos := rc.PositiveTTL; pos < time.Millisecond || pos > maxPositiveTTL {
		// Reported above; do not measure negative_ttl against it.
		checkDur(v, "routing.cache.negative_ttl", rc.NegativeTTL, time.Millisecond, maxPositiveTTL)
	} else if rc.NegativeTTL < time.Millisecond || rc.NegativeTTL > pos {
		v.add("routing.cache.negative_ttl", "must be between 1ms and positive_ttl (%s), not %s", FormatDuration(pos), FormatDuration(rc.NegativeTTL))
	}
	checkInt(v, "routing.cache.max_entries", rc.MaxEntries, minCacheEntries, maxCacheEntries)

	h := &r.Health
	checkDur(v, "routing.health.interval", h.Interval, minHealthRecheck, maxHealthRecheck)
	if iv := h.Interval; iv < minHealthRecheck || iv > maxHealthRecheck {
		checkDur(v, "routing.health.timeout", h.Timeout, time.Millisecond, maxHealthRecheck)
	} else if h.Timeout < time.Millisecond || h.Timeout >= iv {
		v.add("routing.health.timeout", "must be at least 1ms and less than interval (%s), not %s", FormatDuration(iv), FormatDuration(h.Timeout))
	}
	checkInt(v, "routing.health.rise", h.Rise, 1, maxRiseFall)
	checkInt(v, "routing.health.fall", h.Fall, 1, maxRiseFall)
}

func checkPoolRef(v *validator, path, name string, defined map[string]bool, pools []Pool) {
	switch {
	case name == "":
		v.add(path, "must name an entry in routing.pools")
	case !defined[name]:
		names := make([]string, 0, len(pools))
		for _, p := range pools {
			names = append(names, p.Name)
		}
		sort.Strings(names)
		known := " (there are none)"
		if len(names) > 0 {
			known = " (defined: " + strings.Join(names, ", ") + ")"
		}
		v.add(path, "%q is not defined in routing.pools%s", name, known)
	}
}

// checkDomain returns what is wrong with a domain_pools key, or "". Keys
// must be written as Normalize leaves a user's domain: in lower case.
// Lower-casing them here instead could merge two keys silently.
func checkDomain(d string) string {
	switch {
	case d == "":
		return "must be a domain such as example.com"
	case strings.Contains(d, "@"):
		return `must be a domain such as example.com, without "@"`
	case strings.Contains(d, "*"):
		return "is a wildcard; list each domain (subdomains are separate domains)"
	case strings.ToLower(d) != d:
		return fmt.Sprintf("must be written in lower case, %q: user names are lower-cased before the lookup", strings.ToLower(d))
	case strings.HasPrefix(d, ".") || strings.HasSuffix(d, "."):
		return "must be written without a leading or final dot"
	case len(d) > 253:
		return "is longer than 253 characters"
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "is not a valid domain: each dot-separated label needs 1 to 63 characters and must not start or end with '-'"
		}
		for _, r := range l {
			ascii := r == '-' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
			// Clients may log in with an internationalised domain;
			// Normalize keeps it as typed, so it is allowed here too.
			intl := r > unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r))
			if !ascii && !intl {
				return "is not a valid domain: only letters, digits, '-' and '.' are allowed"
			}
		}
	}
	return ""
}

func (c *Config) validateFleet(v *validator) {
	f := &c.Fleet
	if f.ProxyID != "" && !validProxyID(f.ProxyID) {
		v.add("fleet.proxy_id", "%q must be at most %d characters: letters, digits, '.', '_', '-' and ':'", f.ProxyID, maxProxyID)
	}
	checkDur(v, "fleet.heartbeat", f.Heartbeat, time.Second, 5*time.Minute)
	checkDur(v, "fleet.reconcile", f.Reconcile, 10*time.Second, 24*time.Hour)
	if f.WriteRate < 100 || f.WriteRate > 1_000_000 {
		v.add("fleet.write_rate", "must be between 100 and 1000000 sessions per second, not %d", f.WriteRate)
	}
	checkDur(v, "fleet.move_hold", f.MoveHold, time.Second, 10*time.Minute)
	if f.DrainWindow < 0 || f.DrainWindow > 24*time.Hour {
		v.add("fleet.drain_window", "must be between 0 (the default, %s) and 24h, not %s", FormatDuration(defaultDrainWindow), FormatDuration(f.DrainWindow))
	}
}

// validProxyID keeps proxy IDs printable in listings and free of the
// braces that would change a Redis Cluster hash tag.
func validProxyID(s string) bool {
	return len(s) <= maxProxyID && validName(strings.ReplaceAll(s, ":", ""))
}

// poolWarnings reports pool, cache, health and fleet settings that are
// valid but probably not what the operator wants.
func (c *Config) poolWarnings(add func(path, format string, args ...any)) {
	r := &c.Routing
	if r.Redis == nil {
		const why = "has no effect without routing.redis: pools are used by Redis route records and by assignment"
		if len(r.Pools) > 0 {
			add("routing.pools", why)
		}
		if len(r.DomainPools) > 0 {
			add("routing.domain_pools", why)
		}
		if r.DefaultPool != "" {
			add("routing.default_pool", why)
		}
	}
	if r.Health.Disabled {
		add("routing.health.disabled", "logins to a dead backend wait for the connect timeout instead of getting NO [UNAVAILABLE] at once, and neither pools nor fallbacks avoid it")
	}
	if r.Cache.Disabled && r.Redis != nil {
		add("routing.cache.disabled", "every login that static routes do not answer costs a Redis round trip")
	}
	if r.Redis == nil {
		f := &c.Fleet
		const why = "has no effect without routing.redis, through which proxies share sessions, kicks, moves and drains"
		if f.ProxyID != "" {
			add("fleet.proxy_id", why)
		}
		if f.Heartbeat != defaultHeartbeat {
			add("fleet.heartbeat", why)
		}
		if f.MoveHold != defaultMoveHold {
			add("fleet.move_hold", why)
		}
		if f.Reconcile != defaultReconcile {
			add("fleet.reconcile", why)
		}
		if f.WriteRate != defaultWriteRate {
			add("fleet.write_rate", why)
		}
		if f.DrainWindow != defaultDrainWindow {
			add("fleet.drain_window", why)
		}
	}
}
