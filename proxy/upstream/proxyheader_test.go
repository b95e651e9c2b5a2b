package upstream

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/routing"
)

// readHeader reads a PROXY header at the start of the fake's stream.
func readHeader(f *fake) (*proxyproto.Header, error) {
	return proxyproto.Read(f.r)
}

func TestProxyHeaderInsteadOfID(t *testing.T) {
	var hdr *proxyproto.Header
	addr, done := startFake(t, func(f *fake) {
		var err error
		if hdr, err = readHeader(f); err != nil {
			t.Errorf("no PROXY header: %v", err)
			return
		}
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID] ready\r\n")
		serveLogin(f, "OK [CAPABILITY IMAP4rev1] Logged in\r\n")
	})
	id := &IDInfo{ClientIP: "203.0.113.9", ClientPort: 5555, ConnectedIP: "::ffff:192.0.2.1", ConnectedPort: 993, SessionID: "px-1"}
	b := &routing.Backend{Addr: addr, ForwardID: true, ProxyProtocol: true}
	res, err := Login(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, id)
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	f := wait(t, done)
	if hdr == nil {
		t.Fatal("no header")
	}
	if hdr.Version != 2 || hdr.Command != proxyproto.PROXY || hdr.TransportProtocol != proxyproto.TCPv4 {
		t.Errorf("header %+v", hdr)
	}
	if got := hdr.SourceAddr.String(); got != "203.0.113.9:5555" {
		t.Errorf("source %s", got)
	}
	if got := hdr.DestinationAddr.String(); got != "192.0.2.1:993" {
		t.Errorf("destination %s", got)
	}
	// One mechanism per backend: no ID even though ForwardID is set.
	if rx := f.received(); strings.Contains(rx, " ID ") {
		t.Errorf("ID sent as well: %q", rx)
	}
}

func TestProxyHeaderLocalAndTLS(t *testing.T) {
	cert, pool := testCert(t)
	var hdr *proxyproto.Header
	addr, done := startFake(t, func(f *fake) {
		var err error
		if hdr, err = readHeader(f); err != nil {
			t.Errorf("no PROXY header: %v", err)
			return
		}
		// The header precedes the TLS handshake.
		if n := f.r.Buffered(); n > 0 {
			raw, _ := f.r.Peek(n)
			f.r.Discard(n)
			f.c = &prefixConn{Conn: f.c, prefix: raw}
		}
		if !f.upgrade(cert) {
			t.Error("TLS handshake after the header failed")
			return
		}
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n")
		serveLogin(f, "OK [CAPABILITY IMAP4rev1] Logged in\r\n")
	})
	b := &routing.Backend{Addr: addr, TLS: routing.ImplicitTLS, ProxyProtocol: true}
	b.TLSConfig = &tls.Config{RootCAs: pool}
	res, err := Login(context.Background(), b, Credentials{User: "alice", Secret: "secret"}, nil) // no client address known
	if err != nil {
		t.Fatal(err)
	}
	res.Conn.Close()
	wait(t, done)
	if hdr == nil || hdr.Command != proxyproto.LOCAL {
		t.Errorf("header %+v, want LOCAL", hdr)
	}
}

func TestIDInfoAddrs(t *testing.T) {
	for _, tc := range []struct {
		id       *IDInfo
		src, dst string
	}{
		{nil, "invalid AddrPort", "invalid AddrPort"},
		{&IDInfo{ClientIP: "192.0.2.1", ClientPort: 1, ConnectedIP: "2001:db8::1", ConnectedPort: 993}, "192.0.2.1:1", "[2001:db8::1]:993"},
		{&IDInfo{ClientIP: "fe80::1%eth0", ClientPort: 70000, ConnectedIP: "bogus"}, "invalid AddrPort", "invalid AddrPort"},
	} {
		src, dst := tc.id.addrs()
		if src.String() != tc.src || dst.String() != tc.dst {
			t.Errorf("%+v: %s %s, want %s %s", tc.id, src, dst, tc.src, tc.dst)
		}
	}
	// A v4 client reaching a v6 address still makes a valid header.
	var sb strings.Builder
	if err := writeProxyHeader(&sb, netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("[2001:db8::1]:993")); err != nil {
		t.Fatal(err)
	}
}

// TestProxyHeaderDovecot logs in through Dovecot's haproxy listener with a
// client address of 127.0.0.2 and finds it in Dovecot's log as rip.
func TestProxyHeaderDovecot(t *testing.T) {
	d := testsrv.StartDovecot(t, testsrv.DovecotOptions{Users: map[string]string{"alice": "secret"}})
	id := &IDInfo{ClientIP: "127.0.0.2", ClientPort: 40123, ConnectedIP: "127.0.0.1", ConnectedPort: 993}
	b := &routing.Backend{Addr: d.HAProxyAddr, ProxyProtocol: true, ForwardID: true}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := Login(ctx, b, Credentials{User: "alice", Secret: "secret"}, id)
	if err != nil {
		t.Fatal(err)
	}
	selectInbox(t, res)
	line := d.WaitLog(t, "rip=127.0.0.2", 5*time.Second)
	if !strings.Contains(line, "Login: user=<alice>") {
		t.Errorf("log line %q", line)
	}
	// Without the header, the haproxy listener refuses the connection.
	b = &routing.Backend{Addr: d.HAProxyAddr, ConnectTimeout: 2 * time.Second, LoginTimeout: 3 * time.Second}
	if _, err := Login(ctx, b, Credentials{User: "alice", Secret: "secret"}, id); err == nil {
		t.Error("login without a PROXY header succeeded")
	}
}

// prefixConn replays bytes already read from Conn.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
