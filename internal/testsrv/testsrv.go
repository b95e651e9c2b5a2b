// Package testsrv starts real servers (redis-server, dovecot) on random
// loopback ports for tests, and stops them when the test ends:
//
//	r := testsrv.StartRedis(t)
//	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
//
//	d := testsrv.StartDovecot(t, testsrv.DovecotOptions{
//		Users:      map[string]string{"alice": "secret"},
//		MasterUser: "proxymaster", MasterPassword: "masterpw",
//	})
//	d.AddMessage(t, "alice", "INBOX", msg)
//	c, _ := imapclient.DialInsecure(d.Addr, nil)
//	d.WaitLog(t, "Login: user=<alice>", 5*time.Second)
//
// A missing binary fails the test: the suite never skips silently.
// `make test` (scripts/install-test-deps.sh) installs the binaries on a
// fresh Debian machine. Dovecot must be started as root, as CI does.
package testsrv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
//
// The kernel may hand the same ephemeral port to two listen-and-close calls
// in a row, so a caller asking for two ports (Dovecot's two listeners) could
// get one port twice. FreePort therefore never returns a port it returned
// before in this process. Other processes can still take the port before
// the caller binds it; starters retry on "address already in use".
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testsrv: free port: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !portsGiven[port] {
			portsGiven[port] = true
			return port
		}
	}
	t.Fatalf("testsrv: free port: no unused port after 100 tries")
	return 0
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// LookPath finds a server binary or fails the test loudly.
func LookPath(t testing.TB, name string, extra ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range extra {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("testsrv: %s not found: run the README's test command (make test), which installs it", name)
	return ""
}

// WaitDial waits until addr accepts TCP connections.
func WaitDial(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Redis is a redis-server process owned by a test.
type Redis struct {
	Addr string

	cmd      *exec.Cmd
	exited   chan struct{}
	stopOnce sync.Once
}

// StartRedis starts redis-server on a random loopback port without
// persistence and stops it in t.Cleanup.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin := LookPath(t, "redis-server", "/usr/bin/redis-server")
	dir := t.TempDir()
	return startRedisNode(t, bin, dir, "redis", func(port int) []string {
		return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "no"}
	})
}

// waitReady also watches the process, so that a redis-server that died (for
// example on a port taken meanwhile) is not mistaken for the thief.
func (r *Redis) waitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		select {
		case <-r.exited:
			return fmt.Errorf("redis-server exited: %v", r.cmd.ProcessState)
		default:
		}
		err := WaitDial(r.Addr, 100*time.Millisecond)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
	}
}

// Stop kills the server; it is safe to call more than once, so a test can
// take Redis down on purpose.
func (r *Redis) Stop() {
	r.stopOnce.Do(func() {
		r.cmd.Process.Kill()
		<-r.exited
	})
}
