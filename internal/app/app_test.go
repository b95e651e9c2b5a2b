package app

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// buildYAML builds an App from the text of a config file; it is closed
// when the test ends.
func buildYAML(t *testing.T, yaml string) *App {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := Build(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	return rt
}

// tlsFront serves a TLS listener in front of a cleartext backend: an IMAPS
// backend whose certificate is cert.
func tlsFront(t *testing.T, cert tls.Certificate, backend string) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	relay(t, ln, backend)
	return ln.Addr().String()
}

// relay forwards every connection to ln to backend until the test ends,
// and counts those open.
func relay(t *testing.T, ln net.Listener, backend string) *atomic.Int32 {
	var open atomic.Int32
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			open.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer open.Add(-1)
				defer c.Close()
				b, err := net.Dial("tcp", backend)
				if err != nil {
					return
				}
				defer b.Close()
				go func() { io.Copy(b, c); b.Close() }()
				io.Copy(c, b)
			}()
		}
	}()
	return &open
}

// TestBackendDefaultsTLSWithPlain: backend_defaults.tls next to security
// "plain" serves the Redis route records that choose tls for their
// address: the backend is verified with backend_defaults' CA.
func TestBackendDefaultsTLSWithPlain(t *testing.T) {
	r := testsrv.StartRedis(t)
	dir := t.TempDir()
	cert, certFile, keyFile := testcert.Files(t, dir, "localhost", "127.0.0.1")
	const user, pass = "alice@example.test", "alice-pw"
	mem, err := membackend.Start("127.0.0.1:0", membackend.User{Name: user, Password: pass})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	imaps := tlsFront(t, cert, mem.Addr())

	rt := buildYAML(t, `
listeners:
  - {mode: imaps, address: "127.0.0.1:0"}
tls:
  certificates:
    - {cert_file: `+certFile+`, key_file: `+keyFile+`}
routing:
  redis: {addrs: ["`+r.Addr+`"]}
  health: {disabled: true}
  cache: {disabled: true}
backend_defaults:
  security: plain
  tls: {ca_file: `+certFile+`}
`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, rec := range []routing.Record{
		{Addr: imaps, Security: "tls"},
		{Addr: imaps, Security: "tls", ServerName: "localhost"},
		{Addr: mem.Addr()}, // plain, the default
	} {
		if err := rt.RedisRouter.SetRoute(ctx, user, rec); err != nil {
			t.Fatal(err)
		}
		b, err := rt.RedisRouter.Lookup(ctx, user)
		if err != nil {
			t.Fatalf("%s: %v", rec, err)
		}
		res, err := upstream.Login(ctx, b, upstream.Credentials{User: user, Secret: pass}, nil)
		if err != nil {
			t.Fatalf("%s: login: %v", rec, err)
		}
		res.Conn.Close()
	}
}
