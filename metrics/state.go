package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	ptls "github.com/portico-mail/portico/tls"
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	connectionsDesc = desc("portico_connections",
		"Client connections by listener and state: preauth (before the splice: TLS, commands, login), spliced (logged in, data moving or recently moved), parked (logged in, both directions idle in the poller, no goroutine). The states do not overlap.",
		"listener", "state")
	bytesDesc = desc("portico_spliced_bytes_total",
		"Bytes copied between clients and backends after login, by direction (to_backend, to_client), ended and running sessions together.",
		"direction")
	backendSessionsDesc = desc("portico_backend_sessions", "Spliced sessions by backend.", "backend")
	backendUpDesc       = desc("portico_backend_up", "1 if the backend receives logins by its health checks, 0 if it is down.", "backend")
	backendDrainedDesc  = desc("portico_backend_drained", "1 if the backend is drained fleet-wide (portico backend drain).", "backend")
	backendWeightDesc   = desc("portico_backend_weight", "The backend's weight in its pools, with the fleet's override.", "backend")
	cacheHitsDesc       = desc("portico_route_cache_hits_total", "Route lookups answered from the route cache (negative entries included).")
	cacheMissesDesc     = desc("portico_route_cache_misses_total", "Route lookups that went to Redis.")
	cacheEntriesDesc    = desc("portico_route_cache_entries", "Entries in the route cache, expired ones included.")
	certExpiryDesc      = desc("portico_certificate_expiry_timestamp_seconds",
		"When each certificate in service expires (Unix time), by name, source (file, acme) and key type.",
		"name", "source", "key_type")
	acmeObtainedDesc = desc("portico_acme_certificates_obtained_total", "Certificates this proxy ordered from the ACME CA and stored: first issuance and renewals.")
	acmeFailedDesc   = desc("portico_acme_failures_total", "Certificates ACME could not provide when asked (orders or cache reads that failed).")
	regPendingDesc   = desc("portico_registry_pending_changes", "Session starts and ends not yet written to the session registry in Redis: its write lag.")
	regDroppedDesc   = desc("portico_registry_dropped_changes_total", "Session starts and ends dropped because too many were waiting (a reconciliation repairs them).")
	regHeartbeatDesc = desc("portico_registry_heartbeat_duration_seconds", "How long the last heartbeat to the session registry took.")
	regHBFailDesc    = desc("portico_registry_heartbeat_failures_total", "Heartbeats to the session registry that got no answer in time.")
	regIncarnDesc    = desc("portico_registry_incarnations_total", "Registrations of this proxy in the registry: one more each time Redis lost its entry.")
	listenersDesc    = desc("portico_listeners_open", "Client listeners accepting connections.")
	hotKeysDesc      = desc("portico_hot_keys", "Addresses and users in this proxy's copy of the fleet's hot set: their logins ask Redis.")
	hotOverflowDesc  = desc("portico_hot_overflow", "1 while the hot set holds more keys than a proxy trusts: every login asks Redis.")
	limiterDesc      = desc("portico_limiter_checks_total",
		"Brute-force limiter checks by where they were answered: cold (no Redis command: address and user not hot) or redis.",
		"source")
	sparesDesc = desc("portico_backend_spares_total",
		"Spare backend connections (backends[].spare_connections): taken (a login started on one), missed (a login to a backend with spares found none ready), discarded (closed unused: dead, expired, backend idle, down, drained or reloaded).", "event")
)

// stateCollector reads the current Source at scrape time.
type stateCollector struct{ m *Metrics }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		connectionsDesc, bytesDesc, backendSessionsDesc, backendUpDesc, backendDrainedDesc, backendWeightDesc,
		cacheHitsDesc, cacheMissesDesc, cacheEntriesDesc, certExpiryDesc, acmeObtainedDesc, acmeFailedDesc,
		regPendingDesc, regDroppedDesc, regHeartbeatDesc, regHBFailDesc, regIncarnDesc, listenersDesc,
		hotKeysDesc, hotOverflowDesc, limiterDesc, sparesDesc,
	} {
		ch <- d
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.m.Source()
	sessions := map[string]int{}
	if s := src.Server; s != nil {
		st := s.Stats()
		for _, l := range st.Listeners {
			gauge(ch, connectionsDesc, float64(l.Preauth), l.Name, "preauth")
			gauge(ch, connectionsDesc, float64(l.Spliced), l.Name, "spliced")
			gauge(ch, connectionsDesc, float64(l.Parked), l.Name, "parked")
		}
		gauge(ch, listenersDesc, float64(st.Serving))
		counter(ch, bytesDesc, float64(st.BytesToBackend), "to_backend")
		counter(ch, bytesDesc, float64(st.BytesToClient), "to_client")
		sessions = st.Backends
	}

	// Configured backends always appear; literal addresses from route
	// records only while they have sessions.
	seen := make(map[string]bool, len(src.Backends))
	for _, b := range src.Backends {
		seen[b.Name] = true
		gauge(ch, backendSessionsDesc, float64(sessions[b.Name]), b.Name)
		gauge(ch, backendUpDesc, boolValue(src.Health.Up(b)), b.Name)
		gauge(ch, backendDrainedDesc, boolValue(src.Fleet.Drained(b)), b.Name)
		gauge(ch, backendWeightDesc, float64(src.Fleet.Weight(b)), b.Name)
	}
	for name, n := range sessions {
		if !seen[name] {
			gauge(ch, backendSessionsDesc, float64(n), name)
		}
	}

	if src.Spares != nil {
		st := src.Spares.Stats()
		counter(ch, sparesDesc, float64(st.Taken), "taken")
		counter(ch, sparesDesc, float64(st.Missed), "missed")
		counter(ch, sparesDesc, float64(st.Discarded), "discarded")
	}

	if src.Cache != nil {
		hits, misses := src.Cache.Stats()
		counter(ch, cacheHitsDesc, float64(hits))
		counter(ch, cacheMissesDesc, float64(misses))
		gauge(ch, cacheEntriesDesc, float64(src.Cache.Len()))
	}

	c.certificates(ch, src)
	if a := src.ACME; a != nil {
		st := a.Stats()
		counter(ch, acmeObtainedDesc, float64(st.Obtained))
		counter(ch, acmeFailedDesc, float64(st.Failed))
	}

	if f := src.Registry; f != nil {
		st := f.Stats()
		gauge(ch, regPendingDesc, float64(st.Pending))
		counter(ch, regDroppedDesc, float64(st.Dropped))
		gauge(ch, regHeartbeatDesc, st.LastHeartbeat.Seconds())
		counter(ch, regHBFailDesc, float64(st.HeartbeatFailures))
		counter(ch, regIncarnDesc, float64(st.Incarnations))
		gauge(ch, hotKeysDesc, float64(st.Hot))
		gauge(ch, hotOverflowDesc, boolValue(st.HotOverflow))
	}
	if l := src.Limiter; l != nil {
		st := l.Stats()
		counter(ch, limiterDesc, float64(st.Cold), "cold")
		counter(ch, limiterDesc, float64(st.FromRedis), "redis")
	}
}

// certificates reports one series per name of each certificate in
// service. Two certificates with the same name, source and key type
// (possible with files) give the one that expires first: the one to act
// on.
func (c *stateCollector) certificates(ch chan<- prometheus.Metric, src Source) {
	type key struct{ name, source, keyType string }
	expiry := map[key]float64{}
	add := func(infos []ptls.Info, source string) {
		for _, info := range infos {
			keyType, _, _ := strings.Cut(info.KeyType, " ") // "ECDSA P-256" -> ECDSA
			for _, n := range info.Names {
				k := key{n, source, keyType}
				t := float64(info.NotAfter.Unix())
				if old, ok := expiry[k]; !ok || t < old {
					expiry[k] = t
				}
			}
		}
	}
	if src.Store != nil {
		add(src.Store.Certificates(), "file")
	}
	if src.ACME != nil {
		add(src.ACME.Certificates(), "acme")
	}
	for k, t := range expiry {
		gauge(ch, certExpiryDesc, t, k.name, k.source, k.keyType)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
