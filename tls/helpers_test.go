package tls

import (
	stdtls "crypto/tls"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

func mustSelfSigned(t *testing.T, hosts ...string) stdtls.Certificate {
	t.Helper()
	c, err := SelfSigned(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustSelfSignedRSA(t *testing.T, hosts ...string) stdtls.Certificate {
	t.Helper()
	c, err := SelfSignedRSA(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustStore(t *testing.T, certs ...stdtls.Certificate) *Store {
	t.Helper()
	s, err := NewStore(certs...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writePair writes c under dir as name.pem / name.key.
func writePair(t *testing.T, dir, name string, c stdtls.Certificate) Pair {
	t.Helper()
	p := Pair{CertFile: filepath.Join(dir, name+".pem"), KeyFile: filepath.Join(dir, name+".key")}
	if err := WritePEM(c, p.CertFile, p.KeyFile); err != nil {
		t.Fatal(err)
	}
	return p
}

// serve runs a loopback TLS server with cfg that completes the handshake
// and writes one byte, so that the client also learns about failures the
// server detects after the client's side of a TLS 1.3 handshake is done.
func serve(t *testing.T, cfg *stdtls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	serveOn(ln, cfg)
	return ln.Addr().String()
}

// serveOn is serve on a listener the caller made (a fixed port).
func serveOn(ln net.Listener, cfg *stdtls.Config) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				tc := stdtls.Server(c, cfg)
				if tc.Handshake() == nil {
					tc.Write([]byte{'x'})
				}
			}()
		}
	}()
}

// dial handshakes with addr and reads the server's byte.
func dial(addr string, cfg *stdtls.Config) (stdtls.ConnectionState, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return stdtls.ConnectionState{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := stdtls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return stdtls.ConnectionState{}, err
	}
	var b [1]byte
	if _, err := io.ReadFull(tc, b[:]); err != nil {
		return stdtls.ConnectionState{}, err
	}
	if b[0] != 'x' {
		return stdtls.ConnectionState{}, errors.New("unexpected byte from server")
	}
	return tc.ConnectionState(), nil
}

// insecure is a client that accepts any certificate and sends sni.
func insecure(sni string) *stdtls.Config {
	return &stdtls.Config{ServerName: sni, InsecureSkipVerify: true}
}

// servedSerial says which certificate the server presented.
func servedSerial(t *testing.T, addr string, cfg *stdtls.Config) string {
	t.Helper()
	st, err := dial(addr, cfg)
	if err != nil {
		t.Fatalf("handshake (sni %q): %v", cfg.ServerName, err)
	}
	return st.PeerCertificates[0].SerialNumber.String()
}

func serial(c stdtls.Certificate) string { return c.Leaf.SerialNumber.String() }
