package tls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	stdtls "crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Info is what an operator needs to know about a certificate in service:
// for the start-up log and `portico certs`.
type Info struct {
	Source    string   // file the certificate came from; "" when built in memory
	Names     []string // DNS names then IP addresses from the leaf
	Subject   string
	Issuer    string
	KeyType   string // "ECDSA P-256", "RSA 2048", "Ed25519"
	Serial    string // hex
	NotBefore time.Time
	NotAfter  time.Time
}

// Describe summarises c's leaf. A certificate whose leaf cannot be parsed
// yields an Info with only KeyType set.
func Describe(c *stdtls.Certificate) Info {
	info := Info{KeyType: keyType(privatePublic(c.PrivateKey))}
	leaf := leafOf(c)
	if leaf == nil {
		return info
	}
	info.Names = append(info.Names, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		info.Names = append(info.Names, ip.String())
	}
	info.Subject = leaf.Subject.String()
	info.Issuer = leaf.Issuer.String()
	info.KeyType = keyType(leaf.PublicKey)
	info.Serial = fmt.Sprintf("%x", leaf.SerialNumber)
	info.NotBefore = leaf.NotBefore
	info.NotAfter = leaf.NotAfter
	return info
}

// String is one line, e.g.
// `mail.example.test, *.example.test (ECDSA P-256) issuer "CN=R3,O=Let's Encrypt" expires 2027-01-02T03:04:05Z`.
func (i Info) String() string {
	var b strings.Builder
	if i.Source != "" {
		b.WriteString(i.Source)
		b.WriteString(": ")
	}
	if len(i.Names) > 0 {
		b.WriteString(strings.Join(i.Names, ", "))
	} else {
		b.WriteString("(no names)")
	}
	fmt.Fprintf(&b, " (%s) issuer %q expires %s", i.KeyType, i.Issuer, i.NotAfter.UTC().Format(time.RFC3339))
	return b.String()
}

// LogValue makes Info log as a group under log/slog.
func (i Info) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("names", strings.Join(i.Names, ",")),
		slog.String("key", i.KeyType),
		slog.String("issuer", i.Issuer),
		slog.Time("not_after", i.NotAfter),
	}
	if i.Source != "" {
		attrs = append([]slog.Attr{slog.String("source", i.Source)}, attrs...)
	}
	return slog.GroupValue(attrs...)
}

// ExpiresWithin reports whether c's leaf is expired or expires within d of
// now. A certificate whose leaf cannot be parsed counts as expiring, so the
// caller warns about it rather than ignoring it.
func ExpiresWithin(c *stdtls.Certificate, d time.Duration) bool {
	leaf := leafOf(c)
	return leaf == nil || time.Now().Add(d).After(leaf.NotAfter)
}

func leafOf(c *stdtls.Certificate) *x509.Certificate {
	if c.Leaf != nil {
		return c.Leaf
	}
	if len(c.Certificate) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

func privatePublic(k crypto.PrivateKey) crypto.PublicKey {
	if s, ok := k.(crypto.Signer); ok {
		return s.Public()
	}
	return nil
}

func keyType(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	case nil:
		return "unknown"
	}
	return fmt.Sprintf("%T", pub)
}
