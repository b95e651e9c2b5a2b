package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/app"
	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
)

// lcConn is a test client of one IMAP connection, plain or TLS.
type lcConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// dialLC connects to addr, with implicit TLS when tlsOn, and reads the
// greeting.
func dialLC(t *testing.T, addr string, tlsOn bool) *lcConn {
	t.Helper()
	var (
		c   net.Conn
		err error
	)
	if tlsOn {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
			&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"imap"}})
	} else {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	ic := &lcConn{t: t, c: c, br: bufio.NewReader(c)}
	if l := ic.line(); !strings.HasPrefix(l, "* OK") {
		t.Fatalf("greeting from %s: %q", addr, l)
	}
	return ic
}

func (ic *lcConn) line() string {
	ic.t.Helper()
	ic.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := ic.br.ReadString('\n')
	if err != nil {
		ic.t.Fatalf("read: %v (so far %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// cmd sends tag+" "+command and returns the lines up to the tagged one,
// which must be OK.
func (ic *lcConn) cmd(tag, command string) []string {
	ic.t.Helper()
	if _, err := io.WriteString(ic.c, tag+" "+command+"\r\n"); err != nil {
		ic.t.Fatalf("write %s: %v", command, err)
	}
	var lines []string
	for {
		l := ic.line()
		lines = append(lines, l)
		if strings.HasPrefix(l, tag+" ") {
			if !strings.HasPrefix(l, tag+" OK") {
				ic.t.Fatalf("%s: %q", command, lines)
			}
			return lines
		}
	}
}

// exists logs in as user and returns the number of messages in INBOX,
// which tells the test's backends apart.
func exists(t *testing.T, addr string, tlsOn bool, user string) int {
	t.Helper()
	ic := dialLC(t, addr, tlsOn)
	defer ic.c.Close()
	ic.cmd("a", "LOGIN "+user+" pw")
	return ic.existsAfterLogin()
}

func (ic *lcConn) existsAfterLogin() int {
	ic.t.Helper()
	for _, l := range ic.cmd("b", "SELECT INBOX") {
		var n int
		if _, err := fmt.Sscanf(l, "* %d EXISTS", &n); err == nil {
			return n
		}
	}
	ic.t.Fatal("no EXISTS in the SELECT reply")
	return 0
}

// idle starts IDLE on a logged-in connection.
func (ic *lcConn) idle() {
	ic.t.Helper()
	io.WriteString(ic.c, "i IDLE\r\n")
	if l := ic.line(); !strings.HasPrefix(l, "+") {
		ic.t.Fatalf("IDLE: %q", l)
	}
}

// done ends IDLE: the session went through whatever happened meanwhile.
func (ic *lcConn) done() {
	ic.t.Helper()
	io.WriteString(ic.c, "DONE\r\n")
	if l := ic.line(); !strings.HasPrefix(l, "i OK") {
		ic.t.Fatalf("IDLE end: %q", l)
	}
}

// TestReload changes the running configuration with `portico reload`: a
// backend is added, a pool changed, a listener added, TLS 1.2 turned off,
// then a listener removed, and an invalid file refused, while a session spliced before
// all of them sits in IDLE and one accepted before the first reload logs
// in afterwards under the configuration it was accepted with.
func TestReload(t *testing.T) {
	bin := binary(t)
	r := testsrv.StartRedis(t)
	// One message on imap1, two on imap2: INBOX says where a login went.
	var addrs []string
	for n := 1; n <= 2; n++ {
		be, err := membackend.Start("127.0.0.1:0",
			membackend.User{Name: "alice@example.test", Password: "pw", Messages: n},
			membackend.User{Name: "dave@example.test", Password: "pw", Messages: n},
			membackend.User{Name: "erin@example.test", Password: "pw", Messages: n})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { be.Close() })
		addrs = append(addrs, be.Addr())
	}
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "portico.pid")
	imaps, imap := freeAddr(t), freeAddr(t)
	certs := certFiles(t, dir)
	config := func(listeners, static, pool, backends string) string {
		return "pid_file: " + pidFile + "\n" + certs + `listeners:
` + listeners + `limits: {auth_failure_delay: 1ms}
routing:
  default_domain: example.test
  redis: {addrs: ["` + r.Addr + `"]}
  static:
` + static + `  pools:
    - {name: main, backends: [` + pool + `]}
backends:
` + backends
	}
	lImaps := `  - {name: imaps, mode: imaps, address: "` + imaps + `"}` + "\n"
	lImap := `  - {name: imap, mode: imap, address: "` + imap + `", cleartext_login_networks: [127.0.0.1/32]}` + "\n"
	b1 := `  - {name: imap1, address: "` + addrs[0] + `"}` + "\n"
	b2 := `  - {name: imap2, address: "` + addrs[1] + `"}` + "\n"
	aliceOn := func(b string) string { return "    - {user: alice@example.test, backend: " + b + "}\n" }
	erinOn2 := "    - {user: erin@example.test, backend: imap2}\n"

	p := writeConfig(t, dir, config(lImaps, aliceOn("imap1"), "imap1", b1))
	cmd, stderr := startServe(t, bin, p, imaps, 10*time.Second)
	if out, code := run(t, bin, nil, "route", "set", "dave@example.test", "-pool", "main", "-config", p); code != 0 {
		t.Fatalf("route set: %s", out)
	}
	if n := exists(t, imaps, true, "dave"); n != 1 {
		t.Fatalf("dave on the backend with %d messages before the reload, want imap1", n)
	}
	reload := func() string {
		t.Helper()
		out, code := run(t, bin, nil, "reload", "-config", p)
		if code != 0 {
			t.Fatalf("reload: exit %d: %s\n%s", code, out, stderr)
		}
		return out
	}

	// A session spliced before every reload, in IDLE throughout.
	spliced := dialLC(t, imaps, true)
	spliced.cmd("a", "LOGIN alice pw")
	if n := spliced.existsAfterLogin(); n != 1 {
		t.Fatalf("alice on the backend with %d messages, want imap1", n)
	}
	spliced.idle()
	// A client that has not logged in yet when the first reload happens.
	preauth := dialLC(t, imaps, true)

	tls12 := func() error {
		c, err := tls.Dial("tcp", imaps, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"imap"}, MaxVersion: tls.VersionTLS12})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := tls12(); err != nil {
		t.Fatalf("TLS 1.2 before the reload: %v", err)
	}

	t.Run("backend, pool, listener and TLS settings", func(t *testing.T) {
		certs = strings.Replace(certs, "tls:\n", "tls:\n  min_version: \"1.3\"\n", 1)
		os.WriteFile(p, []byte(config(lImaps+lImap, aliceOn("imap2")+erinOn2, "imap2", b1+b2)), 0o600)
		if out := reload(); !strings.Contains(out, "reloaded") {
			t.Fatalf("reload said %q", out)
		}
		if n := exists(t, imaps, true, "erin"); n != 2 {
			t.Fatalf("erin (static route to the new backend) on the backend with %d messages", n)
		}
		if n := exists(t, imaps, true, "dave"); n != 2 {
			t.Fatalf("dave (pool main, now [imap2]) on the backend with %d messages", n)
		}
		if n := exists(t, imap, false, "alice"); n != 2 {
			t.Fatalf("alice on the new listener on the backend with %d messages", n)
		}
		if err := tls12(); err == nil {
			t.Fatal("TLS 1.2 still accepted after min_version 1.3 was reloaded")
		}
		// Accepted under the old configuration, it logs in under it.
		preauth.cmd("a", "LOGIN alice pw")
		if n := preauth.existsAfterLogin(); n != 1 {
			t.Fatalf("a client accepted before the reload logged in on the backend with %d messages, want imap1", n)
		}
		spliced.done()
		spliced.idle()
	})

	t.Run("listener removed", func(t *testing.T) {
		os.WriteFile(p, []byte(config(lImap, aliceOn("imap2")+erinOn2, "imap2", b1+b2)), 0o600)
		reload()
		if c, err := net.DialTimeout("tcp", imaps, time.Second); err == nil {
			c.Close()
			t.Fatal("the removed listener still accepts")
		}
		if n := exists(t, imap, false, "erin"); n != 2 {
			t.Fatalf("erin on the backend with %d messages", n)
		}
		// The spliced session came in through the removed listener.
		spliced.done()
		spliced.idle()
	})

	t.Run("invalid config refused", func(t *testing.T) {
		good, _ := os.ReadFile(p)
		for _, tc := range []struct{ name, text, want string }{
			// Caught by the command before it signals.
			{"unknown key", strings.Replace(string(good), "routing:", "routing:\n  defualt_pool: main", 1), `"defualt_pool"`},
			// Valid on paper, refused by the process: the address is taken.
			{"address in use", strings.Replace(string(good), "listeners:\n", "listeners:\n  - {name: taken, mode: imap, address: \""+r.Addr+"\"}\n", 1), "address already in use"},
		} {
			os.WriteFile(p, []byte(tc.text), 0o600)
			out, code := run(t, bin, nil, "reload", "-config", p)
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Errorf("%s: exit %d, want non-zero and %q:\n%s", tc.name, code, tc.want, out)
			}
		}
		if !strings.Contains(stderr.String(), "reload refused") {
			t.Errorf("the log does not say the reload was refused:\n%s", stderr)
		}
		os.WriteFile(p, good, 0o600)
		if n := exists(t, imap, false, "erin"); n != 2 {
			t.Fatalf("after refused reloads, erin on the backend with %d messages", n)
		}
		spliced.done()
		spliced.idle()
	})

	spliced.done()
	spliced.cmd("z", "LOGOUT")
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve exit: %v\n%s", err, stderr)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left behind: %v", err)
	}
	if strings.Contains(stderr.String(), "pw\"") || strings.Contains(stderr.String(), " pw ") {
		t.Error("a password reached the log")
	}
}

// TestUpgrade replaces the binary of a running serve that holds 500
// sessions in IDLE, with a client opening new connections in a loop, and
// runs `portico upgrade`: the new binary takes the listening socket over,
// no connection attempt is refused, the old process keeps every spliced
// session until its upgrade_timeout, then ends them spread over its
// upgrade_window, each with a BYE, and exits. Its sessions stay in the
// fleet registry as long as it lives.
func TestUpgrade(t *testing.T) {
	const sessions = 500
	const upgradeTimeout, upgradeWindow = 4 * time.Second, 2 * time.Second
	dir := t.TempDir()
	bin := filepath.Join(dir, "portico")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// The new version, built now, installed at the same path later.
	newBin := filepath.Join(dir, "portico.new")
	if out, err := exec.Command("go", "build", "-ldflags", "-X main.version=v2-upgrade-test", "-o", newBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice@example.test", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	r := testsrv.StartRedis(t)
	pidFile := filepath.Join(dir, "portico.pid")
	imap, adminAddr := freeAddr(t), freeAddr(t)
	p := writeConfig(t, dir, "pid_file: "+pidFile+"\n"+certFiles(t, dir)+`admin: {address: "`+adminAddr+`"}
listeners:
  - {name: imap, mode: imap, address: "`+imap+`", cleartext_login_networks: [127.0.0.1/32]}
limits:
  upgrade_timeout: `+upgradeTimeout.String()+`
  upgrade_window: `+upgradeWindow.String()+`
  max_sessions_per_user: 10000
  max_sessions_per_user_ip: 10000
  max_preauth_connections_per_ip: 10000
routing:
  default_domain: example.test
  redis: {addrs: ["`+r.Addr+`"]}
  static:
    - {user: alice@example.test, backend: mem}
backends:
  - {name: mem, address: "`+be.Addr()+`"}
fleet: {heartbeat: 1s}
`)
	// registered waits until the fleet registry counts want sessions.
	registered := func(want int) {
		t.Helper()
		var out string
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			if out, _ = run(t, bin, nil, "sessions", "-count", "-config", p); strings.HasPrefix(out, fmt.Sprintf("%d session", want)) {
				return
			}
		}
		t.Fatalf("the fleet registry counts %q, want %d", out, want)
	}
	// The log goes to a file: the new process writes to the same one,
	// and a pipe would keep the old process's Wait waiting for it.
	logFile, err := os.Create(filepath.Join(dir, "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	readLog := func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	old := exec.Command(bin, "serve", "-config", p)
	old.Stdout, old.Stderr = logFile, logFile
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	oldExited := make(chan error, 1)
	go func() { oldExited <- old.Wait() }()
	t.Cleanup(func() {
		old.Process.Kill()
		// The new process is not our child: find it by its pid file.
		if pid, err := app.ReadPIDFile(pidFile); err == nil && pid != old.Process.Pid {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	if err := testsrv.WaitDial(imap, 10*time.Second); err != nil {
		t.Fatalf("serve did not listen: %v\n%s", err, readLog())
	}

	// 500 sessions log in and IDLE; each then waits for its first line.
	type ending struct {
		at   time.Time
		line string
	}
	ends := make(chan ending, sessions)
	for i := 0; i < sessions; i++ {
		c, err := net.DialTimeout("tcp", imap, 5*time.Second)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		br := bufio.NewReader(c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "a LOGIN alice pw\r\ni IDLE\r\n")
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("session %d: %v\n%s", i, err, readLog())
			}
			if strings.HasPrefix(l, "a ") && !strings.HasPrefix(l, "a OK") {
				t.Fatalf("session %d: login: %q", i, l)
			}
			if strings.HasPrefix(l, "+") {
				break
			}
		}
		c.SetDeadline(time.Time{})
		go func() {
			l, err := br.ReadString('\n')
			if err != nil {
				l = "error: " + err.Error()
			}
			ends <- ending{time.Now(), strings.TrimRight(l, "\r\n")}
		}()
	}
	registered(sessions)

	// A new process that cannot start (its config asks for an address in
	// use) fails the upgrade: the old process goes on as if nothing
	// happened.
	good, _ := os.ReadFile(p)
	os.WriteFile(p, []byte(strings.Replace(string(good), "listeners:\n", "listeners:\n  - {name: taken, mode: imap, address: \""+r.Addr+"\"}\n", 1)), 0o600)
	if out, code := runWithin(t, 30*time.Second, bin, nil, "upgrade", "-config", p); code == 0 || !strings.Contains(out, "exited before serving") {
		t.Fatalf("upgrade to a process that cannot listen: exit %d: %s", code, out)
	}
	os.WriteFile(p, good, 0o600)
	if pid, _ := app.ReadPIDFile(pidFile); pid != old.Process.Pid {
		t.Fatalf("pid file holds %d after a failed upgrade, want the old %d", pid, old.Process.Pid)
	}
	if n := exists(t, imap, false, "alice"); n != 0 {
		t.Fatalf("login after a failed upgrade: %d messages", n)
	}

	// A client that has not logged in: the old process says BYE to it.
	preauth, err := net.DialTimeout("tcp", imap, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer preauth.Close()
	preauthBR := bufio.NewReader(preauth)
	preauthBR.ReadString('\n')

	// New connections in a loop, all through the upgrade.
	type result struct{ attempts, refused int }
	stop := make(chan struct{})
	results := make(chan result, 4)
	for range 4 {
		go func() {
			var r result
			defer func() { results <- r }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r.attempts++
				c, err := net.DialTimeout("tcp", imap, 5*time.Second)
				if err != nil {
					r.refused++
					t.Logf("connection refused: %v", err)
					continue
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				l, err := bufio.NewReader(c).ReadString('\n')
				if err != nil || !strings.HasPrefix(l, "* OK") {
					r.refused++
					t.Logf("connection without greeting: %q %v", l, err)
				}
				io.WriteString(c, "z LOGOUT\r\n")
				c.Close()
			}
		}()
	}

	time.Sleep(200 * time.Millisecond)
	if err := os.Rename(newBin, bin); err != nil {
		t.Fatal(err)
	}
	out, code := runWithin(t, 30*time.Second, bin, nil, "upgrade", "-config", p)
	handedOver := time.Now()
	if code != 0 {
		t.Fatalf("upgrade: exit %d: %s\n%s", code, out, readLog())
	}
	newPID, err := app.ReadPIDFile(pidFile)
	if err != nil || newPID == old.Process.Pid {
		t.Fatalf("pid file after the upgrade: %d, %v (old %d)", newPID, err, old.Process.Pid)
	}
	if !strings.Contains(out, fmt.Sprint(newPID)) {
		t.Errorf("upgrade output does not name the new process %d: %s", newPID, out)
	}
	// The loop goes on a while against the new process alone.
	time.Sleep(time.Second)
	close(stop)
	var total result
	for range 4 {
		r := <-results
		total.attempts += r.attempts
		total.refused += r.refused
	}
	if total.refused != 0 || total.attempts < 10 {
		t.Errorf("%d of %d connection attempts refused during the upgrade", total.refused, total.attempts)
	}
	preauth.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, _ := preauthBR.ReadString('\n'); !strings.HasPrefix(l, "* BYE") {
		t.Errorf("client not logged in at the hand-over got %q, want * BYE", l)
	}
	// New logins reach the new process.
	if n := exists(t, imap, false, "alice"); n != 0 {
		t.Fatalf("login after the upgrade: %d messages", n)
	}
	// The old process's sessions are still registered.
	registered(sessions)
	// The admin socket went over too: scrapes reach the new binary only.
	for seen, end := 0, time.Now().Add(10*time.Second); seen < 5; {
		if _, body := adminGet(t, adminAddr, "/metrics", ""); strings.Contains(body, `version="v2-upgrade-test"`) {
			seen++
		} else {
			seen = 0
		}
		if time.Now().After(end) {
			t.Fatal("/metrics still answered by the old process after the upgrade")
		}
	}

	// Every spliced session lasts until the old process's deadline, then
	// gets a BYE, spread over the window.
	deadline := handedOver.Add(upgradeTimeout)
	var first, last time.Time
	timeout := time.After(upgradeTimeout + upgradeWindow + 20*time.Second)
	for i := 0; i < sessions; i++ {
		var e ending
		select {
		case e = <-ends:
		case <-timeout:
			t.Fatalf("%d of %d sessions still open long after the deadline\n%s", sessions-i, sessions, readLog())
		}
		if e.at.Before(deadline.Add(-500 * time.Millisecond)) {
			t.Fatalf("a session ended %s before the old process's deadline: %q", deadline.Sub(e.at), e.line)
		}
		if !strings.HasPrefix(e.line, "* BYE [UNAVAILABLE]") {
			t.Fatalf("a session ended with %q, want a BYE", e.line)
		}
		if first.IsZero() {
			first = e.at
		}
		last = e.at
	}
	if spread := last.Sub(first); spread < upgradeWindow/2 {
		t.Errorf("the BYEs came within %s, want them spread over about %s", spread, upgradeWindow)
	}
	select {
	case err := <-oldExited:
		if err != nil {
			t.Errorf("old process exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the old process did not exit after its sessions\n%s", readLog())
	}
	// Retired at its exit: none of its sessions is counted any more.
	registered(0)
	log := readLog()
	for _, want := range []string{"version=v2-upgrade-test", "listening (socket taken over)", "upgrade: upgrade_timeout reached", "upgrade: the sessions left here have ended"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	// The new process stays in service.
	if err := syscall.Kill(newPID, 0); err != nil {
		t.Fatalf("new process %d: %v", newPID, err)
	}
	if n := exists(t, imap, false, "alice"); n != 0 {
		t.Fatalf("login after the old process left: %d messages", n)
	}
	if os.Getenv("LC_SHOWLOG") != "" {
		t.Log(log)
	}
	t.Logf("%d connection attempts during the upgrade, none refused; BYEs spread over %s", total.attempts, last.Sub(first))
}
