package tls

import (
	"context"
	stdtls "crypto/tls"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/internal/testsrv"
)

// instance is one proxy of a fleet: its own server config, its own Redis
// client and TicketKeys, the same certificate as the others.
type instance struct {
	addr string
	tk   *TicketKeys
	logs *logRecorder
}

func startInstance(t *testing.T, redisAddr string, cert stdtls.Certificate, secret string, rotation time.Duration) *instance {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { rdb.Close() })
	rec, logger := newRecorder(t)
	tk := &TicketKeys{Client: rdb, Prefix: "test:", Secret: []byte(secret), Rotation: rotation, Logger: logger}
	cfg := ServerConfig(mustStore(t, cert), 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tk.Run(ctx, cfg); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "ticket keys", 5*time.Second, func() bool { k, _ := tk.keysInUse(); return len(k) > 0 })
	return &instance{addr: serve(t, cfg), tk: tk, logs: rec}
}

func resumingClient(cert stdtls.Certificate, version uint16) *stdtls.Config {
	return &stdtls.Config{
		ServerName:         "mail.example.test",
		RootCAs:            CertPool(cert),
		ClientSessionCache: stdtls.NewLRUClientSessionCache(4),
		MinVersion:         version,
		MaxVersion:         version,
	}
}

func resumed(t *testing.T, addr string, cfg *stdtls.Config) bool {
	t.Helper()
	st, err := dial(addr, cfg)
	if err != nil {
		t.Fatalf("handshake with %s: %v", addr, err)
	}
	return st.DidResume
}

func TestTicketKeysShared(t *testing.T) {
	r := testsrv.StartRedis(t)
	cert := mustSelfSigned(t, "mail.example.test")
	a := startInstance(t, r.Addr, cert, "fleet secret", 0)
	b := startInstance(t, r.Addr, cert, "fleet secret", 0)
	ka, _ := a.tk.keysInUse()
	kb, _ := b.tk.keysInUse()
	if !slices.Equal(ka, kb) {
		t.Fatal("the two instances use different keys")
	}
	for _, v := range []uint16{stdtls.VersionTLS13, stdtls.VersionTLS12} {
		client := resumingClient(cert, v)
		if resumed(t, a.addr, client) {
			t.Fatalf("version %x: first connection resumed", v)
		}
		if !resumed(t, b.addr, client) {
			t.Errorf("version %x: a session from instance A did not resume on instance B", v)
		}
		if !resumed(t, a.addr, client) {
			t.Errorf("version %x: a session from instance B did not resume on instance A", v)
		}
	}

	// A proxy configured with another secret cannot read the keys: it says
	// so and keeps its own, so its clients never resume elsewhere.
	c := startInstanceNoWait(t, r.Addr, cert, "another secret")
	waitFor(t, "a warning", 5*time.Second, func() bool { return len(c.logs.lines(slog.LevelWarn)) > 0 })
	if w := c.logs.lines(slog.LevelWarn)[0]; !strings.Contains(w, "same on every proxy") {
		t.Errorf("warning: %s", w)
	}
	client := resumingClient(cert, stdtls.VersionTLS13)
	resumed(t, a.addr, client)
	if resumed(t, c.addr, client) {
		t.Error("resumed on a proxy with another secret")
	}

	// At rest, the keys are encrypted.
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	vals, err := rdb.HGetAll(context.Background(), "test:tls:tickets").Result()
	if err != nil || len(vals) == 0 || len(vals) > 2 {
		t.Fatalf("redis hash: %v %v", vals, err)
	}
	for _, v := range vals {
		if strings.Contains(v, string(ka[0][:])) || len(v) < 60 {
			t.Errorf("stored value %q does not look encrypted", v)
		}
	}
}

func startInstanceNoWait(t *testing.T, redisAddr string, cert stdtls.Certificate, secret string) *instance {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	t.Cleanup(func() { rdb.Close() })
	rec, logger := newRecorder(t)
	tk := &TicketKeys{Client: rdb, Prefix: "test:", Secret: []byte(secret), Logger: logger}
	cfg := ServerConfig(mustStore(t, cert), 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tk.Run(ctx, cfg); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &instance{addr: serve(t, cfg), tk: tk, logs: rec}
}

// untilPeriod sleeps until period p of rot has begun, plus a margin for
// the refresh that follows the boundary.
func untilPeriod(p int64, rot time.Duration) {
	time.Sleep(time.Until(time.Unix(0, p*int64(rot)).Add(rot / 4)))
}

func TestTicketKeysRotation(t *testing.T) {
	const rot = 2 * time.Second
	r := testsrv.StartRedis(t)
	cert := mustSelfSigned(t, "mail.example.test")
	// Start right after a boundary, so that the sessions below all come
	// from one period.
	p := time.Now().UnixNano()/int64(rot) + 1
	untilPeriod(p, rot)
	a := startInstance(t, r.Addr, cert, "fleet secret", rot)
	b := startInstance(t, r.Addr, cert, "fleet secret", rot)
	if _, ps := a.tk.keysInUse(); ps[0] != p {
		t.Fatalf("periods in use %v, want %d first", ps, p)
	}

	// One ticket from period p per check below (a resumption replaces the
	// client's ticket with a newer one).
	clients := make([]*stdtls.Config, 3)
	for i := range clients {
		clients[i] = resumingClient(cert, stdtls.VersionTLS13)
		if resumed(t, a.addr, clients[i]) {
			t.Fatal("first connection resumed")
		}
	}
	if time.Now().UnixNano()/int64(rot) != p {
		t.Fatal("too slow: the period ended before the sessions were made")
	}

	untilPeriod(p+1, rot)
	if _, ps := b.tk.keysInUse(); ps[0] != p+1 || !slices.Contains(ps, p) {
		t.Errorf("periods in use in period %d: %v", p+1, ps)
	}
	if !resumed(t, b.addr, clients[0]) {
		t.Error("a ticket from the previous period did not resume")
	}
	untilPeriod(p+2, rot)
	if !resumed(t, b.addr, clients[1]) {
		t.Error("a ticket from two periods ago did not resume")
	}
	untilPeriod(p+3, rot)
	if _, ps := b.tk.keysInUse(); slices.Contains(ps, p) {
		t.Errorf("period %d still in use in period %d: %v", p, p+3, ps)
	}
	if resumed(t, b.addr, clients[2]) {
		t.Error("a ticket from three periods ago resumed")
	}

	// Old periods are removed from Redis.
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	untilPeriod(p+4, rot)
	names, err := rdb.HKeys(context.Background(), "test:tls:tickets").Result()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, field(p)) || len(names) > 5 {
		t.Errorf("fields left in period %d: %v", p+4, names)
	}
	if ttl := rdb.PTTL(context.Background(), "test:tls:tickets").Val(); ttl <= 0 || ttl > 5*rot {
		t.Errorf("TTL of the hash: %v", ttl)
	}
}

func TestTicketKeysRedisDown(t *testing.T) {
	const rot = 2 * time.Second
	r := testsrv.StartRedis(t)
	cert := mustSelfSigned(t, "mail.example.test")
	a := startInstance(t, r.Addr, cert, "fleet secret", rot)
	before, _ := a.tk.keysInUse()
	client := resumingClient(cert, stdtls.VersionTLS13)
	resumed(t, a.addr, client)

	r.Stop()
	time.Sleep(rot + rot/2) // past a period boundary, several retries
	after, _ := a.tk.keysInUse()
	if !slices.Equal(before, after) {
		t.Error("keys changed while Redis was down")
	}
	if !resumed(t, a.addr, client) {
		t.Error("sessions no longer resume while Redis is down")
	}
	if ws := a.logs.lines(slog.LevelWarn); len(ws) != 1 {
		t.Errorf("warnings while Redis is down: %q; want exactly one", ws)
	}
}

func TestTicketKeySealing(t *testing.T) {
	aead := ticketAEAD([]byte("k"))
	var k [32]byte
	copy(k[:], "0123456789abcdef0123456789abcdef")
	v := sealTicketKey(aead, "x:tls:tickets", 7, k)
	if got, err := openTicketKey(aead, "x:tls:tickets", 7, v); err != nil || got != k {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := openTicketKey(aead, "x:tls:tickets", 8, v); err == nil {
		t.Error("a key moved to another period decrypted")
	}
	if _, err := openTicketKey(ticketAEAD([]byte("other")), "x:tls:tickets", 7, v); err == nil {
		t.Error("decrypted with another secret")
	}
	if _, err := openTicketKey(aead, "x:tls:tickets", 7, "garbage"); err == nil {
		t.Error("garbage accepted")
	}
}
