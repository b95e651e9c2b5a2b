package tls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	stdtls "crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/portico-mail/portico/internal/testsrv"
)

func TestACMEOptions(t *testing.T) {
	for _, names := range [][]string{nil, {""}, {"*.example.test"}, {"127.0.0.1"}, {"localhost"}, {"mail.test:993"}} {
		if _, err := NewACME(ACMEOptions{Hostnames: names}); err == nil {
			t.Errorf("NewACME(%q) accepted", names)
		}
	}
	a, err := NewACME(ACMEOptions{Hostnames: []string{"Mail.Test.", "imap.test", "mail.test"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Hostnames(); len(got) != 2 || got[0] != "mail.test" || got[1] != "imap.test" {
		t.Errorf("Hostnames = %q", got)
	}
	if !a.Manages("MAIL.test") || a.Manages("other.test") {
		t.Error("Manages")
	}
	for _, host := range []string{"mail.test", "mail.test:38405", "IMAP.test."} {
		if err := a.hostPolicy(context.Background(), host); err != nil {
			t.Errorf("hostPolicy(%q) = %v", host, err)
		}
	}
	if err := a.hostPolicy(context.Background(), "other.test:80"); !errors.Is(err, ErrNotManaged) {
		t.Errorf("hostPolicy(other) = %v", err)
	}
	_, err = a.GetCertificate(&stdtls.ClientHelloInfo{ServerName: "other.test"})
	if !errors.Is(err, ErrNotManaged) {
		t.Errorf("GetCertificate(other.test) = %v, want ErrNotManaged", err)
	}
	if !wantsRSA(&stdtls.ClientHelloInfo{}) || wantsRSA(ecdsaHello("x")) || !wantsRSA(rsaHello("x")) {
		t.Error("wantsRSA")
	}

	// As the example config says of http_address: only the challenge
	// path of a managed host is answered (an unknown token is a 404),
	// another host gets 403, and every other path 404, not a redirect.
	for _, tc := range []struct {
		url  string
		want int
	}{
		{"http://mail.test/inbox", http.StatusNotFound},
		{"http://mail.test/", http.StatusNotFound},
		{"http://192.0.2.1/", http.StatusNotFound},
		{"http://mail.test/.well-known/acme-challenge/unknown-token", http.StatusNotFound},
		{"http://192.0.2.1/.well-known/acme-challenge/unknown-token", http.StatusForbidden},
		{"http://other.test/.well-known/acme-challenge/unknown-token", http.StatusForbidden},
	} {
		rec := &recorder{header: http.Header{}}
		req, _ := http.NewRequest("GET", tc.url, nil)
		a.HTTPHandler().ServeHTTP(rec, req)
		if rec.code != tc.want {
			t.Errorf("GET %s = %d, want %d", tc.url, rec.code, tc.want)
		}
	}
}

type recorder struct {
	header http.Header
	code   int
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *recorder) WriteHeader(code int)        { r.code = code }

// testLogger keeps ACME's log lines with the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// orderCounter counts the orders pebble receives, across the ACME
// instances sharing it.
type orderCounter struct {
	next      http.RoundTripper
	orders    atomic.Int32 // new orders
	finalized atomic.Int32 // certificates issued
}

func (c *orderCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == "POST" {
		switch {
		case strings.HasPrefix(r.URL.Path, "/order-plz"):
			c.orders.Add(1)
		case strings.HasPrefix(r.URL.Path, "/finalize-order/"):
			c.finalized.Add(1)
		}
	}
	return c.next.RoundTrip(r)
}

func countingClient(p *testsrv.Pebble) (*http.Client, *orderCounter) {
	hc := p.HTTPClient()
	oc := &orderCounter{next: hc.Transport}
	hc.Transport = oc
	return hc, oc
}

// listenPort listens where pebble's validator dials.
func listenPort(t *testing.T, port int) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func serveHTTP01(t *testing.T, p *testsrv.Pebble, a *ACME) {
	ln := listenPort(t, p.HTTPPort)
	srv := &http.Server{Handler: a.HTTPHandler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func serveTLSALPN01(t *testing.T, p *testsrv.Pebble, a *ACME) {
	serveOn(listenPort(t, p.TLSPort), a.TLSALPNConfig())
}

// imapConfig is how Portico's listeners use ACME: their own config, ALPN imap.
func imapConfig(a *ACME) *stdtls.Config {
	return &stdtls.Config{MinVersion: stdtls.VersionTLS12, NextProtos: []string{"imap"}, GetCertificate: a.GetCertificate}
}

// servedSerial handshakes as an IMAP client trusting roots, with SNI name
// (or none when name is ""), and returns the serial of a certificate that
// verified for mail.test, in hex.
func acmeServedSerial(t *testing.T, addr, name string, roots *x509.CertPool) string {
	t.Helper()
	cfg := &stdtls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{"imap"}}
	if name == "" {
		// No SNI: Go sends none when ServerName is empty, so verify by hand.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs stdtls.ConnectionState) error {
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: "mail.test", Roots: roots, Intermediates: inter})
			return err
		}
	}
	st, err := dial(addr, cfg)
	if err != nil {
		t.Fatalf("handshake with SNI %q: %v", name, err)
	}
	if st.NegotiatedProtocol != "imap" {
		t.Errorf("ALPN = %q, want imap", st.NegotiatedProtocol)
	}
	return fmt.Sprintf("%x", st.PeerCertificates[0].SerialNumber) // as Describe writes it
}

// closedDirectory is a directory URL where nothing listens.
func closedDirectory(t *testing.T) string {
	return fmt.Sprintf("https://127.0.0.1:%d/dir", testsrv.FreePort(t))
}

func obtain(t *testing.T, a *ACME) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := a.Obtain(ctx); err != nil {
		t.Fatalf("Obtain: %v", err)
	}
}

func onlySerial(t *testing.T, a *ACME) string {
	t.Helper()
	certs := a.Certificates()
	if len(certs) != 1 {
		t.Fatalf("Certificates() = %v, want one", certs)
	}
	if certs[0].Source != "acme" || len(certs[0].Names) != 1 || certs[0].Names[0] != "mail.test" || certs[0].KeyType != "ECDSA P-256" {
		t.Errorf("Certificates()[0] = %+v", certs[0])
	}
	return certs[0].Serial
}

// TestACMEHTTP01 obtains mail.test through http-01, serves it on an IMAP
// style listener with and without SNI, then restarts from the encrypted
// directory cache with the CA unreachable.
func TestACMEHTTP01(t *testing.T) {
	p := testsrv.StartPebble(t, testsrv.PebbleOptions{})
	dir := t.TempDir()
	log := testLogger(t)
	cache := EncryptedCache{Cache: autocert.DirCache(dir), Key: []byte("secret"), Logger: log}
	a, err := NewACME(ACMEOptions{Hostnames: []string{"mail.test"}, Email: "postmaster@mail.test",
		DirectoryURL: p.DirectoryURL, HTTPClient: p.HTTPClient(), Cache: cache, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP01(t, p, a) // nothing on TLSPort: tls-alpn-01 fails, http-01 follows
	obtain(t, a)
	serial := onlySerial(t, a)
	if st := a.Stats(); st != (ACMEStats{Obtained: 1}) {
		t.Errorf("Stats() = %+v after the first issuance", st)
	}

	roots := p.Roots(t)
	addr := serve(t, imapConfig(a))
	if got := acmeServedSerial(t, addr, "mail.test", roots); got != serial {
		t.Errorf("SNI mail.test served serial %s, want %s", got, serial)
	}
	if got := acmeServedSerial(t, addr, "", roots); got != serial {
		t.Errorf("no SNI served serial %s, want %s", got, serial)
	}
	if _, err := dial(addr, &stdtls.Config{ServerName: "other.test", RootCAs: roots, NextProtos: []string{"imap"}}); err == nil {
		t.Error("handshake for an unmanaged name succeeded")
	}

	// Nothing in the cache directory is a private key in clear.
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(files) < 2 { // account key and certificate
		t.Errorf("cache holds %q", files)
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if bytes.Contains(b, []byte("PRIVATE KEY")) || bytes.Contains(b, []byte("CERTIFICATE")) {
			t.Errorf("%s is stored in clear", f)
		}
	}

	// Restart with the CA unreachable: the cache is enough.
	b, err := NewACME(ACMEOptions{Hostnames: []string{"mail.test"}, DirectoryURL: closedDirectory(t), Cache: cache, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	obtain(t, b)
	if got := onlySerial(t, b); got != serial {
		t.Errorf("from cache: serial %s, want %s", got, serial)
	}
	if st := b.Stats(); st != (ACMEStats{}) {
		t.Errorf("Stats() = %+v, loaded from the cache", st)
	}
	cached, err := b.Cached(context.Background())
	if err != nil || len(cached) != 1 || cached[0].Serial != serial || cached[0].Source != "acme cache" {
		t.Errorf("Cached() = %v, %v", cached, err)
	}

	// A wrong key is a miss, and with the CA unreachable Obtain fails
	// rather than crash or serve nothing silently.
	c, _ := NewACME(ACMEOptions{Hostnames: []string{"mail.test"}, DirectoryURL: closedDirectory(t), Logger: log,
		Cache: EncryptedCache{Cache: autocert.DirCache(dir), Key: []byte("wrong"), Logger: log}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Obtain(ctx); err == nil {
		t.Error("Obtain with a wrong cache key and no CA succeeded")
	}
	if st := c.Stats(); st != (ACMEStats{}) {
		t.Errorf("Stats() = %+v: a wrong key stops Obtain before any certificate is asked for", st)
	}
	// A CA that does not answer: the certificate is counted as failed.
	d, _ := NewACME(ACMEOptions{Hostnames: []string{"mail.test"}, DirectoryURL: closedDirectory(t), Logger: log})
	if err := d.Obtain(ctx); err == nil {
		t.Error("Obtain with no CA succeeded")
	}
	if st := d.Stats(); st != (ACMEStats{Failed: 1}) {
		t.Errorf("Stats() = %+v after an order that failed", st)
	}
}

// TestACMETLSALPN01 obtains mail.test through tls-alpn-01 only.
func TestACMETLSALPN01(t *testing.T) {
	p := testsrv.StartPebble(t, testsrv.PebbleOptions{})
	hc, oc := countingClient(p)
	a, err := NewACME(ACMEOptions{Hostnames: []string{"mail.test"}, DirectoryURL: p.DirectoryURL, HTTPClient: hc,
		Cache: EncryptedCache{Cache: autocert.DirCache(t.TempDir()), Key: []byte("k")}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	serveTLSALPN01(t, p, a)
	obtain(t, a)
	if n := oc.orders.Load(); n != 1 {
		t.Errorf("%d orders, want 1 (tls-alpn-01 succeeds at once)", n)
	}
	serial := onlySerial(t, a)
	addr := serve(t, imapConfig(a))
	if got := acmeServedSerial(t, addr, "mail.test", p.Roots(t)); got != serial {
		t.Errorf("served serial %s, want %s", got, serial)
	}

	// The challenge listener refuses ordinary clients.
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", p.TLSPort)
	if _, err := dial(tlsAddr, &stdtls.Config{ServerName: "mail.test", InsecureSkipVerify: true, NextProtos: []string{"imap"}}); err == nil {
		t.Error("TLS-ALPN listener served an IMAP client")
	}
	// And an acme-tls/1 hello for a name not managed gets nothing.
	if _, err := a.GetCertificate(&stdtls.ClientHelloInfo{ServerName: "other.test", SupportedProtos: []string{acme.ALPNProto}}); !errors.Is(err, ErrNotManaged) {
		t.Errorf("token hello for other.test: %v", err)
	}
}

func fleetMember(t *testing.T, p *testsrv.Pebble, hc *http.Client, rdb redis.UniversalClient, o ACMEOptions) *ACME {
	t.Helper()
	o.Hostnames = []string{"mail.test"}
	if o.DirectoryURL == "" && p != nil {
		o.DirectoryURL = p.DirectoryURL
	}
	if hc != nil {
		o.HTTPClient = hc
	}
	o.Logger = testLogger(t)
	o.Cache = RedisCache{Client: rdb, Prefix: "fleet:", Key: []byte("fleet secret"), Logger: o.Logger}
	o.Lock = RedisLocker{Client: rdb, Prefix: "fleet:"}
	a, err := NewACME(o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestACMEFleet starts two proxies on one Redis cache at the same time:
// one order, one certificate, served by both; a third starts from Redis
// with the CA unreachable.
func TestACMEFleet(t *testing.T) {
	p := testsrv.StartPebble(t, testsrv.PebbleOptions{})
	r := testsrv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	hc, oc := countingClient(p)

	a := fleetMember(t, p, hc, rdb, ACMEOptions{})
	b := fleetMember(t, p, hc, rdb, ACMEOptions{})
	// Only a's challenge listener exists: b's tokens reach it through Redis.
	serveTLSALPN01(t, p, a)

	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, m := range []*ACME{a, b} {
		wg.Go(func() { <-start; obtain(t, m) })
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if o, f := oc.orders.Load(), oc.finalized.Load(); o != 1 || f != 1 {
		t.Errorf("%d orders and %d certificates for two proxies, want 1 and 1", o, f)
	}
	sa, sb := onlySerial(t, a), onlySerial(t, b)
	if sa != sb {
		t.Errorf("proxies serve serials %s and %s", sa, sb)
	}
	roots := p.Roots(t)
	for _, m := range []*ACME{a, b} {
		if got := acmeServedSerial(t, serve(t, imapConfig(m)), "mail.test", roots); got != sa {
			t.Errorf("served serial %s, want %s", got, sa)
		}
	}

	ctx := context.Background()
	keys := rdb.Keys(ctx, "*").Val()
	for _, k := range keys {
		if !strings.HasPrefix(k, "fleet:acme:") {
			t.Errorf("key %q outside the prefix", k)
		}
		if strings.Contains(k, "lock") {
			t.Errorf("lock %q left behind", k)
		}
		if v := rdb.Get(ctx, k).Val(); strings.Contains(v, "PRIVATE KEY") || strings.Contains(v, "CERTIFICATE") {
			t.Errorf("%s is stored in clear", k)
		}
	}
	if rdb.Exists(ctx, "fleet:acme:mail.test", "fleet:acme:acme_account+key").Val() != 2 {
		t.Errorf("keys in redis: %q", keys)
	}

	// A third proxy restarts from Redis with the CA unreachable.
	c := fleetMember(t, p, hc, rdb, ACMEOptions{DirectoryURL: closedDirectory(t)})
	obtain(t, c)
	if got := onlySerial(t, c); got != sa {
		t.Errorf("from redis: serial %s, want %s", got, sa)
	}
	if n := oc.finalized.Load(); n != 1 {
		t.Errorf("%d certificates after the restart, want 1", n)
	}
}

// TestACMERenewal lets pebble issue 30-second certificates and autocert
// renew them 20 seconds before expiry, on two proxies sharing Redis: both
// switch to the renewed certificate without a restart, after one order.
func TestACMERenewal(t *testing.T) {
	p := testsrv.StartPebble(t, testsrv.PebbleOptions{CertificateValidityPeriod: 30})
	r := testsrv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	hc, oc := countingClient(p)
	o := ACMEOptions{RenewBefore: 20 * time.Second}
	a := fleetMember(t, p, hc, rdb, o)
	b := fleetMember(t, p, hc, rdb, o)
	serveTLSALPN01(t, p, a)
	obtain(t, a)
	obtain(t, b)
	first := onlySerial(t, a)
	if onlySerial(t, b) != first {
		t.Fatal("proxies start with different certificates")
	}
	roots := p.Roots(t)
	addrA, addrB := serve(t, imapConfig(a)), serve(t, imapConfig(b))

	// Renewal is due about 10 s after issuance; the next one 10 s later.
	deadline := time.Now().Add(25 * time.Second)
	var sa, sb string
	for {
		sa = acmeServedSerial(t, addrA, "mail.test", roots)
		sb = acmeServedSerial(t, addrB, "mail.test", roots)
		if sa != first && sb != first && sa == sb {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 25s: serving %s and %s, first certificate %s", sa, sb, first)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := oc.finalized.Load(); n != 2 {
		t.Errorf("%d certificates issued, want 2 (the first and one renewal for both proxies)", n)
	}
	// Each order is counted by the proxy that placed it.
	if sa, sb := a.Stats(), b.Stats(); sa.Obtained+sb.Obtained != 2 || sa.Failed+sb.Failed != 0 {
		t.Errorf("Stats() = %+v and %+v, want 2 obtained in all", sa, sb)
	}
}

// cachedPEM is an autocert cache value (key, then leaf) for mail.test,
// valid from notBefore to notAfter.
func cachedPEM(t *testing.T, notBefore, notAfter time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c, err := selfSignedValid(key, []string{"mail.test"}, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})...)
}

// TestACMERenewalLock drives the cache autocert sees the way its renewal
// timers do, on two proxies at the same moment: one gets the due
// certificate (and renews), the other waits and gets the renewed one.
func TestACMERenewalLock(t *testing.T) {
	r := testsrv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	o := ACMEOptions{DirectoryURL: closedDirectory(t), RenewBefore: time.Hour}
	a := fleetMember(t, nil, nil, rdb, o)
	b := fleetMember(t, nil, nil, rdb, o)
	now := time.Now()
	due := cachedPEM(t, now.Add(-time.Hour), now.Add(30*time.Minute))
	renewed := cachedPEM(t, now.Add(-time.Minute), now.Add(30*24*time.Hour))

	for _, tc := range []struct{ key, initial, stored []byte }{
		{[]byte("mail.test"), due, renewed},
		{[]byte(accountKeyName), nil, []byte("account key")},
	} {
		key := string(tc.key)
		if tc.initial != nil {
			a.inner.Put(ctx, key, tc.initial)
		}
		v, err := a.m.Cache.Get(ctx, key)
		if tc.initial != nil && !bytes.Equal(v, tc.initial) || tc.initial == nil && err != autocert.ErrCacheMiss {
			t.Fatalf("%s: first proxy got %.20q, %v", key, v, err)
		}
		if rdb.Exists(ctx, "fleet:acme:lock:"+key).Val() != 1 {
			t.Fatalf("%s: no lock while the first proxy works", key)
		}
		got := make(chan []byte, 1)
		go func() {
			v, _ := b.m.Cache.Get(ctx, key)
			got <- v
		}()
		select {
		case v := <-got:
			t.Fatalf("%s: second proxy did not wait: got %.20q", key, v)
		case <-time.After(600 * time.Millisecond):
		}
		if err := a.m.Cache.Put(ctx, key, tc.stored); err != nil {
			t.Fatal(err)
		}
		select {
		case v := <-got:
			if !bytes.Equal(v, tc.stored) {
				t.Errorf("%s: second proxy got %.20q, want what the first stored", key, v)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: second proxy still waiting", key)
		}
		if rdb.Exists(ctx, "fleet:acme:lock:"+key).Val() != 0 {
			t.Errorf("%s: lock left after Put", key)
		}
	}
}
