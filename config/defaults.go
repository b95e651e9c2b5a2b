package config

import (
	"crypto/tls"
	"log/slog"
	"time"
)

// Defaults documented in types.go and portico.example.yaml.
const (
	defaultMaxLineLength     = 8192
	defaultMaxLiteralSize    = 1024
	defaultMaxAuthLineLength = 16384
	defaultPreauthTimeout    = 60 * time.Second
	defaultHandshakeTimeout  = 10 * time.Second
	defaultMaxBadCommands    = 3
	defaultMaxAuthFailures   = 3
	defaultAuthFailureDelay  = 2 * time.Second
	defaultIdleTimeout       = 31 * time.Minute
	defaultShutdownTimeout   = 30 * time.Second
	defaultUpgradeTimeout    = time.Hour
	defaultUpgradeWindow     = 5 * time.Minute
	defaultPreauthPerIP      = 100
	defaultIPv6Prefix        = 64
	defaultSessionsPerUser   = 100
	defaultSessionsPerUserIP = 10
	defaultLoginsInProgress  = 1000
	defaultLoginsPerBackend  = 100
	defaultLookupTimeout     = 2 * time.Second
	defaultRedisKeyPrefix    = "portico:"
	defaultRedisTimeout      = time.Second
	defaultConnectTimeout    = 10 * time.Second
	defaultLoginTimeout      = 30 * time.Second
	defaultReloadInterval    = 30 * time.Second
	defaultExpiryWarning     = 14 * 24 * time.Hour
	defaultTicketRotation    = 12 * time.Hour
	defaultACMEHTTPAddress   = ":80"
	defaultACMECache         = "dir"
	defaultACMECacheDir      = "/var/lib/portico/acme"
	defaultWeight            = 1
	defaultSpareMaxIdle      = 60 * time.Second
	defaultPoolPolicy        = "reject"
	defaultPositiveTTL       = 30 * time.Second
	defaultNegativeTTL       = 5 * time.Second
	defaultCacheEntries      = 100_000
	defaultHealthInterval    = 5 * time.Second
	defaultHealthTimeout     = 3 * time.Second
	defaultHealthRise        = 2
	defaultHealthFall        = 3
	defaultHeartbeat         = 10 * time.Second
	defaultReconcile         = 5 * time.Minute
	defaultWriteRate         = 5000
	defaultMoveHold          = 30 * time.Second
	defaultDrainWindow       = 5 * time.Minute
)

// DefaultAdminAddress is where the admin listener listens when admin: is
// present without an address: loopback, so that no token is needed.
const DefaultAdminAddress = "127.0.0.1:9143"

// ApplyDefaults replaces zero values with their defaults. Parse calls it;
// code that builds a Config by hand should call it before Validate.
// A listener's address and name are only filled in when its mode is valid.
func (c *Config) ApplyDefaults() {
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.Address == "" {
			switch l.Mode {
			case "imaps":
				l.Address = ":993"
			case "imap":
				l.Address = ":143"
			case "pop3s":
				l.Address = ":995"
			case "pop3":
				l.Address = ":110"
			}
		}
		if l.Name == "" && l.Mode != "" && l.Address != "" {
			l.Name = l.Mode + "-" + l.Address
		}
	}
	c.TLS.ApplyDefaults()
	c.Limits.ApplyDefaults()
	if c.Routing.LookupTimeout == 0 {
		c.Routing.LookupTimeout = defaultLookupTimeout
	}
	if r := c.Routing.Redis; r != nil {
		if r.KeyPrefix == "" {
			r.KeyPrefix = defaultRedisKeyPrefix
		}
		setDur(&r.DialTimeout, defaultRedisTimeout)
		setDur(&r.ReadTimeout, defaultRedisTimeout)
		setDur(&r.WriteTimeout, defaultRedisTimeout)
	}
	for i := range c.Routing.Pools {
		if c.Routing.Pools[i].Policy == "" {
			c.Routing.Pools[i].Policy = defaultPoolPolicy
		}
	}
	rc := &c.Routing.Cache
	setDur(&rc.PositiveTTL, defaultPositiveTTL)
	setDur(&rc.NegativeTTL, defaultNegativeTTL)
	setInt(&rc.MaxEntries, defaultCacheEntries)
	h := &c.Routing.Health
	setDur(&h.Interval, defaultHealthInterval)
	setDur(&h.Timeout, defaultHealthTimeout)
	setInt(&h.Rise, defaultHealthRise)
	setInt(&h.Fall, defaultHealthFall)
	for i := range c.Backends {
		setInt(&c.Backends[i].Weight, defaultWeight)
		setDur(&c.Backends[i].SpareMaxIdle, defaultSpareMaxIdle)
		c.Backends[i].BackendOptions.ApplyDefaults()
	}
	c.BackendDefaults.ApplyDefaults()
	// ProxyID stays empty: the binary fills in hostname:pid, which a
	// config file shared by a fleet cannot know.
	f := &c.Fleet
	setDur(&f.Heartbeat, defaultHeartbeat)
	setDur(&f.Reconcile, defaultReconcile)
	setInt(&f.WriteRate, defaultWriteRate)
	setDur(&f.MoveHold, defaultMoveHold)
	setDur(&f.DrainWindow, defaultDrainWindow)
	c.Auth.ApplyDefaults()
	if c.Admin != nil && c.Admin.Address == "" {
		c.Admin.Address = DefaultAdminAddress
	}
}

// ApplyDefaults replaces zero TLS settings with their defaults.
func (t *TLS) ApplyDefaults() {
	if t.MinVersion == "" {
		t.MinVersion = "1.2"
	}
	setDur(&t.ReloadInterval, defaultReloadInterval)
	setDur(&t.ExpiryWarning, defaultExpiryWarning)
	setDur(&t.SessionTickets.Rotation, defaultTicketRotation)
	if a := t.ACME; a != nil {
		if a.DirectoryURL == "" {
			a.DirectoryURL = LetsEncryptProduction
		}
		if a.HTTPAddress == "" {
			a.HTTPAddress = defaultACMEHTTPAddress
		}
		if a.Cache == "" {
			a.Cache = defaultACMECache
		}
		// A directory is only a default for the directory cache, so
		// that cache_dir next to cache "redis" can be refused.
		if a.Cache == "dir" && a.CacheDir == "" {
			a.CacheDir = defaultACMECacheDir
		}
	}
}

// ApplyDefaults replaces zero limits with their defaults.
func (l *Limits) ApplyDefaults() {
	setInt(&l.MaxLineLength, defaultMaxLineLength)
	setInt(&l.MaxLiteralSize, defaultMaxLiteralSize)
	setInt(&l.MaxAuthLineLength, defaultMaxAuthLineLength)
	setDur(&l.PreauthTimeout, defaultPreauthTimeout)
	setDur(&l.HandshakeTimeout, defaultHandshakeTimeout)
	setInt(&l.MaxBadCommands, defaultMaxBadCommands)
	setInt(&l.MaxAuthFailures, defaultMaxAuthFailures)
	setDur(&l.AuthFailureDelay, defaultAuthFailureDelay)
	setDur(&l.IdleTimeout, defaultIdleTimeout)
	setDur(&l.ShutdownTimeout, defaultShutdownTimeout)
	setDur(&l.UpgradeTimeout, defaultUpgradeTimeout)
	setDur(&l.UpgradeWindow, defaultUpgradeWindow)
	// MaxConnections stays 0: the binary derives it from the open-file
	// limit, which the config cannot know.
	setInt(&l.MaxPreauthConnectionsPerIP, defaultPreauthPerIP)
	setInt(&l.IPv6Prefix, defaultIPv6Prefix)
	setInt(&l.MaxSessionsPerUser, defaultSessionsPerUser)
	setInt(&l.MaxSessionsPerUserIP, defaultSessionsPerUserIP)
	setInt(&l.MaxLoginsInProgress, defaultLoginsInProgress)
	setInt(&l.MaxLoginsInProgressPerBackend, defaultLoginsPerBackend)
	l.BruteForce.ApplyDefaults()
}

// ApplyDefaults replaces zero brute-force limits with their defaults,
// which are limits.DefaultConfig's.
func (b *BruteForce) ApplyDefaults() {
	tier := func(t *FailureLimit, delayAfter, blockAfter int, window, blockFor time.Duration) {
		setInt(&t.DelayAfter, delayAfter)
		setInt(&t.BlockAfter, blockAfter)
		setDur(&t.Window, window)
		setDur(&t.BlockFor, blockFor)
	}
	tier(&b.IP, 10, 30, 30*time.Minute, 30*time.Minute)
	tier(&b.UserIP, 3, 10, 15*time.Minute, 15*time.Minute)
	tier(&b.User, 10, 50, time.Hour, 15*time.Minute)
	setDur(&b.Delay, time.Second)
	setDur(&b.MaxDelay, 15*time.Second)
	setDur(&b.KnownAddressTTL, 720*time.Hour)
	setInt(&b.KnownAddresses, 16)
	setDur(&b.RepeatedPasswordWindow, time.Hour)
	if b.OnRedisError == "" {
		b.OnRedisError = "open"
	}
}

// ApplyDefaults replaces zero backend options with their defaults.
func (o *BackendOptions) ApplyDefaults() {
	if o.Security == "" {
		o.Security = "plain"
	}
	setDur(&o.ConnectTimeout, defaultConnectTimeout)
	setDur(&o.LoginTimeout, defaultLoginTimeout)
}

func setInt(p *int, v int) {
	if *p == 0 {
		*p = v
	}
}

func setDur(p *time.Duration, v time.Duration) {
	if *p == 0 {
		*p = v
	}
}

// SlogLevel returns the configured level; an invalid or empty one is Info.
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// MinTLSVersion returns min_version as a crypto/tls constant; anything but "1.3"
// is TLS 1.2.
func (t TLS) MinTLSVersion() uint16 {
	if t.MinVersion == "1.3" {
		return tls.VersionTLS13
	}
	return tls.VersionTLS12
}
