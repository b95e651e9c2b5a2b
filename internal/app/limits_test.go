package app

import (
	"bytes"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/limits"
)

// TestBuildLimits: limits.brute_force, with limits.ipv6_prefix,
// limits.trusted_networks and routing.lookup_timeout, becomes the
// server's limiter; disabled, the server has none.
func TestBuildLimits(t *testing.T) {
	dir := t.TempDir()
	_, certFile, keyFile := testcert.Files(t, dir, "localhost")
	t.Setenv("PORTICO_TEST_BF_KEY", "0123456789abcdef0123456789abcdef")
	build := func(limitsYAML string) (*App, string) {
		t.Helper()
		cfg, err := config.Parse([]byte(`
listeners:
  - {mode: imaps, address: "127.0.0.1:0"}
tls:
  certificates:
    - {cert_file: `+certFile+`, key_file: `+keyFile+`}
limits:
`+limitsYAML+`
routing:
  lookup_timeout: 1500ms
  redis: {addrs: ["127.0.0.1:1"]}
  health: {disabled: true}
`), "portico.yaml")
		if err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		rt, err := Build(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(rt.Close)
		return rt, logs.String()
	}

	rt, logs := build(`  ipv6_prefix: 56
  trusted_networks: [10.0.2.0/24]
  brute_force:
    user: {delay_after: 4, block_after: 20, window: 2h, block_for: 1h}
    password_hash_key: {env: PORTICO_TEST_BF_KEY}
    on_redis_error: closed
`)
	if rt.Limiter == nil || rt.Server.Limiter != rt.Limiter {
		t.Fatal("no limiter")
	}
	got := rt.Limiter.Config()
	want := limits.DefaultConfig()
	want.User = limits.Tier{DelayAfter: 4, BlockAfter: 20, Window: 2 * time.Hour, BlockFor: time.Hour}
	want.IPv6Prefix = 56
	want.Trusted = []netip.Prefix{netip.MustParsePrefix("10.0.2.0/24")}
	want.HashKey = []byte("0123456789abcdef0123456789abcdef")
	want.FailClosed = true
	want.Timeout = 1500 * time.Millisecond
	want.LogInterval, want.MaxEntries = got.LogInterval, got.MaxEntries
	if !reflect.DeepEqual(got, want) {
		t.Errorf("limiter config\n got %+v\nwant %+v", got, want)
	}
	if strings.Contains(logs, "password_hash_key") {
		t.Errorf("warned about a key that is set: %s", logs)
	}

	// Without a key, a random one per process, and a warning.
	rt, logs = build("  brute_force: {}\n")
	if rt.Limiter == nil || len(rt.Limiter.Config().HashKey) != 32 || !strings.Contains(logs, "password_hash_key is not set") {
		t.Errorf("without a key: %v, logs %s", rt.Limiter, logs)
	}

	rt, _ = build("  brute_force: {disabled: true}\n")
	if rt.Limiter != nil || rt.Server.Limiter != nil {
		t.Error("disabled, yet a limiter")
	}
}
