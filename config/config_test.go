package config

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	ptls "github.com/portico-mail/portico/tls"
)

// keyPair writes a self-signed ECDSA certificate valid from notBefore to
// notAfter and its key into dir.
func keyPair(t *testing.T, dir, name string, notBefore, notAfter time.Time) (certFile, keyFile string) {
	t.Helper()
	c, err := ptls.SelfSignedValid(notBefore, notAfter, "imap.example.com")
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(dir, name+"-cert.pem")
	keyFile = filepath.Join(dir, name+"-key.pem")
	if err := ptls.WritePEM(c, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

type fixture struct {
	dir               string
	cert, key         string // a valid pair
	otherKey          string // does not match cert
	expired, expKey   string // an expired pair
	expiring, soonKey string // a pair expiring in 3 days
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir()}
	now := time.Now()
	f.cert, f.key = keyPair(t, f.dir, "good", now.Add(-time.Hour), now.Add(365*24*time.Hour))
	_, f.otherKey = keyPair(t, f.dir, "other", now.Add(-time.Hour), now.Add(365*24*time.Hour))
	f.expired, f.expKey = keyPair(t, f.dir, "expired", now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	f.expiring, f.soonKey = keyPair(t, f.dir, "soon", now.Add(-time.Hour), now.Add(3*24*time.Hour))
	return f
}

// example returns Example with its certificate paths pointing at f's pair,
// and sets the Redis password variable it needs.
func (f *fixture) example(t *testing.T) []byte {
	t.Setenv("PORTICO_REDIS_PASSWORD", "redis-pw-from-env")
	t.Setenv("PORTICO_BRUTE_FORCE_KEY", "brute-force-key-from-env")
	s := strings.ReplaceAll(string(Example), "/etc/portico/tls/cert.pem", f.cert)
	s = strings.ReplaceAll(s, "/etc/portico/tls/key.pem", f.key)
	return []byte(s)
}

func TestExample(t *testing.T) {
	f := newFixture(t)
	c, err := Parse(f.example(t), "portico.example.yaml")
	if err != nil {
		t.Fatalf("example does not load:\n%v", err)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("example has warnings: %q", w)
	}
	if len(c.Listeners) != 3 || c.Listeners[0].Mode != "imaps" || c.Listeners[0].Address != ":993" ||
		c.Listeners[1].Mode != "imap" || c.Listeners[1].Address != ":143" ||
		c.Listeners[2].Mode != "pop3s" || c.Listeners[2].Address != ":995" {
		t.Errorf("listeners = %+v", c.Listeners)
	}
	if len(c.TLS.Certificates) != 1 || c.TLS.Certificates[0].CertFile != f.cert {
		t.Errorf("certificates = %+v", c.TLS.Certificates)
	}
	r := c.Routing.Redis
	if r == nil || r.Password.Value != "redis-pw-from-env" || r.Password.Source != "env:PORTICO_REDIS_PASSWORD" {
		t.Fatalf("redis = %+v, password source %q", r, r.Password.Source)
	}
	if len(c.Backends) != 2 || c.Backends[0].Name != "dovecot1" || c.Backends[1].Name != "dovecot2" ||
		!c.Backends[0].ForwardID || !c.Backends[1].ForwardID || c.Backends[0].POP3Port != 110 {
		t.Errorf("backends = %+v", c.Backends)
	}
	if len(c.Routing.Static) != 1 || c.Routing.Static[0].Backend != "dovecot1" {
		t.Errorf("static = %+v", c.Routing.Static)
	}
	if b := c.Backends; b[0].Weight != 1 || b[1].Weight != 2 || b[0].Fallback != "" || b[0].ProxyProtocol {
		t.Errorf("backends = %+v", b)
	}
	if p := c.Routing.Pools; !reflect.DeepEqual(p, []Pool{{Name: "main", Backends: []string{"dovecot1", "dovecot2"}, Policy: "assign"}}) {
		t.Errorf("pools = %+v", p)
	}
	if dp := c.Routing.DomainPools; !reflect.DeepEqual(dp, map[string]string{"example.com": "main"}) || c.Routing.DefaultPool != "" {
		t.Errorf("domain_pools = %v, default_pool = %q", dp, c.Routing.DefaultPool)
	}
	if c.Fleet.ProxyID != "" || c.Fleet.DrainWindow != 5*time.Minute || c.Routing.Health.Fall != 3 || c.Routing.Cache.MaxEntries != 100000 {
		t.Errorf("fleet = %+v, health = %+v, cache = %+v", c.Fleet, c.Routing.Health, c.Routing.Cache)
	}
	// The example shows the defaults: filling them in must change nothing.
	d := *c
	d.ApplyDefaults()
	if !reflect.DeepEqual(&d, c) {
		t.Errorf("ApplyDefaults changed the example")
	}
}

// TestExampleDocumentsEveryKey checks that every yaml key of the types
// appears in the example, set or commented out.
func TestExampleDocumentsEveryKey(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var keys []string
	var collect func(reflect.Type)
	collect = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] || t == secretType {
			return
		}
		seen[t] = true
		for k, ft := range yamlFields(t) {
			keys = append(keys, k)
			collect(ft)
		}
	}
	collect(configType)
	if len(keys) < 40 {
		t.Fatalf("found only %d keys: %v", len(keys), keys)
	}
	for _, k := range keys {
		if !bytes.Contains(Example, []byte(k+":")) {
			t.Errorf("key %q is not documented in portico.example.yaml", k)
		}
	}
}

func TestLoad(t *testing.T) {
	f := newFixture(t)
	path := filepath.Join(f.dir, "portico.yaml")
	writeFile(t, path, string(f.example(t)))
	if _, err := Load(path); err != nil {
		t.Fatal(err)
	}
	_, err := Load(filepath.Join(f.dir, "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) = %v", err)
	}
	writeFile(t, path, "listeners:\n  - mode: imaps\n    adress: x\n")
	_, err = Load(path)
	if err == nil || !strings.Contains(err.Error(), path+":3: ") {
		t.Errorf("Load error does not name file and line: %v", err)
	}
}

// base is a small valid configuration; cases modify it textually.
const base = `listeners:
  - mode: imaps
    address: "127.0.0.1:993"
  - mode: imap
    address: "127.0.0.1:143"
tls:
  certificates:
    - cert_file: CERT
      key_file: KEY
routing:
  static:
    - user: alice@example.com
      backend: b1
  redis:
    addrs: ["127.0.0.1:6379"]
backends:
  - name: b1
    address: "127.0.0.1:1143"
`

func (f *fixture) base(edits ...string) string {
	s := strings.NewReplacer("CERT", f.cert, "KEY", f.key).Replace(base)
	for i := 0; i+1 < len(edits); i += 2 {
		if edits[i] == "" {
			s += edits[i+1]
			continue
		}
		if !strings.Contains(s, edits[i]) {
			panic("edit does not apply: " + edits[i])
		}
		s = strings.Replace(s, edits[i], edits[i+1], 1)
	}
	return s
}

func TestBaseIsValid(t *testing.T) {
	f := newFixture(t)
	c, err := Parse([]byte(f.base()), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// base leaves backend_defaults plain next to routing.redis.
	if w := c.Warnings(); len(w) != 1 || !strings.HasPrefix(w[0], `backend_defaults.security: "plain": users' passwords are sent in clear`) {
		t.Errorf("warnings: %q", w)
	}
	c, err = Parse([]byte(f.base("", quiet)), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

// quiet, appended to base, silences its only warning.
const quiet = "backend_defaults:\n  security: starttls\n"

func TestUnknownKeys(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"top level", f.base("", "listner: []\n"), []string{`portico.yaml:19: unknown key "listner" at top level; did you mean "listeners"?`}},
		{"nested", f.base("", "log:\n  level: info\n  formt: json\n"), []string{`portico.yaml:21: unknown key "formt" in log; did you mean "format"?`}},
		{"list item", f.base(`    address: "127.0.0.1:143"`, `    adress: "127.0.0.1:143"`), []string{`config: portico.yaml:5: unknown key "adress" in listeners[1]; did you mean "address"?`}},
		{"deep list item", f.base("      backend: b1", "      backend: b1\n      backed: b1"), []string{`portico.yaml:14: unknown key "backed" in routing.static[0]`}},
		{"inline options", f.base(`    address: "127.0.0.1:1143"`, `    address: "127.0.0.1:1143"`+"\n    securty: tls"), []string{`portico.yaml:19: unknown key "securty" in backends[0]; did you mean "security"?`}},
		{"nested tls", f.base(`    address: "127.0.0.1:1143"`, `    address: "127.0.0.1:1143"`+"\n    security: tls\n    tls:\n      ca_fil: x"), []string{`portico.yaml:21: unknown key "ca_fil" in backends[0].tls; did you mean "ca_file"?`}},
		{"no close key", f.base("", "zzzzzz: 1\n"), []string{`unknown key "zzzzzz" at top level; known keys: admin, auth, backend_defaults, backends, fleet, limits, listeners, log, pid_file, routing, tls`}},
		{"secret", f.base(`    addrs: ["127.0.0.1:6379"]`, `    addrs: ["127.0.0.1:6379"]`+"\n    password: {envv: X}"), []string{`portico.yaml:16: unknown key "envv" in routing.redis.password`}},
		{"secret block", f.base(`    addrs: ["127.0.0.1:6379"]`, `    addrs: ["127.0.0.1:6379"]`+"\n    password:\n      fiel: /x"), []string{`portico.yaml:17: unknown key "fiel" in routing.redis.password`}},
		{"merge key", f.base("", "x: &opts\n  security: plain\n"), []string{`portico.yaml:19: unknown key "x" at top level`}},
		{"several", f.base("", "foo: 1\nlog:\n  bar: 2\n"), []string{
			`portico.yaml:19: unknown key "foo" at top level`,
			`portico.yaml:21: unknown key "bar" in log`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "portico.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
			if strings.Contains(err.Error(), "not found in type") {
				t.Errorf("raw yaml message leaked: %v", err)
			}
		})
	}
}

func TestMergeKeysAreChecked(t *testing.T) {
	f := newFixture(t)
	good := f.base(`backends:
  - name: b1`, `backends:
  - <<: {security: plain, forward_id: true}
    name: b1`)
	c, err := Parse([]byte(good), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Backends[0].ForwardID {
		t.Error("merged key not applied")
	}
	bad := strings.Replace(good, "forward_id", "forwardid", 1)
	if _, err := Parse([]byte(bad), "portico.yaml"); err == nil || !strings.Contains(err.Error(), `unknown key "forwardid" in backends[0]`) {
		t.Errorf("err = %v", err)
	}
}

func TestAliases(t *testing.T) {
	f := newFixture(t)
	good := f.base("backends:\n  - name: b1\n"+`    address: "127.0.0.1:1143"`,
		"x-common: &common\n  security: tls\n  forward_id: true\nbackends:\n  - name: b1\n"+`    address: "127.0.0.1:1143"`+"\n    <<: *common")
	// x-common is not a key of Config, so anchors must live inside known keys.
	if _, err := Parse([]byte(good), "p.yaml"); err == nil || !strings.Contains(err.Error(), `unknown key "x-common" at top level`) {
		t.Fatalf("err = %v", err)
	}
	good = f.base("backends:\n  - name: b1\n"+`    address: "127.0.0.1:1143"`,
		"backend_defaults: &common\n  security: tls\n  forward_id: true\nbackends:\n  - name: b1\n"+`    address: "127.0.0.1:1143"`+"\n    <<: *common")
	c, err := Parse([]byte(good), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Backends[0]; b.Security != "tls" || !b.ForwardID {
		t.Errorf("backend = %+v", b)
	}
	// Exponential aliasing must fail quickly, not hang.
	var bomb strings.Builder
	bomb.WriteString("backends:\n  - &a0 {forward_id: true}\n")
	for i := 1; i < 30; i++ {
		fmt.Fprintf(&bomb, "  - &a%d {<<: [*a%[2]d, *a%[2]d, *a%[2]d, *a%[2]d, *a%[2]d, *a%[2]d, *a%[2]d, *a%[2]d, *a%[2]d, *a%[2]d]}\n", i, i-1)
	}
	start := time.Now()
	if _, err := Parse([]byte(bomb.String()), "p.yaml"); err == nil {
		t.Error("no error")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestDocumentErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"", "config: x.yaml: file is empty"},
		{"# just a comment\n", "config: x.yaml: file is empty"},
		{"---\n", "config: x.yaml: file is empty"},
		{"log: {}\n---\nlog: {}\n", "config: x.yaml:2: a second YAML document"},
		{"- a\n", "config: x.yaml:1: the top level must be a mapping"},
		{"log: [\n", "config: x.yaml:1: "},
		{"log:\n  level: info\n  level: debug\n", `config: x.yaml:3: log.level: mapping key "level" already defined at line 2`},
		{"limits:\n  idle_timeout: forever\n", "config: x.yaml:2: limits.idle_timeout: cannot unmarshal !!str `forever` into time.Duration (want a duration"},
		{"limits:\n  max_line_length: big\n", "config: x.yaml:2: limits.max_line_length: cannot unmarshal"},
	} {
		_, err := Parse([]byte(tc.yaml), "x.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func TestDefaults(t *testing.T) {
	f := newFixture(t)
	yml := fmt.Sprintf(`listeners:
  - mode: imaps
  - mode: imap
tls:
  certificates: [{cert_file: %s, key_file: %s}]
routing:
  redis: {addrs: ["127.0.0.1:6379"]}
backends:
  - {name: b1, address: "127.0.0.1:1143"}
`, f.cert, f.key)
	c, err := Parse([]byte(yml), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Log: Log{Level: "info", Format: "text"},
		Listeners: []Listener{
			{Name: "imaps-:993", Address: ":993", Mode: "imaps"},
			{Name: "imap-:143", Address: ":143", Mode: "imap"},
		},
		TLS: TLS{
			Certificates:   []Certificate{{f.cert, f.key}},
			MinVersion:     "1.2",
			ReloadInterval: 30 * time.Second,
			ExpiryWarning:  14 * 24 * time.Hour,
			SessionTickets: SessionTickets{Rotation: 12 * time.Hour},
		},
		Limits: Limits{
			MaxLineLength:     8192,
			MaxLiteralSize:    1024,
			MaxAuthLineLength: 16384,
			PreauthTimeout:    60 * time.Second,
			HandshakeTimeout:  10 * time.Second,
			MaxBadCommands:    3,
			MaxAuthFailures:   3,
			AuthFailureDelay:  2 * time.Second,
			IdleTimeout:       31 * time.Minute,
			ShutdownTimeout:   30 * time.Second,
			UpgradeTimeout:    time.Hour,
			UpgradeWindow:     5 * time.Minute,

			MaxPreauthConnectionsPerIP:    100,
			IPv6Prefix:                    64,
			MaxSessionsPerUser:            100,
			MaxSessionsPerUserIP:          10,
			MaxLoginsInProgress:           1000,
			MaxLoginsInProgressPerBackend: 100,

			BruteForce: BruteForce{
				IP:                     FailureLimit{DelayAfter: 10, BlockAfter: 30, Window: 30 * time.Minute, BlockFor: 30 * time.Minute},
				UserIP:                 FailureLimit{DelayAfter: 3, BlockAfter: 10, Window: 15 * time.Minute, BlockFor: 15 * time.Minute},
				User:                   FailureLimit{DelayAfter: 10, BlockAfter: 50, Window: time.Hour, BlockFor: 15 * time.Minute},
				Delay:                  time.Second,
				MaxDelay:               15 * time.Second,
				KnownAddressTTL:        720 * time.Hour,
				KnownAddresses:         16,
				RepeatedPasswordWindow: time.Hour,
				OnRedisError:           "open",
			},
		},
		Routing: Routing{
			LookupTimeout: 2 * time.Second,
			Redis: &Redis{
				Addrs:        []string{"127.0.0.1:6379"},
				KeyPrefix:    "portico:",
				DialTimeout:  time.Second,
				ReadTimeout:  time.Second,
				WriteTimeout: time.Second,
			},
			Cache:  RouteCache{PositiveTTL: 30 * time.Second, NegativeTTL: 5 * time.Second, MaxEntries: 100000},
			Health: Health{Interval: 5 * time.Second, Timeout: 3 * time.Second, Rise: 2, Fall: 3},
		},
		Backends: []Backend{{Name: "b1", Address: "127.0.0.1:1143", Weight: 1, SpareMaxIdle: time.Minute, BackendOptions: BackendOptions{
			Security: "plain", ConnectTimeout: 10 * time.Second, LoginTimeout: 30 * time.Second,
		}}},
		BackendDefaults: BackendOptions{Security: "plain", ConnectTimeout: 10 * time.Second, LoginTimeout: 30 * time.Second},
		Fleet:           Fleet{Heartbeat: 10 * time.Second, Reconcile: 5 * time.Minute, WriteRate: 5000, MoveHold: 30 * time.Second, DrainWindow: 5 * time.Minute},
	}
	if !reflect.DeepEqual(*c, want) {
		got, _ := json.MarshalIndent(c, "", " ")
		exp, _ := json.MarshalIndent(want, "", " ")
		t.Errorf("got\n%s\nwant\n%s", got, exp)
	}
	if c.TLS.MinTLSVersion() != 0x0303 || (TLS{MinVersion: "1.3"}).MinTLSVersion() != 0x0304 {
		t.Error("MinTLSVersion")
	}
	if c.Log.SlogLevel() != slog.LevelInfo || (Log{Level: "debug"}).SlogLevel() != slog.LevelDebug {
		t.Error("SlogLevel")
	}
	// Explicit values are kept.
	c2, err := Parse([]byte(yml+"limits: {idle_timeout: 2h, max_bad_commands: 5}\n"), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c2.Limits.IdleTimeout != 2*time.Hour || c2.Limits.MaxBadCommands != 5 || c2.Limits.MaxLineLength != 8192 {
		t.Errorf("limits = %+v", c2.Limits)
	}
}

func TestValidation(t *testing.T) {
	f := newFixture(t)
	notPEM := filepath.Join(f.dir, "not.pem")
	writeFile(t, notPEM, "hello\n")
	const listeners = "listeners:\n  - mode: imaps\n    address: \"127.0.0.1:993\"\n  - mode: imap\n    address: \"127.0.0.1:143\"\n"
	const backendAddr = `    address: "127.0.0.1:1143"`
	const redisAddrs = `    addrs: ["127.0.0.1:6379"]`
	// acme puts an acme section with these hostnames (none if "") first
	// in tls, on line 7.
	acme := func(hostnames, opts string) []string {
		s := "tls:\n  acme:\n"
		if hostnames != "" {
			s += "    hostnames: " + hostnames + "\n"
		} else {
			s += "    email: pm@example.com\n"
		}
		return []string{"tls:\n", s + opts}
	}
	pin := base64.StdEncoding.EncodeToString(make([]byte, 32))
	for _, tc := range []struct {
		name  string
		edits []string
		want  string
	}{
		// listeners
		{"no listeners", []string{listeners, "listeners: []\n"}, `portico.yaml:1: listeners: at least one listener is required`},
		{"no listeners key", []string{listeners, ""}, `config: portico.yaml: listeners: at least one listener is required`},
		{"pop3 port", []string{`    address: "127.0.0.1:1143"`, `    address: "127.0.0.1:1143"` + "\n    pop3_port: 70000"}, `backends[0].pop3_port: must be a port number (1-65535), or 0 for a backend without POP3`},
		{"mode", []string{"mode: imap\n", "mode: smtp\n"}, `portico.yaml:4: listeners[1].mode: must be "imaps", "imap", "pop3s" or "pop3", not "smtp"`},
		{"mode missing", []string{"  - mode: imap\n    address", "  - address"}, `portico.yaml:4: listeners[1].mode: is required; must be "imaps", "imap", "pop3s" or "pop3"`},
		{"address no port", []string{`"127.0.0.1:993"`, `"127.0.0.1"`}, `portico.yaml:3: listeners[0].address: "127.0.0.1" is not host:port`},
		{"address bad port", []string{`"127.0.0.1:993"`, `"127.0.0.1:99999"`}, `listeners[0].address: "127.0.0.1:99999": port must be a number from 0 to 65535`},
		{"address named port", []string{`"127.0.0.1:993"`, `"127.0.0.1:imaps"`}, `listeners[0].address: "127.0.0.1:imaps": port must be a number`},
		{"duplicate address", []string{`"127.0.0.1:143"`, `"127.0.0.1:993"`}, `portico.yaml:5: listeners[1].address: "127.0.0.1:993" conflicts with listeners[0].address "127.0.0.1:993"`},
		{"duplicate spelled differently", []string{`"127.0.0.1:143"`, `"[::ffff:127.0.0.1]:993"`}, `listeners[1].address: "[::ffff:127.0.0.1]:993" conflicts with listeners[0].address`},
		{"wildcard conflict", []string{`"127.0.0.1:143"`, `":993"`}, `listeners[1].address: ":993" conflicts with listeners[0].address "127.0.0.1:993"`},
		{"default address conflict", []string{"  - mode: imap\n    address: \"127.0.0.1:143\"\n", "  - mode: imaps\n  - mode: imaps\n    name: x\n"}, `portico.yaml:4: listeners[1].address: ":993" conflicts with listeners[0].address "127.0.0.1:993"`},
		{"duplicate name", []string{"  - mode: imap\n", "  - mode: imap\n    name: a\n", "  - mode: imaps\n", "  - mode: imaps\n    name: a\n"}, `listeners[1].name: "a" is already the name of listeners[0]`},
		{"cidr", []string{"  - mode: imap\n", "  - mode: imap\n    cleartext_login_networks: [127.0.0.1/8, \"::1\", localhost]\n"}, `portico.yaml:5: listeners[1].cleartext_login_networks[0]: "127.0.0.1/8" has address bits set beyond the prefix length; did you mean "127.0.0.0/8"?`},
		{"cidr address", []string{"  - mode: imap\n", "  - mode: imap\n    cleartext_login_networks: [127.0.0.1/8, \"::1\", localhost]\n"}, `listeners[1].cleartext_login_networks[1]: "::1" is an address, not a network; write "::1/128"`},
		{"cidr junk", []string{"  - mode: imap\n", "  - mode: imap\n    cleartext_login_networks: [127.0.0.1/8, \"::1\", localhost]\n"}, `listeners[1].cleartext_login_networks[2]: "localhost" is not a CIDR network`},
		{"proxy_protocol empty", []string{"  - mode: imap\n", "  - mode: imap\n    proxy_protocol: {}\n"}, `portico.yaml:5: listeners[1].proxy_protocol.trusted_networks: at least one network is required`},
		{"proxy_protocol cidr", []string{"  - mode: imap\n", "  - mode: imap\n    proxy_protocol: {trusted_networks: [10.0.0.1/8]}\n"}, `listeners[1].proxy_protocol.trusted_networks[0]: "10.0.0.1/8" has address bits set beyond the prefix length`},
		{"proxy_protocol everyone", []string{"  - mode: imap\n", "  - mode: imap\n    proxy_protocol: {trusted_networks: [\"::/0\"]}\n"}, `listeners[1].proxy_protocol.trusted_networks[0]: "::/0" would let every client choose the address Portico believes`},
		// tls
		{"no certificates", []string{"tls:\n  certificates:\n    - cert_file: " + f.cert + "\n      key_file: " + f.key + "\n", ""}, `config: portico.yaml: tls.certificates: at least one certificate, or tls.acme, is required`},
		{"empty certificates", []string{"    - cert_file: " + f.cert + "\n      key_file: " + f.key + "\n", "    []\n"}, `tls.certificates: at least one certificate, or tls.acme, is required`},
		{"cert missing", []string{f.cert, "/nonexistent/cert.pem"}, `portico.yaml:8: tls.certificates[0].cert_file: open /nonexistent/cert.pem: no such file or directory`},
		{"key missing", []string{f.key, "/nonexistent/key.pem"}, `portico.yaml:9: tls.certificates[0].key_file: open /nonexistent/key.pem: no such file or directory`},
		{"key_file unset", []string{"      key_file: " + f.key + "\n", ""}, `tls.certificates[0].key_file: is required`},
		{"key mismatch", []string{f.key, f.otherKey}, `portico.yaml:8: tls.certificates[0]: cert_file ` + f.cert + ` and key_file ` + f.otherKey + `: tls: private key does not match public key`},
		{"not pem", []string{f.cert, notPEM}, `tls.certificates[0]: cert_file ` + notPEM},
		{"min_version", []string{"tls:\n", "tls:\n  min_version: \"1.1\"\n"}, `portico.yaml:7: tls.min_version: must be "1.2" or "1.3", not "1.1"`},
		{"min_version float", []string{"tls:\n", "tls:\n  min_version: 1.20\n"}, `tls.min_version: must be "1.2" or "1.3", not "1.20"`},
		{"cipher unknown", []string{"tls:\n", "tls:\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls_ecdhe_rsa_with_aes_128_gcm_sha256]\n"}, `portico.yaml:7: tls.cipher_suites[1]: "tls_ecdhe_rsa_with_aes_128_gcm_sha256" is not a TLS 1.2 cipher suite known to Go; write the IANA name`},
		{"cipher insecure", []string{"tls:\n", "tls:\n  cipher_suites:\n    - TLS_RSA_WITH_AES_128_GCM_SHA256\n"}, `portico.yaml:8: tls.cipher_suites[0]: TLS_RSA_WITH_AES_128_GCM_SHA256 is insecure (crypto/tls lists it in InsecureCipherSuites)`},
		{"cipher insecure cbc", []string{"tls:\n", "tls:\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256]\n"}, `tls.cipher_suites[0]: TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256 is insecure`},
		{"cipher rc4", []string{"tls:\n", "tls:\n  cipher_suites: [TLS_ECDHE_RSA_WITH_RC4_128_SHA]\n"}, `tls.cipher_suites[0]: TLS_ECDHE_RSA_WITH_RC4_128_SHA is insecure`},
		{"cipher tls13", []string{"tls:\n", "tls:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"}, `tls.cipher_suites[0]: TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite; TLS 1.3 suites are not configurable`},
		{"cipher duplicate", []string{"tls:\n", "tls:\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n"}, `tls.cipher_suites[1]: TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 is already listed as tls.cipher_suites[0]`},
		{"curve unknown", []string{"tls:\n", "tls:\n  curve_preferences: [X25519, P224]\n"}, `portico.yaml:7: tls.curve_preferences[1]: must be X25519MLKEM768, X25519, P256, P384 or P521, not "P224"`},
		{"curve duplicate alias", []string{"tls:\n", "tls:\n  curve_preferences: [p256, CurveP256]\n"}, `tls.curve_preferences[1]: "CurveP256" is already listed as tls.curve_preferences[0]`},
		{"curve pq only", []string{"tls:\n", "tls:\n  curve_preferences: [X25519MLKEM768]\n"}, `portico.yaml:7: tls.curve_preferences: must include X25519, P256, P384 or P521`},
		{"reload interval", []string{"tls:\n", "tls:\n  reload_interval: 500ms\n"}, `portico.yaml:7: tls.reload_interval: must be between 1s and 24h, not 500ms`},
		{"reload interval negative", []string{"tls:\n", "tls:\n  reload_interval: -1s\n"}, `tls.reload_interval: must be between 1s and 24h, not -1s`},
		{"expiry warning", []string{"tls:\n", "tls:\n  expiry_warning: -1h\n"}, `tls.expiry_warning: must be between 1h and 2160h, not -1h`},
		{"expiry warning long", []string{"tls:\n", "tls:\n  expiry_warning: 2200h\n"}, `tls.expiry_warning: must be between 1h and 2160h, not 2200h`},
		{"rotation short", []string{"tls:\n", "tls:\n  session_tickets:\n    rotation: 30m\n"}, `portico.yaml:8: tls.session_tickets.rotation: must be between 1h and 168h, not 30m`},
		{"rotation long", []string{"tls:\n", "tls:\n  session_tickets: {rotation: 192h}\n"}, `tls.session_tickets.rotation: must be between 1h and 168h, not 192h`},
		{"tickets redis without key", []string{"tls:\n", "tls:\n  session_tickets: {redis: true}\n"}, `tls.session_tickets.key: is required with redis: true`},
		{"tickets redis empty key", []string{"tls:\n", "tls:\n  session_tickets: {redis: true, key: \"\"}\n"}, `tls.session_tickets.key: is required with redis: true`},
		{"tickets redis without routing.redis", []string{"tls:\n", "tls:\n  session_tickets: {redis: true, key: k}\n", "  redis:\n" + redisAddrs + "\n", ""}, `portico.yaml:7: tls.session_tickets.redis: needs routing.redis, which is not configured`},
		{"tickets key without redis", []string{"tls:\n", "tls:\n  session_tickets: {key: k}\n"}, `tls.session_tickets.key: is only used with redis: true`},
		{"tickets key env", []string{"tls:\n", "tls:\n  session_tickets: {redis: true, key: {env: PORTICO_TEST_UNSET_VARIABLE}}\n"}, `portico.yaml:7: tls.session_tickets.key: environment variable PORTICO_TEST_UNSET_VARIABLE is not set`},
		// tls.acme
		{"acme hostnames missing", acme("", ""), `portico.yaml:7: tls.acme.hostnames: at least one name is required`},
		{"acme wildcard", acme("[\"*.example.com\"]", ""), `portico.yaml:8: tls.acme.hostnames[0]: "*.example.com" is a wildcard: HTTP-01 and TLS-ALPN-01 cannot obtain wildcard certificates`},
		{"acme ip", acme("[192.0.2.1]", ""), `tls.acme.hostnames[0]: "192.0.2.1" is an IP address`},
		{"acme ipv6", acme("[\"::1\"]", ""), `tls.acme.hostnames[0]: "::1" is an IP address`},
		{"acme single label", acme("[mail]", ""), `tls.acme.hostnames[0]: "mail" must be a fully qualified name`},
		{"acme final dot", acme("[mail.example.com.]", ""), `tls.acme.hostnames[0]: "mail.example.com." must be written without the final dot`},
		{"acme underscore", acme("[mail_1.example.com]", ""), `tls.acme.hostnames[0]: "mail_1.example.com" is not a valid DNS name: only letters, digits`},
		{"acme port", acme("[\"mail.example.com:993\"]", ""), `tls.acme.hostnames[0]: "mail.example.com:993" is not a valid DNS name`},
		{"acme empty label", acme("[mail..example.com]", ""), `tls.acme.hostnames[0]: "mail..example.com" is not a valid DNS name: each dot-separated label`},
		{"acme hyphen", acme("[-mail.example.com]", ""), `is not a valid DNS name: each dot-separated label needs 1 to 63 characters and must not start or end with '-'`},
		{"acme long label", acme("["+strings.Repeat("a", 64)+".example.com]", ""), `is not a valid DNS name: each dot-separated label needs 1 to 63`},
		{"acme long name", acme("["+strings.Repeat("a.", 127)+"com]", ""), `is longer than 253 characters`},
		{"acme numeric tld", acme("[mail.123]", ""), `tls.acme.hostnames[0]: "mail.123" is not a valid DNS name: the last label must not be all digits`},
		{"acme unicode", acme("[mail.bücher.example]", ""), `must be ASCII: write internationalised names in punycode`},
		{"acme duplicate", acme("[mail.example.com, imap.example.com, Mail.Example.COM]", ""), `tls.acme.hostnames[2]: "Mail.Example.COM" is already listed as tls.acme.hostnames[0] (names are compared case-insensitively)`},
		{"acme email", acme("[mail.example.com]", "    email: postmaster\n"), `portico.yaml:9: tls.acme.email: "postmaster" is not an e-mail address such as postmaster@example.com`},
		{"acme email name", acme("[mail.example.com]", "    email: \"Post Master <pm@example.com>\"\n"), `tls.acme.email: "Post Master <pm@example.com>" is not an e-mail address`},
		{"acme email mailto", acme("[mail.example.com]", "    email: \"mailto:pm@example.com\"\n"), `tls.acme.email: "mailto:pm@example.com" is not an e-mail address`},
		{"acme directory http", acme("[mail.example.com]", "    directory_url: http://acme.example.com/dir\n"), `portico.yaml:9: tls.acme.directory_url: must be an https:// URL such as https://acme-v02.api.letsencrypt.org/directory, not "http://acme.example.com/dir"`},
		{"acme directory http loopback", acme("[mail.example.com]", "    directory_url: http://127.0.0.1:14000/dir\n"), `tls.acme.directory_url: must be an https:// URL`},
		{"acme directory no scheme", acme("[mail.example.com]", "    directory_url: acme-v02.api.letsencrypt.org/directory\n"), `tls.acme.directory_url: must be an https:// URL`},
		{"acme directory no host", acme("[mail.example.com]", "    directory_url: \"https:///dir\"\n"), `tls.acme.directory_url: must be an https:// URL`},
		{"acme ca missing", acme("[mail.example.com]", "    ca_file: /nonexistent/ca.pem\n"), `portico.yaml:9: tls.acme.ca_file: open /nonexistent/ca.pem: no such file or directory`},
		{"acme ca not pem", acme("[mail.example.com]", "    ca_file: "+notPEM+"\n"), `tls.acme.ca_file: ` + notPEM + ` contains no PEM certificate`},
		{"acme http address", acme("[mail.example.com]", "    http_address: \"80\"\n"), `portico.yaml:9: tls.acme.http_address: "80" is not host:port (missing port in address); or "off" to disable HTTP-01`},
		{"acme http address conflict", acme("[mail.example.com]", "    http_address: \":993\"\n"), `portico.yaml:9: tls.acme.http_address: ":993" conflicts with listeners[0].address "127.0.0.1:993"`},
		{"acme tls-alpn address", acme("[mail.example.com]", "    tls_alpn_address: \"443\"\n"), `tls.acme.tls_alpn_address: "443" is not host:port (missing port in address); or "" for none`},
		{"acme tls-alpn conflict", acme("[mail.example.com]", "    tls_alpn_address: \"127.0.0.1:80\"\n"), `tls.acme.tls_alpn_address: "127.0.0.1:80" conflicts with tls.acme.http_address ":80"`},
		{"acme tls-alpn listener conflict", acme("[mail.example.com]", "    tls_alpn_address: \"[::]:143\"\n"), `tls.acme.tls_alpn_address: "[::]:143" conflicts with listeners[1].address "127.0.0.1:143"`},
		{"acme no challenge", acme("[mail.example.com]", "    http_address: \"off\"\n    tls_alpn_address: \"off\"\n"), `portico.yaml:7: tls.acme: no challenge can be answered: http_address is "off" and tls_alpn_address is not set`},
		{"acme cache", acme("[mail.example.com]", "    cache: s3\n"), `portico.yaml:9: tls.acme.cache: must be "dir" or "redis", not "s3"`},
		{"acme redis cache without key", acme("[mail.example.com]", "    cache: redis\n"), `portico.yaml:7: tls.acme.cache_key: is required with cache "redis": the cache holds private keys`},
		{"acme redis cache without redis", append(acme("[mail.example.com]", "    cache: redis\n    cache_key: k\n"), "  redis:\n"+redisAddrs+"\n", ""), `portico.yaml:9: tls.acme.cache: "redis" needs routing.redis, which is not configured`},
		{"acme redis cache with dir", acme("[mail.example.com]", "    cache: redis\n    cache_key: k\n    cache_dir: /tmp\n"), `portico.yaml:11: tls.acme.cache_dir: is only used with cache "dir", but cache is "redis"`},
		{"acme cache dir is a file", acme("[mail.example.com]", "    cache_dir: "+notPEM+"\n"), `tls.acme.cache_dir: ` + notPEM + ` is not a directory`},
		{"acme empty cache key", acme("[mail.example.com]", "    cache_key: \"\"\n"), `portico.yaml:9: tls.acme.cache_key: must not be empty`},
		{"acme cache key env", acme("[mail.example.com]", "    cache_key: {file: /nonexistent/key}\n"), `portico.yaml:9: tls.acme.cache_key: secret file: open /nonexistent/key`},
		{"acme renew before negative", acme("[mail.example.com]", "    renew_before: -1h\n"), `portico.yaml:9: tls.acme.renew_before: must be between 0 (autocert's default: a third of the lifetime, at most 30 days) and 720h, not -1h`},
		{"acme renew before long", acme("[mail.example.com]", "    renew_before: 1440h\n"), `tls.acme.renew_before: must be between 0 (autocert's default`},
		{"acme and no certificates", append(acme("", ""), "  certificates:\n    - cert_file: "+f.cert+"\n      key_file: "+f.key+"\n", ""), `tls.acme.hostnames: at least one name is required`},
		// pins
		{"pin not base64", []string{backendAddr, backendAddr + "\n    security: tls\n    tls: {pin_sha256: [\"not base64!\"]}"}, `portico.yaml:20: backends[0].tls.pin_sha256[0]: "not base64!" is not the base64 of a SHA-256 hash (44 characters ending in '='); compute it with: openssl`},
		{"pin hex", []string{backendAddr, backendAddr + "\n    security: tls\n    tls: {pin_sha256: [" + strings.Repeat("ab", 32) + "]}"}, `is not the base64 of a SHA-256 hash (44 characters ending in '=') (this looks like hex; pins are base64)`},
		{"pin short", []string{backendAddr, backendAddr + "\n    security: tls\n    tls:\n      pin_sha256:\n        - " + base64.StdEncoding.EncodeToString(make([]byte, 20))}, `portico.yaml:22: backends[0].tls.pin_sha256[0]: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=" is not the base64 of a SHA-256 hash`},
		{"pin url base64", []string{backendAddr, backendAddr + "\n    security: tls\n    tls: {pin_sha256: [\"" + base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)) + "\"]}"}, `backends[0].tls.pin_sha256[0]: "-_v7`},
		{"pin duplicate", []string{backendAddr, backendAddr + "\n    security: tls\n    tls: {pin_sha256: [" + pin + ", " + pin + "]}"}, `backends[0].tls.pin_sha256[1]: "` + pin + `" is already listed as backends[0].tls.pin_sha256[0]`},
		{"pin redis", []string{redisAddrs, redisAddrs + "\n    tls: {pin_sha256: [x]}"}, `routing.redis.tls.pin_sha256[0]: "x" is not the base64`},
		{"pin defaults", []string{"", "backend_defaults:\n  security: tls\n  tls: {pin_sha256: [x]}\n"}, `backend_defaults.tls.pin_sha256[0]: "x" is not the base64`},
		// limits
		{"line short", []string{"", "limits:\n  max_line_length: 100\n"}, `portico.yaml:20: limits.max_line_length: must be between 1024 and 65536, not 100`},
		{"line long", []string{"", "limits:\n  max_line_length: 100000\n"}, `limits.max_line_length: must be between 1024 and 65536, not 100000`},
		{"literal", []string{"", "limits:\n  max_literal_size: -1\n"}, `limits.max_literal_size: must be between 64 and 65536, not -1`},
		{"auth line", []string{"", "limits:\n  max_auth_line_length: 10\n"}, `limits.max_auth_line_length: must be between 1024 and 1048576`},
		{"idle", []string{"", "limits:\n  idle_timeout: 29m\n"}, `limits.idle_timeout: must be between 30m and 24h, not 29m`},
		{"preauth short", []string{"", "limits:\n  preauth_timeout: 1s\n"}, `limits.preauth_timeout: must be between 5s and 10m, not 1s`},
		{"preauth long", []string{"", "limits:\n  preauth_timeout: 1h\n"}, `limits.preauth_timeout: must be between 5s and 10m, not 1h`},
		{"max_connections", []string{"", "limits:\n  max_connections: -1\n"}, `limits.max_connections: must be between 0 and 10000000, not -1`},
		{"ipv6_prefix", []string{"", "limits:\n  ipv6_prefix: 16\n"}, `limits.ipv6_prefix: must be between 32 and 128, not 16`},
		{"sessions per user", []string{"", "limits:\n  max_sessions_per_user: -5\n"}, `limits.max_sessions_per_user: must be between 1 and 1000000, not -5`},
		{"trusted everyone", []string{"", "limits:\n  trusted_networks: [0.0.0.0/0]\n"}, `portico.yaml:20: limits.trusted_networks[0]: "0.0.0.0/0" would let every client choose the address Portico believes`},
		{"trusted address", []string{"", "limits:\n  trusted_networks: [10.1.2.3]\n"}, `limits.trusted_networks[0]: "10.1.2.3" is an address, not a network; write "10.1.2.3/32"`},
		{"brute_force delay_after", []string{"", "limits:\n  brute_force:\n    ip: {delay_after: 40, block_after: 30}\n"}, `limits.brute_force.ip.delay_after: must be between 1 and 30, not 40`},
		{"brute_force block_after", []string{"", "limits:\n  brute_force:\n    user: {block_after: -1}\n"}, `limits.brute_force.user.block_after: must be between 1 and 1000000, not -1`},
		{"brute_force window", []string{"", "limits:\n  brute_force:\n    user_ip: {window: 1000h}\n"}, `limits.brute_force.user_ip.window: must be between 1s and 720h, not 1000h`},
		{"brute_force max_delay", []string{"", "limits:\n  brute_force:\n    delay: 2s\n    max_delay: 1s\n"}, `limits.brute_force.max_delay: must be between 2s and 5m, not 1s`},
		{"brute_force on_redis_error", []string{"", "limits:\n  brute_force:\n    on_redis_error: maybe\n"}, `limits.brute_force.on_redis_error: must be "open" or "closed", not "maybe"`},
		{"brute_force known_addresses", []string{"", "limits:\n  brute_force:\n    known_addresses: 5000\n"}, `limits.brute_force.known_addresses: must be between 1 and 1000, not 5000`},
		{"brute_force key", []string{"", "limits:\n  brute_force:\n    password_hash_key: {env: PORTICO_TEST_UNSET_VARIABLE}\n"}, `limits.brute_force.password_hash_key: environment variable PORTICO_TEST_UNSET_VARIABLE is not set`},
		{"handshake", []string{"", "limits:\n  handshake_timeout: -1s\n"}, `limits.handshake_timeout: must be between 1s and 2m, not -1s`},
		{"bad commands", []string{"", "limits:\n  max_bad_commands: -3\n"}, `limits.max_bad_commands: must be between 1 and 100, not -3`},
		{"auth failures", []string{"", "limits:\n  max_auth_failures: 1000\n"}, `limits.max_auth_failures: must be between 1 and 100, not 1000`},
		{"failure delay", []string{"", "limits:\n  auth_failure_delay: 1m\n"}, `limits.auth_failure_delay: must be between 1ms and 30s, not 1m`},
		{"shutdown", []string{"", "limits:\n  shutdown_timeout: 2h\n"}, `limits.shutdown_timeout: must be between 1s and 1h, not 2h`},
		// routing
		{"no routes", []string{"  static:\n    - user: alice@example.com\n      backend: b1\n  redis:\n" + redisAddrs + "\n", "  default_domain: example.com\n"}, `portico.yaml:10: routing: needs static routes (routing.static), redis (routing.redis) or both`},
		{"redis null", []string{"  static:\n    - user: alice@example.com\n      backend: b1\n  redis:\n" + redisAddrs + "\n", "  redis: null\n"}, `routing: needs static routes`},
		{"unknown backend", []string{"      backend: b1", "      backend: b2"}, `portico.yaml:13: routing.static[0].backend: "b2" is not defined in backends (defined: b1)`},
		{"backend missing", []string{"      backend: b1", ""}, `routing.static[0].backend: is required`},
		{"user missing", []string{"    - user: alice@example.com\n", "    - user: \"\"\n"}, `portico.yaml:12: routing.static[0].user: is required`},
		{"duplicate user", []string{"      backend: b1\n", "      backend: b1\n    - user: ALICE@Example.com\n      backend: b1\n"}, `portico.yaml:14: routing.static[1].user: "ALICE@Example.com" is already routed by routing.static[0]`},
		{"duplicate user default domain", []string{"      backend: b1\n", "      backend: b1\n    - user: Alice\n      backend: b1\n", "routing:\n", "routing:\n  default_domain: example.com\n"}, `routing.static[1].user: "Alice" is already routed by routing.static[0]`},
		{"default domain", []string{"routing:\n", "routing:\n  default_domain: \"@example.com\"\n"}, `routing.default_domain: must be a domain such as example.com, without "@"`},
		{"lookup timeout", []string{"routing:\n", "routing:\n  lookup_timeout: 2h\n"}, `routing.lookup_timeout: must be between 1ms and 1m, not 2h`},
		{"redis no addrs", []string{redisAddrs, "    addrs: []"}, `portico.yaml:15: routing.redis.addrs: at least one host:port is required`},
		{"redis addr no port", []string{redisAddrs, `    addrs: ["127.0.0.1:6379", "redis"]`}, `routing.redis.addrs[1]: "redis" is not host:port`},
		{"redis addr no host", []string{redisAddrs, `    addrs: [":6379"]`}, `routing.redis.addrs[0]: ":6379": host is missing`},
		{"redis port 0", []string{redisAddrs, `    addrs: ["r:0"]`}, `routing.redis.addrs[0]: "r:0": port must be a number from 1 to 65535`},
		{"redis cluster db", []string{redisAddrs, `    addrs: ["a:1", "b:1"]` + "\n    db: 3"}, `routing.redis.db: must be 0: several addrs without master_name mean a Redis Cluster`},
		{"redis db negative", []string{redisAddrs, redisAddrs + "\n    db: -1"}, `routing.redis.db: must not be negative`},
		{"redis pool", []string{redisAddrs, redisAddrs + "\n    pool_size: -1"}, `routing.redis.pool_size: must be between 0 (go-redis' default) and 10000, not -1`},
		{"redis timeout", []string{redisAddrs, redisAddrs + "\n    read_timeout: -1s"}, `routing.redis.read_timeout: must be between 1ms and 1m, not -1s`},
		{"redis ca", []string{redisAddrs, redisAddrs + "\n    tls: {ca_file: /nonexistent/ca.pem}"}, `routing.redis.tls.ca_file: open /nonexistent/ca.pem: no such file or directory`},
		{"redis ca not pem", []string{redisAddrs, redisAddrs + "\n    tls: {ca_file: " + notPEM + "}"}, `routing.redis.tls.ca_file: ` + notPEM + ` contains no PEM certificate`},
		{"redis client cert alone", []string{redisAddrs, redisAddrs + "\n    tls: {cert_file: " + f.cert + "}"}, `routing.redis.tls: cert_file and key_file must be set together`},
		{"redis client pair mismatch", []string{redisAddrs, redisAddrs + "\n    tls: {cert_file: " + f.cert + ", key_file: " + f.otherKey + "}"}, `routing.redis.tls: cert_file ` + f.cert + ` and key_file ` + f.otherKey + `: tls: private key does not match public key`},
		{"redis password env", []string{redisAddrs, redisAddrs + "\n    password: {env: PORTICO_TEST_UNSET_VARIABLE}"}, `portico.yaml:16: routing.redis.password: environment variable PORTICO_TEST_UNSET_VARIABLE is not set`},
		// backends
		{"backend name missing", []string{"  - name: b1\n" + backendAddr, "  - address: \"127.0.0.1:1143\""}, `backends[0].name: is required`},
		{"backend name chars", []string{"  - name: b1\n", "  - name: \"10.0.0.1:143\"\n"}, `portico.yaml:17: backends[0].name: "10.0.0.1:143" must contain only letters, digits, '.', '_' and '-'`},
		{"backend duplicate", []string{backendAddr, backendAddr + "\n  - name: B1\n    address: \"127.0.0.1:2143\""}, `portico.yaml:19: backends[1].name: "B1" is already the name of backends[0] (names are compared case-insensitively)`},
		{"backend address", []string{backendAddr, "    address: backend"}, `portico.yaml:18: backends[0].address: "backend" is not host:port`},
		{"backend address missing", []string{backendAddr, ""}, `portico.yaml:17: backends[0].address: is required (host:port)`},
		{"backend security", []string{backendAddr, backendAddr + "\n    security: ssl"}, `portico.yaml:19: backends[0].security: must be "plain", "starttls" or "tls", not "ssl"`},
		{"backend tls with plain", []string{backendAddr, backendAddr + "\n    tls: {server_name: x}"}, `portico.yaml:19: backends[0].tls: is only used with security "starttls" or "tls", but security is "plain"`},
		{"backend ca", []string{backendAddr, backendAddr + "\n    security: tls\n    tls: {ca_file: /nonexistent/ca.pem}"}, `portico.yaml:20: backends[0].tls.ca_file: open /nonexistent/ca.pem`},
		{"backend key alone", []string{backendAddr, backendAddr + "\n    security: tls\n    tls: {key_file: " + f.key + "}"}, `backends[0].tls: cert_file and key_file must be set together`},
		{"backend timeout", []string{backendAddr, backendAddr + "\n    login_timeout: 1h"}, `backends[0].login_timeout: must be between 1ms and 5m, not 1h`},
		{"too many spares", []string{backendAddr, backendAddr + "\n    spare_connections: 65"}, `backends[0].spare_connections: must be between 0 and 64, not 65`},
		{"negative spares", []string{backendAddr, backendAddr + "\n    spare_connections: -1"}, `backends[0].spare_connections: must be between 0 and 64, not -1`},
		{"spares idle too long", []string{backendAddr, backendAddr + "\n    spare_max_idle: 3m"}, `backends[0].spare_max_idle: must be between 1s and 2m50s, not 3m`},
		{"spares idle too short", []string{backendAddr, backendAddr + "\n    spare_max_idle: 500ms"}, `backends[0].spare_max_idle: must be between 1s and 2m50s, not 500ms`},
		{"backend_defaults security", []string{"", "backend_defaults:\n  security: TLS\n"}, `portico.yaml:20: backend_defaults.security: must be "plain", "starttls" or "tls", not "TLS"`},
		{"backend_defaults timeout", []string{"", "backend_defaults:\n  connect_timeout: -1s\n"}, `backend_defaults.connect_timeout: must be between 1ms and 5m, not -1s`},
		// log
		{"log level", []string{"", "log:\n  level: verbose\n"}, `portico.yaml:20: log.level: must be "debug", "info", "warn" or "error", not "verbose"`},
		{"log format", []string{"", "log:\n  format: logfmt\n"}, `portico.yaml:20: log.format: must be "text" or "json", not "logfmt"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(f.base(tc.edits...)), "portico.yaml")
			if err == nil {
				t.Fatalf("no error, want %s", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error\n%v\ndoes not contain\n%s", err, tc.want)
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "config: portico.yaml") {
					t.Errorf("line %q does not start with the file name", line)
				}
			}
		})
	}
}

// TestTLSOptions covers valid TLS settings: how names become crypto/tls
// IDs, the ACME defaults and secrets.
func TestTLSOptions(t *testing.T) {
	f := newFixture(t)
	t.Setenv("PORTICO_TEST_TICKET_KEY", "ticket-key-0123456789")
	t.Setenv("PORTICO_TEST_CACHE_KEY", "cache-key-0123456789")
	pin := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32))
	yml := f.base("tls:\n", `tls:
  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]
  curve_preferences: [x25519mlkem768, X25519, CurveP256, p384, P521]
  reload_interval: 1s
  expiry_warning: 720h
  session_tickets: {redis: true, rotation: 1h, key: {env: PORTICO_TEST_TICKET_KEY}}
`, `    address: "127.0.0.1:1143"`, `    address: "127.0.0.1:1143"
    security: tls
    tls: {pin_sha256: [`+pin+`]}`, "", quiet)
	c, err := Parse([]byte(yml), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("warnings %q", w)
	}
	if got, want := c.TLS.CipherSuiteIDs(), []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}; !reflect.DeepEqual(got, want) {
		t.Errorf("CipherSuiteIDs = %v, want %v", got, want)
	}
	if got, want := c.TLS.CurveIDs(), []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}; !reflect.DeepEqual(got, want) {
		t.Errorf("CurveIDs = %v, want %v", got, want)
	}
	if (TLS{}).CipherSuiteIDs() != nil || (TLS{}).CurveIDs() != nil {
		t.Error("empty lists must give nil (Go's defaults)")
	}
	st := c.TLS.SessionTickets
	if st.Rotation != time.Hour || st.Key.Value != "ticket-key-0123456789" || st.Key.Source != "env:PORTICO_TEST_TICKET_KEY" || c.TLS.ReloadInterval != time.Second || c.TLS.ExpiryWarning != 720*time.Hour {
		t.Errorf("tls = %+v", c.TLS)
	}
	if p := c.Backends[0].TLS.PinSHA256; len(p) != 1 || p[0] != pin {
		t.Errorf("pins = %q", p)
	}

	for _, tc := range []struct {
		name, acme string
		want       ACME
		http, alpn string
	}{
		{"defaults", "{hostnames: [mail.example.com], cache_key: {env: PORTICO_TEST_CACHE_KEY}}", ACME{
			Hostnames: []string{"mail.example.com"}, DirectoryURL: LetsEncryptProduction, HTTPAddress: ":80", Cache: "dir", CacheDir: "/var/lib/portico/acme",
			CacheKey: Secret{Value: "cache-key-0123456789", Source: "env:PORTICO_TEST_CACHE_KEY"},
		}, ":80", ""},
		{"redis, http off, tls-alpn", `
    hostnames: [mail.example.com, IMAP.example.com, xn--bcher-kva.example]
    email: pm@example.com
    directory_url: https://127.0.0.1:14000/dir
    ca_file: ` + f.cert + `
    http_address: "off"
    tls_alpn_address: "127.0.0.1:443"
    cache: redis
    cache_key: {env: PORTICO_TEST_CACHE_KEY}
    renew_before: 720h`, ACME{
			Hostnames: []string{"mail.example.com", "IMAP.example.com", "xn--bcher-kva.example"}, Email: "pm@example.com",
			DirectoryURL: "https://127.0.0.1:14000/dir", CAFile: f.cert, HTTPAddress: "off", TLSALPNAddress: "127.0.0.1:443", Cache: "redis",
			CacheKey: Secret{Value: "cache-key-0123456789", Source: "env:PORTICO_TEST_CACHE_KEY"}, RenewBefore: 720 * time.Hour,
		}, "", "127.0.0.1:443"},
		{"tls-alpn off", "{hostnames: [mail.example.com], cache_dir: " + f.dir + ", tls_alpn_address: \"off\", http_address: \"127.0.0.1:8080\", cache_key: {env: PORTICO_TEST_CACHE_KEY}}", ACME{
			Hostnames: []string{"mail.example.com"}, DirectoryURL: LetsEncryptProduction, HTTPAddress: "127.0.0.1:8080", TLSALPNAddress: "off", Cache: "dir", CacheDir: f.dir,
			CacheKey: Secret{Value: "cache-key-0123456789", Source: "env:PORTICO_TEST_CACHE_KEY"},
		}, "127.0.0.1:8080", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Without tls.certificates: ACME alone is a certificate source.
			yml := f.base("  certificates:\n    - cert_file: "+f.cert+"\n      key_file: "+f.key+"\n", "  acme: "+tc.acme+"\n", "", quiet)
			c, err := Parse([]byte(yml), "portico.yaml")
			if err != nil {
				t.Fatal(err)
			}
			if w := c.Warnings(); len(w) != 0 {
				t.Errorf("warnings %q", w)
			}
			if !reflect.DeepEqual(*c.TLS.ACME, tc.want) {
				t.Errorf("acme = %+v\nwant   %+v", *c.TLS.ACME, tc.want)
			}
			if got := c.TLS.ACME.HTTPChallengeAddress(); got != tc.http {
				t.Errorf("HTTPChallengeAddress = %q, want %q", got, tc.http)
			}
			if got := c.TLS.ACME.TLSALPNChallengeAddress(); got != tc.alpn {
				t.Errorf("TLSALPNChallengeAddress = %q, want %q", got, tc.alpn)
			}
			d := *c
			d.ApplyDefaults()
			if !reflect.DeepEqual(&d, c) {
				t.Error("ApplyDefaults is not idempotent")
			}
		})
	}

	// By hand: ACME without certificates, secrets set directly.
	h := &Config{
		Listeners: []Listener{{Mode: "imaps", Address: "127.0.0.1:993"}},
		TLS:       TLS{ACME: &ACME{Hostnames: []string{"mail.example.com"}, CacheDir: f.dir}},
		Routing:   Routing{Static: []StaticRoute{{User: "a", Backend: "b"}}},
		Backends:  []Backend{{Name: "b", Address: "127.0.0.1:143"}},
	}
	h.ApplyDefaults()
	if err := h.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	h.TLS.ACME.Cache = "redis"
	h.TLS.ACME.CacheDir = ""
	h.TLS.ACME.CacheKey = Secret{Value: "k"}
	h.Routing.Redis = &Redis{Addrs: []string{"127.0.0.1:6379"}}
	h.ApplyDefaults()
	if err := h.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// TestExampleCommentedOut uncomments the optional TLS parts of the example
// (acme, the shared ticket key and a pin) and checks that they load too.
func TestExampleCommentedOut(t *testing.T) {
	f := newFixture(t)
	t.Setenv("PORTICO_ACME_CACHE_KEY", "a-long-random-cache-key")
	t.Setenv("PORTICO_TICKET_KEY", "a-long-random-ticket-key")
	lines := strings.SplitAfter(string(f.example(t)), "\n")
	in := false
	for i, l := range lines {
		if l == "  # acme:\n" {
			in = true
		} else if !strings.HasPrefix(l, "  #   ") {
			in = false
		}
		if in {
			lines[i] = "  " + strings.TrimPrefix(l, "  # ")
		}
	}
	s := strings.Join(lines, "")
	for _, r := range [][2]string{
		{"    redis: false\n    # How long", "    redis: true\n    # How long"},
		{"    # key: {env: PORTICO_TICKET_KEY}", "    key: {env: PORTICO_TICKET_KEY}"},
		{"      # pin_sha256:", "      pin_sha256:"},
		{"    # fallback: dovecot2", "    fallback: dovecot2"},
		{"  # default_pool: main", "  default_pool: main"},
		{"  # proxy_id: imap1.example.com", "  proxy_id: imap1.example.com"},
	} {
		if !strings.Contains(s, r[0]) {
			t.Fatalf("example lacks %q", r[0])
		}
		s = strings.Replace(s, r[0], r[1], 1)
	}
	if !strings.Contains(s, "\n  acme:\n") {
		t.Fatal("acme section not found")
	}
	c, err := Parse([]byte(s), "portico.example.yaml")
	if err != nil {
		t.Fatalf("example with its commented-out parts does not load:\n%v\n%s", err, s)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
	a := c.TLS.ACME
	if a == nil || len(a.Hostnames) != 2 || a.Email == "" || a.DirectoryURL != LetsEncryptProduction || a.HTTPAddress != ":80" ||
		a.Cache != "dir" || a.CacheDir != "/var/lib/portico/acme" || a.CacheKey.Value != "a-long-random-cache-key" || a.RenewBefore != 0 {
		t.Errorf("acme = %+v", a)
	}
	if st := c.TLS.SessionTickets; !st.Redis || st.Key.Value != "a-long-random-ticket-key" {
		t.Errorf("session tickets = %+v", st)
	}
	if p := c.Backends[0].TLS.PinSHA256; len(p) != 1 {
		t.Errorf("pins = %q", p)
	}
	if c.Backends[0].Fallback != "dovecot2" || c.Routing.DefaultPool != "main" || c.Fleet.ProxyID != "imap1.example.com" {
		t.Errorf("fallback %q, default_pool %q, proxy_id %q", c.Backends[0].Fallback, c.Routing.DefaultPool, c.Fleet.ProxyID)
	}
	d := *c
	d.ApplyDefaults()
	if !reflect.DeepEqual(&d, c) {
		t.Errorf("ApplyDefaults changed the example")
	}
}

func TestValidationCollectsEverything(t *testing.T) {
	f := newFixture(t)
	_, err := Parse([]byte(f.base("mode: imap\n", "mode: smtp\n", "", "log: {level: loud}\nlimits: {idle_timeout: 1m}\n")), "portico.yaml")
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 lines, got:\n%v", err)
	}
	for i, want := range []string{"listeners[1].mode", "log.level", "limits.idle_timeout"} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d = %q, want %s", i, lines[i], want)
		}
	}
}

// TestValidateByHand checks Validate on a Config built in code, without a
// file: messages carry the path but no file name.
func TestValidateByHand(t *testing.T) {
	c := &Config{Listeners: []Listener{{Mode: "imaps"}}, Routing: Routing{Static: []StaticRoute{{User: "a", Backend: "b"}}}}
	c.ApplyDefaults()
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	want := "config: tls.certificates: at least one certificate, or tls.acme, is required"
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), `config: routing.static[0].backend: "b" is not defined in backends (there are none)`) {
		t.Errorf("err = %v", err)
	}
}

func TestSecret(t *testing.T) {
	f := newFixture(t)
	withPassword := func(pw string) string {
		return f.base(`    addrs: ["127.0.0.1:6379"]`, `    addrs: ["127.0.0.1:6379"]`+"\n    password: "+pw)
	}
	pwFile := filepath.Join(f.dir, "pw")
	writeFile(t, pwFile, "from-file\n")
	crlfFile := filepath.Join(f.dir, "pw-crlf")
	writeFile(t, crlfFile, "  spaced secret \r\n")
	emptyFile := filepath.Join(f.dir, "empty")
	writeFile(t, emptyFile, "\n")
	t.Setenv("PORTICO_TEST_PW", "from-env")
	t.Setenv("PORTICO_TEST_EMPTY", "")

	for _, tc := range []struct{ yaml, value, source string }{
		{`"inline secret"`, "inline secret", "inline"},
		{`0123`, "0123", "inline"},
		{`{env: PORTICO_TEST_PW}`, "from-env", "env:PORTICO_TEST_PW"},
		{"\n      env: PORTICO_TEST_PW", "from-env", "env:PORTICO_TEST_PW"},
		{`{file: ` + pwFile + `}`, "from-file", "file:" + pwFile},
		{`{file: ` + crlfFile + `}`, "  spaced secret ", "file:" + crlfFile},
		{`null`, "", ""},
	} {
		c, err := Parse([]byte(withPassword(tc.yaml)), "portico.yaml")
		if err != nil {
			t.Errorf("password: %s: %v", tc.yaml, err)
			continue
		}
		if p := c.Routing.Redis.Password; p.Value != tc.value || p.Source != tc.source {
			t.Errorf("password: %s: got %q from %q, want %q from %q", tc.yaml, p.Value, p.Source, tc.value, tc.source)
		}
	}

	for _, tc := range []struct{ yaml, want string }{
		{`{env: PORTICO_TEST_UNSET_VARIABLE}`, "portico.yaml:16: routing.redis.password: environment variable PORTICO_TEST_UNSET_VARIABLE is not set"},
		{`{env: PORTICO_TEST_EMPTY}`, "routing.redis.password: environment variable PORTICO_TEST_EMPTY is empty"},
		{`{file: /nonexistent/secret}`, "routing.redis.password: secret file: open /nonexistent/secret: no such file or directory"},
		{`{file: ` + emptyFile + `}`, "routing.redis.password: secret file " + emptyFile + " is empty"},
		{`{file: ` + f.dir + `}`, "routing.redis.password: secret file: read " + f.dir},
		{`{env: A, file: B}`, "portico.yaml:16: routing.redis.password: must have exactly one key, env or file"},
		{`{}`, "routing.redis.password: must have exactly one key, env or file"},
		{`{env: ""}`, "routing.redis.password.env: must name an environment variable"},
		{`{file: [a]}`, "routing.redis.password.file: must name a file"},
		{`{pass: hunter2}`, `portico.yaml:16: unknown key "pass" in routing.redis.password`},
		{`[hunter2]`, "portico.yaml:16: routing.redis.password: must be a string, {env: NAME} or {file: PATH}"},
	} {
		_, err := Parse([]byte(withPassword(tc.yaml)), "portico.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("password: %s: err = %v, want %s", tc.yaml, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error reveals the secret: %v", err)
		}
	}
}

// TestSecretUnmarshalDirect covers Secret used outside Parse.
func TestSecretUnmarshalDirect(t *testing.T) {
	var v struct{ P Secret }
	if err := yaml.Unmarshal([]byte("p: {env: X}\n"), &v); err != nil || v.P.Source != "env:X" {
		t.Errorf("got %+v, %v", v.P.Source, err)
	}
	err := yaml.Unmarshal([]byte("p:\n  envv: hunter2\n"), &v)
	if err == nil || !strings.Contains(err.Error(), `line 2: unknown key "envv" in secret`) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("err = %v", err)
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	f := newFixture(t)
	const pw = "S3cr3t-Pa55w0rd"
	yml := f.base(`    addrs: ["127.0.0.1:6379"]`, `    addrs: ["127.0.0.1:6379"]`+"\n    password: "+pw,
		"tls:\n", "tls:\n  session_tickets: {redis: true, key: "+pw+"}\n  acme: {hostnames: [mail.example.com], cache: redis, cache_key: "+pw+"}\n")
	c, err := Parse([]byte(yml), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Routing.Redis.Password.Value != pw || c.TLS.ACME.CacheKey.Value != pw || c.TLS.SessionTickets.Key.Value != pw {
		t.Fatalf("secrets not loaded: %q", c.Routing.Redis.Password.Value)
	}
	r := c.Routing.Redis
	a := c.TLS.ACME
	var outs []string
	for _, v := range []any{c, *c, r, *r, r.Password, &r.Password, c.TLS, &c.TLS, a, *a, c.TLS.SessionTickets} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %[1]v"} {
			outs = append(outs, fmt.Sprintf(verb, v))
		}
		outs = append(outs, fmt.Sprint(v), fmt.Sprintln(v))
		js, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, string(js))
		ym, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, string(ym))
	}
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&buf, nil), slog.NewJSONHandler(&buf, nil)} {
		l := slog.New(h)
		l.Info("config", "cfg", c, "redis", r, "redisv", *r, "pw", r.Password)
		l.Info("config", slog.Any("cfg", *c), slog.Group("g", "pw", r.Password), "tls", c.TLS, "acme", a, "acmev", *a)
	}
	outs = append(outs, buf.String())
	for _, s := range outs {
		if strings.Contains(s, pw) || strings.Contains(s, fmt.Sprintf("%x", pw)) {
			t.Errorf("secret revealed in %q", s)
		}
	}
	if !strings.Contains(buf.String(), "[redacted]") {
		t.Errorf("slog output lacks [redacted]: %s", buf.String())
	}

	// MarshalYAML keeps where a secret comes from, never its value.
	for _, tc := range []struct {
		s    Secret
		want string
	}{
		{Secret{Value: pw, Source: "env:PW"}, "env: PW\n"},
		{Secret{Value: pw, Source: "file:/run/pw"}, "file: /run/pw\n"},
		{Secret{Value: pw, Source: "inline"}, "'[redacted]'\n"},
		{Secret{Value: pw}, "'[redacted]'\n"},
		{Secret{}, "null\n"},
	} {
		b, err := yaml.Marshal(tc.s)
		if err != nil || string(b) != tc.want {
			t.Errorf("yaml.Marshal(%s) = %q, %v; want %q", tc.s.Source, b, err, tc.want)
		}
	}
}

func TestWarnings(t *testing.T) {
	f := newFixture(t)
	const imap = "  - mode: imap\n"
	const backendAddr = `    address: "127.0.0.1:1143"`
	const redisAddrs = `    addrs: ["127.0.0.1:6379"]`
	acme := func(opts string) []string {
		return []string{"tls:\n", "tls:\n  acme:\n    hostnames: [mail.example.com]\n" + opts}
	}
	t.Setenv("PORTICO_TEST_LONG_KEY", "0123456789abcdef0123456789abcdef")
	for _, tc := range []struct {
		name  string
		edits []string
		want  []string // one per warning, in order; none means no warning
	}{
		// Every cleartext network allows passwords in clear.
		{"loopback cleartext", []string{imap, imap + "    cleartext_login_networks: [127.0.0.0/8, \"::1/128\"]\n"}, []string{
			`listeners[1].cleartext_login_networks[0]: "127.0.0.0/8" allows passwords in clear (login without TLS) from this host; lower risk`,
			`listeners[1].cleartext_login_networks[1]: "::1/128" allows passwords in clear (login without TLS) from this host; lower risk`,
		}},
		{"private cleartext", []string{imap, imap + "    cleartext_login_networks: [10.1.0.0/16, 192.168.0.0/24, fd00::/8, \"::ffff:10.0.0.0/104\"]\n"}, []string{
			`listeners[1].cleartext_login_networks[0]: "10.1.0.0/16" allows passwords in clear (login without TLS) from a private network: anyone on the network between those clients and Portico can read them`,
			`cleartext_login_networks[1]: "192.168.0.0/24" allows passwords in clear (login without TLS) from a private network`,
			`cleartext_login_networks[2]: "fd00::/8" allows passwords in clear (login without TLS) from a private network`,
			`cleartext_login_networks[3]: "::ffff:10.0.0.0/104" allows passwords in clear (login without TLS) from a private network`,
		}},
		{"public cleartext", []string{imap, imap + "    cleartext_login_networks: [127.0.0.0/8, 0.0.0.0/0]\n"}, []string{
			`cleartext_login_networks[0]: "127.0.0.0/8" allows passwords in clear`,
			`listeners[1].cleartext_login_networks[1]: "0.0.0.0/0" allows passwords in clear (login without TLS) from a network that is not loopback or private: anyone on the path can read them`,
		}},
		{"too wide private", []string{imap, imap + "    cleartext_login_networks: [10.0.0.0/7]\n"}, []string{`listeners[1].cleartext_login_networks[0]: "10.0.0.0/7" allows passwords in clear (login without TLS) from a network that is not loopback or private`}},
		{"too wide loopback", []string{imap, imap + "    cleartext_login_networks: [126.0.0.0/7]\n"}, []string{`"126.0.0.0/7" allows passwords in clear (login without TLS) from a network that is not loopback or private`}},
		{"mapped", []string{imap, imap + "    cleartext_login_networks: [\"::ffff:0.0.0.0/96\"]\n"}, []string{`from a network that is not loopback or private`}},
		{"cleartext on pop3s", []string{"  - mode: imaps\n", "  - mode: pop3s\n    cleartext_login_networks: [127.0.0.0/8]\n", backendAddr, backendAddr + "\n    pop3_port: 110"}, []string{`listeners[0].cleartext_login_networks: has no effect on a pop3s listener`}},
		{"pop3 without pop3_port", []string{imap, "  - mode: pop3\n"}, []string{`listeners[1].mode: is a POP3 listener, but no backend (nor backend_defaults) sets pop3_port`}},
		{"pop3 with pop3_port", []string{imap, "  - mode: pop3\n", backendAddr, backendAddr + "\n    pop3_port: 110"}, nil},
		{"spares", []string{backendAddr, backendAddr + "\n    spare_connections: 4\n    spare_max_idle: 170s"}, nil},
		{"spares with proxy_protocol", []string{backendAddr, backendAddr + "\n    spare_connections: 4\n    proxy_protocol: true"}, []string{`backends[0].spare_connections: has no effect with proxy_protocol: the PROXY header names the client, who is not known before the login`}},
		{"pop3 with a default pop3_port", []string{imap, "  - mode: pop3\n", "", "backend_defaults:\n  security: starttls\n  pop3_port: 110\n"}, nil},
		{"cleartext on imaps", []string{"  - mode: imaps\n", "  - mode: imaps\n    cleartext_login_networks: [127.0.0.0/8]\n"}, []string{`listeners[0].cleartext_login_networks: has no effect on an imaps listener`}},
		// backends and Redis
		{"plain remote backend", []string{backendAddr, `    address: "10.0.0.5:143"`}, []string{`backends[0].security: "plain" sends users' passwords in clear to 10.0.0.5:143`}},
		{"plain localhost backend", []string{backendAddr, `    address: "localhost:143"`}, nil},
		{"tls remote backend", []string{backendAddr, `    address: "10.0.0.5:993"` + "\n    security: tls"}, nil},
		{"backend insecure", []string{backendAddr, `    address: "127.0.0.1:993"` + "\n    security: tls\n    tls: {insecure_skip_verify: true}"}, []string{`backends[0].tls.insecure_skip_verify: the backend's certificate is not verified`}},
		{"defaults insecure", []string{"", "backend_defaults:\n  security: tls\n  tls: {insecure_skip_verify: true}\n"}, []string{`backend_defaults.tls.insecure_skip_verify`}},
		{"defaults plain", []string{"", "backend_defaults:\n  security: plain\n"}, []string{`backend_defaults.security: "plain": users' passwords are sent in clear to every host:port backend that a Redis route record names`}},
		{"defaults plain without redis", []string{"  redis:\n" + redisAddrs + "\n", "", "", "backend_defaults:\n  security: plain\n"}, nil},
		// TLS settings next to a plain default serve the route records
		// that choose starttls or tls: accepted, and quiet about it.
		{"defaults tls with plain", []string{"", "backend_defaults:\n  security: plain\n  tls: {ca_file: " + f.cert + ", cert_file: " + f.cert + ", key_file: " + f.key + "}\n"}, []string{`backend_defaults.security: "plain": users' passwords are sent in clear`}},
		{"defaults tls with starttls", []string{"", "backend_defaults:\n  security: starttls\n  tls: {ca_file: " + f.cert + "}\n"}, nil},
		// Without Redis, no route record can use them.
		{"defaults tls without redis", []string{"  redis:\n" + redisAddrs + "\n", "", "", "backend_defaults:\n  security: plain\n  tls: {ca_file: " + f.cert + "}\n"}, []string{`backend_defaults.tls: has no effect without routing.redis`}},
		{"defaults starttls and tls without redis", []string{"  redis:\n" + redisAddrs + "\n", "", "", "backend_defaults:\n  security: starttls\n  tls: {server_name: x}\n"}, []string{`backend_defaults.tls: has no effect without routing.redis`}},
		{"redis insecure", []string{redisAddrs, redisAddrs + "\n    tls: {insecure_skip_verify: true}"}, []string{`routing.redis.tls.insecure_skip_verify`}},
		{"redis password in clear", []string{redisAddrs, `    addrs: ["127.0.0.1:6379", "10.0.0.2:6379"]` + "\n    password: x"}, []string{`routing.redis.tls: is not set: the Redis password is sent in clear to 10.0.0.2:6379`}},
		{"redis password on loopback", []string{redisAddrs, redisAddrs + "\n    password: x"}, nil},
		{"redis password over tls", []string{redisAddrs, `    addrs: ["10.0.0.2:6379"]` + "\n    password: x\n    tls: {}"}, nil},
		{"redis remote without password", []string{redisAddrs, `    addrs: ["10.0.0.2:6379"]`}, nil},
		// certificates
		{"expired cert", []string{f.cert, f.expired, f.key, f.expKey}, []string{`tls.certificates[0]: certificate ` + f.expired + ` expired on`}},
		{"expiring cert", []string{f.cert, f.expiring, f.key, f.soonKey}, []string{`tls.certificates[0]: certificate ` + f.expiring + ` expires on`}},
		{"expiring cert, short expiry_warning", []string{f.cert, f.expiring, f.key, f.soonKey, "tls:\n", "tls:\n  expiry_warning: 48h\n"}, nil},
		{"long expiry_warning", []string{"tls:\n", "tls:\n  expiry_warning: 2000h\n"}, nil},
		// TLS policy
		{"cipher suites with TLS 1.3", []string{"tls:\n", "tls:\n  min_version: \"1.3\"\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n"}, []string{`tls.cipher_suites: has no effect with min_version "1.3"`}},
		{"tickets disabled", []string{"tls:\n", "tls:\n  session_tickets: {disabled: true}\n"}, []string{`tls.session_tickets.disabled: every reconnecting client pays for a full handshake (slower reconnects`}},
		{"tickets disabled with redis", []string{"tls:\n", "tls:\n  session_tickets: {disabled: true, redis: true}\n"}, []string{
			`tls.session_tickets.disabled: every reconnecting client`,
			`tls.session_tickets.redis: has no effect while session tickets are disabled`,
		}},
		{"ticket key short", []string{"tls:\n", "tls:\n  session_tickets: {redis: true, key: short}\n"}, []string{`tls.session_tickets.key: is shorter than 16 characters`}},
		{"ticket key long", []string{"tls:\n", "tls:\n  session_tickets: {redis: true, key: {env: PORTICO_TEST_LONG_KEY}}\n"}, nil},
		// brute-force limits
		{"brute_force disabled", []string{"", "limits:\n  brute_force: {disabled: true}\n"}, []string{`limits.brute_force.disabled: password guessing is then limited per connection only`}},
		{"brute_force short key", []string{"", "limits:\n  brute_force: {password_hash_key: short}\n"}, []string{`limits.brute_force.password_hash_key: is shorter than 16 characters`}},
		{"brute_force long key", []string{"", "limits:\n  brute_force: {password_hash_key: {env: PORTICO_TEST_LONG_KEY}}\n"}, nil},
		// ACME
		{"acme production", acme("    cache_key: {env: PORTICO_TEST_LONG_KEY}\n"), nil},
		{"acme staging", acme("    directory_url: https://acme-staging-v02.api.letsencrypt.org/directory\n    cache_key: {env: PORTICO_TEST_LONG_KEY}\n"), []string{
			`tls.acme.directory_url: is Let's Encrypt staging: its certificates are not trusted by mail clients; switch to production (https://acme-v02.api.letsencrypt.org/directory)`,
		}},
		{"acme staging slash", acme("    directory_url: https://acme-staging-v02.api.letsencrypt.org/directory/\n    cache_key: {env: PORTICO_TEST_LONG_KEY}\n"), []string{`tls.acme.directory_url: is Let's Encrypt staging`}},
		{"acme dir without key", acme(""), []string{`tls.acme.cache_key: is not set: the private keys in /var/lib/portico/acme are stored unencrypted; keep the directory owned by Portico's user with mode 0700`}},
		{"acme short key", acme("    cache_key: tooshort\n"), []string{`tls.acme.cache_key: is shorter than 16 characters`}},
		{"acme redis short key", acme("    cache: redis\n    cache_key: tooshort\n"), []string{`tls.acme.cache_key: is shorter than 16 characters`}},
		{"acme redis without challenges", acme("    cache: redis\n    cache_key: {env: PORTICO_TEST_LONG_KEY}\n    http_address: \"off\"\n"), []string{`tls.acme: answers no challenge (http_address "off", no tls_alpn_address): another proxy sharing the Redis cache must answer them`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edits := tc.edits
			if !strings.Contains(strings.Join(edits, ""), "backend_defaults") {
				edits = append(edits[:len(edits):len(edits)], "", quiet)
			}
			c, err := Parse([]byte(f.base(edits...)), "portico.yaml")
			if err != nil {
				t.Fatal(err)
			}
			w := c.Warnings()
			if len(w) != len(tc.want) {
				t.Fatalf("warnings %q, want %d: %q", w, len(tc.want), tc.want)
			}
			for i, want := range tc.want {
				if !strings.Contains(w[i], want) {
					t.Errorf("warning %d = %q, want one containing %s", i, w[i], want)
				}
			}
		})
	}
}

func TestErrorsAreJoined(t *testing.T) {
	_, err := Parse([]byte("log: {level: x}\n"), "p.yaml")
	var j interface{ Unwrap() []error }
	if !errors.As(err, &j) || len(j.Unwrap()) < 2 {
		t.Errorf("err = %#v", err)
	}
}

// pools returns base with routing lines (indented by two) added at the
// start of routing (line 11 on), a second backend b2, and quiet unless
// edits set backend_defaults.
func (f *fixture) pools(routing string, edits ...string) string {
	all := []string{
		"routing:\n", "routing:\n" + routing,
		`    address: "127.0.0.1:1143"` + "\n", `    address: "127.0.0.1:1143"` + "\n  - name: b2\n    address: \"127.0.0.1:2143\"\n",
	}
	all = append(all, edits...)
	if !strings.Contains(strings.Join(edits, ""), "backend_defaults") {
		all = append(all, "", quiet)
	}
	return f.base(all...)
}

func TestPools(t *testing.T) {
	f := newFixture(t)
	yml := f.pools(`  pools:
    - name: main
      backends: [b1, b2]
      policy: assign
    - name: Closed
      backends: [b2]
  domain_pools: {example.com: main, "bücher.example": main, closed.example: Closed, localhost: main}
  default_pool: main
  cache: {positive_ttl: 1m, negative_ttl: 1m, max_entries: 100}
  health: {interval: 1s, timeout: 999ms, rise: 1, fall: 100}
`, `    address: "127.0.0.1:1143"`, `    address: "127.0.0.1:1143"
    weight: 1000
    fallback: b2
    proxy_protocol: true`, "", "fleet: {proxy_id: \"imap1.example.com:4711\", heartbeat: 1s, reconcile: 1m, write_rate: 200, move_hold: 10m, drain_window: 24h}\n")
	c, err := Parse([]byte(yml), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// b1 speaks PROXY protocol and b2 gets ID: a mixed pool is fine.
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("warnings %q", w)
	}
	r := c.Routing
	wantPools := []Pool{{Name: "main", Backends: []string{"b1", "b2"}, Policy: "assign"}, {Name: "Closed", Backends: []string{"b2"}, Policy: "reject"}}
	if !reflect.DeepEqual(r.Pools, wantPools) {
		t.Errorf("pools = %+v", r.Pools)
	}
	wantDomains := map[string]string{"example.com": "main", "bücher.example": "main", "closed.example": "Closed", "localhost": "main"}
	if !reflect.DeepEqual(r.DomainPools, wantDomains) || r.DefaultPool != "main" {
		t.Errorf("domain_pools = %v, default_pool %q", r.DomainPools, r.DefaultPool)
	}
	if want := (RouteCache{PositiveTTL: time.Minute, NegativeTTL: time.Minute, MaxEntries: 100}); r.Cache != want {
		t.Errorf("cache = %+v", r.Cache)
	}
	if want := (Health{Interval: time.Second, Timeout: 999 * time.Millisecond, Rise: 1, Fall: 100}); r.Health != want {
		t.Errorf("health = %+v", r.Health)
	}
	if want := (Fleet{ProxyID: "imap1.example.com:4711", Heartbeat: time.Second, Reconcile: time.Minute, WriteRate: 200, MoveHold: 10 * time.Minute, DrainWindow: 24 * time.Hour}); c.Fleet != want {
		t.Errorf("fleet = %+v", c.Fleet)
	}
	b := c.Backends
	if b[0].Weight != 1000 || b[0].Fallback != "b2" || !b[0].ProxyProtocol || b[0].ForwardID || b[1].Weight != 1 || b[1].Fallback != "" {
		t.Errorf("backends = %+v", b)
	}
	d := *c
	d.ApplyDefaults()
	if !reflect.DeepEqual(&d, c) {
		t.Error("ApplyDefaults is not idempotent")
	}

	// By hand: defaults and validation without a file.
	h := &Config{
		Listeners: []Listener{{Mode: "imaps", Address: "127.0.0.1:993"}},
		TLS:       TLS{Certificates: []Certificate{{f.cert, f.key}}},
		Routing: Routing{
			Redis:       &Redis{Addrs: []string{"127.0.0.1:6379"}},
			Pools:       []Pool{{Name: "p", Backends: []string{"b"}}},
			DomainPools: map[string]string{"example.com": "p"},
		},
		Backends: []Backend{{Name: "b", Address: "127.0.0.1:143"}},
	}
	h.ApplyDefaults()
	if err := h.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if h.Routing.Pools[0].Policy != "reject" || h.Backends[0].Weight != 1 || h.Fleet.ProxyID != "" || h.Fleet.Heartbeat != 10*time.Second {
		t.Errorf("defaults not applied: %+v %+v %+v", h.Routing.Pools, h.Backends, h.Fleet)
	}
	// A bad positive_ttl or interval is reported once, not again through
	// negative_ttl or timeout.
	h.Routing.Cache.PositiveTTL = -time.Second
	h.Routing.Health.Interval = 2 * time.Hour
	err = h.Validate()
	if err == nil || strings.Count(err.Error(), "\n") != 1 || !strings.Contains(err.Error(), "routing.cache.positive_ttl") || !strings.Contains(err.Error(), "routing.health.interval") {
		t.Errorf("err = %v", err)
	}
	h.Routing.Cache.PositiveTTL = 30 * time.Second
	h.Routing.Health.Interval = 5 * time.Second
	// Problems with map keys come out in a stable order.
	h.Routing.DomainPools = map[string]string{"z.example": "nope", "A.example": "p", "m.example": "p", "b..example": "p"}
	for range 3 {
		err := h.Validate()
		if err == nil {
			t.Fatal("no error")
		}
		want := []string{
			`config: routing.domain_pools["A.example"]: "A.example" must be written in lower case, "a.example": user names are lower-cased before the lookup`,
			`config: routing.domain_pools["b..example"]: "b..example" is not a valid domain: each dot-separated label needs 1 to 63 characters`,
			`config: routing.domain_pools["z.example"]: "nope" is not defined in routing.pools (defined: p)`,
		}
		lines := strings.Split(err.Error(), "\n")
		if len(lines) != len(want) {
			t.Fatalf("err =\n%v", err)
		}
		for i, w := range want {
			if !strings.HasPrefix(lines[i], w) {
				t.Errorf("line %d = %q, want %s", i, lines[i], w)
			}
		}
	}
}

func TestPoolValidation(t *testing.T) {
	f := newFixture(t)
	const redis = "  redis:\n    addrs: [\"127.0.0.1:6379\"]\n"
	const b1 = `    address: "127.0.0.1:1143"`
	pool := func(lines string) string { return "  pools:\n" + lines }
	for _, tc := range []struct {
		name    string
		routing string   // added at the start of routing, line 11 on
		edits   []string // applied after
		want    string
	}{
		// backends: weight, fallback, proxy_protocol
		{"weight negative", "", []string{b1, b1 + "\n    weight: -1"}, `portico.yaml:19: backends[0].weight: must be between 1 and 1000, not -1`},
		{"weight large", "", []string{b1, b1 + "\n    weight: 1001"}, `backends[0].weight: must be between 1 and 1000, not 1001`},
		{"fallback self", "", []string{b1, b1 + "\n    fallback: b1"}, `portico.yaml:19: backends[0].fallback: "b1" is this backend itself`},
		{"fallback unknown", "", []string{b1, b1 + "\n    fallback: b9"}, `backends[0].fallback: "b9" is not defined in backends (defined: b1, b2)`},
		{"fallback case", "", []string{b1, b1 + "\n    fallback: B2"}, `backends[0].fallback: "B2" is not defined in backends (defined: b1, b2)`},
		{"proxy protocol and id", "", []string{b1, b1 + "\n    forward_id: true\n    proxy_protocol: true"}, `portico.yaml:20: backends[0].proxy_protocol: and forward_id are exclusive: a backend learns the client's address from one mechanism`},
		{"defaults proxy protocol and id", "", []string{"", "backend_defaults: {forward_id: true, proxy_protocol: true}\n"}, `backend_defaults.proxy_protocol: and forward_id are exclusive`},
		// pools
		{"pool name missing", pool("    - backends: [b1]\n"), nil, `portico.yaml:12: routing.pools[0].name: is required`},
		{"pool name chars", pool("    - name: \"my pool\"\n      backends: [b1]\n"), nil, `routing.pools[0].name: "my pool" must contain only letters, digits, '.', '_' and '-'`},
		{"pool duplicate", pool("    - {name: main, backends: [b1]}\n    - {name: Main, backends: [b2]}\n"), nil, `portico.yaml:13: routing.pools[1].name: "Main" is already the name of routing.pools[0] (names are compared case-insensitively)`},
		{"pool named like backend", pool("    - {name: b1, backends: [b1]}\n  default_pool: b2\n"), nil, `routing.default_pool: "b2" is not defined in routing.pools (defined: b1)`},
		{"pool without backends", pool("    - name: main\n"), nil, `portico.yaml:12: routing.pools[0].backends: at least one backend is required`},
		{"pool empty backends", pool("    - name: main\n      backends: []\n"), nil, `portico.yaml:13: routing.pools[0].backends: at least one backend is required`},
		{"pool unknown member", pool("    - name: main\n      backends:\n        - b1\n        - b3\n"), nil, `portico.yaml:15: routing.pools[0].backends[1]: "b3" is not defined in backends (defined: b1, b2)`},
		{"pool empty member", pool("    - name: main\n      backends: [b1, \"\"]\n"), nil, `routing.pools[0].backends[1]: must name an entry in backends`},
		{"pool duplicate member", pool("    - name: main\n      backends: [b1, b2, b1]\n"), nil, `routing.pools[0].backends[2]: "b1" is already listed as routing.pools[0].backends[0]; use weight`},
		{"pool policy", pool("    - name: main\n      backends: [b1]\n      policy: random\n"), nil, `portico.yaml:14: routing.pools[0].policy: must be "reject" or "assign", not "random"`},
		{"pool policy case", pool("    - {name: main, backends: [b1], policy: Assign}\n"), nil, `routing.pools[0].policy: must be "reject" or "assign", not "Assign"`},
		{"assign without redis", pool("    - name: main\n      backends: [b1]\n      policy: assign\n"), []string{redis, ""}, `portico.yaml:14: routing.pools[0].policy: "assign" needs routing.redis, where assignments are written, which is not configured`},
		// domain_pools and default_pool
		{"domain upper case", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools:\n    Example.COM: main\n", nil, `portico.yaml:14: routing.domain_pools["Example.COM"]: "Example.COM" must be written in lower case, "example.com": user names are lower-cased before the lookup`},
		{"domain at", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools: {\"@example.com\": main}\n", nil, `portico.yaml:13: routing.domain_pools["@example.com"]: "@example.com" must be a domain such as example.com, without "@"`},
		{"domain wildcard", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools: {\"*.example.com\": main}\n", nil, `routing.domain_pools["*.example.com"]: "*.example.com" is a wildcard; list each domain`},
		{"domain final dot", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools: {example.com.: main}\n", nil, `"example.com." must be written without a leading or final dot`},
		{"domain empty", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools: {\"\": main}\n", nil, `routing.domain_pools[""]: "" must be a domain such as example.com`},
		{"domain space", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools: {\"exa mple.com\": main}\n", nil, `"exa mple.com" is not a valid domain: only letters, digits, '-' and '.' are allowed`},
		{"domain port", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools: {\"example.com:993\": main}\n", nil, `"example.com:993" is not a valid domain: only letters`},
		{"domain hyphen", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools: {-x.example: main}\n", nil, `"-x.example" is not a valid domain: each dot-separated label needs 1 to 63 characters and must not start or end with '-'`},
		{"domain long label", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools: {" + strings.Repeat("a", 64) + ".example: main}\n", nil, `is not a valid domain: each dot-separated label`},
		{"domain long", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools: {" + strings.Repeat("a.", 127) + "com: main}\n", nil, `is longer than 253 characters`},
		{"domain unknown pool", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools:\n    example.com: mian\n", nil, `portico.yaml:14: routing.domain_pools["example.com"]: "mian" is not defined in routing.pools (defined: main)`},
		{"domain empty pool", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools:\n    example.com: \"\"\n", nil, `routing.domain_pools["example.com"]: must name an entry in routing.pools`},
		{"domain no pools", "  domain_pools:\n    example.com: main\n", nil, `routing.domain_pools["example.com"]: "main" is not defined in routing.pools (there are none)`},
		{"domain duplicate", pool("    - {name: main, backends: [b1]}\n") + "  domain_pools:\n    example.com: main\n    example.com: main\n", nil, `portico.yaml:15: routing.domain_pools["example.com"]: mapping key "example.com" already defined at line 14`},
		{"domain not a map", "  domain_pools: [example.com]\n", nil, `portico.yaml:11: routing.domain_pools: cannot unmarshal`},
		{"default pool unknown", pool("    - {name: main, backends: [b1]}\n") + "  default_pool: other\n", nil, `portico.yaml:13: routing.default_pool: "other" is not defined in routing.pools (defined: main)`},
		// cache
		{"positive ttl long", "  cache: {positive_ttl: 2h}\n", nil, `portico.yaml:11: routing.cache.positive_ttl: must be between 1ms and 1h, not 2h`},
		{"positive ttl negative", "  cache:\n    positive_ttl: -1s\n", nil, `portico.yaml:12: routing.cache.positive_ttl: must be between 1ms and 1h, not -1s`},
		{"negative ttl above positive", "  cache: {positive_ttl: 10s, negative_ttl: 11s}\n", nil, `routing.cache.negative_ttl: must be between 1ms and positive_ttl (10s), not 11s`},
		{"negative ttl above default positive", "  cache: {negative_ttl: 1m}\n", nil, `routing.cache.negative_ttl: must be between 1ms and positive_ttl (30s), not 1m`},
		{"negative ttl negative", "  cache: {negative_ttl: -5s}\n", nil, `routing.cache.negative_ttl: must be between 1ms and positive_ttl (30s), not -5s`},
		{"max entries small", "  cache: {max_entries: 99}\n", nil, `routing.cache.max_entries: must be between 100 and 10000000, not 99`},
		{"max entries large", "  cache: {max_entries: 10000001}\n", nil, `routing.cache.max_entries: must be between 100 and 10000000, not 10000001`},
		{"disabled cache still checked", "  cache: {disabled: true, max_entries: -1}\n", nil, `routing.cache.max_entries: must be between 100 and 10000000, not -1`},
		// health
		{"interval short", "  health:\n    interval: 500ms\n", nil, `portico.yaml:12: routing.health.interval: must be between 1s and 1h, not 500ms`},
		{"interval long", "  health: {interval: 2h}\n", nil, `routing.health.interval: must be between 1s and 1h, not 2h`},
		{"timeout equals interval", "  health: {interval: 3s}\n", nil, `routing.health.timeout: must be at least 1ms and less than interval (3s), not 3s`},
		{"timeout above interval", "  health: {timeout: 10s}\n", nil, `routing.health.timeout: must be at least 1ms and less than interval (5s), not 10s`},
		{"timeout negative", "  health: {timeout: -1s}\n", nil, `routing.health.timeout: must be at least 1ms and less than interval (5s), not -1s`},
		{"rise", "  health: {rise: -1}\n", nil, `routing.health.rise: must be between 1 and 100, not -1`},
		{"fall", "  health: {fall: 101}\n", nil, `routing.health.fall: must be between 1 and 100, not 101`},
		// fleet
		{"heartbeat short", "", []string{"", "fleet:\n  heartbeat: 500ms\n"}, `portico.yaml:22: fleet.heartbeat: must be between 1s and 5m, not 500ms`},
		{"heartbeat long", "", []string{"", "fleet: {heartbeat: 6m}\n"}, `fleet.heartbeat: must be between 1s and 5m, not 6m`},
		{"move hold", "", []string{"", "fleet: {move_hold: 11m}\n"}, `fleet.move_hold: must be between 1s and 10m, not 11m`},
		{"move hold short", "", []string{"", "fleet: {move_hold: 100ms}\n"}, `fleet.move_hold: must be between 1s and 10m, not 100ms`},
		{"drain window negative", "", []string{"", "fleet: {drain_window: -1s}\n"}, `fleet.drain_window: must be between 0 (the default, 5m) and 24h, not -1s`},
		{"drain window long", "", []string{"", "fleet: {drain_window: 25h}\n"}, `fleet.drain_window: must be between 0 (the default, 5m) and 24h, not 25h`},
		{"reconcile short", "", []string{"", "fleet: {reconcile: 1s}\n"}, `fleet.reconcile`},
		{"write rate low", "", []string{"", "fleet: {write_rate: 5}\n"}, `fleet.write_rate: must be between 100 and 1000000 sessions per second, not 5`},
		{"proxy id space", "", []string{"", "fleet:\n  proxy_id: \"imap 1\"\n"}, `portico.yaml:22: fleet.proxy_id: "imap 1" must be at most 128 characters: letters, digits, '.', '_', '-' and ':'`},
		{"proxy id braces", "", []string{"", "fleet: {proxy_id: \"{imap1}\"}\n"}, `fleet.proxy_id: "{imap1}" must be at most 128 characters`},
		{"proxy id long", "", []string{"", "fleet: {proxy_id: " + strings.Repeat("a", 129) + "}\n"}, `must be at most 128 characters`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			yml := f.pools(tc.routing, tc.edits...)
			_, err := Parse([]byte(yml), "portico.yaml")
			if err == nil {
				t.Fatalf("no error, want %s\n%s", tc.want, yml)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error\n%v\ndoes not contain\n%s", err, tc.want)
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "config: portico.yaml") {
					t.Errorf("line %q does not start with the file name", line)
				}
			}
		})
	}
}

func TestPoolWarnings(t *testing.T) {
	f := newFixture(t)
	const redis = "  redis:\n    addrs: [\"127.0.0.1:6379\"]\n"
	const b1 = `    address: "127.0.0.1:1143"`
	for _, tc := range []struct {
		name    string
		routing string
		edits   []string
		want    []string
	}{
		{"mixed pool", "  pools: [{name: main, backends: [b1, b2], policy: assign}]\n", []string{b1, b1 + "\n    proxy_protocol: true\n  - name: b3\n    address: \"127.0.0.1:3143\"\n    forward_id: true"}, nil},
		{"health disabled", "  health: {disabled: true}\n", nil, []string{`routing.health.disabled: logins to a dead backend wait for the connect timeout`}},
		{"cache disabled", "  cache: {disabled: true}\n", nil, []string{`routing.cache.disabled: every login that static routes do not answer costs a Redis round trip`}},
		{"cache disabled without redis", "  cache: {disabled: true}\n", []string{redis, ""}, nil},
		{"pools without redis", "  pools: [{name: main, backends: [b1]}]\n  domain_pools: {example.com: main}\n  default_pool: main\n", []string{redis, ""}, []string{
			`routing.pools: has no effect without routing.redis`,
			`routing.domain_pools: has no effect without routing.redis`,
			`routing.default_pool: has no effect without routing.redis`,
		}},
		{"fleet without redis", "", []string{redis, "", "", "fleet: {proxy_id: imap1, heartbeat: 5s, reconcile: 1m, write_rate: 100, move_hold: 1m, drain_window: 1h}\n"}, []string{
			`fleet.proxy_id: has no effect without routing.redis`,
			`fleet.heartbeat: has no effect`,
			`fleet.move_hold: has no effect`,
			`fleet.reconcile: has no effect`,
			`fleet.write_rate: has no effect`,
			`fleet.drain_window: has no effect`,
		}},
		{"fleet defaults without redis", "", []string{redis, "", "", "fleet: {heartbeat: 10s, move_hold: 30s, drain_window: 5m}\n"}, nil},
		{"fleet with redis", "", []string{"", "fleet: {proxy_id: imap1, heartbeat: 5s}\n"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(f.pools(tc.routing, tc.edits...)), "portico.yaml")
			if err != nil {
				t.Fatal(err)
			}
			w := c.Warnings()
			if len(w) != len(tc.want) {
				t.Fatalf("warnings %q, want %d: %q", w, len(tc.want), tc.want)
			}
			for i, want := range tc.want {
				if !strings.Contains(w[i], want) {
					t.Errorf("warning %d = %q, want one containing %s", i, w[i], want)
				}
			}
		})
	}
}
