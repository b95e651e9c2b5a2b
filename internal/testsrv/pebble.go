package testsrv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// PebbleOptions configures StartPebble. The zero value picks free ports and
// keeps pebble's default certificate lifetime (5 years).
type PebbleOptions struct {
	// HTTPPort and TLSPort are the ports pebble's validator dials on
	// 127.0.0.1 for http-01 and tls-alpn-01 challenges: the test's HTTP-01
	// handler and TLS-ALPN-01 listener must listen there. 0 picks a free
	// port (read it back from Pebble.HTTPPort / Pebble.TLSPort).
	HTTPPort int
	TLSPort  int

	// CertificateValidityPeriod, in seconds, shortens issued certificates
	// to test renewal. 0 keeps pebble's default.
	CertificateValidityPeriod int
}

// Pebble is a pebble ACME server plus the pebble-challtestsrv that serves
// it DNS (every name resolves to 127.0.0.1), owned by a test.
//
//	p := testsrv.StartPebble(t, testsrv.PebbleOptions{})
//	client := &acme.Client{DirectoryURL: p.DirectoryURL, HTTPClient: p.HTTPClient()}
//	// serve http-01 on 127.0.0.1:p.HTTPPort, tls-alpn-01 on 127.0.0.1:p.TLSPort
//	roots := p.Roots(t) // trust anchor for certificates pebble issued
type Pebble struct {
	DirectoryURL  string // https://127.0.0.1:A/dir
	ManagementURL string // https://127.0.0.1:M
	HTTPPort      int
	TLSPort       int
	Dir           string // scratch directory with config, certificates and logs
	// CAFile is a PEM file trusting pebble's own HTTPS listeners, for
	// clients configured with a CA file (Portico's tls.acme.ca_file).
	CAFile string

	ca    *x509.CertPool // trusts pebble's own HTTPS listeners (not what it issues)
	procs []*pebbleProc
}

type pebbleProc struct {
	name     string
	cmd      *exec.Cmd
	exited   chan struct{}
	stopOnce sync.Once
}

func (p *pebbleProc) stop() {
	p.stopOnce.Do(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
}

// StartPebble starts pebble-challtestsrv (DNS only) and pebble in strict
// mode on random loopback ports, and kills both in t.Cleanup. Pebble is told
// not to sleep before validations and not to reject good nonces, so an order
// completes in about a second.
func StartPebble(t testing.TB, opts PebbleOptions) *Pebble {
	t.Helper()
	pebbleBin := LookPath(t, "pebble", "/usr/bin/pebble")
	challBin := LookPath(t, "pebble-challtestsrv", "/usr/bin/pebble-challtestsrv")
	dir := t.TempDir()
	p := &Pebble{Dir: dir, HTTPPort: opts.HTTPPort, TLSPort: opts.TLSPort}
	if p.HTTPPort == 0 {
		p.HTTPPort = FreePort(t)
	}
	if p.TLSPort == 0 {
		p.TLSPort = FreePort(t)
	}
	t.Cleanup(p.stop)

	// Pebble's own HTTPS listeners need a certificate; Debian ships none.
	caPEM, certPEM, keyPEM, err := pebbleListenerCert()
	if err != nil {
		t.Fatalf("testsrv: pebble listener certificate: %v", err)
	}
	p.ca = x509.NewCertPool()
	p.ca.AppendCertsFromPEM(caPEM)
	p.CAFile = filepath.Join(dir, "ca.pem")
	writePebbleFile(t, p.CAFile, caPEM)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePebbleFile(t, certFile, certPEM)
	writePebbleFile(t, keyFile, keyPEM)

	dnsPort, challMgmt := FreePort(t), FreePort(t)
	p.start(t, "pebble-challtestsrv", challBin, nil,
		"-dns01", fmt.Sprintf("127.0.0.1:%d", dnsPort),
		"-http01", "", "-https01", "", "-tlsalpn01", "",
		"-management", fmt.Sprintf("127.0.0.1:%d", challMgmt),
		// pebble asks for AAAA first and dials only the first address: the
		// default ::1 would miss listeners bound to 127.0.0.1.
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
	if err := WaitDial(fmt.Sprintf("127.0.0.1:%d", challMgmt), 10*time.Second); err != nil {
		t.Fatalf("testsrv: pebble-challtestsrv did not start: %v\n%s", err, p.logs())
	}

	listen, mgmt := FreePort(t), FreePort(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", listen),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", mgmt),
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       p.HTTPPort,
		"tlsPort":                        p.TLSPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}}
	if opts.CertificateValidityPeriod > 0 {
		cfg["pebble"].(map[string]any)["certificateValidityPeriod"] = opts.CertificateValidityPeriod
	}
	cfgJSON, _ := json.MarshalIndent(cfg, "", "  ")
	cfgFile := filepath.Join(dir, "pebble.json")
	writePebbleFile(t, cfgFile, cfgJSON)
	p.start(t, "pebble", pebbleBin,
		[]string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"},
		"-config", cfgFile, "-strict", "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort))
	p.DirectoryURL = fmt.Sprintf("https://127.0.0.1:%d/dir", listen)
	p.ManagementURL = fmt.Sprintf("https://127.0.0.1:%d", mgmt)
	if err := p.waitDirectory(15 * time.Second); err != nil {
		t.Fatalf("testsrv: pebble did not start: %v\n%s", err, p.logs())
	}
	return p
}

// HTTPClient returns a client that trusts pebble's HTTPS listeners; give it
// to acme.Client.HTTPClient.
func (p *Pebble) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: p.ca},
		},
	}
}

// Roots fetches the per-run root that signs the certificates pebble issues
// from the management interface, for clients that verify them.
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	resp, err := p.HTTPClient().Get(p.ManagementURL + "/roots/0")
	if err != nil {
		t.Fatalf("testsrv: pebble roots: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("testsrv: pebble roots: %v %s", err, resp.Status)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("testsrv: pebble roots: no certificate in %q", b)
	}
	return pool
}

func (p *Pebble) start(t testing.TB, name, bin string, env []string, args ...string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(p.Dir, name+".log"))
	if err != nil {
		t.Fatalf("testsrv: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = p.Dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testsrv: start %s: %v", name, err)
	}
	proc := &pebbleProc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(proc.exited) }()
	p.procs = append(p.procs, proc)
}

// waitDirectory polls the directory until pebble answers, and fails early
// if a process died (e.g. a port taken between FreePort and the bind).
func (p *Pebble) waitDirectory(d time.Duration) error {
	c := p.HTTPClient()
	c.Timeout = time.Second
	deadline := time.Now().Add(d)
	for {
		for _, proc := range p.procs {
			select {
			case <-proc.exited:
				return fmt.Errorf("%s exited: %v", proc.name, proc.cmd.ProcessState)
			default:
			}
		}
		resp, err := c.Get(p.DirectoryURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("directory: %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *Pebble) logs() string {
	var b strings.Builder
	for _, proc := range p.procs {
		data, _ := os.ReadFile(filepath.Join(p.Dir, proc.name+".log"))
		fmt.Fprintf(&b, "--- %s.log\n%s\n", proc.name, data)
	}
	return b.String()
}

func (p *Pebble) stop() {
	for i := len(p.procs) - 1; i >= 0; i-- {
		p.procs[i].stop()
	}
}

func writePebbleFile(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatalf("testsrv: %v", err)
	}
}

// pebbleListenerCert makes a throw-away CA and a localhost/127.0.0.1
// certificate signed by it.
func pebbleListenerCert() (caPEM, certPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "testsrv pebble listener CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	return caPEM, certPEM, keyPEM, nil
}
