// Package testcert writes self-signed certificates to PEM files for
// tests that configure Portico (or a backend) with certificate files.
//
//	cert, certFile, keyFile := testcert.Files(t, t.TempDir(), "localhost", "127.0.0.1")
//
// It lives apart from internal/testsrv because package tls's own tests
// use testsrv, and this package needs package tls.
package testcert

import (
	"crypto/tls"
	"path/filepath"
	"testing"

	ptls "github.com/portico-mail/portico/tls"
)

// Files makes a self-signed certificate for names, writes it and its key
// to dir as cert.pem and key.pem, and returns the certificate and both
// paths. Any failure ends the test.
func Files(t testing.TB, dir string, names ...string) (cert tls.Certificate, certFile, keyFile string) {
	t.Helper()
	cert, err := ptls.SelfSigned(names...)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := ptls.WritePEM(cert, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	return cert, certFile, keyFile
}
