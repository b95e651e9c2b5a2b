package loadtest_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/loadtest"
	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// bigSize is the large message the fetch mode fetches: big enough to span
// many TLS records and reads, small enough for a quick test.
const bigSize = 1 << 20

// target is a Portico in front of an in-memory backend, all in this
// process, with the three ways in, for IMAP and POP3.
type target struct {
	imaps, starttls, plain string // plain is the backend itself
	pop3s, stls            string
	tls                    *tls.Config
	users                  []loadtest.User
}

func startTarget(t *testing.T) target {
	t.Helper()
	users := loadtest.PatternUsers("user%d@example.test", "pw%d", 3)
	be, err := membackend.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	routes := make(map[string]*routing.Backend)
	for _, u := range users {
		if err := be.AddUser(membackend.User{Name: u.Name, Password: u.Password, Messages: 1}); err != nil {
			t.Fatal(err)
		}
		if err := be.Append(u.Name, "INBOX", bigMessage()); err != nil {
			t.Fatal(err)
		}
		routes[u.Name] = &routing.Backend{Name: "mem", Addr: be.Addr(), POP3Addr: be.POP3Addr()}
	}
	cert, err := ptls.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	store, err := ptls.NewStore(cert)
	if err != nil {
		t.Fatal(err)
	}
	srv := &proxy.Server{
		Router:    routing.NewStatic(routes),
		TLSConfig: ptls.ServerConfig(store, 0),
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		// TestErrorsByKind logs in with a wrong password.
		Limits: proxy.Limits{AuthFailureDelay: 10 * time.Millisecond},
	}
	t.Cleanup(func() { srv.Close() })
	listen := func(name string, mode proxy.Mode) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln, proxy.Listener{Name: name, Mode: mode})
		return ln.Addr().String()
	}
	return target{
		imaps: listen("imaps", proxy.ImplicitTLS), starttls: listen("imap", proxy.StartTLS), plain: be.Addr(),
		pop3s: listen("pop3s", proxy.POP3S), stls: listen("pop3", proxy.POP3),
		tls:   &tls.Config{RootCAs: ptls.CertPool(cert), ServerName: "localhost"},
		users: users,
	}
}

func bigMessage() []byte {
	var b bytes.Buffer
	b.WriteString("From: <load@example.test>\r\nSubject: big\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len()+len(line) <= bigSize {
		b.WriteString(line)
	}
	b.WriteString(strings.Repeat("y", bigSize-b.Len()))
	return b.Bytes()
}

func self() loadtest.Processes { return loadtest.Processes{PIDs: []int{os.Getpid()}, Tree: true} }

func run(t *testing.T, cfg loadtest.Config) *loadtest.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := loadtest.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var text, js bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", text.String())
	if rep.Errors != 0 {
		t.Fatalf("%d errors: %v", rep.Errors, rep.ErrorExamples)
	}
	return rep
}

func checkN(t *testing.T, what string, p *loadtest.Percentiles, n int) {
	t.Helper()
	if p == nil || p.N != n {
		t.Fatalf("%s: %+v, want %d samples", what, p, n)
	}
	if !(0 < p.P50 && p.P50 <= p.P90 && p.P90 <= p.P99 && p.P99 <= p.Max) {
		t.Fatalf("%s percentiles out of order: %+v", what, p)
	}
}

func TestLogin(t *testing.T) {
	tg := startTarget(t)
	rep := run(t, loadtest.Config{
		Mode: loadtest.Login, Addr: tg.imaps, TLS: tg.tls, Users: tg.users,
		Workers: 4, Count: 30, Duration: 30 * time.Second, Measure: self(),
	})
	if rep.Sessions != 30 || rep.Rate <= 0 {
		t.Fatalf("sessions %d, rate %v", rep.Sessions, rep.Rate)
	}
	checkN(t, "connect", rep.Connect, 30)
	checkN(t, "login", rep.Login, 30)
	checkN(t, "session", rep.Session, 30)
	if rep.Session.P50 < rep.Connect.P50 {
		t.Fatalf("a session (%v ms) is shorter than its connect (%v ms)", rep.Session.P50, rep.Connect.P50)
	}
	if !strings.HasPrefix(rep.TLS, "TLS 1.3") {
		t.Fatalf("TLS %q", rep.TLS)
	}
	// The server runs in this process: 30 TLS logins cost it measurable
	// CPU, and the CPU clock ticks at 10 ms.
	if rep.CPU == nil || len(rep.CPU.Procs) != 1 || rep.CPU.Procs[0].PID != os.Getpid() || rep.CPU.Seconds <= 0 ||
		rep.CPU.PerSessionMS != rep.CPU.Seconds*1000/30 {
		t.Fatalf("CPU %+v (%s)", rep.CPU, rep.MeasureError)
	}
}

func TestLoginStartTLSWithCurves(t *testing.T) {
	tg := startTarget(t)
	cfg := tg.tls.Clone()
	cfg.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	rep := run(t, loadtest.Config{
		Mode: loadtest.Login, Addr: tg.starttls, Security: loadtest.StartTLS, TLS: cfg, Users: tg.users,
		Workers: 2, Count: 6,
	})
	if rep.Sessions != 6 || rep.TLS != "TLS 1.3 X25519" {
		t.Fatalf("sessions %d, TLS %q", rep.Sessions, rep.TLS)
	}
}

func TestLoginPlain(t *testing.T) {
	tg := startTarget(t)
	rep := run(t, loadtest.Config{
		Mode: loadtest.Login, Addr: tg.plain, Security: loadtest.Plain, Users: tg.users, Count: 5,
	})
	if rep.Sessions != 5 || rep.TLS != "" {
		t.Fatalf("sessions %d, TLS %q", rep.Sessions, rep.TLS)
	}
	// LOGIN instead of AUTHENTICATE.
	rep = run(t, loadtest.Config{
		Mode: loadtest.Login, Addr: tg.plain, Security: loadtest.Plain, Users: tg.users, Count: 2, Auth: loadtest.AuthPassword,
	})
	if rep.Sessions != 2 {
		t.Fatalf("sessions %d", rep.Sessions)
	}
}

func TestFetch(t *testing.T) {
	tg := startTarget(t)
	rep := run(t, loadtest.Config{
		Mode: loadtest.Fetch, Addr: tg.imaps, TLS: tg.tls, Users: tg.users,
		Workers: 2, Count: 6, Measure: self(),
	})
	if rep.Sessions != 2 || rep.Ops != 6 || rep.Bytes != 6*bigSize || rep.MiBPerSec <= 0 {
		t.Fatalf("sessions %d, FETCHes %d, bytes %d, %v MiB/s", rep.Sessions, rep.Ops, rep.Bytes, rep.MiBPerSec)
	}
	checkN(t, "fetch", rep.Op, 6)
	if rep.CPU == nil || rep.CPU.PerMiBMS < 0 {
		t.Fatalf("CPU %+v", rep.CPU)
	}
}

func TestLatency(t *testing.T) {
	tg := startTarget(t)
	rep := run(t, loadtest.Config{
		Mode: loadtest.Latency, Addr: tg.imaps, TLS: tg.tls, Users: tg.users, Count: 200,
	})
	if rep.Sessions != 1 || rep.Ops != 200 {
		t.Fatalf("sessions %d, NOOPs %d", rep.Sessions, rep.Ops)
	}
	checkN(t, "noop", rep.Op, 200)
}

func TestIdle(t *testing.T) {
	tg := startTarget(t)
	rep := run(t, loadtest.Config{
		Mode: loadtest.Idle, Addr: tg.imaps, TLS: tg.tls, Users: tg.users,
		Workers: 5, Count: 20, Duration: time.Second, Measure: self(),
	})
	if rep.Sessions != 20 || rep.Survived != 20 || rep.Elapsed < 1 {
		t.Fatalf("opened %d, survived %d, held %v s", rep.Sessions, rep.Survived, rep.Elapsed)
	}
	m := rep.Memory
	if m == nil || m.Before.RSS <= 0 || m.After.RSS <= 0 || m.Before.PSS <= 0 || m.After.Procs != 1 ||
		m.RSSPerSession != float64(m.After.RSS-m.Before.RSS)/20 {
		t.Fatalf("memory %+v (%s)", m, rep.MeasureError)
	}
}

// A server that drops idle sessions must show up as sessions that did
// not survive, not as a hang.
func TestIdleDropped(t *testing.T) {
	tg := startTarget(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A relay to the backend that cuts every connection after 300 ms.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", tg.plain)
			if err != nil {
				c.Close()
				continue
			}
			go io.Copy(b, c)
			go io.Copy(c, b)
			time.AfterFunc(300*time.Millisecond, func() { c.Close(); b.Close() })
		}
	}()
	rep, err := loadtest.Run(context.Background(), loadtest.Config{
		Mode: loadtest.Idle, Addr: ln.Addr().String(), Security: loadtest.Plain, Users: tg.users,
		Count: 3, Duration: time.Second, Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sessions != 3 || rep.Survived != 0 || rep.Errors != 3 || rep.ErrorKinds["idle: closed"] != 3 {
		t.Fatalf("opened %d, survived %d, errors %v", rep.Sessions, rep.Survived, rep.ErrorKinds)
	}
}

func TestErrorsByKind(t *testing.T) {
	tg := startTarget(t)
	rep, err := loadtest.Run(context.Background(), loadtest.Config{
		Mode: loadtest.Login, Addr: tg.imaps, TLS: tg.tls, Count: 2, Workers: 2,
		Users: []loadtest.User{{Name: "user1@example.test", Password: "wrong"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sessions != 0 || rep.ErrorKinds["login: NO"] != 2 || !strings.Contains(rep.ErrorExamples["login: NO"], "AUTHENTICATIONFAILED") {
		t.Fatalf("sessions %d, errors %v %v", rep.Sessions, rep.ErrorKinds, rep.ErrorExamples)
	}

	// Verification is on by default: the test certificate is not in the
	// system roots.
	rep, err = loadtest.Run(context.Background(), loadtest.Config{
		Mode: loadtest.Login, Addr: tg.imaps, Users: tg.users, Count: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ErrorKinds["tls: handshake"] != 1 {
		t.Fatalf("unverified certificate accepted: %v", rep.ErrorKinds)
	}

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	rep, err = loadtest.Run(context.Background(), loadtest.Config{
		Mode: loadtest.Login, Addr: closed, Security: loadtest.Plain, Users: tg.users, Count: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ErrorKinds["connect: refused"] != 2 {
		t.Fatalf("errors %v", rep.ErrorKinds)
	}
}

func TestConfigErrors(t *testing.T) {
	users := []loadtest.User{{Name: "u", Password: "p"}}
	for _, cfg := range []loadtest.Config{
		{Mode: "bulk", Addr: "127.0.0.1:1", Users: users},
		{Mode: loadtest.Login, Addr: "127.0.0.1", Users: users},
		{Mode: loadtest.Login, Addr: "127.0.0.1:1"},
		{Mode: loadtest.Login, Addr: "127.0.0.1:1", Users: users, Count: -1},
		{Mode: loadtest.Login, Addr: "127.0.0.1:1", Users: users, Duration: 48 * time.Hour},
		{Mode: loadtest.Login, Addr: "127.0.0.1:1", Users: users, Security: "tls"},
	} {
		if _, err := loadtest.Run(context.Background(), cfg); err == nil || !strings.HasPrefix(err.Error(), "loadtest: ") {
			t.Errorf("%+v: err %v", cfg, err)
		}
	}
}

func TestUsers(t *testing.T) {
	u := loadtest.PatternUsers("u%d@x", "p%d!", 3)
	if len(u) != 3 || u[2] != (loadtest.User{Name: "u3@x", Password: "p3!"}) {
		t.Fatalf("%v", u)
	}
	if u := loadtest.PatternUsers("alice", "pw", 5); len(u) != 1 || u[0].Name != "alice" {
		t.Fatalf("%v", u)
	}
	got, err := loadtest.ReadUsers(strings.NewReader("# test\nalice:a:b\r\n\nbob:\n"))
	if err != nil || len(got) != 2 || got[0].Password != "a:b" || got[1] != (loadtest.User{Name: "bob"}) {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := loadtest.ReadUsers(strings.NewReader("alice secret\n")); err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("err %v", err)
	}
}

// TestTreeCPU checks the two halves of the process-tree accounting: a live
// child counts only with Tree, and once reaped its CPU stays counted,
// through the parent's cutime/cstime.
func TestTreeCPU(t *testing.T) {
	const burn = `i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; echo burnt; exec sleep 30`
	cmd := exec.Command("sh", "-c", burn)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	tree, flat := self(), loadtest.Processes{PIDs: []int{os.Getpid()}}
	before := cpuOf(t, tree)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	flatBefore := cpuOf(t, flat)
	line := make([]byte, 6)
	if _, err := io.ReadFull(out, line); err != nil {
		t.Fatal(err)
	}
	child := childCPU(t, cmd.Process.Pid)
	if child < 0.05 {
		t.Fatalf("the child burnt only %v s; make the loop longer", child)
	}
	// CPU times are whole ticks of 10 ms; their differences, as float64
	// seconds, are off by rounding (0.6 - 1e-16): compare within half a
	// tick.
	const tick = 0.005
	live, liveFlat := cpuOf(t, tree)-before, cpuOf(t, flat)-flatBefore
	if live < child-tick {
		t.Fatalf("tree CPU %v s < the live child's %v s", live, child)
	}
	if liveFlat >= child-tick {
		t.Fatalf("without Tree, the live child's %v s were counted (%v s)", child, liveFlat)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if reaped := cpuOf(t, flat) - flatBefore; reaped < child-tick {
		t.Fatalf("reaped child's %v s not in the parent's cutime (%v s)", child, reaped)
	}
}

// cpuOf is p's CPU so far, in seconds.
func cpuOf(t *testing.T, p loadtest.Processes) float64 {
	t.Helper()
	s, err := loadtest.SampleCPU(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func childCPU(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return float64(u+s) / 100
}

// TestDovecotTree measures a real forking server: Dovecot runs an imap
// process per session, born and reaped within the run, so its CPU is only
// seen through the tree accounting.
func TestDovecotTree(t *testing.T) {
	users := loadtest.PatternUsers("user%d", "pw%d", 2)
	m := make(map[string]string)
	for _, u := range users {
		m[u.Name] = u.Password
	}
	d := testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: m})
	for _, u := range users {
		d.AddMessage(t, u.Name, "INBOX", bigMessage())
	}
	b, err := os.ReadFile(filepath.Join(d.Dir, "run", "master.pid"))
	if err != nil {
		t.Fatal(err)
	}
	master, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	rep := run(t, loadtest.Config{
		Mode: loadtest.Login, Addr: d.Addr, Security: loadtest.Plain, Users: users, Workers: 2, Count: 20,
		Measure: loadtest.Processes{PIDs: []int{master}, Tree: true},
	})
	if rep.Sessions != 20 || rep.CPU == nil || rep.CPU.Seconds <= 0 || rep.CPU.Procs[0].Procs < 3 ||
		rep.CPU.Procs[0].Comm != "dovecot" {
		t.Fatalf("sessions %d, CPU %+v (%s)", rep.Sessions, rep.CPU, rep.MeasureError)
	}
}
