package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Validate checks a configuration whose defaults have been applied. It
// reads the certificate, key and CA files it names, but does not resolve
// secrets. The error joins every problem found, one per line, each naming
// the field path and what is allowed.
func (c *Config) Validate() error {
	v := &validator{}
	c.validateLog(v)
	c.validateListeners(v)
	c.validateTLS(v)
	c.validateLimits(v)
	c.validateRouting(v)
	c.validateBackends(v)
	c.validatePools(v)
	c.validateFleet(v)
	c.validateAdmin(v)
	c.validateAuth(v)
	return errors.Join(v.errs...)
}

type validator struct {
	errs  []error
	bound []boundAddr // listening addresses seen so far
}

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &fieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (c *Config) validateLog(v *validator) {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("log.level", `must be "debug", "info", "warn" or "error", not %q`, c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		v.add("log.format", `must be "text" or "json", not %q`, c.Log.Format)
	}
}

type boundAddr struct {
	path, addr, host string
	port             int
}

func (c *Config) validateListeners(v *validator) {
	if len(c.Listeners) == 0 {
		v.add("listeners", `at least one listener is required (mode "imaps", "imap", "pop3s" or "pop3")`)
	}
	names := make(map[string]string)
	needCert := false
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		switch l.Mode {
		case "imaps", "imap", "pop3s", "pop3":
			needCert = true
		case "":
			v.add(p+".mode", `is required; must be "imaps", "imap", "pop3s" or "pop3"`)
		default:
			v.add(p+".mode", `must be "imaps", "imap", "pop3s" or "pop3", not %q`, l.Mode)
		}
		if l.Name != "" {
			if prev, ok := names[l.Name]; ok {
				v.add(p+".name", "%q is already the name of %s", l.Name, prev)
			} else {
				names[l.Name] = p
			}
		}
		if l.Address != "" {
			v.bind(p+".address", l.Address, "")
		} else if validMode(l.Mode) {
			v.add(p+".address", "is required (host:port)")
		}
		for j, s := range l.CleartextLoginNetworks {
			if _, err := parseNetwork(s); err != nil {
				v.add(fmt.Sprintf("%s.cleartext_login_networks[%d]", p, j), "%v", err)
			}
		}
		if pp := l.ProxyProtocol; pp != nil {
			if len(pp.TrustedNetworks) == 0 {
				v.add(p+".proxy_protocol.trusted_networks", "at least one network is required: the load balancers that send PROXY headers")
			}
			checkTrusted(v, p+".proxy_protocol.trusted_networks", pp.TrustedNetworks)
		}
	}

	if needCert && len(c.TLS.Certificates) == 0 && c.TLS.ACME == nil {
		v.add("tls.certificates", "at least one certificate, or tls.acme, is required: imaps listeners need one for TLS and imap listeners for STARTTLS")
	}
}

// bind records a listening address and reports a malformed one or one
// that conflicts with an address bound before. Hint follows the
// format error, for addresses with a special value.
func (v *validator) bind(path, addr, hint string) {
	host, port, err := splitHostPort(addr, true)
	if err != nil {
		if hint != "" {
			v.add(path, "%v; %s", err, hint)
		} else {
			v.add(path, "%v", err)
		}
		return
	}
	host = canonicalHost(host)
	for _, b := range v.bound {
		if b.port == port && port != 0 && (b.host == host || b.host == "" || host == "") {
			v.add(path, "%q conflicts with %s %q", addr, b.path, b.addr)
			return
		}
	}
	v.bound = append(v.bound, boundAddr{path, addr, host, port})
}

// parseNetwork parses a CIDR network and refuses host bits beyond the
// prefix, which usually mean a typo ("10.0.0.1/8").
func parseNetwork(s string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			return pfx, fmt.Errorf("%q is an address, not a network; write %q", s, netip.PrefixFrom(a, a.BitLen()).String())
		}
		return pfx, fmt.Errorf("%q is not a CIDR network such as 192.168.0.0/16 or fd00::/8", s)
	}
	if m := pfx.Masked(); m != pfx {
		return pfx, fmt.Errorf("%q has address bits set beyond the prefix length; did you mean %q?", s, m.String())
	}
	return pfx, nil
}

// splitHostPort checks that addr is host:port with a numeric port. The host
// may be empty (every address) only when listening.
func splitHostPort(addr string, listen bool) (host string, port int, err error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port (%v)", addr, strings.TrimPrefix(err.Error(), "address "+addr+": "))
	}
	port, err = strconv.Atoi(ps)
	lo := 1
	if listen {
		lo = 0
	}
	if err != nil || port < lo || port > 65535 {
		return "", 0, fmt.Errorf("%q: port must be a number from %d to 65535", addr, lo)
	}
	if host == "" && !listen {
		return "", 0, fmt.Errorf("%q: host is missing (want host:port)", addr)
	}
	return host, port, nil
}

// canonicalHost returns "" for wildcard addresses and a canonical form of
// the others, so that duplicate listeners are found however they are
// written. Go listens on both families for 0.0.0.0 and ::, so every
// wildcard conflicts with every address on the same port.
func canonicalHost(host string) string {
	if a, err := netip.ParseAddr(host); err == nil {
		if a.IsUnspecified() {
			return ""
		}
		return a.Unmap().String()
	}
	return strings.ToLower(host)
}

// checkKeyPair reads a certificate and its key and checks that they match.
func checkKeyPair(v *validator, path, certFile, keyFile string, required bool) {
	if certFile == "" && keyFile == "" && !required {
		return
	}
	if certFile == "" || keyFile == "" {
		if required {
			if certFile == "" {
				v.add(path+".cert_file", "is required")
			}
			if keyFile == "" {
				v.add(path+".key_file", "is required")
			}
		} else {
			v.add(path, "cert_file and key_file must be set together")
		}
		return
	}
	certPEM, cerr := os.ReadFile(certFile)
	if cerr != nil {
		v.add(path+".cert_file", "%v", cerr)
	}
	keyPEM, kerr := os.ReadFile(keyFile)
	if kerr != nil {
		v.add(path+".key_file", "%v", kerr)
	}
	if cerr != nil || kerr != nil {
		return
	}
	// X509KeyPair's errors describe the PEM blocks, never the key itself.
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		v.add(path, "cert_file %s and key_file %s: %v", certFile, keyFile, err)
	}
}

// Bounds for limits: generous, but a typo such as "idle_timeout: 30s"
// must not turn into a proxy that drops idling clients.
const (
	minLineLength     = 1024
	maxLineLength     = 65536
	minLiteralSize    = 64
	maxLiteralSize    = 65536
	minAuthLineLength = 1024
	maxAuthLineLength = 1 << 20
	minPreauthTimeout = 5 * time.Second
	maxPreauthTimeout = 10 * time.Minute
	minIdleTimeout    = 30 * time.Minute // RFC 9051 5.4: at least 30 minutes
	maxIdleTimeout    = 24 * time.Hour
)

func (c *Config) validateLimits(v *validator) {
	l := &c.Limits
	checkInt(v, "limits.max_line_length", l.MaxLineLength, minLineLength, maxLineLength)
	checkInt(v, "limits.max_literal_size", l.MaxLiteralSize, minLiteralSize, maxLiteralSize)
	checkInt(v, "limits.max_auth_line_length", l.MaxAuthLineLength, minAuthLineLength, maxAuthLineLength)
	checkDur(v, "limits.preauth_timeout", l.PreauthTimeout, minPreauthTimeout, maxPreauthTimeout)
	checkDur(v, "limits.handshake_timeout", l.HandshakeTimeout, time.Second, 2*time.Minute)
	checkInt(v, "limits.max_bad_commands", l.MaxBadCommands, 1, 100)
	checkInt(v, "limits.max_auth_failures", l.MaxAuthFailures, 1, 100)
	checkDur(v, "limits.auth_failure_delay", l.AuthFailureDelay, time.Millisecond, 30*time.Second)
	checkDur(v, "limits.idle_timeout", l.IdleTimeout, minIdleTimeout, maxIdleTimeout)
	checkDur(v, "limits.shutdown_timeout", l.ShutdownTimeout, time.Second, time.Hour)
	checkDur(v, "limits.upgrade_timeout", l.UpgradeTimeout, time.Second, 7*24*time.Hour)
	checkDur(v, "limits.upgrade_window", l.UpgradeWindow, time.Millisecond, 24*time.Hour)
	checkInt(v, "limits.max_connections", l.MaxConnections, 0, 10_000_000)
	checkInt(v, "limits.max_preauth_connections_per_ip", l.MaxPreauthConnectionsPerIP, 1, 1_000_000)
	checkInt(v, "limits.ipv6_prefix", l.IPv6Prefix, 32, 128)
	checkInt(v, "limits.max_sessions_per_user", l.MaxSessionsPerUser, 1, 1_000_000)
	checkInt(v, "limits.max_sessions_per_user_ip", l.MaxSessionsPerUserIP, 1, 1_000_000)
	checkInt(v, "limits.max_logins_in_progress", l.MaxLoginsInProgress, 1, 1_000_000)
	checkInt(v, "limits.max_logins_in_progress_per_backend", l.MaxLoginsInProgressPerBackend, 1, 1_000_000)
	checkTrusted(v, "limits.trusted_networks", l.TrustedNetworks)
	l.BruteForce.validate(v, "limits.brute_force")
}

func (b *BruteForce) validate(v *validator, p string) {
	for _, t := range []struct {
		name string
		l    FailureLimit
	}{{"ip", b.IP}, {"user_ip", b.UserIP}, {"user", b.User}} {
		tp := p + "." + t.name
		checkInt(v, tp+".block_after", t.l.BlockAfter, 1, 1_000_000)
		checkInt(v, tp+".delay_after", t.l.DelayAfter, 1, max(t.l.BlockAfter, 1))
		checkDur(v, tp+".window", t.l.Window, time.Second, 720*time.Hour)
		checkDur(v, tp+".block_for", t.l.BlockFor, time.Second, 720*time.Hour)
	}
	checkDur(v, p+".delay", b.Delay, time.Millisecond, time.Minute)
	checkDur(v, p+".max_delay", b.MaxDelay, b.Delay, 5*time.Minute)
	checkDur(v, p+".known_address_ttl", b.KnownAddressTTL, time.Hour, 8760*time.Hour)
	checkInt(v, p+".known_addresses", b.KnownAddresses, 1, 1000)
	checkDur(v, p+".repeated_password_window", b.RepeatedPasswordWindow, time.Minute, 24*time.Hour)
	switch b.OnRedisError {
	case "open", "closed":
	default:
		v.add(p+".on_redis_error", `must be "open" or "closed", not %q`, b.OnRedisError)
	}
}

// checkTrusted checks a list of networks that are believed about client
// addresses: anything, but not everything.
func checkTrusted(v *validator, path string, nets []string) {
	for i, s := range nets {
		p := fmt.Sprintf("%s[%d]", path, i)
		pfx, err := parseNetwork(s)
		switch {
		case err != nil:
			v.add(p, "%v", err)
		case pfx.Bits() == 0:
			v.add(p, "%q would let every client choose the address Portico believes; list your proxies' networks", s)
		}
	}
}

func checkInt(v *validator, path string, x, lo, hi int) {
	if x < lo || x > hi {
		v.add(path, "must be between %d and %d, not %d", lo, hi, x)
	}
}

func checkDur(v *validator, path string, d, lo, hi time.Duration) {
	if d < lo || d > hi {
		v.add(path, "must be between %s and %s, not %s", FormatDuration(lo), FormatDuration(hi), FormatDuration(d))
	}
}

// FormatDuration writes 10m rather than 10m0s, as an operator writes it
// in the config.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// foldUser is the form in which static route users are compared; the
// routing package does the real normalisation at run time.
func foldUser(user, defaultDomain string) string {
	u := strings.ToLower(strings.TrimSpace(user))
	if !strings.Contains(u, "@") && defaultDomain != "" {
		u += "@" + strings.ToLower(defaultDomain)
	}
	return u
}

func (c *Config) validateRouting(v *validator) {
	r := &c.Routing
	if d := r.DefaultDomain; d != "" && (strings.ContainsAny(d, "@ \t\r\n") || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".")) {
		v.add("routing.default_domain", `must be a domain such as example.com, without "@", not %q`, d)
	}
	checkDur(v, "routing.lookup_timeout", r.LookupTimeout, time.Millisecond, time.Minute)
	if len(r.Static) == 0 && r.Redis == nil && !c.Auth.HTTPNamesBackends() {
		v.add("routing", "needs static routes (routing.static), redis (routing.redis) or both, unless auth.http names the backends")
	}
	backends := make(map[string]bool, len(c.Backends))
	for _, b := range c.Backends {
		backends[b.Name] = true
	}
	users := make(map[string]string)
	for i, s := range r.Static {
		p := fmt.Sprintf("routing.static[%d]", i)
		if strings.TrimSpace(s.User) == "" {
			v.add(p+".user", "is required")
		} else {
			u := foldUser(s.User, r.DefaultDomain)
			if prev, ok := users[u]; ok {
				v.add(p+".user", "%q is already routed by %s (user names are compared case-insensitively)", s.User, prev)
			} else {
				users[u] = p
			}
		}
		switch {
		case s.Backend == "":
			v.add(p+".backend", "is required: the name of an entry in backends")
		case !backends[s.Backend]:
			v.add(p+".backend", "%q is not defined in backends%s", s.Backend, knownNames(c.Backends))
		}
	}
	if rd := r.Redis; rd != nil {
		p := "routing.redis"
		if len(rd.Addrs) == 0 {
			v.add(p+".addrs", "at least one host:port is required")
		}
		for i, a := range rd.Addrs {
			if _, _, err := splitHostPort(a, false); err != nil {
				v.add(fmt.Sprintf("%s.addrs[%d]", p, i), "%v", err)
			}
		}
		if rd.DB < 0 {
			v.add(p+".db", "must not be negative")
		} else if rd.DB != 0 && len(rd.Addrs) > 1 && rd.MasterName == "" {
			v.add(p+".db", "must be 0: several addrs without master_name mean a Redis Cluster, which has only db 0")
		}
		checkDur(v, p+".dial_timeout", rd.DialTimeout, time.Millisecond, time.Minute)
		checkDur(v, p+".read_timeout", rd.ReadTimeout, time.Millisecond, time.Minute)
		checkDur(v, p+".write_timeout", rd.WriteTimeout, time.Millisecond, time.Minute)
		if rd.PoolSize < 0 || rd.PoolSize > 10000 {
			v.add(p+".pool_size", "must be between 0 (go-redis' default) and 10000, not %d", rd.PoolSize)
		}
		checkClientTLS(v, p+".tls", rd.TLS)
	}
}

func knownNames(bs []Backend) string {
	if len(bs) == 0 {
		return " (there are none)"
	}
	names := make([]string, 0, len(bs))
	for _, b := range bs {
		names = append(names, b.Name)
	}
	sort.Strings(names)
	return " (defined: " + strings.Join(names, ", ") + ")"
}

func (c *Config) validateBackends(v *validator) {
	seen := make(map[string]string)
	for i, b := range c.Backends {
		p := fmt.Sprintf("backends[%d]", i)
		switch {
		case b.Name == "":
			v.add(p+".name", "is required")
		case !validName(b.Name):
			v.add(p+".name", "%q must contain only letters, digits, '.', '_' and '-'", b.Name)
		default:
			k := strings.ToLower(b.Name)
			if prev, ok := seen[k]; ok {
				v.add(p+".name", "%q is already the name of %s (names are compared case-insensitively)", b.Name, prev)
			} else {
				seen[k] = p
			}
		}
		if b.Address == "" {
			v.add(p+".address", "is required (host:port)")
		} else if _, _, err := splitHostPort(b.Address, false); err != nil {
			v.add(p+".address", "%v", err)
		}
		c.validateBackendPool(v, p, &b)
		checkBackendOptions(v, p, &b.BackendOptions)
		checkInt(v, p+".spare_connections", b.SpareConnections, 0, 64)
		checkDur(v, p+".spare_max_idle", b.SpareMaxIdle, time.Second, 170*time.Second)
		if b.Security == "plain" && b.TLS != nil {
			v.add(p+".tls", `is only used with security "starttls" or "tls", but security is "plain"`)
		}
	}
	// backend_defaults.tls is accepted next to security "plain": a route
	// record's own security field may choose starttls or tls for its
	// address, and then needs these settings (a CA, a client certificate).
	// Warnings says when nothing can use them.
	checkBackendOptions(v, "backend_defaults", &c.BackendDefaults)
}

// validMode reports a listener mode Portico knows.
func validMode(m string) bool {
	return m == "imaps" || m == "imap" || m == "pop3s" || m == "pop3"
}

// validName keeps backend names distinguishable from the host:port
// addresses that Redis route records may hold instead.
func validName(s string) bool {
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return false
		}
	}
	return s != ""
}

func checkBackendOptions(v *validator, p string, o *BackendOptions) {
	switch o.Security {
	case "plain", "starttls", "tls":
	default:
		v.add(p+".security", `must be "plain", "starttls" or "tls", not %q`, o.Security)
	}
	if o.ProxyProtocol && o.ForwardID {
		v.add(p+".proxy_protocol", "and forward_id are exclusive: a backend learns the client's address from one mechanism, the PROXY header or ID; choose one")
	}
	if o.POP3Port < 0 || o.POP3Port > 65535 {
		v.add(p+".pop3_port", "must be a port number (1-65535), or 0 for a backend without POP3")
	}
	checkDur(v, p+".connect_timeout", o.ConnectTimeout, time.Millisecond, 5*time.Minute)
	checkDur(v, p+".login_timeout", o.LoginTimeout, time.Millisecond, 5*time.Minute)
	checkClientTLS(v, p+".tls", o.TLS)
}

func checkClientTLS(v *validator, p string, t *ClientTLS) {
	if t == nil {
		return
	}
	checkCAFile(v, p+".ca_file", t.CAFile)
	checkPins(v, p+".pin_sha256", t.PinSHA256)
	checkKeyPair(v, p, t.CertFile, t.KeyFile, false)
}
