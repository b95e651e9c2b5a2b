package routing

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults of Health.
const (
	DefaultHealthInterval = 5 * time.Second
	DefaultHealthTimeout  = 3 * time.Second
	DefaultHealthRise     = 2
	DefaultHealthFall     = 3
)

// Health tracks which backends are up, from active probes (Run) and from
// passive signals the proxy reports (ReportFailure, ReportSuccess). A
// backend goes down after Fall failures in a row and comes back after Rise
// successes in a row. Backends it has not heard of, or not checked yet, are
// up: Health only ever refuses logins because of evidence.
//
// The zero value is ready to use with the defaults, and a nil *Health says
// every backend is up. Backends are tracked by name (by address for a
// literal one).
type Health struct {
	// Interval between two probes of one backend; zero means
	// DefaultHealthInterval.
	Interval time.Duration
	// Timeout bounds one probe; zero means DefaultHealthTimeout.
	Timeout time.Duration
	// Rise is the number of good checks that bring a down backend back,
	// and Fall the number of failures that take an up backend down; zero
	// means DefaultHealthRise and DefaultHealthFall.
	Rise, Fall int
	// Probe checks one backend; nil means Probe.
	Probe func(ctx context.Context, b *Backend) error
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
	// OnChange, if set, is called after a backend changes state, outside
	// any lock. The proxy can use it to end sessions on a dead backend.
	OnChange func(b *Backend, up bool)

	mu     sync.RWMutex
	states map[string]*healthState
}

type healthState struct {
	up        bool
	fails, ok int // current streaks
	lastErr   error
	since     time.Time // of the current up/down state
}

// BackendHealth is one backend's state, for `portico backend list` and
// Explain.
type BackendHealth struct {
	Up        bool
	Failures  int       // failures in a row
	Successes int       // successes in a row
	Since     time.Time // when the backend entered its current state; zero if never changed
	LastError string    // of the latest failure, "" if none
}

// Up reports whether b may receive logins: false only after Fall failures
// in a row and until Rise successes in a row.
func (h *Health) Up(b *Backend) bool {
	if h == nil || b == nil {
		return true
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	s := h.states[b.key()]
	return s == nil || s.up
}

// State returns b's state; an unknown backend is up.
func (h *Health) State(b *Backend) BackendHealth {
	if h == nil || b == nil {
		return BackendHealth{Up: true}
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	s := h.states[b.key()]
	if s == nil {
		return BackendHealth{Up: true}
	}
	bh := BackendHealth{Up: s.up, Failures: s.fails, Successes: s.ok, Since: s.since}
	if s.lastErr != nil {
		bh.LastError = s.lastErr.Error()
	}
	return bh
}

// ReportFailure counts a failed connect or greeting seen by the proxy like
// a failed probe. Reports about backends that Run does not watch are
// ignored: nothing would ever bring them back.
func (h *Health) ReportFailure(b *Backend, err error) {
	if err == nil {
		err = errors.New("failure reported")
	}
	h.record(b, err, false)
}

// ReportSuccess counts a successful connection seen by the proxy like a
// good probe.
func (h *Health) ReportSuccess(b *Backend) {
	h.record(b, nil, false)
}

// record applies one result; add registers an unknown backend.
func (h *Health) record(b *Backend, err error, add bool) {
	if h == nil || b == nil {
		return
	}
	if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
		// This process is out of descriptors: that says nothing about
		// the backend, and taking it down would fail the logins that
		// the descriptors freed later could serve.
		return
	}
	rise, fall := h.Rise, h.Fall
	if rise <= 0 {
		rise = DefaultHealthRise
	}
	if fall <= 0 {
		fall = DefaultHealthFall
	}
	h.mu.Lock()
	s := h.states[b.key()]
	if s == nil {
		if !add {
			h.mu.Unlock()
			return
		}
		if h.states == nil {
			h.states = make(map[string]*healthState)
		}
		s = &healthState{up: true}
		h.states[b.key()] = s
	}
	changed := false
	if err != nil {
		s.ok = 0
		s.fails++
		s.lastErr = err
		if s.up && s.fails >= fall {
			s.up, s.since, changed = false, time.Now(), true
		}
	} else {
		s.fails = 0
		s.ok++
		if !s.up && s.ok >= rise {
			s.up, s.since, changed = true, time.Now(), true
		}
	}
	up := s.up
	h.mu.Unlock()
	if !changed {
		return
	}
	log := h.Logger
	if log == nil {
		log = slog.Default()
	}
	if up {
		log.Info("backend up", "backend", b.String())
	} else {
		log.Warn("backend down", "backend", b.String(), "err", err)
	}
	if h.OnChange != nil {
		h.OnChange(b, up)
	}
}

// register makes b known, so that passive reports about it count.
func (h *Health) register(b *Backend) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.states == nil {
		h.states = make(map[string]*healthState)
	}
	if h.states[b.key()] == nil {
		h.states[b.key()] = &healthState{up: true}
	}
}

// Run probes each backend every Interval until ctx is done, then returns
// once its goroutines have ended. Call it once per Health, with every
// backend that routes can name (pool members and fallbacks included):
// passive reports only count for backends Run watches. Nil backends and duplicates are skipped.
// The first probes are spread over one interval so that a fleet of proxies
// does not knock on every backend at the same moment.
func (h *Health) Run(ctx context.Context, backends ...*Backend) {
	interval := h.Interval
	if interval <= 0 {
		interval = DefaultHealthInterval
	}
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultHealthTimeout
	}
	probe := h.Probe
	if probe == nil {
		probe = Probe
	}
	seen := make(map[string]bool)
	var wg sync.WaitGroup
	for _, b := range backends {
		if b == nil || seen[b.key()] {
			continue
		}
		seen[b.key()] = true
		h.register(b)
		wg.Go(func() {
			t := time.NewTimer(rand.N(interval))
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				pctx, cancel := context.WithTimeout(ctx, timeout)
				err := probe(pctx, b)
				cancel()
				if ctx.Err() != nil {
					return // a probe cut short by shutdown says nothing
				}
				if err != nil {
					err = fmt.Errorf("routing: probe %s: %w", b, err)
				}
				h.record(b, err, true)
				t.Reset(interval)
			}
		})
	}
	wg.Wait()
}

// Probe is the default health check: connect (with a PROXY v2 LOCAL header
// if the backend wants one), TLS for ImplicitTLS, read the greeting,
// STARTTLS for StartTLS, then CAPABILITY and LOGOUT. Informational
// untagged lines before the real greeting, such as Dovecot's "* OK Waiting
// for authentication process to respond..", are tolerated; a BYE greeting
// is a failure. ctx bounds the whole probe.
func Probe(ctx context.Context, b *Backend) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", b.Addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Closing the connection unblocks any read when ctx ends early.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	if b.ProxyProtocol {
		// Signature, version 2 + LOCAL, family UNSPEC, no address block:
		// the receiver keeps the real connection addresses.
		const local = "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
		if _, err := conn.Write([]byte(local)); err != nil {
			return err
		}
	}
	if b.TLS == ImplicitTLS {
		tc := tls.Client(conn, probeTLSConfig(b))
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		conn = tc
	}
	p := &prober{conn: conn, r: bufio.NewReaderSize(conn, 1024)}
	if err := p.greeting(); err != nil {
		return err
	}
	if b.TLS == StartTLS {
		if err := p.command("P0 STARTTLS"); err != nil {
			return err
		}
		// Anything the backend sent after its OK is dropped with the old
		// reader: it was not protected by TLS.
		tc := tls.Client(conn, probeTLSConfig(b))
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		p = &prober{conn: tc, r: bufio.NewReaderSize(tc, 1024)}
	}
	if err := p.command("P1 CAPABILITY"); err != nil {
		return err
	}
	// A failed LOGOUT does not make the backend unhealthy.
	p.command("P2 LOGOUT")
	return nil
}

func probeTLSConfig(b *Backend) *tls.Config {
	if b.TLSConfig != nil {
		c := b.TLSConfig.Clone()
		if c.ServerName == "" {
			c.ServerName, _, _ = net.SplitHostPort(b.Addr)
		}
		return c
	}
	host, _, _ := net.SplitHostPort(b.Addr)
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
}

type prober struct {
	conn net.Conn
	r    *bufio.Reader
}

// line reads one response line; long lines are cut, which is harmless for
// the prefixes the probe looks at.
func (p *prober) line() (string, error) {
	var sb strings.Builder
	for {
		frag, isPrefix, err := p.r.ReadLine()
		if err != nil {
			return "", err
		}
		if sb.Len() < 256 {
			sb.Write(frag[:min(len(frag), 256)])
		}
		if !isPrefix {
			return sb.String(), nil
		}
	}
}

// greeting waits for the first "* OK" or "* PREAUTH". Dovecot's waiting
// line is itself a "* OK", and the real greeting that follows is read as
// an untagged line by the next command.
func (p *prober) greeting() error {
	for range 8 {
		l, err := p.line()
		if err != nil {
			return fmt.Errorf("greeting: %w", err)
		}
		u := strings.ToUpper(l)
		switch {
		case strings.HasPrefix(u, "* OK"), strings.HasPrefix(u, "* PREAUTH"):
			return nil
		case strings.HasPrefix(u, "* BYE"):
			return fmt.Errorf("greeting: %q", truncate(l))
		}
	}
	return errors.New("greeting: no OK in 8 lines")
}

// command sends "TAG VERB" and reads up to the tagged reply, which must be
// OK. The number of untagged lines is bounded, so a chatty or broken
// backend cannot hold the probe beyond its deadline anyway.
func (p *prober) command(cmd string) error {
	tag, _, _ := strings.Cut(cmd, " ")
	if _, err := p.conn.Write([]byte(cmd + "\r\n")); err != nil {
		return err
	}
	for range 64 {
		l, err := p.line()
		if err != nil {
			return fmt.Errorf("%s: %w", cmd[len(tag)+1:], err)
		}
		if rest, ok := strings.CutPrefix(l, tag+" "); ok {
			if !strings.HasPrefix(strings.ToUpper(rest), "OK") {
				return fmt.Errorf("%s: %q", cmd[len(tag)+1:], truncate(l))
			}
			return nil
		}
	}
	return fmt.Errorf("%s: no tagged reply", cmd[len(tag)+1:])
}
