// Package metrics holds Portico's Prometheus collectors.
//
// A Metrics lives as long as the process: make it once, give it to every
// proxy.Server as their Observer and to every Redis client as a hook, and
// call SetSource with the parts of the configuration in service each time
// one is built (at start and after a reload). Counters of events (logins,
// Redis errors) therefore survive reloads; everything that is state
// (connections, backend health, certificates, the session registry) is
// read from the current Source at scrape time, so that the sessions pay
// nothing for it.
//
// Labels never hold a user name or a client address; backend names and
// certificate names are bounded by the configuration.
package metrics

import (
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/portico-mail/portico/fleet"
	"github.com/portico-mail/portico/limits"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// Source is what the collectors read at scrape time. Nil fields are
// parts the configuration does not have; their metrics are left out.
type Source struct {
	Server   *proxy.Server
	Backends []*routing.Backend // the configured ones
	Health   *routing.Health
	Fleet    *routing.Fleet // drains and weight overrides
	Cache    *routing.Cache
	Registry *fleet.Fleet // the session registry
	Limiter  *limits.Limiter
	Store    *ptls.Store // file certificates
	ACME     *ptls.ACME
	Spares   *upstream.SpareCounters // spare backend connections
}

// Metrics is Portico's Prometheus registry and the collectors in it. The
// zero value is not usable; call New.
type Metrics struct {
	reg *prometheus.Registry
	src atomic.Pointer[Source]

	logins       [numProtocols][proxy.NumLoginResults][numMechs]prometheus.Counter
	loginTime    prometheus.Histogram
	handshake    prometheus.Observer
	lookup       prometheus.Observer
	backendLogin prometheus.Observer

	backendLoginsVec *prometheus.CounterVec
	backendLogins    sync.Map // backend key -> *[numBackendResults]prometheus.Counter

	redisErrors *prometheus.CounterVec
}

const (
	mechLogin = iota
	mechPlain
	mechSASLLogin
	mechXOAUTH2
	mechOAUTHBEARER
	mechUserPass
	numMechs
)

var mechNames = [numMechs]string{proxy.MechLogin, proxy.MechPlain, proxy.MechSASLLogin, proxy.MechXOAUTH2, proxy.MechOAUTHBEARER, proxy.MechUserPass}

func mechIndex(m string) int {
	switch m {
	case proxy.MechPlain:
		return mechPlain
	case proxy.MechSASLLogin:
		return mechSASLLogin
	case proxy.MechXOAUTH2:
		return mechXOAUTH2
	case proxy.MechOAUTHBEARER:
		return mechOAUTHBEARER
	case proxy.MechUserPass:
		return mechUserPass
	}
	return mechLogin
}

// The protocols of portico_logins_total: the listener's.
const (
	protoIMAP = iota
	protoPOP3
	numProtocols
)

var protoNames = [numProtocols]string{"imap", "pop3"}

func protoIndex(p string) int {
	if p == "pop3" {
		return protoPOP3
	}
	return protoIMAP
}

// A backend's answer to a login.
const (
	backendOK = iota
	backendAuthFailed
	backendError
	numBackendResults
)

var backendResultNames = [numBackendResults]string{"ok", "auth_failed", "error"}

// latencyBuckets fit the parts of a login (milliseconds) as well as the
// whole of it, which includes the 2-second delay of failed attempts.
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// New makes the registry with the Go runtime and process collectors and
// Portico's own. version is the binary's.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "portico_build_info",
		Help:        "Always 1; the labels say which Portico and Go built this process.",
		ConstLabels: prometheus.Labels{"version": version, "go_version": runtime.Version()},
	})
	build.Set(1)

	logins := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portico_logins_total",
		Help: "Login attempts by protocol (imap, pop3), how they were answered (ok, auth_failed, unavailable, limit, privacy_required) and mechanism (login: IMAP's LOGIN command; user: POP3's USER and PASS; plain, login-mech, xoauth2, oauthbearer: SASL, AUTHENTICATE or AUTH).",
	}, []string{"protocol", "result", "mechanism"})
	for p, pn := range protoNames {
		for r := range proxy.NumLoginResults {
			for mi, mn := range mechNames {
				if (p == protoIMAP && mi == mechUserPass) || (p == protoPOP3 && mi == mechLogin) {
					continue // no such command in the protocol: no series
				}
				m.logins[p][r][mi] = logins.WithLabelValues(pn, r.String(), mn)
			}
		}
	}
	m.loginTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "portico_login_duration_seconds",
		Help:    "From accepting a connection to its successful login (the splice): TLS handshake, earlier attempts and the client's own pauses included.",
		Buckets: latencyBuckets,
	})
	phases := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "portico_login_phase_duration_seconds",
		Help:    "Parts of a login: tls_handshake (every successful client handshake, STARTTLS included), route_lookup (every lookup), backend_login (connect, greeting, ID and login at the backend, whatever its answer).",
		Buckets: latencyBuckets,
	}, []string{"phase"})
	m.handshake = phases.WithLabelValues("tls_handshake")
	m.lookup = phases.WithLabelValues("route_lookup")
	m.backendLogin = phases.WithLabelValues("backend_login")
	m.backendLoginsVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portico_backend_logins_total",
		Help: "Logins Portico made at each backend on behalf of a client, by the backend's answer: ok, auth_failed (credentials refused), error (connect, TLS, greeting or timeout).",
	}, []string{"backend", "result"})
	m.redisErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portico_redis_errors_total",
		Help: "Redis commands that failed (timeouts and connection errors included, a missing key not), by command, \"pipeline\" or \"dial\".",
	}, []string{"operation"})

	m.reg.MustRegister(build, logins, m.loginTime, phases, m.backendLoginsVec, m.redisErrors, &stateCollector{m})
	return m
}

// Registry returns the registry, for tests and for adding collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format (or
// OpenMetrics when asked).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

// SetSource makes src what the state metrics describe from the next scrape
// on.
func (m *Metrics) SetSource(src Source) { m.src.Store(&src) }

// Source returns the current source; the zero Source before SetSource.
func (m *Metrics) Source() Source {
	if s := m.src.Load(); s != nil {
		return *s
	}
	return Source{}
}

// Handshake implements proxy.Observer.
func (m *Metrics) Handshake(d time.Duration) { m.handshake.Observe(d.Seconds()) }

// Login implements proxy.Observer: a few atomic adds and histogram
// observations, no allocation.
func (m *Metrics) Login(ev proxy.LoginEvent) {
	if ev.Result < proxy.NumLoginResults {
		if c := m.logins[protoIndex(ev.Protocol)][ev.Result][mechIndex(ev.Mechanism)]; c != nil {
			c.Inc()
		}
	}
	if ev.Result == proxy.LoginOK {
		m.loginTime.Observe(ev.SinceAccept.Seconds())
	}
	if ev.Lookup > 0 {
		m.lookup.Observe(ev.Lookup.Seconds())
	}
	if b := ev.Backend; b != nil {
		m.backendLogin.Observe(ev.BackendLogin.Seconds())
		r := backendError
		switch ev.Result {
		case proxy.LoginOK:
			r = backendOK
		case proxy.LoginAuthFailed:
			r = backendAuthFailed
		}
		m.backendCounters(b)[r].Inc()
	}
}

// backendCounters returns b's login counters, made at its first login.
func (m *Metrics) backendCounters(b *routing.Backend) *[numBackendResults]prometheus.Counter {
	key := b.Name
	if key == "" {
		key = b.Addr
	}
	if c, ok := m.backendLogins.Load(key); ok {
		return c.(*[numBackendResults]prometheus.Counter)
	}
	var c [numBackendResults]prometheus.Counter
	for i, r := range backendResultNames {
		c[i] = m.backendLoginsVec.WithLabelValues(key, r)
	}
	v, _ := m.backendLogins.LoadOrStore(key, &c)
	return v.(*[numBackendResults]prometheus.Counter)
}
