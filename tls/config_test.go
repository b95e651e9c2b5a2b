package tls

import (
	stdtls "crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMinVersion(t *testing.T) {
	for in, want := range map[string]uint16{
		"": stdtls.VersionTLS12, "1.2": stdtls.VersionTLS12, "1.3": stdtls.VersionTLS13, "TLS1.3": stdtls.VersionTLS13,
	} {
		got, err := ParseMinVersion(in)
		if err != nil || got != want {
			t.Errorf("ParseMinVersion(%q) = %x, %v; want %x", in, got, err, want)
		}
	}
	for _, in := range []string{"1.1", "1.0", "1.4", "tls"} {
		if _, err := ParseMinVersion(in); err == nil || !strings.Contains(err.Error(), in) {
			t.Errorf("ParseMinVersion(%q): error %v", in, err)
		}
	}
}

func TestALPN(t *testing.T) {
	c := mustSelfSigned(t, "mail.example.test")
	addr := serve(t, ServerConfig(mustStore(t, c), 0))
	for _, tt := range []struct {
		offer   []string
		ok      bool
		negoted string
	}{
		{[]string{"imap"}, true, "imap"},
		{[]string{"h2", "imap"}, true, "imap"},
		{nil, true, ""},
		{[]string{"h2"}, false, ""},
		{[]string{"http/1.1"}, false, ""},
	} {
		cfg := insecure("mail.example.test")
		cfg.NextProtos = tt.offer
		st, err := dial(addr, cfg)
		switch {
		case tt.ok && err != nil:
			t.Errorf("ALPN %q refused: %v", tt.offer, err)
		case !tt.ok && (err == nil || !strings.Contains(err.Error(), "no application protocol")):
			t.Errorf("ALPN %q: got %v, want the server to refuse it (ALPACA)", tt.offer, err)
		case tt.ok && st.NegotiatedProtocol != tt.negoted:
			t.Errorf("ALPN %q negotiated %q", tt.offer, st.NegotiatedProtocol)
		}
	}
}

func TestMinVersion(t *testing.T) {
	c := mustSelfSigned(t, "mail.example.test")
	s := mustStore(t, c)
	if got := ServerConfig(s, stdtls.VersionTLS10).MinVersion; got != stdtls.VersionTLS12 {
		t.Errorf("MinVersion 1.0 not raised: %x", got)
	}
	addr12 := serve(t, ServerConfig(s, 0))
	addr13 := serve(t, ServerConfig(s, stdtls.VersionTLS13))
	version := func(minV, maxV uint16) *stdtls.Config {
		cfg := insecure("mail.example.test")
		cfg.MinVersion, cfg.MaxVersion = minV, maxV
		return cfg
	}
	if _, err := dial(addr12, version(stdtls.VersionTLS10, stdtls.VersionTLS11)); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("TLS 1.1 client: got %v, want the server to refuse the version", err)
	}
	if st, err := dial(addr12, version(stdtls.VersionTLS12, stdtls.VersionTLS12)); err != nil || st.Version != stdtls.VersionTLS12 {
		t.Errorf("TLS 1.2 client: %v", err)
	}
	if _, err := dial(addr13, version(stdtls.VersionTLS12, stdtls.VersionTLS12)); err == nil {
		t.Error("TLS 1.2 client accepted with min 1.3")
	}
	if st, err := dial(addr13, version(0, 0)); err != nil || st.Version != stdtls.VersionTLS13 {
		t.Errorf("TLS 1.3 client: %v", err)
	}
}

func TestClientConfig(t *testing.T) {
	dir := t.TempDir()
	backend := mustSelfSigned(t, "backend.test")
	stranger := mustSelfSigned(t, "backend.test")
	good := writePair(t, dir, "backend", backend)
	bad := writePair(t, dir, "stranger", stranger)
	addr := serve(t, ServerConfig(mustStore(t, backend), 0))

	cfg, err := ClientConfig(ClientOptions{CAFile: good.CertFile, ServerName: "backend.test"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != stdtls.VersionTLS12 {
		t.Errorf("MinVersion %x", cfg.MinVersion)
	}
	if _, err := dial(addr, cfg); err != nil {
		t.Errorf("trusted backend refused: %v", err)
	}

	cfg, err = ClientConfig(ClientOptions{CAFile: bad.CertFile, ServerName: "backend.test"})
	if err != nil {
		t.Fatal(err)
	}
	var unknown x509.UnknownAuthorityError
	if _, err := dial(addr, cfg); !errors.As(err, &unknown) {
		t.Errorf("unknown backend: got %v, want UnknownAuthorityError", err)
	}

	cfg, _ = ClientConfig(ClientOptions{CAFile: good.CertFile, ServerName: "wrong.test"})
	if _, err := dial(addr, cfg); err == nil {
		t.Error("wrong server name accepted")
	}

	cfg, _ = ClientConfig(ClientOptions{CAFile: bad.CertFile, InsecureSkipVerify: true})
	if _, err := dial(addr, cfg); err != nil {
		t.Errorf("InsecureSkipVerify: %v", err)
	}

	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("nothing here"), 0o644)
	for _, tt := range []struct {
		o    ClientOptions
		want string
	}{
		{ClientOptions{CAFile: garbage}, garbage},
		{ClientOptions{CAFile: filepath.Join(dir, "none.pem")}, "none.pem"},
		{ClientOptions{CertFile: good.CertFile}, "both"},
		{ClientOptions{CertFile: good.CertFile, KeyFile: bad.KeyFile}, "does not match"},
	} {
		if _, err := ClientConfig(tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ClientConfig(%+v): error %v, want it to mention %q", tt.o, err, tt.want)
		}
	}
}

func TestClientCertificate(t *testing.T) {
	dir := t.TempDir()
	server := mustSelfSigned(t, "redis.test")
	client := mustSelfSigned(t, "portico.test")
	cp := writePair(t, dir, "client", client)
	sp := writePair(t, dir, "server", server)

	srv := ServerConfig(mustStore(t, server), 0)
	srv.ClientAuth = stdtls.RequireAndVerifyClientCert
	srv.ClientCAs = CertPool(client)
	addr := serve(t, srv)

	cfg, err := ClientConfig(ClientOptions{CAFile: sp.CertFile, ServerName: "redis.test", CertFile: cp.CertFile, KeyFile: cp.KeyFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(addr, cfg); err != nil {
		t.Errorf("mutual TLS: %v", err)
	}
	cfg, _ = ClientConfig(ClientOptions{CAFile: sp.CertFile, ServerName: "redis.test"})
	if _, err := dial(addr, cfg); err == nil {
		t.Error("server requiring a client certificate accepted none")
	}
}
