package routing

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testsrv"
	ptls "github.com/portico-mail/portico/tls"
)

var quiet = slog.New(slog.DiscardHandler)

// fakeIMAP is a backend that answers probes like Dovecot, including the
// "Waiting for authentication" line, and can be told to turn bad.
type fakeIMAP struct {
	ln       net.Listener
	bad      atomic.Bool  // close each connection at once
	silent   atomic.Bool  // accept and say nothing
	bye      atomic.Bool  // greet with BYE
	proxy    bool         // expect a PROXY v2 LOCAL header
	implicit *tls.Config  // TLS from the first byte
	starttls *tls.Config  // offer STARTTLS
	goodN    atomic.Int64 // connections served in good mode
	badN     atomic.Int64 // connections refused in bad mode
	proxyErr atomic.Value // string: a wrong PROXY header
	wg       sync.WaitGroup
}

func startFakeIMAP(t *testing.T, setup func(*fakeIMAP)) *fakeIMAP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeIMAP{ln: ln}
	if setup != nil {
		setup(f)
	}
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Go(func() { f.serve(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); f.wg.Wait() })
	return f
}

func (f *fakeIMAP) addr() string { return f.ln.Addr().String() }

func (f *fakeIMAP) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if f.bad.Load() {
		f.badN.Add(1)
		return
	}
	f.goodN.Add(1)
	if f.silent.Load() {
		io.Copy(io.Discard, c)
		return
	}
	if f.proxy {
		hdr := make([]byte, 16)
		if _, err := io.ReadFull(c, hdr); err != nil || string(hdr) != "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00" {
			f.proxyErr.Store("bad PROXY header")
			return
		}
	}
	if f.implicit != nil {
		c = tls.Server(c, f.implicit)
	}
	if f.bye.Load() {
		io.WriteString(c, "* BYE [UNAVAILABLE] go away\r\n")
		return
	}
	io.WriteString(c, "* OK Waiting for authentication process to respond..\r\n")
	time.Sleep(5 * time.Millisecond)
	caps := "IMAP4rev1 ID"
	if f.starttls != nil {
		caps += " STARTTLS LOGINDISABLED"
	}
	io.WriteString(c, "* OK [CAPABILITY "+caps+"] Dovecot ready.\r\n")
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		tag, cmd, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		switch strings.ToUpper(cmd) {
		case "CAPABILITY":
			io.WriteString(c, "* CAPABILITY "+caps+"\r\n"+tag+" OK done\r\n")
		case "STARTTLS":
			if f.starttls == nil {
				io.WriteString(c, tag+" BAD no\r\n")
				continue
			}
			io.WriteString(c, tag+" OK Begin TLS negotiation now.\r\n")
			c = tls.Server(c, f.starttls)
			br = bufio.NewReader(c)
			caps = "IMAP4rev1 ID AUTH=PLAIN"
		case "LOGOUT":
			io.WriteString(c, "* BYE Logging out\r\n"+tag+" OK Logout completed.\r\n")
			return
		default:
			io.WriteString(c, tag+" BAD unknown\r\n")
		}
	}
}

// testTLS returns a server config with a self-signed certificate for
// 127.0.0.1 and a client config that trusts it.
func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	cert, err := ptls.SelfSigned("backend.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}, &tls.Config{RootCAs: ptls.CertPool(cert)}
}

func probe(b *Backend, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return Probe(ctx, b)
}

func TestProbe(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)

	plain := startFakeIMAP(t, nil)
	if err := probe(&Backend{Addr: plain.addr()}, 2*time.Second); err != nil {
		t.Fatalf("plain: %v", err)
	}

	px := startFakeIMAP(t, func(f *fakeIMAP) { f.proxy = true })
	if err := probe(&Backend{Addr: px.addr(), ProxyProtocol: true}, 2*time.Second); err != nil || px.proxyErr.Load() != nil {
		t.Fatalf("PROXY header: %v, %v", err, px.proxyErr.Load())
	}

	imaps := startFakeIMAP(t, func(f *fakeIMAP) { f.implicit = srvTLS })
	if err := probe(&Backend{Addr: imaps.addr(), TLS: ImplicitTLS, TLSConfig: cliTLS}, 2*time.Second); err != nil {
		t.Fatalf("implicit TLS: %v", err)
	}
	// The certificate is verified.
	if err := probe(&Backend{Addr: imaps.addr(), TLS: ImplicitTLS}, 2*time.Second); err == nil {
		t.Fatal("implicit TLS with an untrusted certificate passed")
	}

	st := startFakeIMAP(t, func(f *fakeIMAP) { f.starttls = srvTLS })
	if err := probe(&Backend{Addr: st.addr(), TLS: StartTLS, TLSConfig: cliTLS}, 2*time.Second); err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	if err := probe(&Backend{Addr: plain.addr(), TLS: StartTLS, TLSConfig: cliTLS}, 2*time.Second); err == nil {
		t.Fatal("STARTTLS refused by the backend, but the probe passed")
	}

	bye := startFakeIMAP(t, func(f *fakeIMAP) { f.bye.Store(true) })
	if err := probe(&Backend{Addr: bye.addr()}, 2*time.Second); err == nil || !strings.Contains(err.Error(), "BYE") {
		t.Fatalf("BYE greeting: %v", err)
	}

	silent := startFakeIMAP(t, func(f *fakeIMAP) { f.silent.Store(true) })
	start := time.Now()
	if err := probe(&Backend{Addr: silent.addr()}, 200*time.Millisecond); err == nil {
		t.Fatal("silent backend passed")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("probe of a silent backend took %v", d)
	}

	// A refused connection.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if err := probe(&Backend{Addr: addr}, time.Second); err == nil {
		t.Fatal("closed port passed")
	}
}

// TestHealthRiseFall drives the state machine through passive reports.
func TestHealthRiseFall(t *testing.T) {
	var changes []bool
	h := &Health{Rise: 2, Fall: 3, Logger: quiet, OnChange: func(_ *Backend, up bool) { changes = append(changes, up) }}
	b := &Backend{Name: "mx1", Addr: "127.0.0.1:1"}
	other := &Backend{Name: "mx2"}
	h.register(b)
	fail := errors.New("connect refused")

	steps := []struct {
		ok   bool
		want bool
	}{
		{false, true}, {false, true}, {true, true}, // a success resets the streak
		{false, true}, {false, true}, {false, false}, // Fall failures in a row
		{true, false}, {false, false}, {true, false}, {true, true}, // Rise successes in a row
	}
	for i, s := range steps {
		if s.ok {
			h.ReportSuccess(b)
		} else {
			h.ReportFailure(b, fail)
		}
		if h.Up(b) != s.want {
			t.Fatalf("step %d: up=%v, want %v (%+v)", i, h.Up(b), s.want, h.State(b))
		}
	}
	if len(changes) != 2 || changes[0] || !changes[1] {
		t.Fatalf("OnChange calls: %v", changes)
	}
	// Unknown backends are up and reports about them are ignored.
	for range 5 {
		h.ReportFailure(other, fail)
	}
	if !h.Up(other) {
		t.Fatal("an unwatched backend went down")
	}
	var nilHealth *Health
	nilHealth.ReportFailure(b, fail)
	if !nilHealth.Up(b) {
		t.Fatal("nil Health says down")
	}
	h.ReportFailure(b, nil)
	if st := h.State(b); st.Failures != 1 || st.LastError == "" || !st.Up {
		t.Fatalf("State: %+v", st)
	}
}

// TestHealthFlapping runs the active checks against a backend that turns
// bad and good again, twice, and checks the rise and fall counts.
func TestHealthFlapping(t *testing.T) {
	f := startFakeIMAP(t, nil)
	b := &Backend{Name: "flappy", Addr: f.addr()}
	type change struct {
		up        bool
		good, bad int64
	}
	changes := make(chan change, 10)
	h := &Health{
		Interval: 20 * time.Millisecond, Timeout: time.Second, Rise: 2, Fall: 3, Logger: quiet,
		OnChange: func(_ *Backend, up bool) { changes <- change{up, f.goodN.Load(), f.badN.Load()} },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Run(ctx, b, b, nil); close(done) }()
	defer func() { cancel(); <-done }()

	wait := func(up bool) change {
		t.Helper()
		select {
		case c := <-changes:
			if c.up != up {
				t.Fatalf("got change to up=%v, want %v", c.up, up)
			}
			return c
		case <-time.After(5 * time.Second):
			t.Fatalf("no change to up=%v in 5s (state %+v)", up, h.State(b))
		}
		panic("unreachable")
	}
	waitProbes := func(n int64) {
		deadline := time.Now().Add(5 * time.Second)
		for f.goodN.Load() < n {
			if time.Now().After(deadline) {
				t.Fatal("no probes")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitProbes(2)
	if !h.Up(b) {
		t.Fatal("healthy backend is down")
	}
	for range 2 {
		bad0 := f.badN.Load()
		f.bad.Store(true)
		c := wait(false)
		if n := c.bad - bad0; n < 3 || n > 4 {
			t.Errorf("went down after %d failed probes, Fall is 3", n)
		}
		if h.Up(b) {
			t.Fatal("Up after going down")
		}
		good0 := f.goodN.Load()
		f.bad.Store(false)
		c = wait(true)
		if n := c.good - good0; n < 2 || n > 3 {
			t.Errorf("came back after %d good probes, Rise is 2", n)
		}
	}

	// Passive failures count toward Fall: three failed connects take it
	// down. The probes are stopped first so that none resets the streak.
	cancel()
	<-done
	for range 3 {
		h.ReportFailure(b, errors.New("connect: refused"))
	}
	if c := wait(false); c.up || h.Up(b) {
		t.Fatal("three passive failures did not take it down")
	}
}

// TestProbeDovecot runs the default probe against a real Dovecot, on its
// plain listener and on its PROXY protocol listener with a LOCAL header.
func TestProbeDovecot(t *testing.T) {
	d := testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: map[string]string{"alice": "secret"}})
	if err := probe(&Backend{Addr: d.Addr}, 5*time.Second); err != nil {
		t.Fatalf("plain: %v", err)
	}
	if err := probe(&Backend{Addr: d.HAProxyAddr, ProxyProtocol: true}, 5*time.Second); err != nil {
		t.Fatalf("PROXY v2 LOCAL: %v\n%s", err, d.Log())
	}
	// Without the header, the PROXY listener refuses the probe.
	if err := probe(&Backend{Addr: d.HAProxyAddr}, 3*time.Second); err == nil {
		t.Fatal("probe without a PROXY header passed on a haproxy listener")
	}
}
