package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"
)

// ACME directories of Let's Encrypt. Staging issues certificates that no
// client trusts, under much higher rate limits: use it to try a set-up.
const (
	LetsEncryptProduction = "https://acme-v02.api.letsencrypt.org/directory"
	LetsEncryptStaging    = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// Off disables an optional ACME challenge listener.
const Off = "off"

// curveNames maps the accepted curve_preferences names, lower-cased, to
// their crypto/tls IDs.
var curveNames = map[string]tls.CurveID{
	"x25519mlkem768": tls.X25519MLKEM768,
	"x25519":         tls.X25519,
	"p256":           tls.CurveP256,
	"curvep256":      tls.CurveP256,
	"p384":           tls.CurveP384,
	"curvep384":      tls.CurveP384,
	"p521":           tls.CurveP521,
	"curvep521":      tls.CurveP521,
}

const curveList = "X25519MLKEM768, X25519, P256, P384 or P521"

// CipherSuiteIDs returns cipher_suites as crypto/tls IDs, or nil (Go's
// defaults) when none are configured. Names Validate refuses are left out.
func (t TLS) CipherSuiteIDs() []uint16 {
	var ids []uint16
	for _, name := range t.CipherSuites {
		if cs := secureSuite(name); cs != nil {
			ids = append(ids, cs.ID)
		}
	}
	return ids
}

// CurveIDs returns curve_preferences as crypto/tls IDs, or nil (Go's
// defaults) when none are configured. Names Validate refuses are left out.
func (t TLS) CurveIDs() []tls.CurveID {
	var ids []tls.CurveID
	for _, name := range t.CurvePreferences {
		if id, ok := curveNames[strings.ToLower(name)]; ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// HTTPChallengeAddress returns the address of the HTTP-01 listener, or ""
// when http_address is "off".
func (a ACME) HTTPChallengeAddress() string {
	if a.HTTPAddress == Off {
		return ""
	}
	return a.HTTPAddress
}

// TLSALPNChallengeAddress returns the address of the TLS-ALPN-01
// listener, or "" when there is none.
func (a ACME) TLSALPNChallengeAddress() string {
	if a.TLSALPNAddress == Off {
		return ""
	}
	return a.TLSALPNAddress
}

func secureSuite(name string) *tls.CipherSuite {
	for _, cs := range tls.CipherSuites() {
		if cs.Name == name {
			return cs
		}
	}
	return nil
}

func insecureSuite(name string) bool {
	for _, cs := range tls.InsecureCipherSuites() {
		if cs.Name == name {
			return true
		}
	}
	return false
}

func supportsTLS12(cs *tls.CipherSuite) bool {
	for _, v := range cs.SupportedVersions {
		if v == tls.VersionTLS12 {
			return true
		}
	}
	return false
}

// Bounds of the TLS durations.
const (
	minReloadInterval = time.Second
	maxReloadInterval = 24 * time.Hour
	minExpiryWarning  = time.Hour
	maxExpiryWarning  = 90 * 24 * time.Hour
	minRotation       = time.Hour
	maxRotation       = 7 * 24 * time.Hour
	// autocert caps RenewBefore at 30 days; a larger value would
	// silently mean 30 days.
	maxRenewBefore = 30 * 24 * time.Hour
)

func (c *Config) validateTLS(v *validator) {
	t := &c.TLS
	for i, cert := range t.Certificates {
		checkKeyPair(v, fmt.Sprintf("tls.certificates[%d]", i), cert.CertFile, cert.KeyFile, true)
	}
	switch t.MinVersion {
	case "1.2", "1.3":
	default:
		v.add("tls.min_version", `must be "1.2" or "1.3", not %q`, t.MinVersion)
	}
	seen := make(map[string]int)
	for i, name := range t.CipherSuites {
		p := fmt.Sprintf("tls.cipher_suites[%d]", i)
		cs := secureSuite(name)
		switch {
		case insecureSuite(name):
			v.add(p, "%s is insecure (crypto/tls lists it in InsecureCipherSuites); use a TLS_ECDHE_*_GCM_* or *_CHACHA20_POLY1305_* suite", name)
			continue
		case cs == nil:
			v.add(p, "%q is not a TLS 1.2 cipher suite known to Go; write the IANA name, e.g. TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", name)
			continue
		case !supportsTLS12(cs):
			v.add(p, "%s is a TLS 1.3 suite; TLS 1.3 suites are not configurable (Go always offers all three)", name)
			continue
		}
		if j, ok := seen[name]; ok {
			v.add(p, "%s is already listed as tls.cipher_suites[%d]", name, j)
		} else {
			seen[name] = i
		}
	}
	curves := make(map[tls.CurveID]int)
	classic := false
	for i, name := range t.CurvePreferences {
		p := fmt.Sprintf("tls.curve_preferences[%d]", i)
		id, ok := curveNames[strings.ToLower(name)]
		if !ok {
			v.add(p, "must be %s, not %q", curveList, name)
			continue
		}
		if j, dup := curves[id]; dup {
			v.add(p, "%q is already listed as tls.curve_preferences[%d]", name, j)
			continue
		}
		curves[id] = i
		if id != tls.X25519MLKEM768 {
			classic = true
		}
	}
	if len(curves) > 0 && !classic {
		v.add("tls.curve_preferences", "must include X25519, P256, P384 or P521: with X25519MLKEM768 alone, clients without post-quantum key exchange (and every TLS 1.2 client) cannot connect")
	}
	checkDur(v, "tls.reload_interval", t.ReloadInterval, minReloadInterval, maxReloadInterval)
	checkDur(v, "tls.expiry_warning", t.ExpiryWarning, minExpiryWarning, maxExpiryWarning)

	st := &t.SessionTickets
	checkDur(v, "tls.session_tickets.rotation", st.Rotation, minRotation, maxRotation)
	if st.Redis && !st.Disabled { // Warnings mentions redis without tickets
		if c.Routing.Redis == nil {
			v.add("tls.session_tickets.redis", "needs routing.redis, which is not configured")
		}
		if !secretSet(st.Key) {
			v.add("tls.session_tickets.key", "is required with redis: true; it encrypts the shared ticket keys in Redis")
		}
	} else if !st.Redis && (secretSet(st.Key) || st.Key.Source != "") {
		v.add("tls.session_tickets.key", "is only used with redis: true")
	}

	if t.ACME != nil {
		c.validateACME(v, t.ACME)
	}
}

// secretSet reports whether s holds, or will hold once resolved, a
// non-empty value.
func secretSet(s Secret) bool {
	return s.Value != "" || (s.Source != "" && s.Source != "inline")
}

func (c *Config) validateACME(v *validator, a *ACME) {
	const p = "tls.acme"
	if len(a.Hostnames) == 0 {
		v.add(p+".hostnames", "at least one name is required, e.g. [mail.example.com]")
	}
	names := make(map[string]int)
	for i, h := range a.Hostnames {
		hp := fmt.Sprintf("%s.hostnames[%d]", p, i)
		if msg := checkHostname(h); msg != "" {
			v.add(hp, "%q %s", h, msg)
			continue
		}
		k := strings.ToLower(h)
		if j, ok := names[k]; ok {
			v.add(hp, "%q is already listed as %s.hostnames[%d] (names are compared case-insensitively)", h, p, j)
		} else {
			names[k] = i
		}
	}
	if a.Email != "" {
		if m, err := mail.ParseAddress(a.Email); err != nil || m.Name != "" || m.Address != a.Email {
			v.add(p+".email", "%q is not an e-mail address such as postmaster@example.com", a.Email)
		}
	}
	if u, err := url.Parse(a.DirectoryURL); err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		v.add(p+".directory_url", "must be an https:// URL such as %s, not %q", LetsEncryptProduction, a.DirectoryURL)
	}
	checkCAFile(v, p+".ca_file", a.CAFile)
	httpAddr, alpnAddr := a.HTTPChallengeAddress(), a.TLSALPNChallengeAddress()
	if httpAddr != "" {
		v.bind(p+".http_address", httpAddr, `or "off" to disable HTTP-01`)
	}
	if alpnAddr != "" {
		v.bind(p+".tls_alpn_address", alpnAddr, `or "" for none`)
	}
	if httpAddr == "" && alpnAddr == "" && a.Cache != "redis" {
		v.add(p, `no challenge can be answered: http_address is "off" and tls_alpn_address is not set; the CA reaches port 80 (http_address) or 443 (tls_alpn_address)`)
	}
	switch a.Cache {
	case "dir":
		if a.CacheDir == "" {
			v.add(p+".cache_dir", `is required with cache "dir"`)
		} else if fi, err := os.Stat(a.CacheDir); err == nil && !fi.IsDir() {
			v.add(p+".cache_dir", "%s is not a directory", a.CacheDir)
		}
	case "redis":
		if c.Routing.Redis == nil {
			v.add(p+".cache", `"redis" needs routing.redis, which is not configured`)
		}
		if !secretSet(a.CacheKey) {
			v.add(p+".cache_key", `is required with cache "redis": the cache holds private keys, encrypted under this key`)
		}
		if a.CacheDir != "" {
			v.add(p+".cache_dir", `is only used with cache "dir", but cache is "redis"`)
		}
	default:
		v.add(p+".cache", `must be "dir" or "redis", not %q`, a.Cache)
	}
	if a.CacheKey.Source == "inline" && a.CacheKey.Value == "" {
		v.add(p+".cache_key", "must not be empty")
	}
	if a.RenewBefore < 0 || a.RenewBefore > maxRenewBefore {
		v.add(p+".renew_before", "must be between 0 (autocert's default: a third of the lifetime, at most 30 days) and %s, not %s", FormatDuration(maxRenewBefore), FormatDuration(a.RenewBefore))
	}
}

// checkHostname returns what is wrong with an ACME host name, or "".
func checkHostname(h string) string {
	switch {
	case strings.HasPrefix(h, "*."):
		return "is a wildcard: HTTP-01 and TLS-ALPN-01 cannot obtain wildcard certificates (only DNS-01 can, which autocert lacks); list each name"
	case strings.HasSuffix(h, "."):
		return "must be written without the final dot"
	}
	if _, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return "is an IP address; ACME names here must be DNS names"
	}
	if len(h) > 253 {
		return "is longer than 253 characters"
	}
	for _, r := range h {
		if r > 0x7e {
			return "must be ASCII: write internationalised names in punycode (xn--...)"
		}
	}
	labels := strings.Split(h, ".")
	if len(labels) < 2 {
		return "must be a fully qualified name such as mail.example.com"
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "is not a valid DNS name: each dot-separated label needs 1 to 63 characters and must not start or end with '-'"
		}
		for i := 0; i < len(l); i++ {
			b := l[i]
			if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-') {
				return "is not a valid DNS name: only letters, digits, '-' and '.' are allowed"
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "is not a valid DNS name: the last label must not be all digits"
	}
	return ""
}

func checkCAFile(v *validator, path, file string) {
	if file == "" {
		return
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		v.add(path, "%v", err)
	} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		v.add(path, "%s contains no PEM certificate", file)
	}
}

// checkPins checks that every pin is the standard base64 of a SHA-256 hash.
func checkPins(v *validator, path string, pins []string) {
	seen := make(map[string]int)
	for i, pin := range pins {
		p := fmt.Sprintf("%s[%d]", path, i)
		b, err := base64.StdEncoding.DecodeString(pin)
		if err != nil || len(b) != 32 {
			hint := ""
			if _, herr := hex.DecodeString(pin); herr == nil && len(pin) == 64 {
				hint = " (this looks like hex; pins are base64)"
			}
			v.add(p, "%q is not the base64 of a SHA-256 hash (44 characters ending in '=')%s; compute it with: openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64", pin, hint)
			continue
		}
		if j, ok := seen[pin]; ok {
			v.add(p, "%q is already listed as %s[%d]", pin, path, j)
		} else {
			seen[pin] = i
		}
	}
}
