package limits

import (
	"math"
	"net/netip"
	"time"

	"github.com/portico-mail/portico/proxy"
)

// Tier is one family of failure counters: per client address, per user
// and address, or per user.
//
// A counter is a leaky bucket: every failure adds one, and the count
// drains continuously at BlockAfter failures per Window. From DelayAfter
// failures on, each attempt waits Config.Delay, doubling with every
// further failure up to Config.MaxDelay; the failure that brings the
// count to BlockAfter starts a block of BlockFor, during which attempts
// are refused unverified and not counted.
type Tier struct {
	DelayAfter int
	BlockAfter int
	Window     time.Duration
	BlockFor   time.Duration
}

// rate is how many failures the counter forgets per millisecond.
func (t Tier) rate() float64 {
	return float64(t.BlockAfter) / float64(t.Window.Milliseconds())
}

// reached says whether a decayed count stands for n failures: a count
// drains between failures, so 2.98 after three quick ones is three.
func reached(count float64, n int) bool {
	return count+0.5 >= float64(n)
}

// counter is one tier's state for one address or user: the count as of
// t (Unix ms) and the end of a block (Unix ms, 0 for none).
type counter struct {
	n    float64
	t, b int64
}

// at returns the count at now and the block's end, 0 if none is running.
func (c counter) at(now int64, rate float64) (n float64, b int64) {
	n = c.n - float64(now-c.t)*rate
	if n < 0 {
		n = 0
	}
	if c.b > now {
		b = c.b
	}
	return n, b
}

// fail adds a failure at now and reports whether it started a block.
func (c *counter) fail(now int64, t Tier) (began bool) {
	n, b := c.at(now, t.rate())
	n++
	if b == 0 && reached(n, t.BlockAfter) {
		b, began = now+t.BlockFor.Milliseconds(), true
	}
	*c = counter{n: n, t: now, b: b}
	return began
}

// idle says whether the counter has drained and no block runs: it can be
// forgotten.
func (c counter) idle(now int64, rate float64) bool {
	n, b := c.at(now, rate)
	return n < 0.5 && b == 0
}

// level is what a check sees of one counter.
type level struct {
	n       float64       // failures, drained to now
	blocked time.Duration // left of a running block; 0 for none
}

func levelOf(c counter, now int64, rate float64) level {
	n, b := c.at(now, rate)
	return level{n: n, blocked: time.Duration(max(b-now, 0)) * time.Millisecond}
}

// snapshot is what Check learns from a store.
type snapshot struct {
	ip, userIP, user level
	// known: the user logged in from this address recently. It exempts
	// the attempt from the address and user tiers, not from user_ip.
	// knownLeft is how long it stays known without another login.
	known     bool
	knownLeft time.Duration
	// fallback: read from memory because Redis, which has the fleet's
	// counters, could not be asked.
	fallback bool
}

// failResult is what Fail learns from a store.
type failResult struct {
	// repeat: the same wrong password for this user was seen recently;
	// nothing was counted.
	repeat           bool
	ip, userIP, user level
	// began lists the tiers whose block this failure started.
	began []string
}

// Tier names, in logs, in the CLI and in the README.
const (
	tierIP     = "ip"
	tierUserIP = "user_ip"
	tierUser   = "user"
)

// delay is the wait before an attempt when a tier holds n failures.
func (c *Config) delay(t Tier, n float64) time.Duration {
	k := int(math.Floor(n+0.5)) - t.DelayAfter
	switch {
	case k < 0:
		return 0
	case k > 30:
		return c.MaxDelay
	}
	return min(c.Delay<<k, c.MaxDelay)
}

// decide turns a snapshot into a verdict and names the tier that
// decided it ("" when the attempt goes on undelayed).
func (c *Config) decide(s snapshot) (proxy.LimitVerdict, string) {
	if s.userIP.blocked > 0 {
		return proxy.LimitVerdict{Block: true}, tierUserIP
	}
	if !s.known {
		if s.ip.blocked > 0 {
			return proxy.LimitVerdict{Block: true}, tierIP
		}
		if s.user.blocked > 0 {
			return proxy.LimitVerdict{Block: true}, tierUser
		}
	}
	var v proxy.LimitVerdict
	tier := ""
	longer := func(d time.Duration, name string) {
		if d > v.Delay {
			v.Delay, tier = d, name
		}
	}
	longer(c.delay(c.UserIP, s.userIP.n), tierUserIP)
	if !s.known {
		longer(c.delay(c.IP, s.ip.n), tierIP)
		longer(c.delay(c.User, s.user.n), tierUser)
	}
	return v, tier
}

// Net is the network a client address is counted under: the address
// itself for IPv4, its IPv6Prefix for IPv6.
func (c *Config) Net(a netip.Addr) netip.Prefix {
	a = a.WithZone("").Unmap()
	bits := a.BitLen()
	if a.Is6() {
		bits = c.IPv6Prefix
	}
	p, _ := a.Prefix(bits)
	return p
}
