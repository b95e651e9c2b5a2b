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

// aliceConfig is a Process's config: an IMAP listener at addr that takes
// cleartext logins from 127.0.0.1, and alice@example.test routed to the
// backend mem. health is the value of routing.health, mem the fields of
// mem's entry after its name.
func aliceConfig(addr, certFile, keyFile, health, mem string) string {
	return fmt.Sprintf(`listeners:
  - {name: imap, mode: imap, address: "%s", cleartext_login_networks: [127.0.0.1/32]}
tls:
  certificates: [{cert_file: %s, key_file: %s}]
routing:
  default_domain: example.test
  static: [{user: alice@example.test, backend: mem}]
  health: %s
backends:
  - {name: mem, %s}
`, addr, certFile, keyFile, health, mem)
}

// runProcess runs a Process on the config file path and waits until it
// listens at addr. stop ends Run and fails the test unless Run returns
// nil within 20s.
func runProcess(t *testing.T, path, addr string) (p *Process, logs *testsrv.Buffer, stop func()) {
	t.Helper()
	logs = &testsrv.Buffer{}
	p = &Process{ConfigPath: path, Log: logs}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
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
	return p, logs, func() {
		t.Helper()
		cancel()
		select {
		case err := <-ran:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Run did not return")
		}
	}
}

// dialLogin logs alice in at addr on a new connection, with more sent
// right after the LOGIN, and returns the connection, its reader and the
// reply to the LOGIN.
func dialLogin(t *testing.T, addr, more string) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	br.ReadString('\n')
	io.WriteString(c, "a LOGIN alice pw\r\n"+more)
	reply, _ := br.ReadString('\n')
	return c, br, reply
}

// loginLogout logs alice in at addr and out again, and returns the reply
// to the LOGIN.
func loginLogout(t *testing.T, addr string) string {
	t.Helper()
	c, br, reply := dialLogin(t, addr, "b LOGOUT\r\n")
	defer c.Close()
	var err error
	for l := reply; err == nil && !strings.HasPrefix(l, "b "); l, err = br.ReadString('\n') {
	}
	return reply
}

// checkGoroutines fails the test if more than baseline goroutines are
// still running after 5s; goroutines end a little after what ended them,
// hence the wait.
func checkGoroutines(t *testing.T, baseline int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after Run, %d before:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}

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
		top := fmt.Sprintf("pid_file: %s\nlog: {level: %s}\n", pidFile, level)
		health := fmt.Sprintf("{interval: %s, timeout: 500ms}", interval)
		os.WriteFile(path, []byte(top+aliceConfig(addr, certFile, keyFile, health, `address: "`+be.Addr()+`"`)), 0o600)
	}
	write("info", time.Second)

	p, logs, stop := runProcess(t, path, addr)
	c, br, l := dialLogin(t, addr, "")
	defer c.Close()
	if !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login: %q", l)
	}
	for i := range 3 {
		write([]string{"debug", "info", "warn"}[i], time.Duration(i+2)*time.Second)
		if err := p.Reload(); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		if i == 0 { // debug: a login logs "logged in"
			loginLogout(t, addr)
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

	stop()
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left: %v", err)
	}
	checkGoroutines(t, baseline)
}
