package main

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/portico-mail/portico/internal/loadtest"
	"github.com/portico-mail/portico/internal/membackend"
)

func TestBench(t *testing.T) {
	bin := binary(t)
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice@example.test", Password: "alice-pw", Messages: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()

	t.Run("-h", func(t *testing.T) {
		out, code := run(t, bin, nil, "bench", "-h")
		if code != 0 || !strings.Contains(out, "Usage: portico bench login|fetch|latency|idle") || !strings.Contains(out, "-curves") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("login", func(t *testing.T) {
		// The backend runs in this test process, so -pid measures it.
		out, code := run(t, bin, nil, "bench", "login", "-addr", be.Addr(), "-tls", "plain",
			"-user", "alice@example.test", "-pass", "alice-pw", "-n", "5", "-w", "2",
			"-pid", strconv.Itoa(os.Getpid()), "-json")
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		var rep loadtest.Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		if rep.Sessions != 5 || rep.Errors != 0 || rep.Session == nil || rep.Session.N != 5 ||
			rep.CPU == nil || rep.CPU.Procs[0].PID != os.Getpid() {
			t.Fatalf("report:\n%s", out)
		}
	})
	t.Run("pop3", func(t *testing.T) {
		for _, auth := range []string{"plain", "password"} {
			out, code := run(t, bin, nil, "bench", "login", "-protocol", "pop3", "-addr", be.POP3Addr(), "-tls", "plain",
				"-auth", auth, "-user", "alice@example.test", "-pass", "alice-pw", "-n", "4", "-w", "2", "-json")
			if code != 0 {
				t.Fatalf("exit %d:\n%s", code, out)
			}
			var rep loadtest.Report
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("%v:\n%s", err, out)
			}
			if rep.Protocol != loadtest.POP3 || rep.Sessions != 4 || rep.Errors != 0 {
				t.Fatalf("report:\n%s", out)
			}
		}
		out, code := run(t, bin, nil, "bench", "fetch", "-protocol", "pop3", "-addr", be.POP3Addr(), "-tls", "plain",
			"-user", "alice@example.test", "-pass", "alice-pw", "-n", "2")
		if code != 0 || !strings.Contains(out, "(pop3, plain)") || !strings.Contains(out, "2 RETRs") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		out, code := run(t, bin, nil, "bench", "login", "-addr", be.Addr(), "-tls", "plain",
			"-user", "alice@example.test", "-pass", "wrong", "-n", "1")
		if code != 1 || !strings.Contains(out, "login: NO") || !strings.Contains(out, "no session succeeded") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	for _, args := range [][]string{
		{"bench", "-addr", be.Addr(), "-user", "u"},            // no mode
		{"bench", "bulk", "-addr", be.Addr(), "-user", "u"},    // unknown mode
		{"bench", "login", "-addr", be.Addr()},                 // no user
		{"bench", "login", "-user", "u%d", "-addr", be.Addr()}, // pattern without -nusers
		{"bench", "login", "-user", "u", "-pid", "self"},
		{"bench", "login", "-user", "u", "-protocol", "smtp"},
		{"bench", "idle", "-user", "u", "-protocol", "pop3"},
		{"bench", "login", "-user", "u", "-tls", "pop3s"}, // an IMAP run
		{"bench", "login", "-user", "u", "-auth", "cram-md5"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			if out, code := run(t, bin, nil, args...); code != 2 {
				t.Fatalf("exit %d, want 2 (usage):\n%s", code, out)
			}
		})
	}
}
