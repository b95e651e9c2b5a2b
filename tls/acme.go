package tls

import (
	"context"
	stdtls "crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// ACME obtains and renews certificates from an ACME CA (Let's Encrypt) with
// golang.org/x/crypto/acme/autocert, for Portico's IMAP listeners:
//
//	a, err := tls.NewACME(tls.ACMEOptions{
//		Hostnames: []string{"mail.example.org"},
//		Email:     "postmaster@example.org",
//		Cache:     tls.RedisCache{Client: rdb, Prefix: "portico:", Key: secret},
//		Lock:      tls.RedisLocker{Client: rdb, Prefix: "portico:"},
//	})
//	go (&http.Server{Addr: ":80", Handler: a.HTTPHandler(), ReadHeaderTimeout: 10 * time.Second}).ListenAndServe()
//	if err := a.Obtain(ctx); err != nil { ... }  // before the IMAP listeners take traffic
//	cfg := &stdtls.Config{NextProtos: []string{"imap"}, GetCertificate: a.GetCertificate}
//
// Never use autocert.Manager.TLSConfig for IMAP: its ALPN list (h2,
// http/1.1, acme-tls/1) makes clients that offer "imap" fail the handshake.
//
// Challenges: autocert always tries tls-alpn-01 first, then http-01 if
// HTTPHandler was called (call it before Obtain). tls-alpn-01 needs the CA
// to reach a TLSALPNConfig listener (or one listing acme.ALPNProto) on port
// 443; in a port-80-only topology every order first burns one failed
// tls-alpn-01 authorization, which counts against the CA's failed-validation
// limit.
//
// Fleet: with a shared Cache (RedisCache) and a Lock (RedisLocker), the
// proxies share the account key, certificates and challenge tokens, and
// one proxy at a time orders a given certificate while the others wait for
// it to appear in the cache. Renewal goes through the same lock: autocert's
// renewal timer reads the cache first, and a proxy that finds the cached
// certificate due for renewal while another proxy holds the lock waits for
// the renewed certificate instead of ordering its own. Residual races,
// which cost at most a duplicate order: a lock holder that takes longer
// than the lock's 10 minutes, a waiter that gives up after 3 minutes of
// renewal (it then renews itself), and a Redis outage (the lock fails open,
// because serving matters more than a duplicate order).
type ACME struct {
	m      *autocert.Manager
	hosts  atomic.Pointer[hostSet] // SetHostnames replaces it
	inner  autocert.Cache          // the caller's cache, without coordination
	lock   Locker
	logger *slog.Logger

	httpOnce    sync.Once
	httpHandler http.Handler

	mu    sync.Mutex
	ready map[string]bool        // cache keys autocert holds in memory
	held  map[string]*heldLock   // locks this process holds, by cache key
	keyMu map[string]*sync.Mutex // serialises first loads of one key

	obtained, failed atomic.Uint64 // for Stats
}

// ACMEStats counts what an ACME did since it was made.
type ACMEStats struct {
	// Obtained counts certificates this process ordered and stored in the
	// cache: first issuance and renewals (those another proxy of the
	// fleet ordered are not counted here; without a Cache, nothing is).
	Obtained uint64
	// Failed counts certificates that could not be served, for lack of
	// a certificate the CA would not issue or the cache would not give.
	// autocert's own renewal timer reports nothing when it fails and
	// retries: watch the certificates' expiry for that.
	Failed uint64
}

// Stats returns the counters.
func (a *ACME) Stats() ACMEStats {
	return ACMEStats{Obtained: a.obtained.Load(), Failed: a.failed.Load()}
}

// ACMEOptions configures NewACME.
type ACMEOptions struct {
	// Hostnames are the names to obtain certificates for (no wildcards:
	// autocert cannot do DNS-01). The first is served to clients that send
	// no SNI or connect by IP address.
	Hostnames []string

	// Email is the contact address registered with the CA (expiry and
	// incident mail). Optional.
	Email string

	// DirectoryURL is the CA; empty means Let's Encrypt production
	// (autocert.DefaultACMEDirectory). Try LetsEncryptStaging first.
	DirectoryURL string

	// HTTPClient talks to the CA; set it for a private CA whose root the
	// system does not trust (pebble in tests). nil means http.DefaultClient.
	HTTPClient *http.Client

	// Cache stores the account key, certificates and challenge tokens:
	// EncryptedCache over autocert.DirCache, or RedisCache for a fleet. nil
	// keeps everything in memory, so every start places new orders: only
	// for tests.
	Cache autocert.Cache

	// RenewBefore is how long before expiry to renew; 0 means autocert's
	// default, the lesser of 30 days and a third of the lifetime.
	RenewBefore time.Duration

	Logger *slog.Logger // nil means slog.Default()

	// Lock coordinates issuance and renewal across a fleet sharing Cache;
	// nil coordinates only within this process.
	Lock Locker
}

// LetsEncryptStaging is the directory of Let's Encrypt's staging CA, whose
// certificates no client trusts but whose rate limits are generous: use it
// to check a new deployment before switching to production.
const LetsEncryptStaging = "https://acme-staging-v02.api.letsencrypt.org/directory"

// ErrNotManaged is returned (wrapped) by ACME.GetCertificate for a name ACME
// has no certificate for, so that a caller can fall back to another source
// of certificates (files).
var ErrNotManaged = errors.New("tls: acme: name not managed")

const (
	lockTTL      = 10 * time.Minute // SET ... PX 600000
	pollInterval = 250 * time.Millisecond
	// renewalWait bounds how long autocert's renewal waits for another
	// proxy's renewal; it runs with the Manager's state lock held when a
	// due certificate is first loaded, so it must not be too long.
	renewalWait = 3 * time.Minute
	// issueWait bounds a handshake that waits for a first certificate,
	// like autocert's own 5-minute issuance timeout.
	issueWait = 5 * time.Minute
)

const accountKeyName = "acme_account+key"

type heldLock struct {
	release func()
	until   time.Time // the lock expires at the latest then
}

// NewACME checks the options and builds the manager. It does no network
// I/O; Obtain does.
func NewACME(o ACMEOptions) (*ACME, error) {
	hosts, err := parseHostnames(o.Hostnames)
	if err != nil {
		return nil, err
	}
	a := &ACME{
		inner:  o.Cache,
		lock:   o.Lock,
		logger: loggerOr(o.Logger),
		ready:  make(map[string]bool),
		held:   make(map[string]*heldLock),
		keyMu:  make(map[string]*sync.Mutex),
	}
	a.hosts.Store(hosts)
	dir := o.DirectoryURL
	if dir == "" {
		dir = autocert.DefaultACMEDirectory
	}
	a.m = &autocert.Manager{
		Prompt:      autocert.AcceptTOS,
		HostPolicy:  a.hostPolicy,
		RenewBefore: o.RenewBefore,
		Email:       o.Email,
		Client:      &acme.Client{DirectoryURL: dir, HTTPClient: o.HTTPClient, UserAgent: "portico"},
	}
	if o.Cache != nil {
		a.m.Cache = coordCache{a}
	}
	return a, nil
}

// hostSet is the configured hostnames, normalised; names[0] is the
// default.
type hostSet struct {
	names []string
	set   map[string]bool
}

func parseHostnames(hostnames []string) (*hostSet, error) {
	if len(hostnames) == 0 {
		return nil, errors.New("tls: acme: no hostnames")
	}
	h := &hostSet{set: make(map[string]bool)}
	for _, name := range hostnames {
		n := normalizeName(name)
		switch {
		case n == "":
			return nil, errors.New("tls: acme: empty hostname")
		case strings.Contains(n, "*"):
			return nil, fmt.Errorf("tls: acme: hostname %q: wildcards need DNS-01, which autocert does not support", name)
		case strings.ContainsAny(n, ":/ "), net.ParseIP(n) != nil:
			return nil, fmt.Errorf("tls: acme: hostname %q: not a DNS name", name)
		case !strings.Contains(n, "."):
			return nil, fmt.Errorf("tls: acme: hostname %q: not a fully qualified name", name)
		}
		if !h.set[n] {
			h.set[n] = true
			h.names = append(h.names, n)
		}
	}
	return h, nil
}

// PrepareHostnames checks hostnames as NewACME does and returns the
// function that puts them in service, for a reload that must be able to
// fail before it changes anything. Once applied, handshakes and challenge
// requests for the names added are served and those for the names
// removed are refused; apply returns the names added, which the caller
// passes to Obtain. A certificate already in memory for a removed name is
// still renewed by autocert until the process ends.
func (a *ACME) PrepareHostnames(hostnames []string) (apply func() (added []string), err error) {
	h, err := parseHostnames(hostnames)
	if err != nil {
		return nil, err
	}
	return func() []string {
		old := a.hosts.Swap(h)
		var added []string
		for _, n := range h.names {
			if !old.set[n] {
				added = append(added, n)
			}
		}
		return added
	}, nil
}

func normalizeName(s string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
}

// Manages reports whether name is one of the configured hostnames.
func (a *ACME) Manages(name string) bool { return a.hosts.Load().set[normalizeName(name)] }

// Hostnames returns the configured names, the default first.
func (a *ACME) Hostnames() []string { return slices.Clone(a.hosts.Load().names) }

// hostPolicy runs on every handshake and every challenge request: a map
// lookup, never I/O. HTTPHandler passes r.Host, which carries a port when
// the CA dials one other than 80 (pebble in tests).
func (a *ACME) hostPolicy(_ context.Context, host string) error {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if !a.Manages(host) {
		return fmt.Errorf("%w: %q", ErrNotManaged, host)
	}
	return nil
}

// GetCertificate is the tls.Config hook. Clients without SNI, or that
// connected by IP address, get the first hostname's certificate; a name
// not configured gets an error wrapping ErrNotManaged. A hello that offers
// only ALPN acme-tls/1 is the CA validating tls-alpn-01 and gets the
// challenge certificate. The first handshake for a name whose certificate
// is neither in memory nor in the cache obtains it, which takes seconds:
// call Obtain at start-up so that this does not happen.
func (a *ACME) GetCertificate(hello *stdtls.ClientHelloInfo) (*stdtls.Certificate, error) {
	if isChallengeHello(hello) {
		if !a.Manages(hello.ServerName) {
			return nil, fmt.Errorf("%w: %q", ErrNotManaged, hello.ServerName)
		}
		return a.m.GetCertificate(hello)
	}
	ctx := context.Background()
	if c := hello.Context(); c != nil {
		ctx = c
	}
	ctx, cancel := context.WithTimeout(ctx, issueWait)
	defer cancel()
	return a.get(ctx, hello)
}

func (a *ACME) get(ctx context.Context, hello *stdtls.ClientHelloInfo) (*stdtls.Certificate, error) {
	hosts := a.hosts.Load()
	name := normalizeName(hello.ServerName)
	if name == "" || net.ParseIP(name) != nil {
		name = hosts.names[0]
	}
	if !hosts.set[name] {
		return nil, fmt.Errorf("%w: %q", ErrNotManaged, name)
	}
	h := *hello
	h.ServerName = name
	key := name
	if wantsRSA(hello) {
		key += "+rsa"
	}

	a.mu.Lock()
	ready := a.ready[key]
	a.mu.Unlock()
	if ready {
		// In autocert's memory: renewal replaces it there.
		return a.m.GetCertificate(&h)
	}

	km := a.keyMutex(key)
	km.Lock()
	defer km.Unlock()
	var mine *heldLock
	if a.lock != nil && a.inner != nil {
		a.mu.Lock()
		ready = a.ready[key]
		a.mu.Unlock()
		if !ready {
			rel, err := a.await(ctx, key, usable)
			if err != nil {
				return nil, err
			}
			if rel != nil {
				a.logger.Info("tls: acme: obtaining certificate", "name", name, "key", key)
				mine = a.hold(key, rel)
			}
		}
	}
	cert, err := a.m.GetCertificate(&h)
	if mine != nil {
		// Normally Put released it when the certificate was stored; this
		// catches a failed order.
		a.releaseIf(key, mine)
	}
	if err != nil {
		a.failed.Add(1)
		return nil, fmt.Errorf("tls: acme: certificate for %q: %w", name, err)
	}
	a.mu.Lock()
	a.ready[key] = true
	a.mu.Unlock()
	return cert, nil
}

func (a *ACME) keyMutex(key string) *sync.Mutex {
	a.mu.Lock()
	defer a.mu.Unlock()
	km := a.keyMu[key]
	if km == nil {
		km = new(sync.Mutex)
		a.keyMu[key] = km
	}
	return km
}

// Obtain loads or obtains the certificates for names, or for all hostnames
// when none is given, in parallel. Call it before the listeners take
// traffic. Certificates valid in the cache are loaded without any network
// access. A fleet member that waits for another one's order waits until
// ctx is done. Note that an order in progress is bounded by autocert's own
// 5-minute timeout, not by ctx.
//
// Obtain first refuses a cache whose ACME account key does not decrypt with
// the configured key (ErrWrongCacheKey). Going on would register a new
// account and order new certificates, which a proxy with a mistyped key
// would then write over the ones the rest of its fleet uses: every proxy
// would keep replacing the others' certificates until the CA's rate limits
// stop them all.
func (a *ACME) Obtain(ctx context.Context, names ...string) error {
	if err := a.checkKey(ctx); err != nil {
		return err
	}
	if len(names) == 0 {
		names = a.hosts.Load().names
	}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			done := make(chan error, 1)
			go func() {
				c, err := a.get(ctx, ecdsaHello(name))
				if err == nil {
					a.logger.Info("tls: acme: certificate in service", "cert", acmeInfo(c, "acme"))
				}
				done <- err
			}()
			select {
			case errs[i] = <-done:
			case <-ctx.Done():
				errs[i] = fmt.Errorf("tls: acme: certificate for %q: %w", name, ctx.Err())
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// checkKey reports ErrWrongCacheKey when the cache cannot open its own ACME
// account key; see Obtain.
func (a *ACME) checkKey(ctx context.Context) error {
	if k, ok := a.inner.(interface{ CheckKey(context.Context) error }); ok {
		return k.CheckKey(ctx)
	}
	return nil
}

// ecdsaHello is a synthetic ClientHello for pre-warming: it must offer an
// ECDSA suite, or autocert would obtain an RSA certificate.
func ecdsaHello(name string) *stdtls.ClientHelloInfo {
	return &stdtls.ClientHelloInfo{
		ServerName:   name,
		CipherSuites: []uint16{stdtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	}
}

func rsaHello(name string) *stdtls.ClientHelloInfo {
	return &stdtls.ClientHelloInfo{
		ServerName:   name,
		CipherSuites: []uint16{stdtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
	}
}

// HTTPHandler answers the CA's http-01 requests (/.well-known/acme-challenge/)
// and 404 to everything else; mount it on port 80. Calling it also enables
// http-01 for the orders that follow, so call it before Obtain.
func (a *ACME) HTTPHandler() http.Handler {
	a.httpOnce.Do(func() { a.httpHandler = a.m.HTTPHandler(http.NotFoundHandler()) })
	return a.httpHandler
}

// TLSALPNConfig is the configuration of a listener that only answers the
// CA's tls-alpn-01 validations (it offers ALPN acme-tls/1 only). It must be
// reachable as port 443 of each hostname. The IMAP listeners keep their own
// configuration with ALPN "imap".
func (a *ACME) TLSALPNConfig() *stdtls.Config {
	return &stdtls.Config{
		MinVersion: stdtls.VersionTLS12,
		NextProtos: []string{acme.ALPNProto},
		GetCertificate: func(hello *stdtls.ClientHelloInfo) (*stdtls.Certificate, error) {
			if !isChallengeHello(hello) {
				return nil, errors.New("tls: acme: this listener only answers tls-alpn-01 validations")
			}
			return a.GetCertificate(hello)
		},
	}
}

// Certificates describes the certificates in service (in memory), as
// autocert last renewed them. Source is "acme".
func (a *ACME) Certificates() []Info {
	a.mu.Lock()
	keys := make([]string, 0, len(a.ready))
	for k := range a.ready {
		keys = append(keys, k)
	}
	a.mu.Unlock()
	slices.Sort(keys)
	var out []Info
	for _, k := range keys {
		hello := ecdsaHello(k)
		if name, ok := strings.CutSuffix(k, "+rsa"); ok {
			hello = rsaHello(name)
		}
		// Ready keys are in autocert's memory: no I/O here.
		if c, err := a.m.GetCertificate(hello); err == nil {
			out = append(out, acmeInfo(c, "acme"))
		}
	}
	return out
}

// Cached describes the certificates the cache holds for the configured
// hostnames, without network access to the CA and without loading them
// into service: for `portico certs`. Source is "acme cache".
func (a *ACME) Cached(ctx context.Context) ([]Info, error) {
	if a.inner == nil {
		return nil, nil
	}
	if err := a.checkKey(ctx); err != nil {
		return nil, err
	}
	var out []Info
	for _, name := range a.hosts.Load().names {
		for _, key := range []string{name, name + "+rsa"} {
			v, err := a.inner.Get(ctx, key)
			if err == autocert.ErrCacheMiss {
				continue
			}
			if err != nil {
				return out, fmt.Errorf("tls: acme: read cache %q: %w", key, err)
			}
			var c stdtls.Certificate
			for rest := v; ; {
				var b *pem.Block
				b, rest = pem.Decode(rest)
				if b == nil {
					break
				}
				if b.Type == "CERTIFICATE" {
					c.Certificate = append(c.Certificate, b.Bytes)
				}
			}
			out = append(out, acmeInfo(&c, "acme cache"))
		}
	}
	return out, nil
}

func acmeInfo(c *stdtls.Certificate, source string) Info {
	i := Describe(c)
	i.Source = source
	return i
}

// isChallengeHello reports a tls-alpn-01 validation: the CA offers
// acme-tls/1 and nothing else.
func isChallengeHello(h *stdtls.ClientHelloInfo) bool {
	return len(h.SupportedProtos) == 1 && h.SupportedProtos[0] == acme.ALPNProto
}

// wantsRSA predicts the key type autocert picks for hello, so that the lock
// is taken on the cache key autocert will use: ECDSA unless the client's
// signature schemes, curves or cipher suites rule it out.
func wantsRSA(h *stdtls.ClientHelloInfo) bool {
	if h.SignatureSchemes != nil && !slices.ContainsFunc(h.SignatureSchemes, func(s stdtls.SignatureScheme) bool {
		switch s {
		case 0x0203, stdtls.ECDSAWithP256AndSHA256, stdtls.ECDSAWithP384AndSHA384, stdtls.ECDSAWithP521AndSHA512:
			return true
		}
		return false
	}) {
		return true
	}
	if h.SupportedCurves != nil && !slices.Contains(h.SupportedCurves, stdtls.CurveP256) {
		return true
	}
	return !slices.ContainsFunc(h.CipherSuites, func(s uint16) bool {
		switch s {
		case stdtls.TLS_ECDHE_ECDSA_WITH_RC4_128_SHA,
			stdtls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
			stdtls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
			stdtls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
			stdtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			stdtls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			stdtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305:
			return true
		}
		return false
	})
}

// await makes sure one process of the fleet works on a cache key. It
// returns a release func when this process holds the lock and must do the
// work, or nil when the cache now holds a value that satisfies done (put
// there by whoever held the lock). Without a Locker, or when the Locker
// fails (Redis down), it returns a no-op release: serving beats avoiding a
// duplicate order.
func (a *ACME) await(ctx context.Context, key string, done func(a *ACME, v []byte) bool) (func(), error) {
	for waited := false; ; waited = true {
		v, err := a.inner.Get(ctx, key)
		if err == nil && done(a, v) {
			if waited {
				a.logger.Info("tls: acme: another proxy did the work", "key", key)
			}
			return nil, nil
		}
		if err != nil && err != autocert.ErrCacheMiss {
			return nil, fmt.Errorf("tls: acme: read cache %q: %w", key, err)
		}
		if a.lock == nil {
			return func() {}, nil
		}
		rel, ok, err := a.lock.TryLock(ctx, key, lockTTL)
		if err != nil {
			a.logger.Warn("tls: acme: fleet lock unavailable; going ahead alone", "key", key, "err", err)
			return func() {}, nil
		}
		if ok {
			// The previous holder may have finished between Get and TryLock.
			if v, err := a.inner.Get(ctx, key); err == nil && done(a, v) {
				rel()
				return nil, nil
			}
			return rel, nil
		}
		if !waited {
			a.logger.Info("tls: acme: another proxy holds the lock; waiting for its result", "key", key)
		}
		t := time.NewTimer(pollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("tls: acme: waiting for another proxy to store %q: %w", key, ctx.Err())
		case <-t.C:
		}
	}
}

func (a *ACME) hold(key string, release func()) *heldLock {
	h := &heldLock{release: release, until: time.Now().Add(lockTTL - time.Minute)}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.held[key]; old != nil {
		old.release()
	}
	a.held[key] = h
	return h
}

// holds reports whether this process holds key's lock, and it still has a
// safe margin before expiring.
func (a *ACME) holds(key string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.held[key]
	return h != nil && time.Now().Before(h.until)
}

// release gives back key's lock if this process holds it.
func (a *ACME) release(key string) {
	a.mu.Lock()
	h := a.held[key]
	delete(a.held, key)
	a.mu.Unlock()
	if h != nil {
		h.release()
	}
}

// releaseIf releases key's lock only if h is still the holder.
func (a *ACME) releaseIf(key string, h *heldLock) {
	a.mu.Lock()
	cur := a.held[key]
	if cur == h {
		delete(a.held, key)
	}
	a.mu.Unlock()
	if cur == h {
		h.release()
	}
}

// usable reports a cached certificate that autocert will load rather than
// order anew: currently valid.
func usable(_ *ACME, v []byte) bool {
	leaf := cachedLeaf(v)
	now := time.Now()
	return leaf != nil && !now.Before(leaf.NotBefore) && now.Before(leaf.NotAfter)
}

// fresh reports a cached certificate that is not due for renewal.
func fresh(a *ACME, v []byte) bool {
	leaf := cachedLeaf(v)
	return leaf != nil && time.Now().Before(leaf.NotAfter.Add(-a.renewThreshold(leaf)))
}

// present accepts any value (the account key).
func present(*ACME, []byte) bool { return true }

// renewThreshold mirrors autocert's: RenewBefore if set, else a third of
// the lifetime, capped at 30 days. autocert renews at notAfter minus the
// threshold plus up to 10% jitter, so at that moment fresh is false.
func (a *ACME) renewThreshold(leaf *x509.Certificate) time.Duration {
	t := leaf.NotAfter.Sub(leaf.NotBefore) / 3
	if a.m.RenewBefore > 0 {
		t = a.m.RenewBefore
	}
	return min(t, 30*24*time.Hour)
}

// cachedLeaf parses the leaf of an autocert cache value (PEM key, then the
// chain leaf first).
func cachedLeaf(v []byte) *x509.Certificate {
	for rest := v; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil
		}
		if b.Type == "CERTIFICATE" {
			leaf, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil
			}
			return leaf
		}
	}
}

// isCertKey matches the cache keys of certificates ("<domain>",
// "<domain>+rsa"), not the account key or challenge material.
func isCertKey(name string) bool {
	return name != accountKeyName && name != "acme_account.key" && !isChallengeKey(name)
}

// coordCache sits between autocert and the caller's cache. It takes the
// fleet lock where autocert is about to order without telling us: the
// account key's creation and renewal (autocert's timer reads the cache,
// then orders if the cached certificate is due). First issuance is
// coordinated in ACME.get, before autocert is called. It also logs each
// certificate stored, which is how renewals become visible.
type coordCache struct{ a *ACME }

func (c coordCache) Get(ctx context.Context, name string) ([]byte, error) {
	a := c.a
	v, err := a.inner.Get(ctx, name)
	if a.lock == nil || isChallengeKey(name) {
		return v, err
	}
	if name == accountKeyName {
		if err != autocert.ErrCacheMiss || a.holds(name) {
			return v, err
		}
		rel, err := a.await(ctx, name, present)
		if err != nil {
			return nil, err
		}
		if rel == nil {
			return a.inner.Get(ctx, name)
		}
		a.hold(name, rel) // released by Put once autocert stored the new key
		return nil, autocert.ErrCacheMiss
	}
	if !isCertKey(name) || err != nil || fresh(a, v) || a.holds(name) {
		return v, err
	}
	// Due for renewal: one proxy renews, the others wait for its result.
	wctx, cancel := context.WithTimeout(ctx, renewalWait)
	defer cancel()
	rel, werr := a.await(wctx, name, fresh)
	if werr != nil {
		a.logger.Warn("tls: acme: renewing without the fleet lock", "key", name, "err", werr)
		return v, nil
	}
	if rel == nil {
		return a.inner.Get(ctx, name)
	}
	a.hold(name, rel) // released by Put once the renewed certificate is stored
	return v, nil
}

func (c coordCache) Put(ctx context.Context, name string, data []byte) error {
	err := c.a.inner.Put(ctx, name, data)
	if !isChallengeKey(name) {
		c.a.release(name)
	}
	if isCertKey(name) {
		if err != nil {
			c.a.logger.Error("tls: acme: cannot store certificate", "key", name, "err", err)
		} else if leaf := cachedLeaf(data); leaf != nil {
			c.a.obtained.Add(1)
			c.a.logger.Info("tls: acme: certificate stored", "key", name,
				"cert", acmeInfo(&stdtls.Certificate{Certificate: [][]byte{leaf.Raw}, Leaf: leaf}, "acme"))
		}
	}
	return err
}

func (c coordCache) Delete(ctx context.Context, name string) error {
	return c.a.inner.Delete(ctx, name)
}
