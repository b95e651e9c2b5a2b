package app

import (
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/limits"
	"github.com/portico-mail/portico/proxy"
)

// buildLimits gives the server its failed-login limiter
// (limits.brute_force), shared by the fleet through Redis when there is
// one.
func (rt *App) buildLimits(cfg *config.Config, srv *proxy.Server, logger *slog.Logger, prev *App) error {
	if cfg.Limits.BruteForce.Disabled {
		return nil
	}
	lc, err := LimitsConfig(cfg)
	if err != nil {
		return err
	}
	if prev != nil && prev.Limiter != nil && prev.limiterCfg.equal(lc) {
		// Unchanged: keep the counters (in memory without Redis).
		rt.Limiter, rt.limiterCfg = prev.Limiter, prev.limiterCfg
		srv.Limiter = rt.Limiter
		return nil
	}
	if rt.Redis != nil && len(lc.HashKey) == 0 && prev == nil {
		logger.Warn("limits.brute_force.password_hash_key is not set: a repeated wrong password is recognised only by the proxy that saw it first")
	}
	rt.limiterCfg = limiterConfig{lc}
	rt.Limiter = limits.New(lc, rt.Redis, rt.RedisPrefix, logger)
	srv.Limiter = rt.Limiter
	return nil
}

// limiterConfig is the configuration a Limiter was made from, before
// limits.New fills in a random hash key.
type limiterConfig struct{ c limits.Config }

func (a limiterConfig) equal(b limits.Config) bool { return reflect.DeepEqual(a.c, b) }

// LimitsConfig turns limits.brute_force (with limits.ipv6_prefix,
// limits.trusted_networks and routing.lookup_timeout) into the limiter's
// configuration.
func LimitsConfig(cfg *config.Config) (limits.Config, error) {
	b := &cfg.Limits.BruteForce
	tier := func(t config.FailureLimit) limits.Tier {
		return limits.Tier{DelayAfter: t.DelayAfter, BlockAfter: t.BlockAfter, Window: t.Window, BlockFor: t.BlockFor}
	}
	lc := limits.Config{
		IP:              tier(b.IP),
		UserIP:          tier(b.UserIP),
		User:            tier(b.User),
		IPv6Prefix:      cfg.Limits.IPv6Prefix,
		Delay:           b.Delay,
		MaxDelay:        b.MaxDelay,
		KnownAddressTTL: b.KnownAddressTTL,
		KnownAddresses:  b.KnownAddresses,
		RepeatWindow:    b.RepeatedPasswordWindow,
		FailClosed:      b.OnRedisError == "closed",
		Timeout:         cfg.Routing.LookupTimeout,
	}
	if k := b.PasswordHashKey.Value; k != "" {
		lc.HashKey = []byte(k)
	}
	for _, n := range cfg.Limits.TrustedNetworks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return lc, fmt.Errorf("limits.trusted_networks: %w", err)
		}
		lc.Trusted = append(lc.Trusted, p.Masked())
	}
	return lc, nil
}
