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

// TestProcessReloadLeaksNothing runs a Process in this test's process,
// reloads it a few times with health checks on (each reload starts new
// checks and stops the old ones), a spliced session open throughout, and
// checks that Run leaves no goroutine behind once its context ends.
func TestProcessReloadLeaksNothing(t *testing.T) {
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice@example.test", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	baseline := runtime.NumGoroutine()

	dir := t.TempDir()
	_, certFile, keyFile := testcert.Files(t, dir, "localhost")
	addr := "127.0.0.1:" + fmt.Sprint(testsrv.FreePort(t))
	pidFile := filepath.Join(dir, "portico.pid")
	path := filepath.Join(dir, "portico.yaml")
	write := func(level string, interval time.Duration) {
		os.WriteFile(path, []byte(fmt.Sprintf(`pid_file: %s
log: {level: %s}
listeners:
  - {name: imap, mode: imap, address: "%s", cleartext_login_networks: [127.0.0.1/32]}
tls:
  certificates: [{cert_file: %s, key_file: %s}]
routing:
  default_domain: example.test
  static: [{user: alice@example.test, backend: mem}]
  health: {interval: %s, timeout: 500ms}
backends:
  - {name: mem, address: "%s"}
`, pidFile, level, addr, certFile, keyFile, interval, be.Addr())), 0o600)
	}
	write("info", time.Second)

	var logs testsrv.Buffer
	p := &Process{ConfigPath: path, Log: &logs}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	if err := testsrv.WaitDial(addr, 10*time.Second); err != nil {
		select {
		case rerr := <-ran:
			t.Fatalf("Run: %v\n%s", rerr, logs.String())
		default:
		}
		t.Fatalf("no listener: %v\n%s", err, logs.String())
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	br.ReadString('\n')
	io.WriteString(c, "a LOGIN alice pw\r\n")
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login: %q", l)
	}
	for i := range 3 {
		write([]string{"debug", "info", "warn"}[i], time.Duration(i+2)*time.Second)
		if err := p.Reload(); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		if i == 0 { // debug: a login logs "logged in"
			c2, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			br2 := bufio.NewReader(c2)
			br2.ReadString('\n')
			io.WriteString(c2, "a LOGIN alice pw\r\nb LOGOUT\r\n")
			for l, err := br2.ReadString('\n'); err == nil && !strings.HasPrefix(l, "b "); l, err = br2.ReadString('\n') {
			}
			c2.Close()
		}
	}
	st, err := ReadStatus(StatusPath(pidFile))
	if err != nil || st.Event != "reload" || !st.OK || st.Seq != 4 {
		t.Fatalf("status after three reloads: %+v, %v", st, err)
	}
	os.WriteFile(path, []byte("listeners: [}\n"), 0o600)
	if err := p.Reload(); err == nil {
		t.Fatal("a broken file was reloaded")
	}
	io.WriteString(c, "b NOOP\r\n")
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "b OK") {
		t.Fatalf("session after the reloads: %q", l)
	}
	if !strings.Contains(logs.String(), `level=DEBUG msg="logged in"`) {
		t.Errorf("no debug line while log.level was debug")
	}
	c.Close()

	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after Run, %d before:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}
