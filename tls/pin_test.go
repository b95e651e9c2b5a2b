package tls

import (
	"crypto/sha256"
	stdtls "crypto/tls"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestPinSHA256(t *testing.T) {
	dir := t.TempDir()
	backend := mustSelfSigned(t, "backend.test")
	stranger := mustSelfSigned(t, "backend.test")
	ca := writePair(t, dir, "backend", backend)
	addr := serve(t, ServerConfig(mustStore(t, backend), 0))

	pin := PinSHA256(backend.Leaf)
	if sum := sha256.Sum256(backend.Leaf.RawSubjectPublicKeyInfo); pin != base64.StdEncoding.EncodeToString(sum[:]) || len(pin) != 44 {
		t.Fatalf("PinSHA256 = %q", pin)
	}
	other := PinSHA256(stranger.Leaf)

	for _, tt := range []struct {
		name string
		o    ClientOptions
		ok   bool
	}{
		{"verified and pinned", ClientOptions{CAFile: ca.CertFile, ServerName: "backend.test", PinSHA256: []string{other, pin}}, true},
		{"verified, wrong pin", ClientOptions{CAFile: ca.CertFile, ServerName: "backend.test", PinSHA256: []string{other}}, false},
		{"pin alone (insecure_skip_verify)", ClientOptions{InsecureSkipVerify: true, PinSHA256: []string{pin}}, true},
		{"pin alone, wrong", ClientOptions{InsecureSkipVerify: true, PinSHA256: []string{other}}, false},
		{"sha256/ prefix", ClientOptions{InsecureSkipVerify: true, PinSHA256: []string{"sha256/" + pin}}, true},
	} {
		cfg, err := ClientConfig(tt.o)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		_, err = dial(addr, cfg)
		switch {
		case tt.ok && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case !tt.ok && !errors.Is(err, ErrPinMismatch):
			t.Errorf("%s: got %v, want ErrPinMismatch", tt.name, err)
		case !tt.ok && !strings.Contains(err.Error(), pin):
			t.Errorf("%s: error %q does not show the server's pin", tt.name, err)
		}
	}

	// The pin does not replace verification when verification is on.
	stray := mustSelfSigned(t, "backend.test")
	strayCA := writePair(t, dir, "stray", stray)
	cfg, err := ClientConfig(ClientOptions{CAFile: strayCA.CertFile, ServerName: "backend.test", PinSHA256: []string{pin}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(addr, cfg); err == nil || errors.Is(err, ErrPinMismatch) {
		t.Errorf("unknown authority with a matching pin: %v", err)
	}

	for _, bad := range []string{"", "abc", base64.StdEncoding.EncodeToString([]byte("short")), "!!!"} {
		if _, err := ClientConfig(ClientOptions{PinSHA256: []string{bad}}); err == nil || !strings.Contains(err.Error(), "pin_sha256") {
			t.Errorf("pin %q: error %v", bad, err)
		}
	}
}

func TestNewServerConfig(t *testing.T) {
	c := mustSelfSigned(t, "mail.example.test")
	s := mustStore(t, c)
	override := mustSelfSigned(t, "mail.example.test")
	cfg := NewServerConfig(ServerOptions{
		Store: s,
		GetCertificate: func(*stdtls.ClientHelloInfo) (*stdtls.Certificate, error) {
			return &override, nil
		},
		MinVersion:   stdtls.VersionTLS12,
		CipherSuites: []uint16{stdtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
		Curves:       []stdtls.CurveID{stdtls.CurveP256},
	})
	addr := serve(t, cfg)
	if got := servedSerial(t, addr, insecure("mail.example.test")); got != serial(override) {
		t.Error("GetCertificate override not used")
	}
	cl := insecure("mail.example.test")
	cl.MaxVersion = stdtls.VersionTLS12
	st, err := dial(addr, cl)
	if err != nil {
		t.Fatal(err)
	}
	if st.CipherSuite != stdtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 {
		t.Errorf("suite %s", stdtls.CipherSuiteName(st.CipherSuite))
	}
	if st.CurveID != stdtls.CurveP256 {
		t.Errorf("curve %s", st.CurveID)
	}
	cl = insecure("mail.example.test")
	cl.CipherSuites = []uint16{stdtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	cl.MaxVersion = stdtls.VersionTLS12
	if _, err := dial(addr, cl); err == nil {
		t.Error("a suite outside the configured list was negotiated")
	}

	// Tickets off: no resumption.
	addr = serve(t, NewServerConfig(ServerOptions{Store: s, SessionTicketsDisabled: true}))
	cl = insecure("mail.example.test")
	cl.ClientSessionCache = stdtls.NewLRUClientSessionCache(2)
	dial(addr, cl)
	if st, err := dial(addr, cl); err != nil || st.DidResume {
		t.Errorf("resumed with tickets disabled (%v)", err)
	}
	if cfg := ServerConfig(s, 0); cfg.SessionTicketsDisabled || cfg.CipherSuites != nil || cfg.CurvePreferences != nil {
		t.Error("ServerConfig does not keep the defaults")
	}
}

func TestParseCipherSuites(t *testing.T) {
	got, err := ParseCipherSuites([]string{"tls_ecdhe_ecdsa_with_aes_128_gcm_sha256", " TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint16{stdtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, stdtls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256}; !sameIDs(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got, err := ParseCipherSuites(nil); got != nil || err != nil {
		t.Errorf("empty: %v %v", got, err)
	}
	for name, want := range map[string]string{
		"TLS_RSA_WITH_AES_128_GCM_SHA256":         "insecure",
		"TLS_ECDHE_RSA_WITH_RC4_128_SHA":          "insecure",
		"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "insecure",
		"TLS_AES_128_GCM_SHA256":                  "TLS 1.3",
		"TLS_NOPE":                                "unknown",
	} {
		if _, err := ParseCipherSuites([]string{name}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", name, err, want)
		}
	}
}

func TestParseCurves(t *testing.T) {
	got, err := ParseCurves([]string{"x25519mlkem768", "X25519", "CurveP256", "p256", "P384", "p-521"})
	if err != nil {
		t.Fatal(err)
	}
	want := []stdtls.CurveID{stdtls.X25519MLKEM768, stdtls.X25519, stdtls.CurveP256, stdtls.CurveP384, stdtls.CurveP521}
	if !sameIDs(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := ParseCurves([]string{"P224"}); err == nil || !strings.Contains(err.Error(), "P224") {
		t.Errorf("P224: %v", err)
	}
	if got, err := ParseCurves(nil); got != nil || err != nil {
		t.Errorf("empty: %v %v", got, err)
	}
}

func sameIDs[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
