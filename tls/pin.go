package tls

import (
	"crypto/sha256"
	stdtls "crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// ErrPinMismatch is wrapped by the handshake error when a server's key
// matches none of ClientOptions.PinSHA256.
var ErrPinMismatch = errors.New("tls: certificate pin mismatch")

// PinSHA256 is the pin of cert's key as ClientOptions.PinSHA256 wants it:
// the standard base64 of the SHA-256 of its SubjectPublicKeyInfo, the same
// value as HPKP's pin-sha256 and as
//
//	openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der |
//		openssl dgst -sha256 -binary | base64
//
// Pinning the key rather than the certificate survives renewals that keep
// the key.
func PinSHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// verifyPins builds a VerifyConnection callback accepting a server whose
// leaf key matches one of pins. crypto/tls runs it after the normal
// verification, and even when InsecureSkipVerify disables that, so a pin
// alone is enough to trust a self-signed backend.
func verifyPins(pins []string) (func(stdtls.ConnectionState) error, error) {
	want := make(map[[sha256.Size]byte]bool, len(pins))
	for _, p := range pins {
		p = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(p), "sha256/"))
		b, err := base64.StdEncoding.DecodeString(p)
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("tls: pin_sha256 %q: want the base64 of a SHA-256 hash (44 characters)", p)
		}
		want[[sha256.Size]byte(b)] = true
	}
	return func(cs stdtls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%w: the server sent no certificate", ErrPinMismatch)
		}
		leaf := cs.PeerCertificates[0]
		if want[sha256.Sum256(leaf.RawSubjectPublicKeyInfo)] {
			return nil
		}
		// The server's actual pin lets an operator tell a rotated key
		// from an impostor and update the configuration.
		return fmt.Errorf("%w: the key of %q has pin %s, not a configured one", ErrPinMismatch, leaf.Subject.CommonName, PinSHA256(leaf))
	}, nil
}
