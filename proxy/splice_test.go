package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	ptls "github.com/portico-mail/portico/tls"
)

var (
	spliceCertOnce sync.Once
	spliceServer   *tls.Config
	spliceClient   *tls.Config
)

// spliceTLS returns a server and a client config sharing one self-signed
// certificate for 127.0.0.1.
func spliceTLS(tb testing.TB) (server, client *tls.Config) {
	spliceCertOnce.Do(func() {
		cert, err := ptls.SelfSigned("127.0.0.1")
		if err != nil {
			panic(err)
		}
		spliceServer = &tls.Config{Certificates: []tls.Certificate{cert}}
		spliceClient = &tls.Config{RootCAs: ptls.CertPool(cert), ServerName: "127.0.0.1"}
	})
	return spliceServer, spliceClient
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (dialed, accepted *net.TCPConn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	a := <-ch
	if a == nil {
		tb.Fatal("accept failed")
	}
	return d.(*net.TCPConn), a.(*net.TCPConn)
}

// connPair returns (outer, inner): outer is the test's end, inner the
// proxy's end, upgraded to TLS (proxy as server when asServer) if useTLS.
func connPair(tb testing.TB, useTLS, asServer bool) (outer, inner net.Conn) {
	tb.Helper()
	d, a := tcpPair(tb)
	if !useTLS {
		return d, a
	}
	return tlsPair(tb, d, a, asServer)
}

// tlsPair runs TLS over the two ends of a connection, as connPair does.
func tlsPair(tb testing.TB, d, a net.Conn, asServer bool) (outer, inner *tls.Conn) {
	tb.Helper()
	srv, cli := spliceTLS(tb)
	var o, i *tls.Conn
	if asServer { // client side: the test dials the proxy
		o, i = tls.Client(d, cli), tls.Server(a, srv)
	} else { // backend side: the proxy dials the test's backend
		o, i = tls.Server(d, srv), tls.Client(a, cli)
	}
	errc := make(chan error, 1)
	go func() { errc <- o.Handshake() }()
	if err := i.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
	return o, i
}

type spliceResult struct {
	toBackend, toClient int64
	err                 error
}

// startSplice connects a test client and a test backend through splice.
func startSplice(tb testing.TB, ctx context.Context, p *splicer, clientTLS, backendTLS bool) (client, backend net.Conn, res <-chan spliceResult) {
	tb.Helper()
	client, pc := connPair(tb, clientTLS, true)
	backend, pb := connPair(tb, backendTLS, false)
	ch := make(chan spliceResult, 1)
	go func() {
		var r spliceResult
		r.toBackend, r.toClient, r.err = p.splice(ctx, pc, pb)
		ch <- r
	}()
	return client, backend, ch
}

func waitSplice(tb testing.TB, res <-chan spliceResult) spliceResult {
	tb.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(20 * time.Second):
		tb.Fatal("splice did not return")
	}
	return spliceResult{}
}

// checkGoroutines fails if goroutines started since n do not go away.
func checkGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines: %d > %d\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func randomBytes(n int, seed uint64) []byte {
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	// Plenty of NULs and CRLFs, in runs.
	for i := 0; i+64 < n; i += 4099 {
		copy(b[i:], bytes.Repeat([]byte{0}, 32))
		copy(b[i+32:], "\r\n.\r\n* BYE\r\n")
	}
	return b
}

// writeChunks writes b in writes of irregular sizes, then half-closes.
func writeChunks(c net.Conn, b []byte, seed uint64) error {
	r := mrand.New(mrand.NewPCG(seed, 1))
	for len(b) > 0 {
		n := min(len(b), 1+r.IntN(40000))
		if _, err := c.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	closeWrite(c)
	return nil
}

type spliceMode struct {
	name                  string
	clientTLS, backendTLS bool
	park                  bool // the backend->client direction parks with testPoller
}

var spliceModes = []spliceMode{
	{name: "tls-plain", clientTLS: true},
	{name: "plain-plain"},
	{name: "tls-tls", clientTLS: true, backendTLS: true},
	{name: "plain-tls", backendTLS: true},
	{name: "tls-plain-parked", clientTLS: true, park: true},
	{name: "plain-plain-parked", park: true},
	{name: "tls-tls-parked", clientTLS: true, backendTLS: true, park: true},
	{name: "plain-tls-parked", backendTLS: true, park: true},
}

// splicer returns a splicer for m with the given idle timeout.
func (m spliceMode) splicer(idle time.Duration) *splicer {
	p := &splicer{Idle: idle}
	if m.park {
		p.poller = testPoller
	}
	return p
}

// eachSpliceMode runs body as a subtest per splice mode, on a splice that
// ends when body has closed both ends or ends it otherwise, and checks that
// no goroutine is left behind.
func eachSpliceMode(t *testing.T, body func(t *testing.T, client, backend net.Conn, res <-chan spliceResult)) {
	for _, m := range spliceModes {
		t.Run(m.name, func(t *testing.T) {
			g := runtime.NumGoroutine()
			client, backend, res := startSplice(t, context.Background(), m.splicer(0), m.clientTLS, m.backendTLS)
			defer client.Close()
			defer backend.Close()
			body(t, client, backend, res)
			client.Close()
			backend.Close()
			checkGoroutines(t, g)
		})
	}
}

func TestSpliceBulk(t *testing.T) {
	eachSpliceMode(t, func(t *testing.T, client, backend net.Conn, res <-chan spliceResult) {
		up := randomBytes(3<<20+17, 1)
		down := randomBytes(4<<20+5, 2)

		var wg sync.WaitGroup
		var gotUp, gotDown []byte
		var errs [4]error
		wg.Add(4)
		go func() { defer wg.Done(); errs[0] = writeChunks(client, up, 3) }()
		go func() { defer wg.Done(); errs[1] = writeChunks(backend, down, 4) }()
		go func() { defer wg.Done(); gotUp, errs[2] = io.ReadAll(backend) }()
		go func() { defer wg.Done(); gotDown, errs[3] = io.ReadAll(client) }()
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("step %d: %v", i, err)
			}
		}
		if !bytes.Equal(gotUp, up) {
			t.Errorf("client->backend: got %d bytes, want %d (equal prefix: %v)", len(gotUp), len(up), bytes.HasPrefix(up, gotUp))
		}
		if !bytes.Equal(gotDown, down) {
			t.Errorf("backend->client: got %d bytes, want %d", len(gotDown), len(down))
		}
		r := waitSplice(t, res)
		if r.err != nil || r.toBackend != int64(len(up)) || r.toClient != int64(len(down)) {
			t.Errorf("splice = %d, %d, %v", r.toBackend, r.toClient, r.err)
		}
	})
}

func TestSpliceClientHalfClose(t *testing.T) {
	eachSpliceMode(t, func(t *testing.T, client, backend net.Conn, res <-chan spliceResult) {

		// The client sends LOGOUT and half-closes; the backend sees EOF
		// after it and still gets its final reply through.
		io.WriteString(client, "a LOGOUT\r\n")
		closeWrite(client)
		got, err := io.ReadAll(backend)
		if err != nil || string(got) != "a LOGOUT\r\n" {
			t.Fatalf("backend read %q, %v", got, err)
		}
		const bye = "* BYE Logging out\r\na OK Logout completed.\r\n"
		io.WriteString(backend, bye)
		backend.Close()
		got, err = io.ReadAll(client)
		if err != nil || string(got) != bye {
			t.Fatalf("client read %q, %v", got, err)
		}
		r := waitSplice(t, res)
		if r.err != nil || r.toBackend != 10 || r.toClient != int64(len(bye)) {
			t.Errorf("splice = %d, %d, %v", r.toBackend, r.toClient, r.err)
		}
	})
}

func TestSpliceBackendHalfClose(t *testing.T) {
	eachSpliceMode(t, func(t *testing.T, client, backend net.Conn, res <-chan spliceResult) {

		// The backend says BYE and half-closes; the client sees EOF and
		// can still send what it was sending.
		io.WriteString(backend, "* BYE shutting down\r\n")
		closeWrite(backend)
		got, err := io.ReadAll(client)
		if err != nil || string(got) != "* BYE shutting down\r\n" {
			t.Fatalf("client read %q, %v", got, err)
		}
		if tc, ok := client.(*tls.Conn); ok {
			// close_notify must be followed by a real FIN.
			raw := tc.NetConn()
			raw.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := raw.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("raw read after close_notify: %d, %v", n, err)
			}
			raw.SetReadDeadline(time.Time{})
		}
		io.WriteString(client, "b NOOP\r\n")
		client.Close()
		got, err = io.ReadAll(backend)
		if err != nil || string(got) != "b NOOP\r\n" {
			t.Fatalf("backend read %q, %v", got, err)
		}
		r := waitSplice(t, res)
		if r.err != nil || r.toBackend != 8 || r.toClient != 21 {
			t.Errorf("splice = %d, %d, %v", r.toBackend, r.toClient, r.err)
		}
	})
}

func TestSpliceCancel(t *testing.T) {
	for _, m := range spliceModes {
		t.Run(m.name, func(t *testing.T) {
			g := runtime.NumGoroutine()
			ctx, cancel := context.WithCancel(context.Background())
			client, backend, res := startSplice(t, ctx, m.splicer(0), m.clientTLS, m.backendTLS)
			defer client.Close()
			defer backend.Close()
			io.WriteString(client, "a IDLE\r\n")
			buf := make([]byte, 8)
			if _, err := io.ReadFull(backend, buf); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			cancel()
			r := waitSplice(t, res)
			if !errors.Is(r.err, context.Canceled) || time.Since(start) > time.Second {
				t.Errorf("splice = %v after %v", r.err, time.Since(start))
			}
			// Both peers see the connection go.
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			backend.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := client.Read(buf); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("client read after cancel: %v", err)
			}
			if _, err := backend.Read(buf); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("backend read after cancel: %v", err)
			}
			checkGoroutines(t, g)
		})
	}
}

func TestSpliceResetClosesBoth(t *testing.T) {
	g := runtime.NumGoroutine()
	client, backend, res := startSplice(t, context.Background(), &splicer{}, false, false)
	defer backend.Close()
	// An abortive close (RST) is an error, not an EOF: both sides go at once.
	client.(*net.TCPConn).SetLinger(0)
	client.Close()
	backend.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := backend.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("backend not closed: %v", err)
	}
	if r := waitSplice(t, res); r.err == nil {
		t.Error("no error after reset")
	}
	checkGoroutines(t, g)
}

func TestSpliceIdle(t *testing.T) {
	defer func(d time.Duration) { minIdle = d }(minIdle)
	minIdle = 0
	const idle = 300 * time.Millisecond
	for _, m := range spliceModes {
		t.Run(m.name, func(t *testing.T) {
			g := runtime.NumGoroutine()
			client, backend, res := startSplice(t, context.Background(), m.splicer(idle), m.clientTLS, m.backendTLS)
			defer client.Close()
			defer backend.Close()
			// Traffic in one direction only keeps both alive (an IDLE
			// client hears "* OK Still here" and says nothing).
			start := time.Now()
			buf := make([]byte, 64)
			var quiet time.Time
			for i := 0; i < 6; i++ {
				if i > 0 {
					time.Sleep(idle / 3)
				}
				io.WriteString(backend, "* OK Still here\r\n")
				if _, err := io.ReadFull(client, buf[:17]); err != nil {
					t.Fatalf("after %v: %v", time.Since(start), err)
				}
				quiet = time.Now()
			}
			// Then silence: the session ends about idle after the last byte.
			r := waitSplice(t, res)
			if !errors.Is(r.err, os.ErrDeadlineExceeded) {
				t.Errorf("err = %v", r.err)
			}
			if d := time.Since(quiet); d < idle*9/10 || d > 3*idle {
				t.Errorf("idle close after %v, want about %v", d, idle)
			}
			checkGoroutines(t, g)
		})
	}
}

// benchSink accepts connections and discards what they send, reporting
// the byte count when the peer half-closes.
func benchSink(b *testing.B, useTLS bool) (addr string, counts <-chan int64) {
	srv, _ := spliceTLS(b)
	ch := make(chan int64, 1)
	addr = benchServer(b, func(c net.Conn) {
		defer c.Close()
		if useTLS {
			c = tls.Server(c, srv)
		}
		n, _ := io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, make([]byte, 32<<10))
		ch <- n
	})
	return addr, ch
}

// benchServer accepts connections on a loopback port until the benchmark
// ends and runs serve on each in its own goroutine; serve owns the
// connection.
func benchServer(b *testing.B, serve func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln.Addr().String()
}

// writeForever returns a serve func that writes data over and over until
// the peer goes.
func writeForever(data []byte, srv *tls.Config) func(net.Conn) {
	return func(c net.Conn) {
		defer c.Close()
		if srv != nil {
			c = tls.Server(c, srv)
		}
		for {
			if _, err := c.Write(data); err != nil {
				return
			}
		}
	}
}

const benchChunk = 256 << 10

func benchUpload(b *testing.B, addr string, cfg *tls.Config, counts <-chan int64) {
	benchUploadData(b, addr, cfg, counts, randomBytes(benchChunk, 9))
}

// appendChunk is benchChunk bytes of APPEND commands: what a client
// uploading mail sends, message data inside literals.
func appendChunk() []byte {
	var data []byte
	for i := 0; len(data) < benchChunk; i++ {
		body := randomBytes(60<<10, uint64(i+20))
		data = fmt.Appendf(data, "a%d APPEND INBOX (\\Seen) {%d+}\r\n", i, len(body))
		data = append(data, body...)
		data = append(data, "\r\n"...)
	}
	return data[:benchChunk]
}

func benchUploadData(b *testing.B, addr string, cfg *tls.Config, counts <-chan int64, data []byte) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.SetBytes(benchChunk)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(data); err != nil {
			b.Fatal(err)
		}
	}
	closeWrite(c)
	if n := <-counts; n != int64(b.N)*benchChunk {
		b.Fatalf("sink got %d bytes, want %d", n, int64(b.N)*benchChunk)
	}
	b.StopTimer()
}

// BenchmarkSpliceThroughput: TLS client -> splice -> plain backend.
func BenchmarkSpliceThroughput(b *testing.B) {
	backendAddr, counts := benchSink(b, false)
	addr, cli := spliceProxy(b, backendAddr)
	benchUpload(b, addr, cli, counts)
}

// BenchmarkSpliceUploadAppend: BenchmarkSpliceThroughput with APPEND
// commands instead of random bytes; the framer skips their literals.
func BenchmarkSpliceUploadAppend(b *testing.B) {
	backendAddr, counts := benchSink(b, false)
	addr, cli := spliceProxy(b, backendAddr)
	benchUploadData(b, addr, cli, counts, appendChunk())
}

// BenchmarkDirectThroughput: the same TLS client straight to a TLS sink.
func BenchmarkDirectThroughput(b *testing.B) {
	addr, counts := benchSink(b, true)
	_, cli := spliceTLS(b)
	benchUpload(b, addr, cli, counts)
}

// benchSource accepts connections and writes to them until they close:
// the backend of a FETCH-heavy session.
func benchSource(b *testing.B, useTLS bool) string {
	var srv *tls.Config
	if useTLS {
		srv, _ = spliceTLS(b)
	}
	return benchServer(b, writeForever(randomBytes(benchChunk, 7), srv))
}

func benchDownload(b *testing.B, addr string, cfg *tls.Config) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 32<<10)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	if _, err := io.CopyBuffer(io.Discard, io.LimitReader(struct{ io.Reader }{c}, int64(b.N)*benchChunk), buf); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
}

// BenchmarkSpliceDownload: plain backend -> splice -> TLS client, the
// direction of FETCH.
func BenchmarkSpliceDownload(b *testing.B) {
	backendAddr := benchSource(b, false)
	addr, cli := spliceProxy(b, backendAddr)
	benchDownload(b, addr, cli)
}

// BenchmarkDirectDownload: the same TLS client reading straight from a TLS
// source.
func BenchmarkDirectDownload(b *testing.B) {
	addr := benchSource(b, true)
	_, cli := spliceTLS(b)
	benchDownload(b, addr, cli)
}

// fetchSource is benchSource with an IMAP-shaped stream: FETCH responses
// whose bodies (4 KiB to 1 MiB of random bytes) are literals, as a client
// downloading mail sees. The framer skips literals without looking at them,
// unlike the random bytes of BenchmarkSpliceDownload, which it has to scan
// for line ends.
func fetchSource(b *testing.B) string {
	r := mrand.New(mrand.NewPCG(11, 12))
	var data []byte
	for i := 1; len(data) < 8<<20; i++ {
		size := 4<<10 + r.IntN(1<<20)
		data = fmt.Appendf(data, "* %d FETCH (UID %d FLAGS (\\Seen) BODY[] {%d}\r\n", i, i+100, size)
		data = append(data, randomBytes(size, uint64(i))...)
		data = append(data, ")\r\n"...)
	}
	return benchServer(b, writeForever(data, nil))
}

// BenchmarkSpliceDownloadFetch: BenchmarkSpliceDownload with FETCH
// responses instead of random bytes.
func BenchmarkSpliceDownloadFetch(b *testing.B) {
	backendAddr := fetchSource(b)
	addr, cli := spliceProxy(b, backendAddr)
	benchDownload(b, addr, cli)
}

// spliceProxy runs a TLS listener that splices every client to backendAddr,
// as the proxy does after login; it returns its address and a client
// config that trusts it.
func spliceProxy(b *testing.B, backendAddr string) (string, *tls.Config) {
	b.Cleanup(SetParkAfter(defaultParkAfter)) // as deployed
	srv, cli := spliceTLS(b)
	addr := benchServer(b, func(c net.Conn) {
		be, err := net.Dial("tcp", backendAddr)
		if err != nil {
			c.Close()
			return
		}
		// Handshake first, as a session does before splicing.
		tc := tls.Server(&batchConn{Conn: c}, srv)
		if err := tc.Handshake(); err != nil {
			c.Close()
			be.Close()
			return
		}
		// As a server session does: parking when idle.
		(&splicer{poller: testPoller}).splice(context.Background(), tc, be)
	})
	return addr, cli
}

// After the backend's EOF, a client that says nothing more gets
// halfCloseGrace before the session ends, in every mode.
func TestSpliceHalfCloseGrace(t *testing.T) {
	defer func(d time.Duration) { halfCloseGrace = d }(halfCloseGrace)
	halfCloseGrace = 300 * time.Millisecond
	eachSpliceMode(t, func(t *testing.T, client, backend net.Conn, res <-chan spliceResult) {
		io.WriteString(backend, "* BYE shutting down\r\n")
		closeWrite(backend)
		if got, err := io.ReadAll(client); err != nil || string(got) != "* BYE shutting down\r\n" {
			t.Fatalf("client read %q, %v", got, err)
		}
		start := time.Now()
		waitSplice(t, res)
		if d := time.Since(start); d < halfCloseGrace/2 || d > 5*halfCloseGrace {
			t.Errorf("session ended %v after the half-close, want about %v", d, halfCloseGrace)
		}
	})
}
