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
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
//
// The port is picked at random below the kernel's ephemeral range
// (ip_local_port_range): ports in that range are what the kernel hands to
// outgoing connections and to listen(":0"), so a port from there can be
// taken again, by this process or a parallel test binary, before the server
// that is to use it binds it. (CI once gave Dovecot's two listeners the
// same port.) FreePort also never returns a port twice in one process.
// Starters still retry on "address already in use".
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	lo, hi := portRange()
	for range 200 {
		port := lo + rand.IntN(hi-lo)
		if portsGiven[port] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		ln.Close()
		portsGiven[port] = true
		return port
	}
	t.Fatalf("testsrv: free port: none free in %d..%d after 200 tries", lo, hi-1)
	return 0
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// portRange is the range FreePort picks from: the 10,000 ports below the
// ephemeral range, but not below 1024.
func portRange() (lo, hi int) {
	hi = 32768 // Linux's default start of the ephemeral range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 2048 {
				hi = v
			}
		}
	}
	return max(1024, hi-10000), hi
}

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
