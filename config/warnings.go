package config

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// privateNets are the networks where a password sent in clear is read
// only by those on the local network; loopbackNets keep it on this host.
var (
	loopbackNets = []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("::1/128"),
	}
	privateNets = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("fc00::/7"),
	}
)

// minKeyLength is the length below which a configured encryption key is
// probably a word rather than a random string.
const minKeyLength = 16

// Warnings lists settings that are valid but risky, each starting with
// the field path. Call it on a configuration that passed Validate.
func (c *Config) Warnings() []string {
	var w []string
	add := func(path, format string, args ...any) {
		w = append(w, path+": "+fmt.Sprintf(format, args...))
	}
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d].cleartext_login_networks", i)
		if (l.Mode == "imaps" || l.Mode == "pop3s") && len(l.CleartextLoginNetworks) > 0 {
			article := "an"
			if l.Mode == "pop3s" {
				article = "a"
			}
			add(p, "has no effect on %s %s listener, where every login is over TLS", article, l.Mode)
			continue
		}
		for j, s := range l.CleartextLoginNetworks {
			pfx, err := parseNetwork(s)
			if err != nil {
				continue // Validate reports it
			}
			jp := fmt.Sprintf("%s[%d]", p, j)
			switch {
			case within(pfx, loopbackNets):
				add(jp, "%q allows passwords in clear (login without TLS) from this host; lower risk, as they stay on the host, but a local tunnel or forwarder (ssh -L, stunnel, a sidecar) makes remote clients look local", s)
			case within(pfx, privateNets):
				add(jp, "%q allows passwords in clear (login without TLS) from a private network: anyone on the network between those clients and Portico can read them", s)
			default:
				add(jp, "%q allows passwords in clear (login without TLS) from a network that is not loopback or private: anyone on the path can read them", s)
			}
		}
	}
	c.pop3Warnings(add)
	c.tlsWarnings(add)
	c.authWarnings(add)
	if r := c.Routing.Redis; r != nil && r.TLS != nil && r.TLS.InsecureSkipVerify {
		add("routing.redis.tls.insecure_skip_verify", "the Redis server's certificate is not verified: anyone on the path can impersonate it and choose users' backends")
	}
	for i, b := range c.Backends {
		p := fmt.Sprintf("backends[%d]", i)
		if b.Security == "plain" && !loopbackHost(b.Address) {
			add(p+".security", `"plain" sends users' passwords in clear to %s; use "starttls" or "tls" unless that network is trusted`, b.Address)
		}
		if b.TLS != nil && b.TLS.InsecureSkipVerify {
			add(p+".tls.insecure_skip_verify", "the backend's certificate is not verified: anyone on the path can impersonate it and collect users' passwords")
		}
	}
	if r := c.Routing.Redis; r != nil && r.TLS == nil && r.Password.Value != "" {
		for _, a := range r.Addrs {
			if !loopbackHost(a) {
				add("routing.redis.tls", "is not set: the Redis password is sent in clear to %s", a)
				break
			}
		}
	}
	for i, b := range c.Backends {
		if b.SpareConnections > 0 && b.ProxyProtocol {
			add(fmt.Sprintf("backends[%d].spare_connections", i), "has no effect with proxy_protocol: the PROXY header names the client, who is not known before the login")
		}
	}
	if c.Routing.Redis != nil && c.BackendDefaults.Security == "plain" {
		add("backend_defaults.security", `"plain": users' passwords are sent in clear to every host:port backend that a Redis route record names; use "starttls" or "tls", or make route records name configured backends only`)
	}
	if c.Routing.Redis == nil && c.BackendDefaults.TLS != nil {
		add("backend_defaults.tls", "has no effect without routing.redis: backend_defaults apply only to the host:port backends that Redis route records name")
	}
	if t := c.BackendDefaults.TLS; t != nil && t.InsecureSkipVerify {
		add("backend_defaults.tls.insecure_skip_verify", "backends' certificates are not verified: anyone on the path can impersonate them and collect users' passwords")
	}
	c.poolWarnings(add)
	c.bruteForceWarnings(add)
	return w
}

func (c *Config) bruteForceWarnings(add func(path, format string, args ...any)) {
	b := &c.Limits.BruteForce
	switch {
	case b.Disabled:
		add("limits.brute_force.disabled", "password guessing is then limited per connection only (limits.max_auth_failures): an attacker opens more connections")
	case b.PasswordHashKey.Value != "" && len(b.PasswordHashKey.Value) < minKeyLength:
		add("limits.brute_force.password_hash_key", "is shorter than %d characters; use a long random string (openssl rand -base64 32)", minKeyLength)
	}
}

// within reports whether every address of p is in one of nets.
func within(p netip.Prefix, nets []netip.Prefix) bool {
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr()))
	for _, t := range nets {
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

func (c *Config) tlsWarnings(add func(path, format string, args ...any)) {
	t := &c.TLS
	soon := t.ExpiryWarning
	if soon <= 0 {
		soon = defaultExpiryWarning
	}
	now := time.Now()
	for i, cert := range t.Certificates {
		kp, err := tls.LoadX509KeyPair(cert.CertFile, cert.KeyFile)
		if err != nil || kp.Leaf == nil {
			continue // Validate reports it
		}
		p := fmt.Sprintf("tls.certificates[%d]", i)
		switch end := kp.Leaf.NotAfter; {
		case now.After(end):
			add(p, "certificate %s expired on %s", cert.CertFile, end.UTC().Format(time.DateOnly))
		case end.Sub(now) < soon:
			add(p, "certificate %s expires on %s", cert.CertFile, end.UTC().Format(time.DateOnly))
		}
	}
	if len(t.CipherSuites) > 0 && t.MinVersion == "1.3" {
		add("tls.cipher_suites", `has no effect with min_version "1.3": TLS 1.3 suites are not configurable`)
	}
	st := &t.SessionTickets
	switch {
	case st.Disabled:
		add("tls.session_tickets.disabled", "every reconnecting client pays for a full handshake (slower reconnects, more CPU); mobile clients reconnect often")
		if st.Redis {
			add("tls.session_tickets.redis", "has no effect while session tickets are disabled")
		}
	case st.Redis && st.Key.Value != "" && len(st.Key.Value) < minKeyLength:
		add("tls.session_tickets.key", "is shorter than %d characters; use a long random string (openssl rand -base64 32)", minKeyLength)
	}
	a := t.ACME
	if a == nil {
		return
	}
	if strings.TrimRight(a.DirectoryURL, "/") == LetsEncryptStaging {
		add("tls.acme.directory_url", "is Let's Encrypt staging: its certificates are not trusted by mail clients; switch to production (%s) once issuance works, and empty the cache, which would otherwise keep serving the staging certificates", LetsEncryptProduction)
	}
	switch {
	case a.Cache == "dir" && !secretSet(a.CacheKey):
		add("tls.acme.cache_key", "is not set: the private keys in %s are stored unencrypted; keep the directory owned by Portico's user with mode 0700 (autocert creates it so) and its files 0600, or set cache_key", a.CacheDir)
	case a.CacheKey.Value != "" && len(a.CacheKey.Value) < minKeyLength:
		add("tls.acme.cache_key", "is shorter than %d characters; use a long random string (openssl rand -base64 32)", minKeyLength)
	}
	if a.Cache == "redis" && a.HTTPChallengeAddress() == "" && a.TLSALPNChallengeAddress() == "" {
		add("tls.acme", `answers no challenge (http_address "off", no tls_alpn_address): another proxy sharing the Redis cache must answer them`)
	}
}

// pop3Warnings says when POP3 listeners have nowhere to send their users:
// without a pop3_port, every POP3 login is answered -ERR [SYS/TEMP].
func (c *Config) pop3Warnings(add func(path, format string, args ...any)) {
	pop3 := -1
	for i, l := range c.Listeners {
		if l.Mode == "pop3s" || l.Mode == "pop3" {
			pop3 = i
			break
		}
	}
	if pop3 < 0 {
		return
	}
	if c.BackendDefaults.POP3Port > 0 {
		return
	}
	for _, b := range c.Backends {
		if b.POP3Port > 0 {
			return
		}
	}
	add(fmt.Sprintf("listeners[%d].mode", pop3), "is a POP3 listener, but no backend (nor backend_defaults) sets pop3_port: every POP3 login will fail as unavailable")
}
