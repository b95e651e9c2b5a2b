package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/portico-mail/portico/internal/loadtest"
	ptls "github.com/portico-mail/portico/tls"
)

const benchSynopsis = `login|fetch|latency|idle -addr HOST:PORT [flags]

Generates IMAP or POP3 load against any IMAP or POP3 server (Portico,
nginx, Dovecot) and reports rates, latency percentiles and, with -pid, the
server's CPU per session and memory per idle session, from /proc (run on
the server's host).

  login    -w workers run whole sessions (connect, TLS, AUTHENTICATE PLAIN,
           SELECT INBOX, FETCH -fetch, LOGOUT) until -n sessions or -duration
  fetch    -w sessions FETCH a large message (-fetch) -n times in all: MiB/s
  latency  -w sessions send -n NOOPs in all: round-trip percentiles
  idle     -n sessions log in, SELECT and IDLE (-w opened at a time), are
           held for -duration and must then answer DONE (IMAP only)

-protocol pop3 runs POP3 sessions instead: connect, TLS (-tls pop3s) or
STLS (-tls stls), AUTH PLAIN (or USER/PASS with -auth password), STAT,
RETR -fetch (a message number, * for the last; login 1, fetch *), QUIT.

Users: -user NAME -pass PW, a pattern (-user 'user%d@example.com' -pass
'pw%d' -nusers 300 gives user1..user300), or -users FILE of user:password
lines (keeps passwords out of ps). Exit status 1 when nothing succeeded.`

func runBench(args []string) error {
	fs := newFlagSet("bench", benchSynopsis)
	addr := fs.String("addr", "", "server `host:port` (default 127.0.0.1:993, 127.0.0.1:995 for pop3)")
	protocol := fs.String("protocol", "imap", "`imap` or pop3")
	security := fs.String("tls", "", "imaps (pop3s), starttls (stls) or plain (no TLS: tests and trusted networks only) (default imaps, pop3s for pop3)")
	auth := fs.String("auth", "plain", "`plain` (SASL PLAIN) or password (IMAP LOGIN, POP3 USER and PASS)")
	caFile := fs.String("ca", "", "PEM `file` of CAs to verify the server with (default: the system roots)")
	insecure := fs.Bool("insecure", false, "do not verify the server's certificate")
	serverName := fs.String("servername", "", "`name` to verify and send as SNI (default: the host of -addr)")
	curves := fs.String("curves", "", "key exchanges to offer, comma-separated, e.g. X25519,P256 (default: Go's, X25519MLKEM768 first)")
	minVersion := fs.String("tls-min", "1.3", "lowest TLS `version` offered: 1.2 or 1.3")
	resume := fs.Bool("resume", false, "resume TLS sessions (default: a full handshake per session, the worst case)")
	user := fs.String("user", "", "user `name`; %d makes a pattern expanded with 1..-nusers")
	pass := fs.String("pass", "", "`password`; %d is expanded as in -user")
	nusers := fs.Int("nusers", 0, "number of users a -user pattern expands to")
	usersFile := fs.String("users", "", "`file` of user:password lines (instead of -user)")
	workers := fs.Int("w", 0, "workers (0: login 16, fetch 1, latency 1, idle 32)")
	count := fs.Int("n", 0, "sessions (login, idle) or commands (fetch, latency) (0: login 1000, fetch 20, latency 1000, idle 100)")
	duration := fs.Duration("duration", 0, "cap on the run; in idle, how long sessions are held (0: 1m, idle 10s)")
	fetch := fs.String("fetch", "", "FETCH `arguments` (default: login '1 (FLAGS BODY.PEEK[HEADER])', fetch '* (BODY.PEEK[])'); for pop3 the message to RETR")
	timeout := fs.Duration("timeout", 0, "limit on each network operation (0: 30s)")
	pids := fs.String("pid", "", "server process `ids`, comma-separated, to measure CPU and memory of")
	tree := fs.Bool("tree", true, "count each -pid with all its descendants (forking servers: give the master's pid)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	pos, help, err := parseArgs(fs, args, "MODE")
	if help || err != nil {
		return err
	}

	cfg := loadtest.Config{
		Mode: loadtest.Mode(pos[0]), Protocol: loadtest.Protocol(*protocol), Addr: *addr, Auth: loadtest.Auth(*auth),
		Workers: *workers, Count: *count, Duration: *duration, Fetch: *fetch, Timeout: *timeout,
	}
	if _, ok := loadtest.Defaults[cfg.Mode]; !ok {
		return usageError(fs, "unknown mode %q", pos[0])
	}
	switch cfg.Protocol {
	case loadtest.IMAP, loadtest.POP3:
	default:
		return usageError(fs, "-protocol: %q is neither imap nor pop3", *protocol)
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:993"
		if cfg.Protocol == loadtest.POP3 {
			cfg.Addr = "127.0.0.1:995"
		}
	}
	if cfg.Security, err = benchSecurity(*security, cfg.Protocol); err != nil {
		return usageError(fs, "%v", err)
	}
	if cfg.Auth != loadtest.AuthPlain && cfg.Auth != loadtest.AuthPassword {
		return usageError(fs, "-auth: %q is neither plain nor password", *auth)
	}
	if cfg.Protocol == loadtest.POP3 && cfg.Mode == loadtest.Idle {
		return usageError(fs, "POP3 has no idle mode")
	}
	switch {
	case *usersFile != "" && *user != "":
		return usageError(fs, "-users and -user exclude each other")
	case *usersFile != "":
		f, err := os.Open(*usersFile)
		if err != nil {
			return err
		}
		cfg.Users, err = loadtest.ReadUsers(f)
		f.Close()
		if err != nil {
			return err
		}
	case *user == "":
		return usageError(fs, "missing -user or -users")
	case strings.Contains(*user, "%d") && *nusers < 1:
		return usageError(fs, "-user pattern %q needs -nusers", *user)
	default:
		cfg.Users = loadtest.PatternUsers(*user, *pass, *nusers)
	}
	if cfg.Security != loadtest.Plain {
		tc, err := ptls.ClientConfig(ptls.ClientOptions{CAFile: *caFile, ServerName: *serverName, InsecureSkipVerify: *insecure})
		if err != nil {
			return err
		}
		if tc.MinVersion, err = ptls.ParseMinVersion(*minVersion); err != nil {
			return err
		}
		if *curves != "" {
			if tc.CurvePreferences, err = ptls.ParseCurves(strings.Split(*curves, ",")); err != nil {
				return err
			}
		}
		if *resume {
			tc.ClientSessionCache = tls.NewLRUClientSessionCache(0)
		}
		cfg.TLS = tc
	}
	if *pids != "" {
		cfg.Measure.Tree = *tree
		for _, s := range strings.Split(*pids, ",") {
			pid, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || pid <= 0 {
				return usageError(fs, "-pid: %q is not a process id", s)
			}
			cfg.Measure.PIDs = append(cfg.Measure.PIDs, pid)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := loadtest.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		err = rep.WriteJSON(os.Stdout)
	} else {
		err = rep.WriteText(os.Stdout)
	}
	if err != nil {
		return err
	}
	if rep.Sessions == 0 {
		return errors.New("no session succeeded")
	}
	return nil
}

// benchSecurity maps -tls to a loadtest.Security; pop3s and stls name
// implicit TLS and STARTTLS as POP3 does, for -protocol pop3 only.
func benchSecurity(v string, p loadtest.Protocol) (loadtest.Security, error) {
	switch {
	case v == "":
		return loadtest.ImplicitTLS, nil
	case v == "imaps" || v == "starttls" || v == "plain":
		return loadtest.Security(v), nil
	case p == loadtest.POP3 && v == "pop3s":
		return loadtest.ImplicitTLS, nil
	case p == loadtest.POP3 && v == "stls":
		return loadtest.StartTLS, nil
	}
	return "", fmt.Errorf("-tls: unknown %q for %s", v, p)
}
