package tls

import (
	stdtls "crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ALPNProtocol is the only application protocol Portico's IMAP listeners
// accept (RFC 9051 registers "imap" for implicit TLS and STARTTLS alike);
// the POP3 listeners accept "pop3" instead (the proxy swaps it in).
const ALPNProtocol = "imap"

// ParseMinVersion parses the config spelling of a minimum TLS version:
// "1.2" (also the default for "") or "1.3".
func ParseMinVersion(s string) (uint16, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	if v == "" {
		return stdtls.VersionTLS12, nil
	}
	switch strings.TrimPrefix(v, "tls") {
	case "1.2":
		return stdtls.VersionTLS12, nil
	case "1.3":
		return stdtls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("tls: min_version %q: want \"1.2\" or \"1.3\"", s)
}

// ServerOptions is the TLS policy of Portico's client-facing listeners.
// The zero value of every field but the certificate source is the safe
// default.
type ServerOptions struct {
	// Store supplies certificates by SNI.
	Store *Store
	// GetCertificate, when set, is used instead of Store.GetCertificate,
	// e.g. a function that asks ACME first and falls back to the store.
	GetCertificate func(*stdtls.ClientHelloInfo) (*stdtls.Certificate, error)
	// MinVersion 0 means TLS 1.2; anything lower is raised to 1.2, since
	// RFC 8996 deprecates TLS 1.0 and 1.1.
	MinVersion uint16
	// CipherSuites restricts the TLS 1.2 suites (see ParseCipherSuites);
	// nil means Go's defaults: AEAD with forward secrecy only.
	CipherSuites []uint16
	// Curves orders the key exchanges (see ParseCurves); nil means Go's
	// default, hybrid post-quantum first.
	Curves []stdtls.CurveID
	// SessionTicketsDisabled turns resumption by tickets off (TLS 1.2 and
	// 1.3 alike).
	SessionTicketsDisabled bool
}

// NewServerConfig is the configuration of Portico's client-facing
// listeners.
//
// Choices, and why:
//   - NextProtos ["imap"]: crypto/tls then refuses a client that offers
//     ALPN protocols but not "imap" — that is a browser redirected to us by
//     an attacker (ALPACA, CVE-2021-3618). A client that offers no ALPN at
//     all, as most IMAP clients do, is accepted.
//   - Session tickets stay on unless disabled (crypto/tls rotates its own
//     keys every 24h); resumption saves the most on RSA certificates.
//     TicketKeys shares rotating keys across a fleet.
//   - Curves nil keeps Go's default, which puts the hybrid post-quantum
//     X25519MLKEM768 first. That protects recorded sessions (passwords go
//     through them) against future decryption, for roughly +35% handshake
//     CPU measured against X25519 alone; a server that is CPU-bound on
//     handshakes may set X25519, P256.
//   - CipherSuites nil: TLS 1.3 suites are not configurable, and Go's TLS
//     1.2 default list has only AEAD, forward-secret suites.
func NewServerConfig(o ServerOptions) *stdtls.Config {
	minVersion := o.MinVersion
	if minVersion < stdtls.VersionTLS12 {
		minVersion = stdtls.VersionTLS12
	}
	get := o.GetCertificate
	if get == nil && o.Store != nil {
		get = o.Store.GetCertificate
	}
	return &stdtls.Config{
		MinVersion:             minVersion,
		NextProtos:             []string{ALPNProtocol},
		GetCertificate:         get,
		CipherSuites:           slices.Clone(o.CipherSuites),
		CurvePreferences:       slices.Clone(o.Curves),
		SessionTicketsDisabled: o.SessionTicketsDisabled,
	}
}

// ServerConfig is NewServerConfig with the default policy: certificates
// from s, at least minVersion (0 means TLS 1.2).
func ServerConfig(s *Store, minVersion uint16) *stdtls.Config {
	return NewServerConfig(ServerOptions{Store: s, MinVersion: minVersion})
}

// ParseCipherSuites maps Go's (IANA) suite names, case-insensitively, to
// IDs, e.g. TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256. It accepts only the
// TLS 1.2 suites crypto/tls considers secure (tls.CipherSuites()): RC4,
// 3DES, CBC-SHA256 and static-RSA key exchange are refused, and TLS 1.3
// suites are refused because they cannot be configured. Duplicates are
// dropped; an empty list gives nil (Go's defaults).
func ParseCipherSuites(names []string) ([]uint16, error) {
	var ids []uint16
	for _, n := range names {
		n = strings.TrimSpace(n)
		id, err := cipherSuite(n)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

func cipherSuite(name string) (uint16, error) {
	for _, cs := range stdtls.CipherSuites() {
		if !strings.EqualFold(cs.Name, name) {
			continue
		}
		if !slices.Contains(cs.SupportedVersions, stdtls.VersionTLS12) {
			return 0, fmt.Errorf("tls: cipher suite %s is a TLS 1.3 suite; TLS 1.3 suites are not configurable", cs.Name)
		}
		return cs.ID, nil
	}
	for _, cs := range stdtls.InsecureCipherSuites() {
		if strings.EqualFold(cs.Name, name) {
			return 0, fmt.Errorf("tls: cipher suite %s is insecure and not allowed", cs.Name)
		}
	}
	return 0, fmt.Errorf("tls: unknown cipher suite %q (want a name such as TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)", name)
}

// curveNames are the spellings ParseCurves accepts, lower case.
var curveNames = map[string]stdtls.CurveID{
	"x25519mlkem768":     stdtls.X25519MLKEM768,
	"secp256r1mlkem768":  stdtls.SecP256r1MLKEM768,
	"secp384r1mlkem1024": stdtls.SecP384r1MLKEM1024,
	"x25519":             stdtls.X25519,
	"p256":               stdtls.CurveP256,
	"p-256":              stdtls.CurveP256,
	"curvep256":          stdtls.CurveP256,
	"secp256r1":          stdtls.CurveP256,
	"p384":               stdtls.CurveP384,
	"p-384":              stdtls.CurveP384,
	"curvep384":          stdtls.CurveP384,
	"secp384r1":          stdtls.CurveP384,
	"p521":               stdtls.CurveP521,
	"p-521":              stdtls.CurveP521,
	"curvep521":          stdtls.CurveP521,
	"secp521r1":          stdtls.CurveP521,
}

// ParseCurves maps key exchange names, case-insensitively, to curve IDs in
// the order given: X25519MLKEM768, SecP256r1MLKEM768, SecP384r1MLKEM1024,
// X25519, P256 (also CurveP256, P-256, secp256r1), P384 and P521 likewise.
// Duplicates are dropped; an empty list gives nil (Go's default order).
func ParseCurves(names []string) ([]stdtls.CurveID, error) {
	var ids []stdtls.CurveID
	for _, n := range names {
		id, ok := curveNames[strings.ToLower(strings.TrimSpace(n))]
		if !ok {
			return nil, fmt.Errorf("tls: unknown curve %q (want X25519MLKEM768, X25519, P256, P384 or P521)", n)
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// ClientOptions configures TLS to a backend IMAP server or to Redis. It
// mirrors config.ClientTLS.
type ClientOptions struct {
	CAFile             string // PEM bundle; "" means the system roots
	ServerName         string // name to verify; "" lets crypto/tls.Dial use the host dialled
	InsecureSkipVerify bool   // tests and emergencies only
	CertFile, KeyFile  string // client certificate for mutual TLS, optional (both or neither)
	// PinSHA256 lists base64 SHA-256 hashes of SubjectPublicKeyInfo (see
	// PinSHA256); when set, the server's leaf key must match one of them.
	// The pin is checked on top of normal verification, or alone with
	// InsecureSkipVerify (a self-signed backend known by its key).
	PinSHA256 []string
}

// ClientConfig builds the configuration for an outgoing connection.
// ServerName must be set when the caller wraps a connection itself with
// crypto/tls.Client (as for STARTTLS). NextProtos is left empty: callers
// that want ALPN set it on the result.
func ClientConfig(o ClientOptions) (*stdtls.Config, error) {
	cfg := &stdtls.Config{
		MinVersion:         stdtls.VersionTLS12,
		ServerName:         o.ServerName,
		InsecureSkipVerify: o.InsecureSkipVerify,
	}
	if o.CAFile != "" {
		pem, err := readFile("CA", o.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: CA file %s: no PEM certificate found", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case o.CertFile != "" && o.KeyFile != "":
		c, err := LoadPair(Pair{CertFile: o.CertFile, KeyFile: o.KeyFile})
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []stdtls.Certificate{c}
	case o.CertFile != "" || o.KeyFile != "":
		return nil, errors.New("tls: a client certificate needs both cert_file and key_file")
	}
	if len(o.PinSHA256) > 0 {
		verify, err := verifyPins(o.PinSHA256)
		if err != nil {
			return nil, err
		}
		cfg.VerifyConnection = verify
	}
	return cfg, nil
}
