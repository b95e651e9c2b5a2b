package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/testsrv"
	ptls "github.com/portico-mail/portico/tls"
)

// packagingSecrets are the {env: ...} secrets the packaged configs name,
// long enough that check-config has nothing to warn about.
var packagingSecrets = []string{
	"PORTICO_REDIS_PASSWORD=redis-password-from-env",
	"PORTICO_ACME_CACHE_KEY=0123456789abcdef0123456789abcdef",
	"PORTICO_TICKET_KEY=fedcba9876543210fedcba9876543210",
	"PORTICO_BRUTE_FORCE_KEY=00112233445566778899aabbccddeeff",
	"PORTICO_ADMIN_TOKEN=0a1b2c3d4e5f60718293a4b5c6d7e8f9",
}

// packagedConfig copies packaging/NAME into a temp dir with the files it
// names (the Redis CA) made up, and returns the copy's path.
func packagedConfig(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../../packaging", name))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, err := ptls.SelfSigned("redis.example.com")
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "redis-ca.pem")
	if err := ptls.WritePEM(cert, ca, filepath.Join(dir, "redis-key.pem")); err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "/etc/portico/tls/redis-ca.pem", ca)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPackagedConfigs runs the unit's ExecStartPre line on both example
// configs of packaging/, so that they never drift from what Portico
// accepts: exit 0 and no warning.
func TestPackagedConfigs(t *testing.T) {
	bin := binary(t)
	pre := unitDirective(t, "ExecStartPre")
	for _, kv := range packagingSecrets { // for config.Load below
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	for _, name := range []string{"portico.yaml", "portico-fleet.yaml"} {
		t.Run(name, func(t *testing.T) {
			p := packagedConfig(t, name)
			args := strings.Fields(strings.ReplaceAll(pre, "/etc/portico/portico.yaml", p))
			if args[0] != "/usr/bin/portico" {
				t.Fatalf("ExecStartPre runs %s, not /usr/bin/portico", args[0])
			}
			out, code := run(t, bin, packagingSecrets, args[1:]...)
			if code != 0 || strings.Contains(out, "warn") {
				t.Fatalf("%s: exit %d\n%s", pre, code, out)
			}
			cfg, err := config.Load(p)
			if err != nil {
				t.Fatal(err)
			}
			// The unit lets Portico write only below its StateDirectory
			// and RuntimeDirectory, and follows the pid file.
			if a := cfg.TLS.ACME; a != nil && a.Cache == "dir" && !strings.HasPrefix(a.CacheDir, "/var/lib/portico/") {
				t.Errorf("tls.acme.cache_dir %q is outside StateDirectory=portico (/var/lib/portico)", a.CacheDir)
			}
			if pf := unitDirective(t, "PIDFile"); cfg.PIDFile != pf {
				t.Errorf("pid_file %q, the unit's PIDFile=%s", cfg.PIDFile, pf)
			}
		})
	}
	t.Run("fleet behind a balancer", func(t *testing.T) {
		cfg, err := config.Load(packagedConfig(t, "portico-fleet.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range cfg.Listeners {
			if l.ProxyProtocol == nil || len(l.ProxyProtocol.TrustedNetworks) == 0 {
				t.Errorf("listener %s takes no PROXY protocol from the balancers", l.Name)
			}
		}
		if cfg.Routing.Redis == nil || cfg.TLS.ACME == nil || cfg.TLS.ACME.Cache != "redis" || !cfg.TLS.SessionTickets.Redis {
			t.Error("the fleet does not share Redis, the ACME cache and the ticket keys")
		}
	})
}

// TestCheckConfigForExecStartPre: check-config decides whether systemd
// starts serve, so its exit code must say exactly that, and it must not
// reach out to Redis or the ACME CA (a Redis outage must not stop a
// restart that would have served from its cache).
func TestCheckConfigForExecStartPre(t *testing.T) {
	bin := binary(t)
	// Redis and the ACME directory both point at this listener: nothing
	// may connect to it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	connected := make(chan string, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			connected <- c.RemoteAddr().String()
			c.Close()
		}
	}()
	dir := t.TempDir()
	addr := ln.Addr().String()
	good := writeConfig(t, dir, `
listeners:
  - {name: imaps, mode: imaps, address: "127.0.0.1:0"}
tls:
  acme:
    hostnames: [imap.example.com]
    directory_url: https://`+addr+`/directory
    http_address: "127.0.0.1:0"
    cache: redis
    cache_key: 0123456789abcdef0123456789abcdef
  session_tickets: {redis: true, key: 0123456789abcdef0123456789abcdef}
routing:
  default_domain: example.com
  redis: {addrs: ["`+addr+`"]}
`)
	bad := filepath.Join(dir, "bad.yaml")
	b, _ := os.ReadFile(good)
	os.WriteFile(bad, []byte(strings.Replace(string(b), "hostnames:", "hostname:", 1)), 0o600)

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-config", good}, 0, "OK"},
		{[]string{good}, 0, "OK"},
		{[]string{good, "-config", good}, 0, "OK"},
		{[]string{"-config", bad}, 1, `"hostname"`},
		{[]string{"-config", filepath.Join(dir, "missing.yaml")}, 1, "missing.yaml"},
		{[]string{"-config", good, bad}, 2, "give one"},
		{nil, 2, "missing FILE"},
	} {
		out, code := run(t, bin, nil, append([]string{"check-config"}, c.args...)...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("check-config %s: exit %d, want %d and %q:\n%s", strings.Join(c.args, " "), code, c.code, c.want, out)
		}
	}
	select {
	case from := <-connected:
		t.Errorf("check-config connected to Redis/the ACME CA (from %s)", from)
	case <-time.After(100 * time.Millisecond):
	}
}

// unitDirective returns the value of the first KEY= line of
// packaging/portico.service.
func unitDirective(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile("../../packaging/portico.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return v
		}
	}
	t.Fatalf("portico.service has no %s=", key)
	return ""
}

// TestUnitFile checks packaging/portico.service with systemd's own tools
// (package systemd, which make deps installs): `systemd-analyze verify`
// must accept it without a word, and its hardening must keep the
// exposure score `systemd-analyze security` gives at "OK" level.
func TestUnitFile(t *testing.T) {
	analyze := testsrv.LookPath(t, "systemd-analyze")
	bin := binary(t)
	b, err := os.ReadFile("../../packaging/portico.service")
	if err != nil {
		t.Fatal(err)
	}
	// verify checks that the commands exist: the binary under test
	// stands in for /usr/bin/portico.
	unit := filepath.Join(t.TempDir(), "portico.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/bin/portico", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	// verify exits 0 after an unknown key or a bad value, which it only
	// prints; anything it says about our unit is a failure.
	if err != nil || strings.Contains(string(out), "portico.service") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// --threshold is in tenths: 25 is an exposure of 2.5 ("OK" is < 3).
	out, err = exec.Command(analyze, "security", "--offline=yes", "--threshold=25", unit).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: %v\n%s", err, out)
	}
	for _, want := range []string{
		"Type=notify", "NotifyAccess=all", "WatchdogSec=", "Restart=on-failure",
		"ExecReload=/usr/bin/portico reload -config /etc/portico/portico.yaml",
		"User=portico", "StateDirectory=portico", "RuntimeDirectory=portico", "LimitNOFILE=",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
	} {
		if !strings.Contains(string(b), "\n"+want) {
			t.Errorf("portico.service lacks %s", want)
		}
	}
}

// TestSocketUnit checks packaging/portico.socket: systemd-analyze verify
// accepts it next to the service it activates, and it binds exactly the
// listeners' addresses of packaging/portico.yaml, as serve matches them.
func TestSocketUnit(t *testing.T) {
	analyze := testsrv.LookPath(t, "systemd-analyze")
	bin := binary(t)
	dir := t.TempDir()
	for _, name := range []string{"portico.service", "portico.socket"} {
		b, err := os.ReadFile("../../packaging/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.ReplaceAll(string(b), "/usr/bin/portico", bin)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(analyze, "verify", filepath.Join(dir, "portico.socket"), filepath.Join(dir, "portico.service")).CombinedOutput()
	if err != nil || strings.Contains(string(out), "portico.") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	for _, kv := range packagingSecrets { // for config.Load below
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	b, _ := os.ReadFile("../../packaging/portico.socket")
	var ports []string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "ListenStream="); ok {
			ports = append(ports, v)
		}
	}
	cfg, err := config.Load(packagedConfig(t, "portico.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, l := range cfg.Listeners {
		addrs = append(addrs, l.Address)
	}
	// A bare port in ListenStream= is [::]:PORT, which ":PORT" takes.
	var want []string
	for _, p := range ports {
		want = append(want, ":"+p)
	}
	if strings.Join(addrs, " ") != strings.Join(want, " ") {
		t.Errorf("portico.socket listens on %v, portico.yaml's listeners on %v", ports, addrs)
	}
}

// TestSysusersFile creates the portico user from packaging/portico.sysusers
// in an empty root with systemd-sysusers.
func TestSysusersFile(t *testing.T) {
	sysusers := testsrv.LookPath(t, "systemd-sysusers")
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "etc"), 0o755)
	file, err := filepath.Abs("../../packaging/portico.sysusers") // not below --root
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sysusers, "--root="+root, file).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	group, _ := os.ReadFile(filepath.Join(root, "etc/group"))
	if !strings.HasPrefix(string(passwd), "portico:") || !strings.HasPrefix(string(group), "portico:") {
		t.Errorf("no portico user and group:\n%s\n%s", passwd, group)
	}
	if !strings.Contains(string(passwd), ":/var/lib/portico:") {
		t.Errorf("portico's home is not its StateDirectory:\n%s", passwd)
	}
}
