package tls

import (
	stdtls "crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// ALPNProtocol is the only application protocol Portico's listeners
// accept (RFC 9051 registers "imap" for implicit TLS and STARTTLS alike).
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

// ServerConfig is the configuration of Portico's client-facing listeners.
// minVersion 0 means TLS 1.2; anything lower than 1.2 is raised to 1.2,
// since RFC 8996 deprecates TLS 1.0 and 1.1.
//
// Choices, and why:
//   - NextProtos ["imap"]: crypto/tls then refuses a client that offers
//     ALPN protocols but not "imap" — that is a browser redirected to us by
//     an attacker (ALPACA, CVE-2021-3618). A client that offers no ALPN at
//     all, as most IMAP clients do, is accepted.
//   - Session tickets stay on (crypto/tls rotates its own keys every 24h);
//     resumption saves the most on RSA certificates. Sharing keys across a
//     fleet is SetSessionTicketKeys on the returned config.
//   - CurvePreferences stays nil, i.e. Go's default, which puts the hybrid
//     post-quantum X25519MLKEM768 first. That protects recorded sessions
//     (passwords go through them) against future decryption, for roughly
//     +35% handshake CPU measured against X25519 alone; a server that is
//     CPU-bound on handshakes may set []stdtls.CurveID{X25519, CurveP256}.
//   - CipherSuites stays nil: TLS 1.3 suites are not configurable, and Go's
//     TLS 1.2 default list has only AEAD, forward-secret suites.
func ServerConfig(s *Store, minVersion uint16) *stdtls.Config {
	if minVersion < stdtls.VersionTLS12 {
		minVersion = stdtls.VersionTLS12
	}
	return &stdtls.Config{
		MinVersion:     minVersion,
		NextProtos:     []string{ALPNProtocol},
		GetCertificate: s.GetCertificate,
	}
}

// ClientOptions configures TLS to a backend IMAP server or to Redis. It
// mirrors config.ClientTLS.
type ClientOptions struct {
	CAFile             string // PEM bundle; "" means the system roots
	ServerName         string // name to verify; "" lets crypto/tls.Dial use the host dialled
	InsecureSkipVerify bool   // tests and emergencies only
	CertFile, KeyFile  string // client certificate for mutual TLS, optional (both or neither)
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
	return cfg, nil
}
