package config

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// trustedNets are the networks from which cleartext logins are no worse
// than the rest of the local network: loopback and private ranges.
var trustedNets = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fc00::/7"),
}

// certExpiryWarning is how early Warnings mentions an expiring certificate.
const certExpiryWarning = 14 * 24 * time.Hour

// Warnings lists settings that are valid but risky, each starting with
// the field path. Call it on a configuration that passed Validate.
func (c *Config) Warnings() []string {
	var w []string
	add := func(path, format string, args ...any) {
		w = append(w, path+": "+fmt.Sprintf(format, args...))
	}
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d].cleartext_login_networks", i)
		if l.Mode == "imaps" && len(l.CleartextLoginNetworks) > 0 {
			add(p, "has no effect on an imaps listener, where every login is over TLS")
			continue
		}
		for j, s := range l.CleartextLoginNetworks {
			pfx, err := parseNetwork(s)
			if err == nil && !trusted(pfx) {
				add(fmt.Sprintf("%s[%d]", p, j), "%q is not a loopback or private network: clients there may send passwords without TLS, readable by anyone on the path", s)
			}
		}
	}
	now := time.Now()
	for i, cert := range c.TLS.Certificates {
		kp, err := tls.LoadX509KeyPair(cert.CertFile, cert.KeyFile)
		if err != nil || kp.Leaf == nil {
			continue // Validate reports it
		}
		p := fmt.Sprintf("tls.certificates[%d]", i)
		switch end := kp.Leaf.NotAfter; {
		case now.After(end):
			add(p, "certificate %s expired on %s", cert.CertFile, end.UTC().Format(time.DateOnly))
		case end.Sub(now) < certExpiryWarning:
			add(p, "certificate %s expires on %s", cert.CertFile, end.UTC().Format(time.DateOnly))
		}
	}
	if r := c.Routing.Redis; r != nil && r.TLS != nil && r.TLS.InsecureSkipVerify {
		add("routing.redis.tls.insecure_skip_verify", "the Redis server's certificate is not verified: anyone on the path can impersonate it and choose users' backends")
	}
	for i, b := range c.Backends {
		p := fmt.Sprintf("backends[%d]", i)
		if b.Security == "plain" && !loopbackHost(b.Address) {
			add(p+".security", `"plain" sends users' passwords in cleartext to %s; use "starttls" or "tls" unless that network is trusted`, b.Address)
		}
		if b.TLS != nil && b.TLS.InsecureSkipVerify {
			add(p+".tls.insecure_skip_verify", "the backend's certificate is not verified: anyone on the path can impersonate it and collect users' passwords")
		}
	}
	if t := c.BackendDefaults.TLS; t != nil && t.InsecureSkipVerify {
		add("backend_defaults.tls.insecure_skip_verify", "backends' certificates are not verified: anyone on the path can impersonate them and collect users' passwords")
	}
	return w
}

func trusted(p netip.Prefix) bool {
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr()))
	for _, t := range trustedNets {
		if t.Bits() <= p.Bits() && t.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// unmapBits is how many prefix bits an IPv4-mapped IPv6 address loses
// when it is turned into IPv4.
func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}

func loopbackHost(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}
