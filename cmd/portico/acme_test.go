package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
)

// TestServeACME runs `portico serve` with only an ACME certificate source
// against Debian's pebble: the certificate for mail.test is obtained
// before the listener opens, through HTTP-01 and, separately, TLS-ALPN-01;
// an IMAP client trusting pebble's root then logs in through to a backend,
// and `portico certs` lists the certificate from the encrypted cache.
func TestServeACME(t *testing.T) {
	bin := binary(t)
	for _, challenge := range []string{"http-01", "tls-alpn-01"} {
		t.Run(challenge, func(t *testing.T) {
			pebble := testsrv.StartPebble(t, testsrv.PebbleOptions{})
			be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "carol@mail.test", Password: "carol-pw", Messages: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer be.Close()
			dir := t.TempDir()
			imaps := freeAddr(t)
			httpAddr, alpnAddr := fmt.Sprintf("127.0.0.1:%d", pebble.HTTPPort), "off"
			if challenge == "tls-alpn-01" {
				httpAddr, alpnAddr = "off", fmt.Sprintf("127.0.0.1:%d", pebble.TLSPort)
			}
			p := writeConfig(t, dir, acmeConfig(imaps, pebble, dir, "mail.test", httpAddr, alpnAddr, be.Addr()))
			_, stderr := startServe(t, bin, p, imaps, 60*time.Second)
			roots := pebble.Roots(t)
			for _, sni := range []string{"mail.test", ""} {
				c, err := tls.Dial("tcp", imaps, &tls.Config{RootCAs: roots, ServerName: sni, NextProtos: []string{"imap"},
					// Without SNI the name to verify still is mail.test.
					InsecureSkipVerify: sni == "", VerifyConnection: verifyAs(roots, "mail.test")})
				if err != nil {
					t.Fatalf("TLS with SNI %q: %v\n%s", sni, err, stderr)
				}
				br := bufio.NewReader(c)
				br.ReadString('\n')
				ir := base64.StdEncoding.EncodeToString([]byte("\x00carol@mail.test\x00carol-pw"))
				fmt.Fprintf(c, "a AUTHENTICATE PLAIN %s\r\nb SELECT INBOX\r\n", ir)
				var got []string
				for len(got) == 0 || !strings.HasPrefix(got[len(got)-1], "b ") {
					l, err := br.ReadString('\n')
					if err != nil {
						t.Fatalf("read: %v (%q)", err, got)
					}
					got = append(got, l)
				}
				if !strings.HasPrefix(got[0], "a OK") || !strings.HasPrefix(got[len(got)-1], "b OK") {
					t.Fatalf("login through ACME certificate: %q", got)
				}
				c.Close()
			}
			out, code := run(t, bin, nil, "certs", "-config", p)
			if code != 0 || !strings.Contains(out, "mail.test") || !strings.Contains(strings.ToLower(out), "pebble") {
				t.Fatalf("portico certs: exit %d\n%s", code, out)
			}
			// The cache holds no private key in clear.
			filepath.Walk(filepath.Join(dir, "acme"), func(path string, info os.FileInfo, err error) error {
				if err == nil && !info.IsDir() {
					b, _ := os.ReadFile(path)
					if strings.Contains(string(b), "PRIVATE KEY") {
						t.Errorf("%s holds a private key in clear", path)
					}
				}
				return nil
			})
		})
	}
}

// acmeConfig is a serve config with one imaps listener whose certificates
// come from pebble for hostnames (a YAML flow list's inside), with the
// given challenge addresses, and carol@mail.test routed to backend.
func acmeConfig(imaps string, pebble *testsrv.Pebble, dir, hostnames, httpAddr, alpnAddr, backend string) string {
	return `
listeners:
  - {name: imaps, mode: imaps, address: "` + imaps + `"}
tls:
  acme:
    hostnames: [` + hostnames + `]
    email: ops@mail.test
    directory_url: "` + pebble.DirectoryURL + `"
    ca_file: ` + pebble.CAFile + `
    http_address: "` + httpAddr + `"
    tls_alpn_address: "` + alpnAddr + `"
    cache_dir: ` + filepath.Join(dir, "acme") + `
    cache_key: "a test cache key of some length"
routing:
  static:
    - {user: carol@mail.test, backend: mem}
backends:
  - {name: mem, address: "` + backend + `"}
`
}

// verifyAs checks the chain against roots for name, for a client that sent
// no SNI (crypto/tls then has no name to verify).
func verifyAs(roots *x509.CertPool, name string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name})
		return err
	}
}

// TestReloadACMEHostnames: a reload applies tls.acme.hostnames to the
// running manager (pebble, HTTP-01): a name added gets its certificate
// without a restart, a name removed is refused, and the log does not
// ask for a restart.
func TestReloadACMEHostnames(t *testing.T) {
	bin := binary(t)
	pebble := testsrv.StartPebble(t, testsrv.PebbleOptions{})
	dir := t.TempDir()
	imaps := freeAddr(t)
	config := func(hostnames string) string {
		return acmeConfig(imaps, pebble, dir, hostnames, fmt.Sprintf("127.0.0.1:%d", pebble.HTTPPort), "off", "127.0.0.1:1")
	}
	p := writeConfig(t, dir, config("mail.test"))
	cmd, stderr := startServe(t, bin, p, imaps, 60*time.Second)
	roots := pebble.Roots(t)
	handshake := func(name string) error {
		c, err := tls.Dial("tcp", imaps, &tls.Config{RootCAs: roots, ServerName: name, NextProtos: []string{"imap"}})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := handshake("mail.test"); err != nil {
		t.Fatalf("mail.test: %v\n%s", err, stderr)
	}
	if err := handshake("imap.test"); err == nil {
		t.Fatal("imap.test served before it is configured")
	}

	writeConfig(t, dir, config("mail.test, imap.test"))
	cmd.Process.Signal(syscall.SIGHUP)
	var err error
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if err = handshake("imap.test"); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("imap.test after the reload: %v\n%s", err, stderr)
	}
	if err := handshake("mail.test"); err != nil {
		t.Errorf("mail.test after the reload: %v", err)
	}

	writeConfig(t, dir, config("imap.test"))
	cmd.Process.Signal(syscall.SIGHUP)
	for end := time.Now().Add(10 * time.Second); handshake("mail.test") == nil; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("mail.test still served after it was removed\n%s", stderr)
		}
	}
	if err := handshake("imap.test"); err != nil {
		t.Errorf("imap.test after removing mail.test: %v", err)
	}
	log := stderr.String()
	if strings.Count(log, `msg="acme: hostnames reloaded"`) != 2 || strings.Contains(log, "tls.acme changed") {
		t.Errorf("log:\n%s", log)
	}
	// The reload obtains the name it added, not again the one in service.
	inService := func(name string) (n int) {
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, `msg="tls: acme: certificate in service"`) && strings.Contains(l, name) {
				n++
			}
		}
		return n
	}
	if m, i := inService("mail.test"), inService("imap.test"); m != 1 || i != 1 {
		t.Errorf("certificate in service logged %d times for mail.test, %d for imap.test, want once each; log:\n%s", m, i, log)
	}
}
