package main

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
)

// Issue 10's checks with real `portico serve` processes: the open-file
// limit, and routes that lead back into a proxy.

// certFiles writes a self-signed pair into dir and returns the config
// lines for it.
func certFiles(t *testing.T, dir string) string {
	t.Helper()
	_, c, k := testcert.Files(t, dir, "localhost")
	return "tls:\n  certificates:\n    - {cert_file: " + c + ", key_file: " + k + "}\n"
}

// startLimited starts `portico serve` with RLIMIT_NOFILE at nofile (soft
// and hard, so that Go cannot raise it) and waits for it to listen.
func startLimited(t *testing.T, bin, config, addr string, nofile int) (*exec.Cmd, *testsrv.Buffer) {
	t.Helper()
	cmd := exec.Command("sh", "-c", `ulimit -n `+strconv.Itoa(nofile)+` && exec "$0" serve -config "$1"`, bin, config)
	var stderr testsrv.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := testsrv.WaitDial(addr, 10*time.Second); err != nil {
		t.Fatalf("serve did not listen: %v\n%s", err, &stderr)
	}
	return cmd, &stderr
}

// cpuTime is the user and system CPU time of a process so far.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

func fdCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// plainConn is a cleartext IMAP client connection.
type plainConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialPlain(addr string) (*plainConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &plainConn{c: c, br: bufio.NewReader(c)}, nil
}

func (c *plainConn) line(d time.Duration) (string, error) {
	c.c.SetReadDeadline(time.Now().Add(d))
	l, err := c.br.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err
}

// cmd sends a command and returns its tagged answer.
func (c *plainConn) cmd(tag, command string) (string, error) {
	c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.c, tag+" "+command+"\r\n"); err != nil {
		return "", err
	}
	for {
		l, err := c.line(10 * time.Second)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(l, tag+" ") {
			return l, nil
		}
	}
}

// login connects, reads the greeting and logs in.
func loginPlain(addr, user, pass string) (*plainConn, string, error) {
	c, err := dialPlain(addr)
	if err != nil {
		return nil, "", err
	}
	if g, err := c.line(5 * time.Second); err != nil || !strings.HasPrefix(g, "* OK") {
		c.c.Close()
		return nil, "", fmt.Errorf("greeting %q: %v", g, err)
	}
	l, err := c.cmd("a", "LOGIN "+user+" "+pass)
	return c, l, err
}

// TestOpenFileLimit runs Portico with 64 descriptors and floods it: every
// client beyond what fits gets an answer or a clean close (none is left
// hanging), the logged-in sessions go on, Portico keeps serving once
// descriptors free up, and it does not spin meanwhile.
func TestOpenFileLimit(t *testing.T) {
	bin := binary(t)
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "carol@example.test", Password: "carol-pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	for _, tc := range []struct {
		name, limits string
		want         string // the log line of the refusals
	}{
		// So many connections allowed that the descriptors run out.
		{"descriptors", "limits: {max_connections: 100000}\n", "out of file descriptors"},
		// The default: a limit that fits the descriptors.
		{"default", "", "too many connections: new ones are refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			imap, imaps := freeAddr(t), freeAddr(t)
			cfg := `
listeners:
  - {name: imap, mode: imap, address: "` + imap + `", cleartext_login_networks: [127.0.0.0/8]}
  - {name: imaps, mode: imaps, address: "` + imaps + `"}
` + certFiles(t, dir) + `
routing:
  static:
    - {user: carol@example.test, backend: mem}
  health: {disabled: true}
backends:
  - {name: mem, address: "` + be.Addr() + `"}
` + tc.limits
			cmd, stderr := startLimited(t, bin, writeConfig(t, dir, cfg), imap, 64)
			pid := cmd.Process.Pid

			var sessions []*plainConn
			for range 3 {
				c, l, err := loginPlain(imap, "carol@example.test", "carol-pw")
				if err != nil || !strings.HasPrefix(l, "a OK") {
					t.Fatalf("login: %q %v\n%s", l, err, stderr)
				}
				sessions = append(sessions, c)
			}

			// The flood: 80 clients at once, each holding its connection.
			const n = 80
			var greeted, refused, closed, hung atomic.Int64
			var mu sync.Mutex
			var held []net.Conn
			var wg sync.WaitGroup
			flood := func(addr string, count int, useTLS bool) {
				for range count {
					wg.Add(1)
					go func() {
						defer wg.Done()
						c, err := dialPlain(addr)
						if err != nil {
							hung.Add(1)
							t.Errorf("dial: %v", err)
							return
						}
						mu.Lock()
						held = append(held, c.c)
						mu.Unlock()
						if useTLS {
							tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"imap"}})
							tc.SetDeadline(time.Now().Add(5 * time.Second))
							c.c, c.br = tc, bufio.NewReader(tc)
						}
						l, err := c.line(5 * time.Second)
						var ne net.Error
						switch {
						case err == nil && strings.HasPrefix(l, "* OK"):
							greeted.Add(1)
						case err == nil && strings.HasPrefix(l, "* BYE [UNAVAILABLE]"):
							refused.Add(1)
						case err == nil:
							t.Errorf("unexpected first line %q", l)
						case errors.As(err, &ne) && ne.Timeout():
							hung.Add(1)
						default: // EOF or reset: a clean refusal
							closed.Add(1)
						}
					}()
				}
				wg.Wait()
			}
			flood(imap, n, false)
			t.Logf("flood: %d greeted, %d told BYE, %d closed, %d left hanging", greeted.Load(), refused.Load(), closed.Load(), hung.Load())
			if hung.Load() != 0 || greeted.Load() == n || greeted.Load() == 0 {
				t.Errorf("flood: %d greeted, %d told BYE, %d closed, %d left hanging\n%s", greeted.Load(), refused.Load(), closed.Load(), hung.Load(), stderr)
			}

			// At the limit, with clients still knocking, Portico does not
			// spin.
			greeted.Store(0)
			refused.Store(0)
			closed.Store(0)
			cpu0, t0 := cpuTime(t, pid), time.Now()
			for range 4 {
				time.Sleep(500 * time.Millisecond)
				flood(imaps, 5, true)
			}
			if used, wall := cpuTime(t, pid)-cpu0, time.Since(t0); used > wall/5 {
				t.Errorf("Portico used %v of CPU in %v at the descriptor limit", used, wall)
			}
			t.Logf("knocks on imaps: %d greeted, %d told BYE, %d closed, %d left hanging", greeted.Load(), refused.Load(), closed.Load(), hung.Load())
			if hung.Load() != 0 || greeted.Load() != 0 {
				t.Errorf("knocks on imaps: %d greeted, %d of 20 left hanging\n%s", greeted.Load(), hung.Load(), stderr)
			}

			// The logged-in sessions were served all along.
			for i, c := range sessions {
				if l, err := c.cmd("n", "NOOP"); err != nil || !strings.HasPrefix(l, "n OK") {
					t.Errorf("session %d at the limit: %q %v", i, l, err)
				}
			}
			// Once the flood is gone, new clients are served again.
			mu.Lock()
			for _, c := range held {
				c.Close()
			}
			mu.Unlock()
			deadline := time.Now().Add(10 * time.Second)
			for {
				c, l, err := loginPlain(imap, "carol@example.test", "carol-pw")
				if err == nil && strings.HasPrefix(l, "a OK") {
					c.c.Close()
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no login after the flood: %q %v\n%s", l, err, stderr)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
				t.Fatalf("Portico died: %v\n%s", err, stderr)
			}
			log := stderr.String()
			if !strings.Contains(log, tc.want) {
				t.Errorf("no log line %q:\n%s", tc.want, log)
			}
			if os.Getenv("SHOWLOG") != "" {
				t.Log(log)
			}
			if n := strings.Count(log, "\n"); n > 60 {
				t.Errorf("%d log lines: the refusals flood the log\n%s", n, log)
			}
			for _, c := range sessions {
				c.c.Close()
			}
		})
	}
}

// relay forwards every connection to target, passing nothing of its own:
// "anything that proxies back".
func relay(t *testing.T, target func() string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = true
		} else {
			delete(conns, c)
		}
	}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				track(c, true)
				defer func() { c.Close(); track(c, false) }()
				b, err := net.Dial("tcp", target())
				if err != nil {
					return
				}
				track(b, true)
				defer func() { b.Close(); track(b, false) }()
				go func() { io.Copy(b, c); b.Close() }()
				io.Copy(c, b)
			}()
		}
	}()
	return ln.Addr().String()
}

// loopCheck logs in through addr, where the route leads back into
// Portico, and checks the one NO [UNAVAILABLE] within 5 s, while the
// descriptors of every process in pids stay within 50 of their start.
func loopCheck(t *testing.T, addr string, pids []int, logs []*testsrv.Buffer, wantLog string) {
	t.Helper()
	base := make([]int, len(pids))
	for i, pid := range pids {
		base[i] = fdCount(pid)
	}
	peak := make([]int, len(pids))
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			for i, pid := range pids {
				peak[i] = max(peak[i], fdCount(pid))
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	start := time.Now()
	c, l, err := loginPlain(addr, "loop@example.test", "pw")
	took := time.Since(start)
	time.Sleep(200 * time.Millisecond) // the unwinding's last descriptors
	close(stop)
	<-sampled
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer c.c.Close()
	if l != "a NO [UNAVAILABLE] Service temporarily unavailable, try again later" || took > 5*time.Second {
		t.Errorf("login answered %q after %v", l, took)
	}
	// Exactly one answer: nothing else follows.
	if extra, err := c.line(200 * time.Millisecond); err == nil {
		t.Errorf("a second line after the answer: %q", extra)
	}
	t.Logf("answered %q after %v", l, took.Round(time.Millisecond))
	for i := range pids {
		t.Logf("process %d: %d descriptors before, %d at most during the login", i, base[i], peak[i])
		if peak[i] > base[i]+50 {
			t.Errorf("process %d: descriptors went from %d to %d", i, base[i], peak[i])
		}
	}
	var all string
	for _, b := range logs {
		all += b.String()
	}
	if !strings.Contains(all, wantLog) {
		t.Errorf("no log line naming the loop (%q):\n%s", wantLog, all)
	}
}

// TestRoutingLoops: a route that leads back into Portico ends in one
// NO [UNAVAILABLE] within seconds, with the descriptors bounded, and a
// log line that names the loop: to itself, through a relay, and between
// two proxies routed to each other, with and without ID forwarding.
func TestRoutingLoops(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	certs := certFiles(t, dir)
	n := 0
	// serve starts a proxy whose imap listener, on addr, takes cleartext
	// logins from loopback, routing loop@example.test to backend.
	serve := func(addr, backend string, forwardID bool) (pid int, log *testsrv.Buffer) {
		n++
		cfg := `
listeners:
  - {name: imap, mode: imap, address: "` + addr + `", cleartext_login_networks: [127.0.0.0/8]}
` + certs + `
routing:
  static:
    - {user: loop@example.test, backend: next}
  health: {disabled: true}
backends:
  - {name: next, address: "` + backend + `", forward_id: ` + strconv.FormatBool(forwardID) + `}
limits:
  trusted_networks: [127.0.0.0/8]
`
		sub := filepath.Join(dir, strconv.Itoa(n))
		os.Mkdir(sub, 0o700)
		cmd, stderr := startServe(t, bin, writeConfig(t, sub, cfg), addr, 10*time.Second)
		return cmd.Process.Pid, stderr
	}

	for _, fwd := range []bool{true, false} {
		t.Run(fmt.Sprintf("self forward_id=%v", fwd), func(t *testing.T) {
			// The backend is the proxy's own listener.
			a := freeAddr(t)
			pid, log := serve(a, a, fwd)
			loopCheck(t, a, []int{pid}, []*testsrv.Buffer{log}, "routing loop: the backend is this proxy's own listener")
		})
		t.Run(fmt.Sprintf("relay forward_id=%v", fwd), func(t *testing.T) {
			var target atomic.Value
			r := relay(t, func() string { return target.Load().(string) })
			a := freeAddr(t)
			target.Store(a)
			pid, log := serve(a, r, fwd)
			want := "too many logins of the user from one address in progress"
			if fwd {
				want = "is this proxy's own session"
			}
			loopCheck(t, a, []int{pid}, []*testsrv.Buffer{log}, want)
		})
		t.Run(fmt.Sprintf("pair forward_id=%v", fwd), func(t *testing.T) {
			// A routes to B and B to A.
			a, b := freeAddr(t), freeAddr(t)
			pidA, logA := serve(a, b, fwd)
			pidB, logB := serve(b, a, fwd)
			want := "too many logins of the user from one address in progress"
			if fwd {
				want = "is this proxy's own session"
			}
			loopCheck(t, a, []int{pidA, pidB}, []*testsrv.Buffer{logA, logB}, want)
		})
	}
}
