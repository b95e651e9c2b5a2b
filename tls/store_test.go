package tls

import (
	"crypto/ed25519"
	"crypto/rand"
	stdtls "crypto/tls"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLoadStoreKeyTypes(t *testing.T) {
	dir := t.TempDir()
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ed, err := selfSigned(edKey, []string{"ed.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	pairs := []Pair{
		writePair(t, dir, "ecdsa", mustSelfSigned(t, "mail.example.test", "192.0.2.1")),
		writePair(t, dir, "rsa", mustSelfSignedRSA(t, "mail.example.test")),
		writePair(t, dir, "ed", ed),
	}
	s, err := LoadStore(pairs)
	if err != nil {
		t.Fatal(err)
	}
	infos := s.Certificates()
	want := []string{"ECDSA P-256", "RSA 2048", "Ed25519"}
	if len(infos) != len(want) {
		t.Fatalf("got %d certificates, want %d", len(infos), len(want))
	}
	for i, info := range infos {
		if info.KeyType != want[i] {
			t.Errorf("certificate %d: key type %q, want %q", i, info.KeyType, want[i])
		}
		if info.Source != pairs[i].CertFile {
			t.Errorf("certificate %d: source %q, want %q", i, info.Source, pairs[i].CertFile)
		}
	}
	if got := strings.Join(infos[0].Names, ","); got != "mail.example.test,192.0.2.1" {
		t.Errorf("names %q", got)
	}
	if w := s.Warnings(14 * 24 * time.Hour); len(w) != 0 {
		t.Errorf("unexpected warnings %q", w)
	}
	for _, e := range s.set.Load().all {
		if e.cert.Leaf == nil {
			t.Errorf("%s: leaf not parsed", e.source)
		}
	}
	if !strings.Contains(infos[0].String(), "mail.example.test") || !strings.Contains(infos[0].String(), "ECDSA P-256") {
		t.Errorf("String() = %q", infos[0].String())
	}
}

func TestWritePEMModes(t *testing.T) {
	dir := t.TempDir()
	c := mustSelfSigned(t, "mail.example.test")
	p := writePair(t, dir, "c", c)
	for file, mode := range map[string]fs.FileMode{p.KeyFile: 0o600, p.CertFile: 0o644} {
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", file, fi.Mode().Perm(), mode)
		}
	}
	// Overwriting an existing, world-readable key file must not keep its mode.
	os.Chmod(p.KeyFile, 0o644)
	if err := WritePEM(c, p.CertFile, p.KeyFile); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p.KeyFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("rewritten key mode %v", fi.Mode().Perm())
	}
	got, err := LoadPair(p)
	if err != nil {
		t.Fatal(err)
	}
	if serial(got) != serial(c) {
		t.Error("round trip changed the certificate")
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	a := writePair(t, dir, "a", mustSelfSigned(t, "a.test"))
	b := writePair(t, dir, "b", mustSelfSigned(t, "b.test"))
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("not PEM at all\n"), 0o600)
	missing := filepath.Join(dir, "missing.pem")
	encrypted := filepath.Join(dir, "enc.key")
	os.WriteFile(encrypted, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"), 0o600)

	tests := []struct {
		name string
		pair Pair
		want []string // substrings of the error
	}{
		{"missing cert", Pair{missing, a.KeyFile}, []string{missing, "no such file"}},
		{"missing key", Pair{a.CertFile, missing}, []string{missing, "no such file", "key"}},
		{"garbage cert", Pair{garbage, a.KeyFile}, []string{garbage, "no PEM CERTIFICATE"}},
		{"garbage key", Pair{a.CertFile, garbage}, []string{garbage, "no PEM PRIVATE KEY"}},
		{"swapped", Pair{a.KeyFile, a.CertFile}, []string{a.KeyFile, "swapped"}},
		{"mismatch", Pair{a.CertFile, b.KeyFile}, []string{b.KeyFile, a.CertFile, "does not match"}},
		{"encrypted", Pair{a.CertFile, encrypted}, []string{encrypted, "encrypted"}},
		{"no cert file", Pair{"", a.KeyFile}, []string{"no certificate file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadStore([]Pair{a, tt.pair})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	if _, err := LoadStore([]Pair{{missing, a.KeyFile}}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v does not wrap fs.ErrNotExist", err)
	}
	if _, err := LoadStore(nil); err == nil {
		t.Error("LoadStore(nil) succeeded")
	}
}

func TestExpiredLoadsWithWarning(t *testing.T) {
	dir := t.TempDir()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	old, err := selfSignedValid(key, []string{"old.test"}, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	soon := mustSelfSigned(t, "soon.test")
	soon.Leaf.NotAfter = time.Now().Add(3 * 24 * time.Hour) // only the parsed copy matters here
	fresh := mustSelfSigned(t, "fresh.test")

	s, err := LoadStore([]Pair{writePair(t, dir, "old", old)})
	if err != nil {
		t.Fatalf("expired certificate refused: %v", err)
	}
	ws := s.Warnings(14 * 24 * time.Hour)
	if len(ws) != 1 || !strings.Contains(ws[0], "expired") || !strings.Contains(ws[0], "old.pem") {
		t.Errorf("warnings %q", ws)
	}
	if !ExpiresWithin(&old, 0) {
		t.Error("ExpiresWithin(expired, 0) = false")
	}
	if !ExpiresWithin(&soon, 14*24*time.Hour) || ExpiresWithin(&soon, 24*time.Hour) {
		t.Error("ExpiresWithin wrong for a certificate expiring in 3 days")
	}
	if ExpiresWithin(&fresh, 14*24*time.Hour) {
		t.Error("fresh certificate reported as expiring")
	}
	ws = mustStore(t, soon).Warnings(14 * 24 * time.Hour)
	if len(ws) != 1 || !strings.Contains(ws[0], "expires") {
		t.Errorf("warnings %q", ws)
	}
}

func TestZeroStore(t *testing.T) {
	var s Store
	if _, err := s.GetCertificate(&stdtls.ClientHelloInfo{ServerName: "x.test"}); err == nil {
		t.Error("empty store returned a certificate")
	}
	if s.Certificates() != nil || s.Warnings(time.Hour) != nil {
		t.Error("empty store describes certificates")
	}
	c := mustSelfSigned(t, "x.test")
	s.Replace(mustStore(t, c))
	got, err := s.GetCertificate(&stdtls.ClientHelloInfo{})
	if err != nil || serial(*got) != serial(c) {
		t.Errorf("after Replace: %v", err)
	}
}

func TestSNISelection(t *testing.T) {
	def := mustSelfSigned(t, "mail.example.test")
	wild := mustSelfSigned(t, "*.example.test")
	otherRSA := mustSelfSignedRSA(t, "other.test")
	otherEC := mustSelfSigned(t, "other.test")
	ip := mustSelfSigned(t, "127.0.0.1")
	// RSA loaded before ECDSA: the preference must not depend on order.
	s := mustStore(t, def, wild, otherRSA, otherEC, ip)
	addr := serve(t, ServerConfig(s, 0))

	rsaOnly := func(sni string) *stdtls.Config {
		c := insecure(sni)
		c.MaxVersion = stdtls.VersionTLS12
		c.CipherSuites = []uint16{stdtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
		return c
	}
	tests := []struct {
		name string
		cfg  *stdtls.Config
		want stdtls.Certificate
	}{
		{"exact", insecure("mail.example.test"), def},
		{"exact, other case, trailing dot", insecure("MAIL.Example.Test."), def},
		{"wildcard", insecure("imap.example.test"), wild},
		{"wildcard covers one label only", insecure("a.b.example.test"), def},
		{"unknown name", insecure("unknown.test"), def},
		{"ECDSA preferred", insecure("other.test"), otherEC},
		{"ECDSA preferred, TLS 1.2", &stdtls.Config{ServerName: "other.test", InsecureSkipVerify: true, MaxVersion: stdtls.VersionTLS12}, otherEC},
		{"RSA for RSA-only client", rsaOnly("other.test"), otherRSA},
		// No SNI on a connection to 127.0.0.1: the certificate for that IP.
		{"no SNI, IP certificate", insecure(""), ip},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := servedSerial(t, addr, tt.cfg); got != serial(tt.want) {
				t.Errorf("served %s, want %s", got, serial(tt.want))
			}
		})
	}

	// Without an IP certificate, no SNI gets the default; an RSA twin of the
	// default (same names) serves RSA-only clients that ask for unknown names.
	defRSA := mustSelfSignedRSA(t, "mail.example.test")
	addr2 := serve(t, ServerConfig(mustStore(t, def, wild, defRSA), 0))
	for _, tt := range []struct {
		name string
		cfg  *stdtls.Config
		want stdtls.Certificate
	}{
		{"no SNI", insecure(""), def},
		{"unknown, RSA-only", rsaOnly("unknown.test"), defRSA},
		{"no SNI, RSA-only", rsaOnly(""), defRSA},
		{"exact, RSA-only", rsaOnly("mail.example.test"), defRSA},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := servedSerial(t, addr2, tt.cfg); got != serial(tt.want) {
				t.Errorf("served %s, want %s", got, serial(tt.want))
			}
		})
	}
}

// A verifying client must accept the chosen certificate for its name.
func TestSNIVerified(t *testing.T) {
	a := mustSelfSigned(t, "a.test")
	w := mustSelfSigned(t, "*.b.test")
	addr := serve(t, ServerConfig(mustStore(t, a, w), 0))
	for _, name := range []string{"a.test", "x.b.test"} {
		if _, err := dial(addr, &stdtls.Config{ServerName: name, RootCAs: CertPool(a, w)}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestReplaceDuringHandshakes(t *testing.T) {
	a := mustSelfSigned(t, "mail.example.test")
	b := mustSelfSignedRSA(t, "mail.example.test")
	storeA, storeB := mustStore(t, a), mustStore(t, b)
	s := mustStore(t, a)
	addr := serve(t, ServerConfig(s, 0))
	client := &stdtls.Config{ServerName: "mail.example.test", RootCAs: CertPool(a, b)}

	var (
		wg       sync.WaitGroup
		failures atomic.Int64
		seenA    atomic.Int64
		seenB    atomic.Int64
		stop     atomic.Bool
	)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40 && !stop.Load(); i++ {
				st, err := dial(addr, client)
				if err != nil {
					failures.Add(1)
					t.Error(err)
					continue
				}
				switch st.PeerCertificates[0].SerialNumber.String() {
				case serial(a):
					seenA.Add(1)
				case serial(b):
					seenB.Add(1)
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; !stop.Load(); i++ {
			if i%2 == 0 {
				s.Replace(storeB)
			} else {
				s.Replace(storeA)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	stop.Store(true)
	<-done
	if failures.Load() != 0 {
		t.Fatalf("%d failed handshakes during Replace", failures.Load())
	}
	t.Logf("served A %d times, B %d times", seenA.Load(), seenB.Load())

	s.Replace(storeB)
	if got := servedSerial(t, addr, client); got != serial(b) {
		t.Error("Replace did not take effect")
	}
}

// Hellos built by hand (no connection, no versions) exercise lookup alone.
func TestGetCertificateLookup(t *testing.T) {
	def := mustSelfSigned(t, "mail.example.test")
	wild := mustSelfSigned(t, "*.Example.Test")
	s := mustStore(t, def, wild)
	for sni, want := range map[string]stdtls.Certificate{
		"MAIL.example.test.": def,
		"x.example.test.":    wild,
		"example.test":       def,
		".example.test":      def,
		"":                   def,
		"*.example.test":     wild,
	} {
		got, err := s.GetCertificate(&stdtls.ClientHelloInfo{ServerName: sni})
		if err != nil {
			t.Fatal(err)
		}
		if serial(*got) != serial(want) {
			t.Errorf("SNI %q: got %v", sni, got.Leaf.DNSNames)
		}
	}
}

func TestDescribe(t *testing.T) {
	c := mustSelfSignedRSA(t, "mail.example.test", "::1")
	info := Describe(&c)
	if info.KeyType != "RSA 2048" || strings.Join(info.Names, ",") != "mail.example.test,::1" ||
		!strings.Contains(info.Issuer, "mail.example.test") || info.Serial == "" {
		t.Errorf("Describe = %+v", info)
	}
	c.Leaf = nil // Describe parses the leaf itself
	if Describe(&c).NotAfter.IsZero() {
		t.Error("Describe without Leaf lost the expiry")
	}
	if v := info.LogValue(); len(v.Group()) == 0 {
		t.Error("LogValue is not a group")
	}
}
