package app

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
)

// TestSpareConnectionsReload: a backend's spare_connections are there
// after a login, closed by a reload (the new generation's backends get
// their own at their first login) and at the end, with no goroutine left.
func TestSpareConnectionsReload(t *testing.T) {
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice@example.test", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := relay(t, ln, be.Addr())
	baseline := runtime.NumGoroutine()

	dir := t.TempDir()
	_, certFile, keyFile := testcert.Files(t, dir, "localhost")
	addr := "127.0.0.1:" + fmt.Sprint(testsrv.FreePort(t))
	path := filepath.Join(dir, "portico.yaml")
	os.WriteFile(path, []byte(fmt.Sprintf(`listeners:
  - {name: imap, mode: imap, address: "%s", cleartext_login_networks: [127.0.0.1/32]}
tls:
  certificates: [{cert_file: %s, key_file: %s}]
routing:
  default_domain: example.test
  static: [{user: alice@example.test, backend: mem}]
  health: {disabled: true}
backends:
  - {name: mem, address: "%s", spare_connections: 2}
`, addr, certFile, keyFile, ln.Addr())), 0o600)

	var logs testsrv.Buffer
	p := &Process{ConfigPath: path, Log: &logs}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	if err := testsrv.WaitDial(addr, 10*time.Second); err != nil {
		t.Fatalf("no listener: %v\n%s", err, logs.String())
	}
	login := func() {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		br.ReadString('\n')
		io.WriteString(c, "a LOGIN alice pw\r\nb LOGOUT\r\n")
		l, _ := br.ReadString('\n')
		if !strings.HasPrefix(l, "a OK") {
			t.Fatalf("login: %q\n%s", l, logs.String())
		}
		for ; err == nil && !strings.HasPrefix(l, "b "); l, err = br.ReadString('\n') {
		}
	}
	waitOpen := func(what string, n int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for open.Load() != n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d backend connections open, want %d", what, open.Load(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	login()
	waitOpen("after a login", 2)
	login() // on a spare
	waitOpen("after a login on a spare", 2)
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	waitOpen("after a reload", 0)
	login()
	waitOpen("after a login under the new configuration", 2)

	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	waitOpen("after Run", 0)
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after Run, %d before:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}
