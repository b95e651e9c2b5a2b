// Package loadtest generates IMAP and POP3 load against a server and
// reports what capacity planning needs: session rates and latency
// percentiles, FETCH (RETR) throughput, NOOP round trips, how many idle
// sessions a server holds, and — given the server's process ids — its CPU
// per session and memory per idle session, read from /proc. It drives any
// IMAP or POP3 server: Portico, nginx, a Dovecot proxy or Dovecot itself.
// `portico bench` is its command line.
//
// Typical use:
//
//	rep, err := loadtest.Run(ctx, loadtest.Config{
//		Mode:     loadtest.Login,
//		Addr:     "127.0.0.1:993",
//		Security: loadtest.ImplicitTLS,
//		TLS:      &tls.Config{RootCAs: pool},
//		Users:    loadtest.PatternUsers("user%d@example.test", "pw%d", 300),
//		Workers:  64, Count: 2000, Duration: time.Minute,
//		Measure:  loadtest.Processes{PIDs: []int{serverPID}, Tree: true},
//	})
//	rep.WriteText(os.Stdout)
//
// The modes:
//
//   - Login: Workers goroutines each run whole sessions one after the
//     other (connect, TLS or STARTTLS, AUTHENTICATE PLAIN, SELECT INBOX,
//     a small FETCH, LOGOUT), until Count sessions or Duration. A POP3
//     session is: connect, TLS or STLS, AUTH PLAIN with its initial
//     response, STAT, RETR 1, QUIT.
//   - Fetch: Workers sessions log in, then FETCH (RETR) a large message
//     (the last one in INBOX by default) Count times between them.
//   - Latency: Workers sessions log in, then send Count NOOPs between them.
//   - Idle: Count sessions log in, SELECT and IDLE, opened by Workers at
//     a time; they are held for Duration, and those the server kept
//     answer DONE. IMAP only: POP3 has no IDLE.
//
// Every run is bounded by Count and Duration, and every network operation
// by Timeout: the tool never runs open-ended.
//
// The IMAP and POP3 clients are minimal ones of this package (imap.go,
// pop3.go, on the connection of client.go they share); the IMAP one is
// not go-imap's imapclient, because the load generator shares the machine with the
// server it measures and must do only the work of the modelled session.
// imapclient sends CAPABILITY commands of its own when a login reply
// carries none, which adds round trips and server work that no session
// being modelled does; it decodes every response into structures (a
// FETCH body goes through its literal readers), where the load generator
// only needs to count literal bytes and find the tagged reply; and it
// runs a reader goroutine per connection with a 4 KiB buffer, which the
// idle mode would multiply by thousands while the client here holds one
// 8 KiB buffer and no goroutine per idle session.
package loadtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is the load pattern.
type Mode string

const (
	Login   Mode = "login"
	Fetch   Mode = "fetch"
	Latency Mode = "latency"
	Idle    Mode = "idle"
)

// Protocol is what the sessions speak.
type Protocol string

const (
	IMAP Protocol = "imap"
	POP3 Protocol = "pop3"
)

// Security is how the session reaches TLS.
type Security string

const (
	ImplicitTLS Security = "imaps"    // TLS from the first byte (pop3s for POP3)
	StartTLS    Security = "starttls" // STARTTLS (STLS for POP3) before logging in
	Plain       Security = "plain"    // no TLS: trusted networks and tests only
)

// Auth is how sessions log in.
type Auth string

const (
	// AuthPlain is SASL PLAIN: IMAP's AUTHENTICATE PLAIN (with SASL-IR
	// when the server has it; LOGIN when it offers no PLAIN), POP3's AUTH
	// PLAIN with the initial response.
	AuthPlain Auth = "plain"
	// AuthPassword is the protocol's own password commands: IMAP's
	// LOGIN, POP3's USER and PASS.
	AuthPassword Auth = "password"
)

// User is one account the sessions log in as; sessions take users in turn.
type User struct{ Name, Password string }

// Config describes a run. Zero fields take the mode's defaults (see
// Defaults).
type Config struct {
	Mode     Mode
	Protocol Protocol // default IMAP; POP3 has no Idle mode
	Addr     string   // host:port
	Security Security
	// TLS is the client configuration for ImplicitTLS and StartTLS. nil
	// verifies the server against the system roots for the host of Addr.
	// ServerName defaults to that host and NextProtos to the protocol's
	// ALPN name, "imap" or "pop3".
	TLS   *tls.Config
	Users []User
	Auth  Auth // default AuthPlain

	Workers  int           // concurrent sessions; in Idle, sessions opened at a time
	Count    int           // sessions (Login, Idle) or commands (Fetch, Latency)
	Duration time.Duration // cap on the run; in Idle, how long sessions are held
	// Fetch is the FETCH arguments: a small fetch in Login (skipped when
	// INBOX is empty), the large message in Fetch. For POP3 it is the
	// number of the message to RETR, "*" for the last: by default 1 in
	// Login and "*" in Fetch.
	Fetch   string
	Timeout time.Duration // per network operation

	// Measure, when it has PIDs, adds the server's CPU (all modes) and
	// memory (Idle) to the report.
	Measure Processes
}

// Defaults are the per-mode values of zero Config fields; for POP3,
// Fetch is POP3Fetch's.
var Defaults = map[Mode]Config{
	Login:   {Workers: 16, Count: 1000, Duration: time.Minute, Fetch: "1 (FLAGS BODY.PEEK[HEADER])"},
	Fetch:   {Workers: 1, Count: 20, Duration: time.Minute, Fetch: "* (BODY.PEEK[])"},
	Latency: {Workers: 1, Count: 1000, Duration: time.Minute},
	Idle:    {Workers: 32, Count: 100, Duration: 10 * time.Second},
}

// POP3Fetch is the default Fetch of POP3 sessions: the message they RETR.
var POP3Fetch = map[Mode]string{Login: "1", Fetch: "*"}

// Upper bounds that catch typos (an extra zero) before they become a
// run of hours.
const (
	maxCount    = 10_000_000
	maxWorkers  = 100_000
	maxDuration = 24 * time.Hour
	// openLimit bounds opening the sessions of the Fetch, Latency and
	// Idle modes, which Duration does not cover.
	openLimit = 10 * time.Minute
)

func (c Config) withDefaults() (Config, error) {
	d, ok := Defaults[c.Mode]
	if !ok {
		return c, fmt.Errorf("loadtest: unknown mode %q (want login, fetch, latency or idle)", c.Mode)
	}
	if c.Addr == "" {
		return c, errors.New("loadtest: no address")
	}
	host, _, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return c, fmt.Errorf("loadtest: address %q: %w", c.Addr, err)
	}
	if len(c.Users) == 0 {
		return c, errors.New("loadtest: no users")
	}
	if c.Workers < 0 || c.Count < 0 || c.Duration < 0 || c.Timeout < 0 {
		return c, errors.New("loadtest: negative workers, count, duration or timeout")
	}
	if c.Workers == 0 {
		c.Workers = d.Workers
	}
	if c.Count == 0 {
		c.Count = d.Count
	}
	if c.Duration == 0 {
		c.Duration = d.Duration
	}
	switch c.Protocol {
	case "":
		c.Protocol = IMAP
	case IMAP, POP3:
	default:
		return c, fmt.Errorf("loadtest: unknown protocol %q (want imap or pop3)", c.Protocol)
	}
	switch c.Auth {
	case "":
		c.Auth = AuthPlain
	case AuthPlain, AuthPassword:
	default:
		return c, fmt.Errorf("loadtest: unknown auth %q (want plain or password)", c.Auth)
	}
	if c.Protocol == POP3 {
		if c.Mode == Idle {
			return c, errors.New("loadtest: POP3 has no idle mode (no IDLE command)")
		}
		if c.Fetch == "" {
			c.Fetch = POP3Fetch[c.Mode]
		}
		if n, err := strconv.Atoi(c.Fetch); c.Fetch != "" && c.Fetch != "*" && (err != nil || n < 1) {
			return c, fmt.Errorf("loadtest: POP3 fetch %q: want a message number or *", c.Fetch)
		}
	} else if c.Fetch == "" {
		c.Fetch = d.Fetch
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Count > maxCount || c.Workers > maxWorkers || c.Duration > maxDuration {
		return c, fmt.Errorf("loadtest: count %d, workers %d or duration %v over the limits (%d, %d, %v)",
			c.Count, c.Workers, c.Duration, maxCount, maxWorkers, maxDuration)
	}
	if c.Mode != Fetch && c.Mode != Latency {
		// More workers than sessions would only idle.
		c.Workers = min(c.Workers, c.Count)
	}
	switch c.Security {
	case "":
		c.Security = ImplicitTLS
	case ImplicitTLS, StartTLS, Plain:
	default:
		return c, fmt.Errorf("loadtest: unknown security %q (want imaps, starttls or plain)", c.Security)
	}
	if c.Security != Plain {
		if c.TLS == nil {
			c.TLS = &tls.Config{}
		}
		c.TLS = c.TLS.Clone()
		if c.TLS.ServerName == "" {
			c.TLS.ServerName = host
		}
		if len(c.TLS.NextProtos) == 0 {
			c.TLS.NextProtos = []string{string(c.Protocol)}
		}
	}
	return c, nil
}

// Report is the outcome of a run. Durations are in milliseconds,
// memory in bytes.
type Report struct {
	Mode        Mode     `json:"mode"`
	Protocol    Protocol `json:"protocol"`
	Addr        string   `json:"addr"`
	Security    Security `json:"security"`
	TLS         string   `json:"tls,omitempty"` // as negotiated, e.g. "TLS 1.3 X25519"
	Workers     int      `json:"workers"`
	Interrupted bool     `json:"interrupted,omitempty"`

	// Elapsed is the measured phase: the whole run in Login, the
	// commands in Fetch and Latency, the hold in Idle.
	Elapsed  float64 `json:"elapsed_s"`
	Sessions int     `json:"sessions"` // completed (Login) or opened (others)
	Ops      int     `json:"ops,omitempty"`
	Rate     float64 `json:"rate_per_s"` // sessions/s (Login), commands/s (Fetch, Latency)
	Survived int     `json:"survived,omitempty"`

	Errors        int               `json:"errors"`
	ErrorKinds    map[string]int    `json:"error_kinds,omitempty"`
	ErrorExamples map[string]string `json:"error_examples,omitempty"`

	Connect *Percentiles `json:"connect,omitempty"` // TCP, TLS/STARTTLS, greeting
	Login   *Percentiles `json:"login,omitempty"`
	Session *Percentiles `json:"session,omitempty"` // connect to LOGOUT done
	Op      *Percentiles `json:"op,omitempty"`      // one FETCH or NOOP

	Bytes     int64   `json:"bytes,omitempty"` // FETCH literal data, RETR bodies
	MiBPerSec float64 `json:"mib_per_s,omitempty"`

	CPU    *CPUReport    `json:"cpu,omitempty"`
	Memory *MemoryReport `json:"memory,omitempty"`
	// MeasureError says why CPU or memory is missing (a pid that went
	// away, /proc unreadable).
	MeasureError string `json:"measure_error,omitempty"`
}

// CPUReport is the server's CPU during the measured phase.
type CPUReport struct {
	Procs        []ProcCPU `json:"processes"`
	Seconds      float64   `json:"cpu_s"`
	PerSessionMS float64   `json:"per_session_ms,omitempty"` // Login
	PerOpUS      float64   `json:"per_op_us,omitempty"`      // Fetch, Latency
	PerMiBMS     float64   `json:"per_mib_ms,omitempty"`     // Fetch
}

// MemoryReport is the server's memory before opening the idle sessions
// and at the end of the hold, and the difference per session.
type MemoryReport struct {
	Before        Memory  `json:"before"`
	After         Memory  `json:"after"`
	RSSPerSession float64 `json:"rss_per_session_bytes"`
	PSSPerSession float64 `json:"pss_per_session_bytes"`
}

// Run generates the load cfg describes and reports. It returns an error
// only for a bad Config; failures of sessions are counted in the report.
// Cancelling ctx stops the run early (the report says Interrupted).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, rep: &Report{Mode: cfg.Mode, Protocol: cfg.Protocol, Addr: cfg.Addr, Security: cfg.Security, Workers: cfg.Workers}}
	switch cfg.Mode {
	case Login:
		r.login(ctx)
	case Fetch, Latency:
		r.commands(ctx)
	case Idle:
		r.idle(ctx)
	}
	r.rep.Interrupted = ctx.Err() != nil
	return r.rep, nil
}

type runner struct {
	cfg     Config
	rep     *Report
	tlsOnce sync.Once
	all     samples
	mu      sync.Mutex // guards all
	cpu0    cpuSample
	cpuOK   bool
}

// workers runs fn on w goroutines, each with its own samples, merged when
// all are done.
func (r *runner) workers(w int, fn func(i int, s *samples)) {
	var wg sync.WaitGroup
	for i := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s samples
			fn(i, &s)
			r.mu.Lock()
			r.all.merge(&s)
			r.mu.Unlock()
		}()
	}
	wg.Wait()
}

// open brings one session to the selected state (SELECT INBOX, STAT),
// recording connect and login times. It returns the message count.
func (r *runner) open(ctx context.Context, u User, s *samples) (client, int, error) {
	t0 := time.Now()
	c, err := dial(ctx, &r.cfg)
	if err != nil {
		return nil, 0, err
	}
	s.connect = append(s.connect, time.Since(t0))
	if st := c.conn().tls; st != nil {
		r.tlsOnce.Do(func() { r.rep.TLS = tls.VersionName(st.Version) + " " + st.CurveID.String() })
	}
	t1 := time.Now()
	if err := c.login(u); err != nil {
		c.close()
		return nil, 0, err
	}
	s.login = append(s.login, time.Since(t1))
	exists, err := c.open()
	if err != nil {
		c.close()
		return nil, 0, err
	}
	return c, exists, nil
}

func (r *runner) user(i int) User { return r.cfg.Users[i%len(r.cfg.Users)] }

// fail counts an error unless the run was interrupted: errors caused by
// Ctrl-C are not the server's.
func fail(ctx context.Context, s *samples, err error) {
	if ctx.Err() == nil {
		s.fail(err)
	}
}

func (r *runner) login(ctx context.Context) {
	deadline := time.Now().Add(r.cfg.Duration)
	var next atomic.Int64
	r.startCPU()
	start := time.Now()
	r.workers(r.cfg.Workers, func(_ int, s *samples) {
		for ctx.Err() == nil && time.Now().Before(deadline) {
			i := int(next.Add(1) - 1)
			if i >= r.cfg.Count {
				return
			}
			t0 := time.Now()
			if err := r.session(ctx, r.user(i), s); err != nil {
				fail(ctx, s, err)
				continue
			}
			s.session = append(s.session, time.Since(t0))
		}
	})
	elapsed := time.Since(start)
	r.finish(elapsed)
	r.rep.Sessions = len(r.all.session)
	r.rep.Rate = float64(r.rep.Sessions) / elapsed.Seconds()
	if r.rep.CPU != nil && r.rep.Sessions > 0 {
		r.rep.CPU.PerSessionMS = r.rep.CPU.Seconds * 1000 / float64(r.rep.Sessions)
	}
}

// session is one whole login-mode session.
func (r *runner) session(ctx context.Context, u User, s *samples) error {
	c, exists, err := r.open(ctx, u, s)
	if err != nil {
		return err
	}
	defer c.close()
	if exists > 0 && r.cfg.Fetch != "" {
		if _, err := c.fetch(r.cfg.Fetch); err != nil {
			return err
		}
	}
	return c.logout()
}

// commands runs the Fetch and Latency modes: open Workers sessions, then
// share Count commands between them.
func (r *runner) commands(ctx context.Context) {
	openCtx, cancel := context.WithTimeout(ctx, openLimit)
	conns := make([]client, r.cfg.Workers)
	r.workers(r.cfg.Workers, func(i int, s *samples) {
		c, exists, err := r.open(openCtx, r.user(i), s)
		if err != nil {
			fail(ctx, s, err)
			return
		}
		if r.cfg.Mode == Fetch && exists == 0 {
			c.close()
			fail(ctx, s, &opError{phase: "fetch", err: errors.New("no message in INBOX: nothing to fetch")})
			return
		}
		conns[i] = c
	})
	cancel()
	for _, c := range conns {
		if c != nil {
			r.rep.Sessions++
		}
	}

	deadline := time.Now().Add(r.cfg.Duration)
	var next atomic.Int64
	r.startCPU()
	start := time.Now()
	r.workers(r.cfg.Workers, func(i int, s *samples) {
		c := conns[i]
		if c == nil {
			return
		}
		for ctx.Err() == nil && time.Now().Before(deadline) && int(next.Add(1)) <= r.cfg.Count {
			t0 := time.Now()
			var err error
			if r.cfg.Mode == Fetch {
				var n int64
				n, err = c.fetch(r.cfg.Fetch)
				s.bytes += n
			} else {
				err = c.noop()
			}
			if err != nil {
				fail(ctx, s, err)
				c.close()
				conns[i] = nil
				return
			}
			s.op = append(s.op, time.Since(t0))
		}
	})
	elapsed := time.Since(start)
	r.finish(elapsed)
	r.rep.Ops = len(r.all.op)
	r.rep.Rate = float64(r.rep.Ops) / elapsed.Seconds()
	r.rep.Bytes = r.all.bytes
	mib := float64(r.all.bytes) / (1 << 20)
	if r.cfg.Mode == Fetch {
		r.rep.MiBPerSec = mib / elapsed.Seconds()
	}
	if cpu := r.rep.CPU; cpu != nil && r.rep.Ops > 0 {
		cpu.PerOpUS = cpu.Seconds * 1e6 / float64(r.rep.Ops)
		if r.cfg.Mode == Fetch && mib > 0 {
			cpu.PerMiBMS = cpu.Seconds * 1000 / mib
		}
	}
	r.closeAll(ctx, conns, nil)
}

// idle runs the Idle mode.
func (r *runner) idle(ctx context.Context) {
	var mem0 Memory
	memOK := false
	if len(r.cfg.Measure.PIDs) > 0 {
		var err error
		mem0, err = r.cfg.Measure.sampleMemory()
		if err != nil {
			r.rep.MeasureError = err.Error()
		} else {
			memOK = true
		}
	}

	openCtx, cancel := context.WithTimeout(ctx, openLimit)
	conns := make([]client, r.cfg.Count)
	tags := make([]string, r.cfg.Count)
	var next atomic.Int64
	r.workers(r.cfg.Workers, func(_ int, s *samples) {
		for openCtx.Err() == nil {
			i := int(next.Add(1) - 1)
			if i >= r.cfg.Count {
				return
			}
			c, _, err := r.open(openCtx, r.user(i), s)
			if err != nil {
				fail(ctx, s, err)
				continue
			}
			tag, err := c.(*imapConn).idle() // no POP3 in Idle (withDefaults)
			if err != nil {
				c.close()
				fail(ctx, s, err)
				continue
			}
			conns[i], tags[i] = c, tag
		}
	})
	cancel()
	for _, c := range conns {
		if c != nil {
			r.rep.Sessions++
		}
	}

	r.startCPU()
	start := time.Now()
	select {
	case <-time.After(r.cfg.Duration):
	case <-ctx.Done():
	}
	elapsed := time.Since(start)
	if memOK && r.rep.Sessions > 0 {
		mem1, err := r.cfg.Measure.sampleMemory()
		if err != nil {
			r.rep.MeasureError = err.Error()
		} else {
			n := float64(r.rep.Sessions)
			r.rep.Memory = &MemoryReport{Before: mem0, After: mem1,
				RSSPerSession: float64(mem1.RSS-mem0.RSS) / n, PSSPerSession: float64(mem1.PSS-mem0.PSS) / n}
		}
	}
	r.finish(elapsed)

	var survived atomic.Int64
	r.closeAll(ctx, conns, func(i int, c client, s *samples) bool {
		if err := c.(*imapConn).done(tags[i]); err != nil {
			fail(ctx, s, err)
			return false
		}
		survived.Add(1)
		return true
	})
	r.rep.Survived = int(survived.Load())
}

// closeAll logs out every open session, Workers at a time. before, if
// set, runs first and may veto the LOGOUT of a broken session.
func (r *runner) closeAll(ctx context.Context, conns []client, before func(i int, c client, s *samples) bool) {
	var next atomic.Int64
	r.workers(min(r.cfg.Workers, max(1, len(conns))), func(_ int, s *samples) {
		for {
			i := int(next.Add(1) - 1)
			if i >= len(conns) {
				return
			}
			c := conns[i]
			if c == nil {
				continue
			}
			if before == nil || before(i, c, s) {
				if err := c.logout(); err != nil {
					fail(ctx, s, err)
				}
			}
			c.close()
		}
	})
	r.errorsToReport()
}

func (r *runner) startCPU() {
	if len(r.cfg.Measure.PIDs) == 0 {
		return
	}
	s, err := r.cfg.Measure.sampleCPU()
	if err != nil {
		r.rep.MeasureError = err.Error()
		return
	}
	r.cpu0, r.cpuOK = s, true
}

// finish fills the parts of the report common to every mode, at the end
// of the measured phase.
func (r *runner) finish(elapsed time.Duration) {
	r.rep.Elapsed = elapsed.Seconds()
	if r.cpuOK {
		s, err := r.cfg.Measure.sampleCPU()
		if err != nil {
			r.rep.MeasureError = err.Error()
		} else {
			cpu := &CPUReport{Procs: r.cfg.Measure.cpuBetween(r.cpu0, s)}
			for _, p := range cpu.Procs {
				cpu.Seconds += p.Seconds
			}
			r.rep.CPU = cpu
		}
	}
	r.rep.Connect = summarize(r.all.connect)
	r.rep.Login = summarize(r.all.login)
	r.rep.Session = summarize(r.all.session)
	r.rep.Op = summarize(r.all.op)
	r.errorsToReport()
}

func (r *runner) errorsToReport() {
	r.rep.Errors = 0
	for _, n := range r.all.errors {
		r.rep.Errors += n
	}
	r.rep.ErrorKinds, r.rep.ErrorExamples = r.all.errors, r.all.example
}
