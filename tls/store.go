// Package tls holds the certificates Portico presents to IMAP clients and
// the TLS settings for its own outgoing connections (backends, Redis).
//
// Typical use on the server side:
//
//	store, err := tls.LoadStore([]tls.Pair{
//		{CertFile: "/etc/portico/ecdsa.pem", KeyFile: "/etc/portico/ecdsa.key"},
//		{CertFile: "/etc/portico/rsa.pem", KeyFile: "/etc/portico/rsa.key"},
//	})
//	if err != nil { /* the message names the file and the problem */ }
//	for _, w := range store.Warnings(14 * 24 * time.Hour) { logger.Warn(w) }
//	ln = stdtls.NewListener(ln, tls.ServerConfig(store, 0))
//
// A Reloader keeps the store in step with the files (and reloads on
// SIGHUP); TicketKeys shares session ticket keys across a fleet:
//
//	r := &tls.Reloader{Store: store, Pairs: pairs, Logger: logger}
//	go r.Run(ctx)
//	cfg := tls.NewServerConfig(tls.ServerOptions{Store: store, Curves: curves})
//	go (&tls.TicketKeys{Client: rdb, Secret: key, Logger: logger}).Run(ctx, cfg)
//
// and on the client side:
//
//	cfg, err := tls.ClientConfig(tls.ClientOptions{CAFile: "/etc/portico/backend-ca.pem"})
//
// A Store picks a certificate per handshake by SNI. Its contents can be
// swapped with Replace while handshakes run, so reloading certificates
// never needs a new tls.Config.
//
// The package is named like crypto/tls on purpose (it is Portico's TLS
// layer); import crypto/tls next to it under another name, e.g. stdtls.
package tls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	stdtls "crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// Pair names a PEM certificate chain (leaf first) and its private key.
type Pair struct {
	CertFile string
	KeyFile  string
}

// Store is a set of server certificates chosen by SNI. The zero value is an
// empty store whose GetCertificate fails until Replace fills it. A Store is
// safe for concurrent use.
type Store struct {
	set atomic.Pointer[certSet]
}

// entry is one loaded certificate with what selection needs precomputed.
type entry struct {
	cert   *stdtls.Certificate
	source string // certificate file, "" when built from memory
	rank   int    // key preference: lower is served first
}

// certSet is immutable once built, so readers need no lock: Replace swaps
// the whole set and handshakes in flight keep the one they loaded.
type certSet struct {
	all      []*entry            // load order; all[0] is the default
	byName   map[string][]*entry // lower-case DNS names, "*.x" for wildcards; preference order
	byIP     map[netip.Addr][]*entry
	defaults []*entry // certificates with the same names as all[0], preference order
}

var errNoCertificates = errors.New("tls: no certificate loaded")

// LoadStore reads the pairs in order; the first is the default for clients
// that send no SNI or a name no certificate covers. An expired certificate
// is loaded anyway (report it with Warnings): serving a stale certificate
// is better than refusing to start and serving nothing.
func LoadStore(pairs []Pair) (*Store, error) {
	if len(pairs) == 0 {
		return nil, errors.New("tls: no certificate configured")
	}
	entries := make([]*entry, 0, len(pairs))
	for _, p := range pairs {
		c, err := LoadPair(p)
		if err != nil {
			return nil, err
		}
		entries = append(entries, &entry{cert: &c, source: p.CertFile})
	}
	s := new(Store)
	s.set.Store(newCertSet(entries))
	return s, nil
}

// NewStore builds a store from certificates already in memory. The first
// is the default. Certificates without a parsed Leaf get one.
func NewStore(certs ...stdtls.Certificate) (*Store, error) {
	entries := make([]*entry, 0, len(certs))
	for i, c := range certs {
		if len(c.Certificate) == 0 || c.PrivateKey == nil {
			return nil, fmt.Errorf("tls: certificate %d: missing certificate or private key", i)
		}
		if c.Leaf == nil {
			leaf, err := x509.ParseCertificate(c.Certificate[0])
			if err != nil {
				return nil, fmt.Errorf("tls: certificate %d: %w", i, err)
			}
			c.Leaf = leaf
		}
		entries = append(entries, &entry{cert: &c})
	}
	s := new(Store)
	s.set.Store(newCertSet(entries))
	return s, nil
}

// Replace makes s serve exactly what next serves, atomically: a handshake
// sees either the old set or the new one, never a mix or nothing. next is
// not modified and may be discarded. Build next first (LoadStore), and keep
// the old set when that fails.
func (s *Store) Replace(next *Store) {
	s.set.Store(next.set.Load())
}

// GetCertificate implements crypto/tls.Config.GetCertificate. It picks the
// certificates whose names match the SNI exactly, else those matching the
// wildcard for it, else (no SNI, unknown name) the default ones. Among
// those it prefers ECDSA, then Ed25519, then RSA, skipping any the client
// cannot use (hello.SupportsCertificate), so old clients get the RSA
// certificate when one is loaded for the name.
func (s *Store) GetCertificate(hello *stdtls.ClientHelloInfo) (*stdtls.Certificate, error) {
	set := s.set.Load()
	if set == nil || len(set.all) == 0 {
		return nil, errNoCertificates
	}
	cands, named := set.lookup(hello)
	if len(cands) == 1 {
		return cands[0].cert, nil
	}
	h := hello
	if !named && hello.ServerName != "" {
		// SupportsCertificate also checks the name, which the default
		// certificates do not cover by definition; judge only the
		// algorithms. The copy keeps the hello's unexported config.
		c := *hello
		c.ServerName = ""
		h = &c
	}
	for _, e := range cands {
		if h.SupportsCertificate(e.cert) == nil {
			return e.cert, nil
		}
	}
	// Nothing fits: let the handshake fail with the best certificate rather
	// than an internal error, so the client reports something meaningful.
	return cands[0].cert, nil
}

// lookup never allocates per unknown name beyond the normalised string, so
// random SNI values cannot grow memory (CVE-2017-15130 in Dovecot).
func (set *certSet) lookup(hello *stdtls.ClientHelloInfo) (cands []*entry, named bool) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name != "" {
		if c := set.byName[name]; len(c) > 0 {
			return c, true
		}
		if i := strings.IndexByte(name, '.'); i > 0 {
			if c := set.byName["*"+name[i:]]; len(c) > 0 {
				return c, true
			}
		}
		return set.defaults, false
	}
	// No SNI: a client dialled an IP address. Serve a certificate for the
	// address it reached when there is one.
	if hello.Conn != nil && len(set.byIP) > 0 {
		if ta, ok := hello.Conn.LocalAddr().(*net.TCPAddr); ok {
			if ip, ok := netip.AddrFromSlice(ta.IP); ok {
				if c := set.byIP[ip.Unmap()]; len(c) > 0 {
					return c, true
				}
			}
		}
	}
	return set.defaults, false
}

func newCertSet(entries []*entry) *certSet {
	set := &certSet{
		all:    entries,
		byName: make(map[string][]*entry),
		byIP:   make(map[netip.Addr][]*entry),
	}
	if len(entries) == 0 {
		return set
	}
	for _, e := range entries {
		e.rank = keyRank(e.cert.PrivateKey)
		leaf := e.cert.Leaf
		seen := make(map[string]bool)
		for _, n := range leaf.DNSNames {
			n = strings.ToLower(strings.TrimSuffix(n, "."))
			if n == "" || seen[n] {
				continue
			}
			seen[n] = true
			set.byName[n] = append(set.byName[n], e)
		}
		for _, ip := range leaf.IPAddresses {
			if a, ok := netip.AddrFromSlice(ip); ok {
				a = a.Unmap()
				set.byIP[a] = append(set.byIP[a], e)
			}
		}
	}
	def := nameKey(entries[0].cert.Leaf)
	for _, e := range entries {
		if nameKey(e.cert.Leaf) == def {
			set.defaults = append(set.defaults, e)
		}
	}
	byRank := func(a, b *entry) int { return a.rank - b.rank }
	for _, c := range set.byName {
		slices.SortStableFunc(c, byRank)
	}
	for _, c := range set.byIP {
		slices.SortStableFunc(c, byRank)
	}
	slices.SortStableFunc(set.defaults, byRank)
	return set
}

// keyRank orders key types for clients that accept several: ECDSA is the
// cheapest to sign with and universally supported by TLS 1.2+ clients;
// Ed25519 is still rare in clients; RSA is the fallback for old ones.
func keyRank(k crypto.PrivateKey) int {
	switch k.(type) {
	case *ecdsa.PrivateKey:
		return 0
	case ed25519.PrivateKey:
		return 1
	case *rsa.PrivateKey:
		return 2
	}
	return 3
}

// nameKey identifies the set of names a certificate is valid for, so that
// an RSA twin of the default certificate is a default too.
func nameKey(leaf *x509.Certificate) string {
	var names []string
	for _, n := range leaf.DNSNames {
		names = append(names, strings.ToLower(strings.TrimSuffix(n, ".")))
	}
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	slices.Sort(names)
	names = slices.Compact(names)
	return strings.Join(names, ",")
}

// Certificates describes the certificates in service, in load order.
func (s *Store) Certificates() []Info {
	set := s.set.Load()
	if set == nil {
		return nil
	}
	infos := make([]Info, 0, len(set.all))
	for _, e := range set.all {
		info := Describe(e.cert)
		info.Source = e.source
		infos = append(infos, info)
	}
	return infos
}

// Warnings lists, one message each, the certificates in service that are
// expired, expire within d, are not valid yet, or carry no name a client
// could check. The messages are meant for a log at warning level.
func (s *Store) Warnings(d time.Duration) []string {
	now := time.Now()
	var ws []string
	for _, info := range s.Certificates() {
		what := info.Source
		if what == "" {
			what = "certificate"
		} else {
			what = "certificate " + what
		}
		if len(info.Names) > 0 {
			what += " (" + strings.Join(info.Names, ", ") + ")"
		}
		switch {
		case now.After(info.NotAfter):
			ws = append(ws, fmt.Sprintf("tls: %s expired on %s", what, info.NotAfter.UTC().Format(time.RFC3339)))
		case now.Add(d).After(info.NotAfter):
			ws = append(ws, fmt.Sprintf("tls: %s expires on %s (in %s)", what,
				info.NotAfter.UTC().Format(time.RFC3339), info.NotAfter.Sub(now).Round(time.Hour)))
		case now.Before(info.NotBefore):
			ws = append(ws, fmt.Sprintf("tls: %s is not valid before %s (check the clock)", what,
				info.NotBefore.UTC().Format(time.RFC3339)))
		}
		if len(info.Names) == 0 {
			ws = append(ws, fmt.Sprintf("tls: %s has no DNS or IP subject alternative name; clients will reject it", what))
		}
	}
	return ws
}

// LoadPair reads one PEM certificate chain and its key (ECDSA, RSA or
// Ed25519; PKCS#8, PKCS#1 or SEC 1) and parses the leaf. Its errors name
// the file at fault and what is wrong with it.
func LoadPair(p Pair) (stdtls.Certificate, error) {
	certPEM, err := readFile("certificate", p.CertFile)
	if err != nil {
		return stdtls.Certificate{}, err
	}
	keyPEM, err := readFile("key", p.KeyFile)
	if err != nil {
		return stdtls.Certificate{}, err
	}
	leafDER, err := firstCertificate(certPEM)
	if err != nil {
		return stdtls.Certificate{}, fmt.Errorf("tls: certificate file %s: %w", p.CertFile, err)
	}
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return stdtls.Certificate{}, fmt.Errorf("tls: certificate file %s: %w", p.CertFile, err)
	}
	key, err := privateKey(keyPEM)
	if err != nil {
		return stdtls.Certificate{}, fmt.Errorf("tls: key file %s: %w", p.KeyFile, err)
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return stdtls.Certificate{}, fmt.Errorf("tls: key file %s does not match the certificate in %s", p.KeyFile, p.CertFile)
	}
	// X509KeyPair redoes some of the above but also checks the whole chain
	// parses and fills Leaf; our own checks only exist for the messages.
	c, err := stdtls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return stdtls.Certificate{}, fmt.Errorf("tls: certificate %s, key %s: %w", p.CertFile, p.KeyFile, err)
	}
	if c.Leaf == nil {
		c.Leaf = leaf
	}
	return c, nil
}

func readFile(what, name string) ([]byte, error) {
	if name == "" {
		return nil, fmt.Errorf("tls: no %s file given", what)
	}
	b, err := os.ReadFile(name)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is in our message already
		}
		return nil, fmt.Errorf("tls: %s file %s: %w", what, name, err)
	}
	return b, nil
}

func firstCertificate(data []byte) ([]byte, error) {
	sawKey := false
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			return b.Bytes, nil
		}
		if strings.HasSuffix(b.Type, "PRIVATE KEY") {
			sawKey = true
		}
	}
	if sawKey {
		return nil, errors.New("holds a private key but no certificate (cert and key files swapped?)")
	}
	return nil, errors.New("no PEM CERTIFICATE block found")
}

func privateKey(data []byte) (crypto.Signer, error) {
	sawCert := false
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE":
			sawCert = true
			continue
		case b.Type == "ENCRYPTED PRIVATE KEY" || b.Headers["Proc-Type"] != "":
			return nil, errors.New("the private key is encrypted; store it unencrypted with mode 0600")
		case !strings.HasSuffix(b.Type, "PRIVATE KEY"):
			continue // e.g. EC PARAMETERS, which openssl writes before the key
		}
		return parseKey(b.Bytes)
	}
	if sawCert {
		return nil, errors.New("holds a certificate but no private key (cert and key files swapped?)")
	}
	return nil, errors.New("no PEM PRIVATE KEY block found")
}

// parseKey accepts the encodings crypto/tls does, in its order.
func parseKey(der []byte) (crypto.Signer, error) {
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		switch k := k.(type) {
		case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
			return k.(crypto.Signer), nil
		default:
			return nil, fmt.Errorf("unsupported private key type %T", k)
		}
	}
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	return nil, errors.New("cannot parse the private key (want PKCS#8, PKCS#1 or SEC 1)")
}
