package app

import (
	"context"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
)

// The POP3 parts of a config reach the proxy: listener modes, and a POP3
// address for named backends (pop3_port on the host of their address) and
// for the literal addresses of Redis route records (backend_defaults).
func TestPOP3Wiring(t *testing.T) {
	r := testsrv.StartRedis(t)
	_, certFile, keyFile := testcert.Files(t, t.TempDir(), "localhost", "127.0.0.1")
	rt := buildYAML(t, `
listeners:
  - {name: a, mode: imaps, address: "127.0.0.1:0"}
  - {name: b, mode: imap, address: "127.0.0.1:0"}
  - {name: c, mode: pop3s, address: "127.0.0.1:0"}
  - {name: d, mode: pop3, address: "127.0.0.1:0"}
tls:
  certificates:
    - {cert_file: `+certFile+`, key_file: `+keyFile+`}
routing:
  redis: {addrs: ["`+r.Addr+`"]}
  health: {disabled: true}
  cache: {disabled: true}
backends:
  - {name: mx1, address: "10.0.0.1:143", pop3_port: 110}
  - {name: mx2, address: "10.0.0.2:143"}
backend_defaults:
  pop3_port: 995
`)
	want := []proxy.Mode{proxy.ImplicitTLS, proxy.StartTLS, proxy.POP3S, proxy.POP3}
	for i, l := range rt.Listeners {
		if l.Config.Mode != want[i] {
			t.Errorf("listener %s: mode %v, want %v", l.Config.Name, l.Config.Mode, want[i])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		rec  routing.Record
		pop3 string
	}{
		{routing.Record{Backend: "mx1"}, "10.0.0.1:110"},
		{routing.Record{Backend: "mx2"}, ""},
		{routing.Record{Addr: "10.0.0.7:993", Security: "tls"}, "10.0.0.7:995"},
		{routing.Record{Addr: "[fd00::7]:143"}, "[fd00::7]:995"},
	} {
		if err := rt.RedisRouter.SetRoute(ctx, "alice@example.test", tc.rec); err != nil {
			t.Fatal(err)
		}
		b, err := rt.RedisRouter.Lookup(ctx, "alice@example.test")
		if err != nil {
			t.Fatalf("%s: %v", tc.rec, err)
		}
		if b.POP3Addr != tc.pop3 {
			t.Errorf("%s: POP3Addr %q, want %q", tc.rec, b.POP3Addr, tc.pop3)
		}
	}
}
