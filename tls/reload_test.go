package tls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	stdtls "crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// logRecorder is a slog.Handler that keeps the records, for counting.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}

// lines returns the messages (with an "err" attribute appended) at level.
func (h *logRecorder) lines(level slog.Level) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.recs {
		if r.Level != level {
			continue
		}
		s := r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" {
				s += ": " + a.Value.String()
			}
			return true
		})
		out = append(out, s)
	}
	return out
}

func newRecorder(t *testing.T) (*logRecorder, *slog.Logger) {
	h := &logRecorder{}
	t.Cleanup(func() {
		if t.Failed() {
			h.mu.Lock()
			for _, r := range h.recs {
				t.Logf("log %s %s", r.Level, r.Message)
			}
			h.mu.Unlock()
		}
	})
	return h, slog.New(h)
}

// writeInPlace rewrites p's files without renaming them, in two halves
// with a pause between, the way `cat new > cert.pem` does: readers can see
// an empty or half-written file.
func writeInPlace(t *testing.T, p Pair, c stdtls.Certificate) {
	t.Helper()
	var certPEM []byte
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	for _, f := range []struct {
		name string
		data []byte
	}{{p.CertFile, certPEM}, {p.KeyFile, keyPEM}} {
		fh, err := os.OpenFile(f.name, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		half := len(f.data) / 2
		fh.Write(f.data[:half])
		time.Sleep(15 * time.Millisecond)
		fh.Write(f.data[half:])
		fh.Close()
		time.Sleep(15 * time.Millisecond)
	}
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReloadDuringHandshakes(t *testing.T) {
	dir := t.TempDir()
	p := writePair(t, dir, "mail", mustSelfSigned(t, "mail.example.test"))
	store, err := LoadStore([]Pair{p})
	if err != nil {
		t.Fatal(err)
	}
	rec, logger := newRecorder(t)
	r := &Reloader{Store: store, Pairs: []Pair{p}, Interval: 10 * time.Millisecond, Logger: logger}
	// Without a load of its own, Run would start with a silent one, which
	// on a busy machine could come after the first rewrite below and take
	// in that certificate without a "reloaded" line.
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { r.Run(ctx); close(runDone) }()
	defer func() { cancel(); <-runDone }()
	addr := serve(t, ServerConfig(store, 0))

	// Handshakes run back to back in a few goroutines for the whole test.
	var ok, failed atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 5000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := dial(addr, insecure("mail.example.test")); err != nil {
					failed.Add(1)
					lastErr.Store(err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}

	for i := range 6 {
		next := mustSelfSigned(t, "mail.example.test")
		if i%2 == 0 {
			if err := WritePEM(next, p.CertFile, p.KeyFile); err != nil { // rename
				t.Fatal(err)
			}
		} else {
			writeInPlace(t, p, next)
		}
		waitFor(t, "the new certificate", 10*time.Second, func() bool {
			return servedSerial(t, addr, insecure("mail.example.test")) == serial(next)
		})
	}
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d handshakes failed during reloads; last: %v", n, n+ok.Load(), lastErr.Load())
	}
	t.Logf("%d handshakes, %d retried half-written loads", ok.Load(), len(rec.lines(slog.LevelDebug)))
	if ok.Load() < 20 {
		t.Errorf("only %d handshakes ran", ok.Load())
	}
	// A half-written file is retried, not reported.
	if errs := rec.lines(slog.LevelError); len(errs) > 0 {
		t.Errorf("errors logged for files being written: %q", errs)
	}
	// The first Reload and six rewrites. The store is swapped before the
	// reload is logged, so the last line may come just after the handshake
	// that saw the new certificate.
	waitFor(t, "7 reloads logged", 5*time.Second, func() bool { return len(rec.lines(slog.LevelInfo)) >= 7 })
}

func TestReloadBrokenFileKeepsOld(t *testing.T) {
	dir := t.TempDir()
	good := mustSelfSigned(t, "mail.example.test")
	p := writePair(t, dir, "mail", good)
	store, err := LoadStore([]Pair{p})
	if err != nil {
		t.Fatal(err)
	}
	rec, logger := newRecorder(t)
	r := &Reloader{Store: store, Pairs: []Pair{p}, Interval: 10 * time.Millisecond, Logger: logger}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { r.Run(ctx); close(runDone) }()
	defer func() { cancel(); <-runDone }()
	addr := serve(t, ServerConfig(store, 0))

	errorsLogged := func() []string { return rec.lines(slog.LevelError) }
	// A certificate file that is not PEM at all.
	if err := writeAtomic(p.CertFile, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an error", 5*time.Second, func() bool { return len(errorsLogged()) > 0 })
	time.Sleep(settle + 30*r.Interval) // many more polls
	if errs := errorsLogged(); len(errs) != 1 || !strings.Contains(errs[0], p.CertFile) {
		t.Fatalf("errors logged: %q; want one naming %s", errs, p.CertFile)
	}
	if got := servedSerial(t, addr, insecure("mail.example.test")); got != serial(good) {
		t.Fatal("the old certificate is no longer served")
	}
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), p.CertFile) {
		t.Errorf("Reload (SIGHUP) with a broken file: %v", err)
	}

	// A key that does not match its certificate: a new bad change, a new
	// (single) error.
	if err := WritePEM(mustSelfSigned(t, "mail.example.test"), p.CertFile, dir+"/unused.key"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a second error", 5*time.Second, func() bool { return len(errorsLogged()) == 2 })
	time.Sleep(settle + 30*r.Interval)
	errs := errorsLogged()
	if len(errs) != 2 || !strings.Contains(errs[1], "does not match") {
		t.Fatalf("errors logged: %q; want a second one about the mismatch", errs)
	}
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("Reload with a mismatched key: %v", err)
	}
	if got := servedSerial(t, addr, insecure("mail.example.test")); got != serial(good) {
		t.Fatal("the old certificate is no longer served")
	}
	if n := len(errorsLogged()); n != 2 {
		t.Errorf("Reload made Run log again: %d errors", n)
	}

	// A missing key file.
	os.Remove(p.KeyFile)
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), p.KeyFile) {
		t.Errorf("Reload with a missing key: %v", err)
	}

	// Fixed: served at once on the next poll, and Reload works again.
	fixed := mustSelfSigned(t, "mail.example.test")
	if err := WritePEM(fixed, p.CertFile, p.KeyFile); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the fixed certificate", 5*time.Second, func() bool {
		return servedSerial(t, addr, insecure("mail.example.test")) == serial(fixed)
	})
	if err := r.Reload(); err != nil {
		t.Errorf("Reload: %v", err)
	}
}

func TestReloadExpiryWarnings(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	soon, err := selfSignedValid(key, []string{"soon.example.test"}, now.Add(-time.Hour), now.Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pairs := []Pair{
		writePair(t, dir, "fine", mustSelfSigned(t, "fine.example.test")),
		writePair(t, dir, "soon", soon),
	}
	store, err := LoadStore(pairs)
	if err != nil {
		t.Fatal(err)
	}
	rec, logger := newRecorder(t)
	r := &Reloader{Store: store, Pairs: pairs, Interval: 10 * time.Millisecond, Logger: logger}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { r.Run(ctx); close(runDone) }()
	defer func() { cancel(); <-runDone }()

	waitFor(t, "the start-up warning", 5*time.Second, func() bool { return len(rec.lines(slog.LevelWarn)) > 0 })
	time.Sleep(50 * time.Millisecond)
	ws := rec.lines(slog.LevelWarn)
	if len(ws) != 1 || !strings.Contains(ws[0], "soon.example.test") || !strings.Contains(ws[0], "expires") {
		t.Fatalf("warnings at start: %q", ws)
	}
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if ws := rec.lines(slog.LevelWarn); len(ws) != 2 {
		t.Errorf("warnings after a reload: %q", ws)
	}
	// Once the certificate is renewed, the warning stops.
	if err := WritePEM(mustSelfSigned(t, "soon.example.test"), pairs[1].CertFile, pairs[1].KeyFile); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if ws := rec.lines(slog.LevelWarn); len(ws) != 2 {
		t.Errorf("warnings after renewal: %q", ws)
	}
}
