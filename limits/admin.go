package limits

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// What the command line shows and clears (portico limits). Both work on
// Redis only: a proxy's in-memory counters serve while Redis is
// unreachable, and are not consulted otherwise.

// Count is one counter as the CLI shows it.
type Count struct {
	Failures     float64   // drained to now
	BlockedUntil time.Time // zero: not blocked
}

// AddrStatus is an address's counter.
type AddrStatus struct {
	Net netip.Prefix // the network the address is counted under
	Count
}

// UserStatus is a user's counters, known addresses and number of recent
// wrong passwords.
type UserStatus struct {
	User           string
	Count                                 // user tier
	ByAddr         map[netip.Prefix]Count // user_ip tier, counters that are not idle
	Known          map[netip.Prefix]time.Time
	WrongPasswords int // recent ones, kept as keyed hashes
}

var errNoRedis = errors.New("limits: no Redis (the counters are each proxy's own)")

// ShowAddr reads the counter of the network addr (an address, or a
// network written as CIDR) is counted under.
func (l *Limiter) ShowAddr(ctx context.Context, addr string) (AddrStatus, error) {
	net, err := l.ParseNet(addr)
	if err != nil {
		return AddrStatus{}, err
	}
	if l.redis == nil {
		return AddrStatus{}, errNoRedis
	}
	now := time.Now()
	c := &call{script: checkIPScript, keys: []string{l.redis.keys.ip(net)}, args: []any{l.redis.args.ipRate}}
	if err := l.redis.run(ctx, nil, c); err != nil {
		return AddrStatus{}, err
	}
	v, err := reply(c.cmd, 2)
	if err != nil {
		return AddrStatus{}, err
	}
	st := AddrStatus{Net: net, Count: Count{Failures: num(v[0])}}
	if left := ms(v[1]); left > 0 {
		st.BlockedUntil = now.Add(left)
	}
	return st, nil
}

// ShowUser reads a user's state; user must be normalised.
func (l *Limiter) ShowUser(ctx context.Context, user string) (UserStatus, error) {
	if l.redis == nil {
		return UserStatus{}, errNoRedis
	}
	k := l.redis.keys
	c := &call{script: showUserScript, keys: []string{k.user(user), k.known(user), k.pw(user)}}
	if err := l.redis.run(ctx, nil, c); err != nil {
		return UserStatus{}, err
	}
	v, err := reply(c.cmd, 4)
	if err != nil {
		return UserStatus{}, err
	}
	now := int64(num(v[0]))
	st := UserStatus{User: user, ByAddr: map[netip.Prefix]Count{}, Known: map[netip.Prefix]time.Time{}, WrongPasswords: int(num(v[3]))}
	fields, _ := v[1].([]any)
	for i := 0; i+1 < len(fields); i += 2 {
		name, _ := fields[i].(string)
		val, _ := fields[i+1].(string)
		cn, ok := parseCounter(val)
		if !ok {
			continue
		}
		if name == "*" {
			st.Count = countOf(cn, now, l.cfg.User.rate())
			continue
		}
		net, err := netip.ParsePrefix(name)
		if err != nil || cn.idle(now, l.cfg.UserIP.rate()) {
			continue
		}
		st.ByAddr[net] = countOf(cn, now, l.cfg.UserIP.rate())
	}
	known, _ := v[2].([]any)
	for i := 0; i+1 < len(known); i += 2 {
		name, _ := known[i].(string)
		if net, err := netip.ParsePrefix(name); err == nil {
			st.Known[net] = time.UnixMilli(int64(num(known[i+1])))
		}
	}
	return st, nil
}

// ClearAddr forgets the counter of the network addr is counted under, so
// that a block ends at once. Users' counters for that address stay (clear
// the user for those). It returns the network.
//
// The address stays in the fleet's hot set (Limiter.Hot) until its mark
// expires: its logins keep asking Redis meanwhile, which finds nothing and
// lets them on. That costs them a round trip, nothing more, and a cleared
// counter needs no message to every proxy.
func (l *Limiter) ClearAddr(ctx context.Context, addr string) (netip.Prefix, error) {
	net, err := l.ParseNet(addr)
	if err != nil {
		return net, err
	}
	if l.redis == nil {
		return net, errNoRedis
	}
	return net, l.redis.rdb.Del(ctx, l.redis.keys.ip(net)).Err()
}

// ClearUser forgets a user's counters, those per address included, and
// the user's recent wrong passwords; the known addresses stay. As with
// ClearAddr, the user stays hot until its mark expires.
func (l *Limiter) ClearUser(ctx context.Context, user string) error {
	if l.redis == nil {
		return errNoRedis
	}
	k := l.redis.keys
	// Two keys of one slot: one DEL works on a Cluster too.
	return l.redis.rdb.Del(ctx, k.user(user), k.pw(user)).Err()
}

// ParseNet reads an address, which is counted under its network (IPv6:
// limits.ipv6_prefix), or that network in CIDR notation.
func (l *Limiter) ParseNet(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return l.cfg.Net(a), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%q is not an IP address or a CIDR network", s)
	}
	if n := l.cfg.Net(p.Addr()); n != p {
		return p, fmt.Errorf("%s: addresses are counted one by one for IPv4 and by /%d for IPv6; give an address, or %s", s, l.cfg.IPv6Prefix, n)
	}
	return p, nil
}

// IsAddr says whether s names an address or network rather than a user.
func IsAddr(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	_, err := netip.ParsePrefix(s)
	return err == nil && !strings.Contains(s, "@")
}

func parseCounter(v string) (counter, bool) {
	f := strings.Fields(v)
	if len(f) != 3 {
		return counter{}, false
	}
	var c counter
	var err error
	var t, b float64
	if c.n, err = parseFloat(f[0]); err != nil {
		return c, false
	}
	if t, err = parseFloat(f[1]); err != nil {
		return c, false
	}
	if b, err = parseFloat(f[2]); err != nil {
		return c, false
	}
	c.t, c.b = int64(t), int64(b)
	return c, true
}

func parseFloat(s string) (float64, error) { return strconv.ParseFloat(s, 64) }

func countOf(c counter, now int64, rate float64) Count {
	n, b := c.at(now, rate)
	ct := Count{Failures: n}
	if b > 0 {
		ct.BlockedUntil = time.Now().Add(time.Duration(b-now) * time.Millisecond)
	}
	return ct
}

// SortedNets returns a map's networks in order.
func SortedNets[V any](m map[netip.Prefix]V) []netip.Prefix {
	nets := make([]netip.Prefix, 0, len(m))
	for n := range m {
		nets = append(nets, n)
	}
	sort.Slice(nets, func(i, j int) bool {
		if c := nets[i].Addr().Compare(nets[j].Addr()); c != 0 {
			return c < 0
		}
		return nets[i].Bits() < nets[j].Bits()
	})
	return nets
}
