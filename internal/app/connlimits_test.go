package app

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/fleet"
	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
)

// TestConnectionLimitsConfig: the connection limits, trusted networks and
// a listener's proxy_protocol reach the server, and a PROXY header from
// the configured balancer makes its client the session's.
func TestConnectionLimitsConfig(t *testing.T) {
	const user, pass = "alice@example.test", "alice-pw"
	mem, err := membackend.Start("127.0.0.1:0", membackend.User{Name: user, Password: pass})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	certFile, keyFile := certPair(t)
	base := `
listeners:
  - name: lb
    mode: imap
    address: "127.0.0.1:0"
    cleartext_login_networks: [192.0.2.0/24]
    proxy_protocol: {trusted_networks: [127.0.0.1/32]}
tls:
  certificates:
    - {cert_file: ` + certFile + `, key_file: ` + keyFile + `}
routing:
  static: [{user: ` + user + `, backend: mem}]
  health: {disabled: true}
backends:
  - {name: mem, address: "` + mem.Addr() + `"}
`
	build := func(extra string) *App {
		cfg, err := config.Parse([]byte(base+extra), "portico.yaml")
		if err != nil {
			t.Fatal(err)
		}
		rt, err := Build(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(rt.Close)
		return rt
	}

	// Defaults: max_connections from the open-file limit.
	rt := build("")
	l := rt.Server.Limits
	if l.MaxConnections != proxy.FileLimitConnections() || l.MaxConnections <= 0 || l.MaxPreauthPerIP != 100 || l.IPv6Prefix != 64 ||
		l.MaxSessionsPerUser != 100 || l.MaxSessionsPerUserIP != 10 || l.MaxLoginsInProgress != 1000 || l.MaxLoginsPerBackend != 100 {
		t.Errorf("default limits %+v", l)
	}
	rt = build(`limits:
  max_connections: 7
  max_preauth_connections_per_ip: 8
  ipv6_prefix: 56
  max_sessions_per_user: 9
  max_sessions_per_user_ip: 3
  max_logins_in_progress: 11
  max_logins_in_progress_per_backend: 12
  trusted_networks: [10.9.0.0/16]
`)
	l = rt.Server.Limits
	if l.MaxConnections != 7 || l.MaxPreauthPerIP != 8 || l.IPv6Prefix != 56 || l.MaxSessionsPerUser != 9 ||
		l.MaxSessionsPerUserIP != 3 || l.MaxLoginsInProgress != 11 || l.MaxLoginsPerBackend != 12 {
		t.Errorf("limits %+v", l)
	}
	if tn := rt.Server.TrustedNetworks; len(tn) != 1 || tn[0] != netip.MustParsePrefix("10.9.0.0/16") {
		t.Errorf("trusted networks %v", tn)
	}
	spec := rt.Listeners[0]
	if pp := spec.Config.ProxyProtocolFrom; len(pp) != 1 || pp[0] != netip.MustParsePrefix("127.0.0.1/32") {
		t.Fatalf("proxy_protocol %v", pp)
	}

	// The balancer's header: its client may log in in clear (it is in
	// cleartext_login_networks) and is the session's client.
	got := make(chan proxy.SessionInfo, 1)
	rt.Server.OnSplice = func(i proxy.SessionInfo) { got <- i }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go rt.Server.Serve(ln, spec.Config)
	defer rt.Server.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("192.0.2.44"), Port: 5555}, &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 143})
	if _, err := h.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if g, _ := br.ReadString('\n'); !strings.Contains(g, "AUTH=PLAIN") {
		t.Fatalf("greeting %q: no cleartext login for the header's client", g)
	}
	io.WriteString(c, "a LOGIN "+user+" "+pass+"\r\n")
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login: %q", l)
	}
	select {
	case i := <-got:
		if i.Client != "192.0.2.44:5555" {
			t.Errorf("session registered with client %s", i.Client)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no session")
	}
}

// TestSessionsPerUserFleet: limits.max_sessions_per_user is counted over
// the fleet, in the session registry: two proxies sharing a real Redis
// refuse the third session of a user wherever it logs in, with
// NO [LIMIT], and take new ones again once one has ended.
func TestSessionsPerUserFleet(t *testing.T) {
	r := testsrv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	certFile, keyFile := certPair(t)
	const user, pass = "alice@example.test", "alice-pw"
	mem, err := membackend.Start("127.0.0.1:0", membackend.User{Name: user, Password: pass})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var addrs []string
	for i := range 2 {
		rt := buildYAML(t, `
listeners:
  - {mode: imap, address: "127.0.0.1:0", cleartext_login_networks: [127.0.0.0/8]}
tls:
  certificates:
    - {cert_file: `+certFile+`, key_file: `+keyFile+`}
routing:
  static: [{user: `+user+`, backend: mem}]
  redis: {addrs: ["`+r.Addr+`"]}
  health: {disabled: true}
backends:
  - {name: mem, address: "`+mem.Addr()+`"}
fleet: {proxy_id: p`+strconv.Itoa(i)+`, heartbeat: 1s}
limits: {max_sessions_per_user: 2}
`)
		if _, err := rt.Start(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go rt.Server.Serve(ln, rt.Listeners[0].Config)
		t.Cleanup(func() { rt.Server.Close() })
		addrs = append(addrs, ln.Addr().String())
	}
	// Each proxy counts the sessions of the proxies alive at its last
	// heartbeat: let both see the other.
	time.Sleep(2500 * time.Millisecond)
	login := func(addr string) (net.Conn, string) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		br.ReadString('\n')
		io.WriteString(c, "a LOGIN "+user+" "+pass+"\r\n")
		l, _ := br.ReadString('\n')
		return c, strings.TrimRight(l, "\r\n")
	}
	count := func() int {
		n, err := fleet.CountSessions(ctx, rdb, "", user)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitCount := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for count() != n {
			if time.Now().After(deadline) {
				t.Fatalf("registry shows %d sessions, want %d", count(), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	first, l := login(addrs[0])
	if !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login 1: %q", l)
	}
	waitCount(1)
	if _, l := login(addrs[1]); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login 2: %q", l)
	}
	waitCount(2)
	for i, addr := range addrs {
		if _, l := login(addr); l != "a NO [LIMIT] Too many sessions of this user" {
			t.Errorf("login 3 on proxy %d: %q", i, l)
		}
	}
	first.Close()
	waitCount(1)
	if _, l := login(addrs[1]); !strings.HasPrefix(l, "a OK") {
		t.Errorf("login after one ended: %q", l)
	}
}

// certPair writes a self-signed certificate and key for localhost.
func certPair(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	_, certFile, keyFile = testcert.Files(t, t.TempDir(), "localhost")
	return certFile, keyFile
}
