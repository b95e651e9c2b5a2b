package loadtest_test

import (
	"context"
	"crypto/tls"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/loadtest"
	"github.com/portico-mail/portico/internal/membackend"
)

// startPOP3Backend is an in-memory backend whose users have two messages
// of bigSize bytes, with dot-stuffed lines, over POP3.
func startPOP3Backend(t *testing.T) (*membackend.Backend, []loadtest.User) {
	t.Helper()
	users := loadtest.PatternUsers("user%d@example.test", "pw%d", 3)
	be, err := membackend.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	for _, u := range users {
		if err := be.AddUser(membackend.User{Name: u.Name, Password: u.Password, Messages: 2, MessageSize: bigSize}); err != nil {
			t.Fatal(err)
		}
	}
	return be, users
}

func TestPOP3Login(t *testing.T) {
	be, users := startPOP3Backend(t)
	for _, auth := range []loadtest.Auth{loadtest.AuthPlain, loadtest.AuthPassword} {
		t.Run(string(auth), func(t *testing.T) {
			rep := run(t, loadtest.Config{
				Mode: loadtest.Login, Protocol: loadtest.POP3, Auth: auth,
				Addr: be.POP3Addr(), Security: loadtest.Plain, Users: users,
				Workers: 3, Count: 12, Measure: self(),
			})
			if rep.Sessions != 12 || rep.Protocol != loadtest.POP3 || rep.Rate <= 0 {
				t.Fatalf("sessions %d, protocol %q, rate %v", rep.Sessions, rep.Protocol, rep.Rate)
			}
			checkN(t, "connect", rep.Connect, 12)
			checkN(t, "login", rep.Login, 12)
			checkN(t, "session", rep.Session, 12)
			if rep.CPU == nil || rep.CPU.Procs[0].PID != os.Getpid() {
				t.Fatalf("CPU %+v (%s)", rep.CPU, rep.MeasureError)
			}
		})
	}
}

// TestPOP3Fetch RETRs the last message: its bytes come back exact, the
// stuffed dots of every tenth line taken out.
func TestPOP3Fetch(t *testing.T) {
	be, users := startPOP3Backend(t)
	rep := run(t, loadtest.Config{
		Mode: loadtest.Fetch, Protocol: loadtest.POP3, Addr: be.POP3Addr(), Security: loadtest.Plain,
		Users: users, Workers: 2, Count: 6,
	})
	if rep.Sessions != 2 || rep.Ops != 6 || rep.Bytes != 6*bigSize || rep.MiBPerSec <= 0 {
		t.Fatalf("sessions %d, RETRs %d, bytes %d, %v MiB/s", rep.Sessions, rep.Ops, rep.Bytes, rep.MiBPerSec)
	}
	checkN(t, "retr", rep.Op, 6)
}

func TestPOP3Latency(t *testing.T) {
	be, users := startPOP3Backend(t)
	rep := run(t, loadtest.Config{
		Mode: loadtest.Latency, Protocol: loadtest.POP3, Addr: be.POP3Addr(), Security: loadtest.Plain,
		Users: users, Count: 200,
	})
	if rep.Sessions != 1 || rep.Ops != 200 {
		t.Fatalf("sessions %d, NOOPs %d", rep.Sessions, rep.Ops)
	}
	checkN(t, "noop", rep.Op, 200)
}

func TestPOP3Errors(t *testing.T) {
	be, users := startPOP3Backend(t)
	rep, err := loadtest.Run(context.Background(), loadtest.Config{
		Mode: loadtest.Login, Protocol: loadtest.POP3, Addr: be.POP3Addr(), Security: loadtest.Plain,
		Users: []loadtest.User{{Name: users[0].Name, Password: "wrong"}}, Count: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sessions != 0 || rep.ErrorKinds["login: -ERR"] != 2 || !strings.Contains(rep.ErrorExamples["login: -ERR"], "[AUTH]") {
		t.Fatalf("sessions %d, errors %v %v", rep.Sessions, rep.ErrorKinds, rep.ErrorExamples)
	}

	// A message that is not there.
	rep, err = loadtest.Run(context.Background(), loadtest.Config{
		Mode: loadtest.Login, Protocol: loadtest.POP3, Addr: be.POP3Addr(), Security: loadtest.Plain,
		Users: users, Count: 1, Fetch: "9",
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ErrorKinds["retr: -ERR"] != 1 {
		t.Fatalf("errors %v", rep.ErrorKinds)
	}

	// An IMAP server is not a POP3 one.
	rep, err = loadtest.Run(context.Background(), loadtest.Config{
		Mode: loadtest.Login, Protocol: loadtest.POP3, Addr: be.Addr(), Security: loadtest.Plain,
		Users: users, Count: 1, Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ErrorKinds["greeting: unexpected"] != 1 {
		t.Fatalf("errors %v", rep.ErrorKinds)
	}
}

func TestPOP3ConfigErrors(t *testing.T) {
	users := []loadtest.User{{Name: "u", Password: "p"}}
	for _, cfg := range []loadtest.Config{
		{Mode: loadtest.Idle, Protocol: loadtest.POP3, Addr: "127.0.0.1:1", Users: users},
		{Mode: loadtest.Login, Protocol: "smtp", Addr: "127.0.0.1:1", Users: users},
		{Mode: loadtest.Login, Protocol: loadtest.POP3, Addr: "127.0.0.1:1", Users: users, Fetch: "1 (FLAGS)"},
		{Mode: loadtest.Login, Protocol: loadtest.POP3, Addr: "127.0.0.1:1", Users: users, Fetch: "0"},
		{Mode: loadtest.Login, Addr: "127.0.0.1:1", Users: users, Auth: "cram-md5"},
	} {
		if _, err := loadtest.Run(context.Background(), cfg); err == nil || !strings.HasPrefix(err.Error(), "loadtest: ") {
			t.Errorf("%+v: err %v", cfg, err)
		}
	}
}

// TestPOP3ThroughPortico runs POP3 sessions through Portico's pop3s and
// pop3 (STLS) listeners: TLS verified, ALPN "pop3" by default (Portico
// refuses a handshake that offers only another protocol).
func TestPOP3ThroughPortico(t *testing.T) {
	tg := startTarget(t)
	rep := run(t, loadtest.Config{
		Mode: loadtest.Login, Protocol: loadtest.POP3, Addr: tg.pop3s, TLS: tg.tls, Users: tg.users,
		Workers: 3, Count: 30, Measure: self(),
	})
	// As in TestLogin: 30 TLS logins cost measurable CPU.
	if rep.Sessions != 30 || !strings.HasPrefix(rep.TLS, "TLS 1.3") || rep.CPU == nil || rep.CPU.Seconds <= 0 ||
		rep.CPU.PerSessionMS != rep.CPU.Seconds*1000/30 {
		t.Fatalf("sessions %d, TLS %q, CPU %+v (%s)", rep.Sessions, rep.TLS, rep.CPU, rep.MeasureError)
	}
	checkN(t, "login", rep.Login, 30)
	checkN(t, "session", rep.Session, 30)

	cfg := tg.tls.Clone()
	cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	rep = run(t, loadtest.Config{
		Mode: loadtest.Login, Protocol: loadtest.POP3, Addr: tg.stls, Security: loadtest.StartTLS, TLS: cfg,
		Users: tg.users, Workers: 2, Count: 4, Auth: loadtest.AuthPassword,
	})
	if rep.Sessions != 4 || rep.TLS != "TLS 1.3 X25519" {
		t.Fatalf("sessions %d, TLS %q", rep.Sessions, rep.TLS)
	}
	rep = run(t, loadtest.Config{
		Mode: loadtest.Latency, Protocol: loadtest.POP3, Addr: tg.pop3s, TLS: tg.tls, Users: tg.users, Count: 50,
	})
	if rep.Ops != 50 {
		t.Fatalf("NOOPs %d", rep.Ops)
	}

	for name, c := range map[string]loadtest.Config{
		"unverified": {}, // the test certificate is not in the system roots
		"ALPN imap":  {TLS: &tls.Config{RootCAs: tg.tls.RootCAs, ServerName: "localhost", NextProtos: []string{"imap"}}},
	} {
		c.Mode, c.Protocol, c.Addr, c.Users, c.Count = loadtest.Login, loadtest.POP3, tg.pop3s, tg.users, 1
		rep, err := loadtest.Run(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		if rep.ErrorKinds["tls: handshake"] != 1 {
			t.Errorf("%s: %v", name, rep.ErrorKinds)
		}
	}
}
