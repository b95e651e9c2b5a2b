package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/gcpolicy"
	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// benchProxy starts a Portico with one listener of the given mode and
// one static route, alice to backend. The client configuration it returns
// offers the listener's protocol in ALPN.
func benchProxy(tb testing.TB, backend *routing.Backend, mode proxy.Mode) (*proxy.Server, string, *tls.Config) {
	tb.Helper()
	return benchProxyWith(tb, backend, mode, nil)
}

// benchProxyWith is benchProxy with setup run on the server before it
// serves.
func benchProxyWith(tb testing.TB, backend *routing.Backend, mode proxy.Mode, setup func(*proxy.Server)) (*proxy.Server, string, *tls.Config) {
	tb.Helper()
	cert, err := ptls.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		tb.Fatal(err)
	}
	store, err := ptls.NewStore(cert)
	if err != nil {
		tb.Fatal(err)
	}
	srv := &proxy.Server{
		Router:    routing.NewStatic(map[string]*routing.Backend{"alice@example.test": backend}),
		TLSConfig: ptls.ServerConfig(store, 0),
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if setup != nil {
		setup(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go srv.Serve(ln, proxy.Listener{Name: "bench", Mode: mode})
	tb.Cleanup(func() { srv.Close() })
	return srv, ln.Addr().String(), &tls.Config{RootCAs: ptls.CertPool(cert), ServerName: "localhost", NextProtos: []string{mode.Protocol()}}
}

var plainIR = base64.StdEncoding.EncodeToString([]byte("\x00alice@example.test\x00alice-pw"))

// clientLogin does what a client does up to a spliced session: TLS
// handshake, greeting, AUTHENTICATE PLAIN with SASL-IR.
func clientLogin(addr string, cfg *tls.Config) (*tls.Conn, *bufio.Reader, error) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		c.Close()
		return nil, nil, err
	}
	io.WriteString(c, "a AUTHENTICATE PLAIN "+plainIR+"\r\n")
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		if strings.HasPrefix(l, "a ") {
			if !strings.HasPrefix(l, "a OK") {
				c.Close()
				return nil, nil, fmt.Errorf("login: %q", l)
			}
			return c, br, nil
		}
	}
}

// benchBackend is the in-memory backend of the login benchmarks, with
// alice's IMAP and POP3.
func benchBackend(b *testing.B) *routing.Backend {
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice@example.test", Password: "alice-pw"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	return &routing.Backend{Addr: be.Addr(), POP3Addr: be.POP3Addr()}
}

// BenchmarkLogin measures one full login: TCP connect, TLS handshake,
// AUTHENTICATE PLAIN, static route, upstream login to an in-memory
// backend, hand-off, and LOGOUT through the splice. Client, proxy and
// backend share the process: ns/op and allocs/op are all three's.
func BenchmarkLogin(b *testing.B) {
	_, addr, cfg := benchProxy(b, benchBackend(b), proxy.ImplicitTLS)
	benchLogins(b, addr, cfg)
}

// BenchmarkLoginSpares is BenchmarkLogin with spare backend connections
// (upstream.Spares): the upstream login starts on a connection already
// connected and greeted. The refill runs in the same process, so its
// work is in ns/op and allocs/op too; the saving is in the latency of
// the login, not in the work done.
func BenchmarkLoginSpares(b *testing.B) {
	be := benchBackend(b)
	be.Name, be.SpareConnections = "mem", 2
	spares := &upstream.Spares{}
	b.Cleanup(spares.Close)
	_, addr, cfg := benchProxyWith(b, be, proxy.ImplicitTLS, func(s *proxy.Server) { s.Login = spares.Login })
	benchLogins(b, addr, cfg)
	b.StopTimer()
	st := spares.Stats()
	b.ReportMetric(float64(st.Taken)/float64(st.Taken+st.Missed), "spare-hit-ratio")
}

func benchLogins(b *testing.B, addr string, cfg *tls.Config) {
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, br, err := clientLogin(addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		io.WriteString(c, "z LOGOUT\r\n")
		for {
			l, err := br.ReadString('\n')
			if err != nil || strings.HasPrefix(l, "z ") {
				break
			}
		}
		c.Close()
	}
}

// BenchmarkPOP3Login is BenchmarkLogin for POP3: TCP connect, TLS
// handshake on a pop3s listener, AUTH PLAIN with its initial response,
// static route, upstream.LoginPOP3 to the same backend's POP3 service
// (greeting, CAPA, AUTH PLAIN), hand-off, and QUIT through the splice.
func BenchmarkPOP3Login(b *testing.B) {
	_, addr, cfg := benchProxy(b, benchBackend(b), proxy.POP3S)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReader(c)
		for _, cmd := range []string{"", "AUTH PLAIN " + plainIR, "QUIT"} {
			if cmd != "" {
				io.WriteString(c, cmd+"\r\n")
			}
			if l, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(l, "+OK") {
				b.Fatalf("after %q: %q, %v", cmd, l, err)
			}
		}
		c.Close()
	}
}

// The idle-session benchmark needs two processes: with the clients and the
// backend in the same process as the proxy, 5,000 sessions would hold
// 20,000 descriptors, the machine's hard limit. The child process (this
// test binary again) runs a minimal backend and the clients.
const idleChildEnv = "PORTICO_IDLE_CHILD"

// BenchmarkIdleSessions holds PORTICO_IDLE_SESSIONS (default 5000) idle
// spliced TLS sessions and reports the proxy's memory per session, twice:
// settled-RSS as an operator sees it (nothing forced: the process runs the
// gcpolicy.Settler, as portico serve does, and is read once the sessions
// have settled), and RSS, heap and stacks after forced collections, which
// is what the sessions themselves hold. b.N is ignored: the figure is a
// size, not a rate.
func BenchmarkIdleSessions(b *testing.B) {
	n := 5000
	if v, err := strconv.Atoi(os.Getenv("PORTICO_IDLE_SESSIONS")); err == nil && v > 0 {
		n = v
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleChild$")
	cmd.Env = append(os.Environ(), idleChildEnv+"=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	out := bufio.NewReader(stdout)
	expect := func(prefix string) string {
		l, err := out.ReadString('\n')
		if err != nil || !strings.HasPrefix(l, prefix) {
			b.Fatalf("child said %q (%v), want %s", l, err, prefix)
		}
		return strings.TrimSpace(strings.TrimPrefix(l, prefix))
	}
	backendAddr := expect("BACKEND ")
	// Measured as deployed: the backend->client directions park after
	// the production delay, not the tests' short one.
	defer proxy.SetParkAfter(proxy.DefaultParkAfter)()
	_, addr, _ := benchProxy(b, &routing.Backend{Addr: backendAddr}, proxy.ImplicitTLS)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	settler := new(gcpolicy.Settler)
	go settler.Run(ctx)

	rss0 := rssNow()
	before := memNow()
	fmt.Fprintf(stdin, "PROXY %s %d\n", addr, n)
	expect("READY")
	// Let the last hand-offs finish, the idle directions park, and the
	// settler see a quiet process (2s, sampled every second).
	time.Sleep(proxy.DefaultParkAfter + 4*time.Second)
	rss1 := rssNow()
	after := memNow()
	if p := os.Getenv("PORTICO_IDLE_HEAPPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	fmt.Fprintln(stdin, "DONE")

	settled := float64(rss1-rss0) / 1024 / float64(n)
	rss := float64(after.rss-before.rss) / 1024 / float64(n)
	heap := float64(after.heap-before.heap) / 1024 / float64(n)
	stack := float64(after.stack-before.stack) / 1024 / float64(n)
	b.ReportMetric(settled, "settled-RSS-KiB/session")
	b.ReportMetric(rss, "RSS-KiB/session")
	b.ReportMetric(heap, "heap-KiB/session")
	b.ReportMetric(stack, "stack-KiB/session")
	b.ReportMetric(float64(after.goroutines-before.goroutines)/float64(n), "goroutines/session")
	b.Logf("%d idle spliced TLS sessions: settled RSS %.1f KiB; after collections: RSS %.1f KiB, heap %.1f KiB, stacks %.1f KiB per session", n, settled, rss, heap, stack)
}

var gcRounds = 4

type mem struct {
	rss, heap, stack uint64
	goroutines       int
}

func memNow() mem {
	for range gcRounds {
		runtime.GC()
	}
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return mem{rss: rssNow(), heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

// rssNow reads the process's resident set size, in bytes.
func rssNow() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// TestIdleChild is the child half of BenchmarkIdleSessions; run directly
// it does nothing.
func TestIdleChild(t *testing.T) {
	if os.Getenv(idleChildEnv) == "" {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go fakeBackend(ln)
	fmt.Printf("BACKEND %s\n", ln.Addr())
	in := bufio.NewReader(os.Stdin)
	l, _ := in.ReadString('\n')
	var addr string
	var n int
	if _, err := fmt.Sscanf(l, "PROXY %s %d", &addr, &n); err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"imap"}}
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, br, err := clientLogin(addr, cfg)
			if err != nil {
				fmt.Fprintf(os.Stderr, "session %d: %v\n", i, err)
				os.Exit(1)
			}
			// One command through the splice, then silence, as an IDLE
			// client would be.
			io.WriteString(c, "b NOOP\r\n")
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					os.Exit(1)
				}
				if strings.HasPrefix(l, "b ") {
					break
				}
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	fmt.Println("READY")
	in.ReadString('\n')
	for _, c := range conns {
		c.Close()
	}
	os.Exit(0)
}

// fakeBackend is the smallest backend Portico can log in to: it greets,
// accepts any AUTHENTICATE, and answers every later command with OK.
func fakeBackend(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN IDLE] fake ready\r\n")
			br := bufio.NewReaderSize(c, 512)
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				tag, rest, _ := strings.Cut(strings.TrimSpace(l), " ")
				if strings.HasPrefix(strings.ToUpper(rest), "AUTHENTICATE") {
					io.WriteString(c, tag+" OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n")
					continue
				}
				io.WriteString(c, tag+" OK done\r\n")
			}
		}()
	}
}
