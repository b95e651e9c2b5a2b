package tls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	stdtls "crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// SelfSigned returns an ECDSA P-256 certificate for hosts (DNS names,
// wildcards like "*.example.test", or IP addresses), valid from an hour ago
// (tolerating clock skew) for a year. It is for the demo and for tests;
// trust it with CertPool.
func SelfSigned(hosts ...string) (stdtls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return stdtls.Certificate{}, err
	}
	return selfSigned(key, hosts)
}

// SelfSignedValid is SelfSigned valid from notBefore to notAfter: an
// expired or soon-expiring certificate, for testing expiry checks.
func SelfSignedValid(notBefore, notAfter time.Time, hosts ...string) (stdtls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return stdtls.Certificate{}, err
	}
	return selfSignedValid(key, hosts, notBefore, notAfter)
}

// SelfSignedRSA is SelfSigned with an RSA 2048 key, for old clients and
// for testing certificate choice.
func SelfSignedRSA(hosts ...string) (stdtls.Certificate, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return stdtls.Certificate{}, err
	}
	return selfSigned(key, hosts)
}

func selfSigned(key crypto.Signer, hosts []string) (stdtls.Certificate, error) {
	now := time.Now()
	return selfSignedValid(key, hosts, now.Add(-time.Hour), now.Add(365*24*time.Hour))
}

func selfSignedValid(key crypto.Signer, hosts []string, notBefore, notAfter time.Time) (stdtls.Certificate, error) {
	if len(hosts) == 0 {
		return stdtls.Certificate{}, errors.New("tls: self-signed certificate needs at least one host")
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return stdtls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0], Organization: []string{"Portico self-signed"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if _, ok := key.(*rsa.PrivateKey); ok {
		// TLS 1.2 static-RSA key exchange encrypts to the key.
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	for _, h := range hosts {
		if ip, err := netip.ParseAddr(h); err == nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.Unmap().AsSlice()))
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return stdtls.Certificate{}, fmt.Errorf("tls: self-signed certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return stdtls.Certificate{}, fmt.Errorf("tls: self-signed certificate: %w", err)
	}
	return stdtls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// CertPool trusts the last certificate of each chain (the certificate
// itself for a self-signed one), for clients in tests and the demo.
func CertPool(certs ...stdtls.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range certs {
		if n := len(c.Certificate); n > 0 {
			if x, err := x509.ParseCertificate(c.Certificate[n-1]); err == nil {
				pool.AddCert(x)
			}
		}
	}
	return pool
}

// WritePEM writes cert's chain to certFile (mode 0644) and its key, as
// PKCS#8, to keyFile (mode 0600). Each file is written to a temporary name
// and renamed, so a reader (or a reload watching the files) never sees a
// half-written file, and an existing key file's mode is never kept.
func WritePEM(cert stdtls.Certificate, certFile, keyFile string) error {
	if len(cert.Certificate) == 0 || cert.PrivateKey == nil {
		return errors.New("tls: write PEM: missing certificate or private key")
	}
	var certPEM []byte
	for _, der := range cert.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return fmt.Errorf("tls: write PEM: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeAtomic(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	return writeAtomic(certFile, certPEM, 0o644)
}

func writeAtomic(name string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("tls: write %s: %w", name, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode) // CreateTemp makes 0600; widen only the certificate
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("tls: write %s: %w", name, err)
	}
	return nil
}
