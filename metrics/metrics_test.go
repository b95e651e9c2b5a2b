package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// The login path pays a few atomic adds: no allocation, once a backend's
// counters exist.
func TestLoginDoesNotAllocate(t *testing.T) {
	m := New("test")
	b := &routing.Backend{Name: "imap1", Addr: "192.0.2.1:143"}
	ev := proxy.LoginEvent{Result: proxy.LoginOK, Mechanism: proxy.MechPlain, Backend: b,
		SinceAccept: 30 * time.Millisecond, Lookup: time.Millisecond, BackendLogin: 5 * time.Millisecond}
	m.Login(ev)
	if n := testing.AllocsPerRun(1000, func() { m.Login(ev); m.Handshake(time.Millisecond) }); n != 0 {
		t.Errorf("%v allocations per login", n)
	}
}

// Counters of events outlive a reload, which swaps the source.
func TestCountersSurviveSetSource(t *testing.T) {
	m := New("test")
	m.SetSource(Source{Server: &proxy.Server{}})
	for range 3 {
		m.Login(proxy.LoginEvent{Result: proxy.LoginAuthFailed, Mechanism: proxy.MechLogin})
	}
	m.SetSource(Source{Server: &proxy.Server{}, Backends: []*routing.Backend{{Name: "new"}}})
	if v := testutil.ToFloat64(m.logins[protoIMAP][proxy.LoginAuthFailed][mechLogin]); v != 3 {
		t.Errorf("auth_failed after SetSource = %v", v)
	}
	out, err := testutil.CollectAndFormat(m.reg, expfmt.TypeTextPlain, "portico_backend_up")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `portico_backend_up{backend="new"} 1`) {
		t.Errorf("backend_up of the new source:\n%s", out)
	}
}

// A POP3 login counts under protocol "pop3", an IMAP one under "imap",
// even with the same mechanism; the two protocols' own commands (IMAP's
// LOGIN, POP3's USER/PASS) have series only in their protocol.
func TestLoginsByProtocol(t *testing.T) {
	m := New("test")
	m.Login(proxy.LoginEvent{Result: proxy.LoginOK, Mechanism: proxy.MechPlain, Protocol: "pop3"})
	m.Login(proxy.LoginEvent{Result: proxy.LoginOK, Mechanism: proxy.MechUserPass, Protocol: "pop3"})
	m.Login(proxy.LoginEvent{Result: proxy.LoginOK, Mechanism: proxy.MechPlain, Protocol: "imap"})
	out, err := testutil.CollectAndFormat(m.reg, expfmt.TypeTextPlain, "portico_logins_total")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`portico_logins_total{mechanism="plain",protocol="pop3",result="ok"} 1`,
		`portico_logins_total{mechanism="user",protocol="pop3",result="ok"} 1`,
		`portico_logins_total{mechanism="plain",protocol="imap",result="ok"} 1`,
		`portico_logins_total{mechanism="login",protocol="imap",result="ok"} 0`,
	} {
		if !strings.Contains(string(out), want+"\n") {
			t.Errorf("missing %s in:\n%s", want, out)
		}
	}
	for _, bad := range []string{`mechanism="user",protocol="imap"`, `mechanism="login",protocol="pop3"`} {
		if strings.Contains(string(out), bad) {
			t.Errorf("series %s exists", bad)
		}
	}
}

// The spares' counters are read from the source at each scrape.
func TestSpareCounters(t *testing.T) {
	m := New("test")
	c := &upstream.SpareCounters{}
	m.SetSource(Source{Server: &proxy.Server{}, Spares: c})
	s := &upstream.Spares{Counters: c}
	defer s.Close()
	// A literal address never has spares: not counted.
	s.Login(context.Background(), &routing.Backend{Addr: "127.0.0.1:1", SpareConnections: 1}, upstream.Credentials{}, nil)
	if c.Stats() != (upstream.SpareStats{}) {
		t.Errorf("counted %+v", c.Stats())
	}
	// A named one: a miss (the dial fails, which is not the point).
	s.Login(context.Background(), &routing.Backend{Name: "b", Addr: "127.0.0.1:1", SpareConnections: 1}, upstream.Credentials{}, nil)
	out, err := testutil.CollectAndFormat(m.reg, expfmt.TypeTextPlain, "portico_backend_spares_total")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`portico_backend_spares_total{event="missed"} 1`, `portico_backend_spares_total{event="taken"} 0`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("no %s in:\n%s", want, out)
		}
	}
}

// Every metric is named by the conventions (promlint), with or without
// a source.
func TestLint(t *testing.T) {
	m := New("test")
	lint := func() {
		t.Helper()
		problems, err := testutil.GatherAndLint(m.reg)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			if strings.HasPrefix(p.Metric, "portico_") {
				t.Errorf("%s: %s", p.Metric, p.Text)
			}
		}
	}
	lint()
	var c routing.Cache
	m.SetSource(Source{Server: &proxy.Server{}, Cache: &c, Backends: []*routing.Backend{{Name: "a"}}})
	m.Login(proxy.LoginEvent{Result: proxy.LoginOK, Backend: &routing.Backend{Addr: "192.0.2.7:993"}})
	lint()
}

// BenchmarkLogin is what a successful login pays for metrics.
func BenchmarkLogin(b *testing.B) {
	m := New("test")
	ev := proxy.LoginEvent{Result: proxy.LoginOK, Mechanism: proxy.MechLogin, Backend: &routing.Backend{Name: "imap1"},
		SinceAccept: 30 * time.Millisecond, Lookup: time.Millisecond, BackendLogin: 5 * time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		m.Login(ev)
	}
}
