package testsrv

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/redis/go-redis/v9"
)

// bigMessage returns a CRLF message of about size bytes.
func bigMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: bob@example.org\r\nTo: alice@example.org\r\nSubject: big\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

func login(t *testing.T, addr, user, pw string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, pw).Wait(); err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	return c
}

func TestDovecot(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{
		Users:          map[string]string{"alice": "secret", "bob": "hunter2"},
		MasterUser:     "proxymaster",
		MasterPassword: "masterpw",
	})
	msg := bigMessage(1 << 20)
	d.AddMessage(t, "alice", "INBOX", msg)
	d.AddMessage(t, "alice", "Archive", []byte("Subject: old\r\n\r\nhi\r\n"))

	c := login(t, d.Addr, "alice", "secret")
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 1 {
		t.Fatalf("INBOX has %d messages, want 1", sel.NumMessages)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{
		RFC822Size:  true,
		BodySection: []*imap.FetchItemBodySection{section},
	}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].RFC822Size != int64(len(msg)) || !bytes.Equal(msgs[0].FindBodySection(section), msg) {
		t.Fatalf("fetched message differs from the seeded one")
	}

	// A message added while the mailbox is selected shows up on NOOP.
	d.AddMessage(t, "alice", "INBOX", []byte("Subject: later\r\n\r\nhi\r\n"))
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	if n := c.Mailbox().NumMessages; n != 2 {
		t.Fatalf("after NOOP INBOX has %d messages, want 2", n)
	}
	if sel, err := c.Select("Archive", nil).Wait(); err != nil || sel.NumMessages != 1 {
		t.Fatalf("Archive: %v, %+v", err, sel)
	}
	line := d.WaitLog(t, "Login: user=<alice>", 5*time.Second)
	if !strings.Contains(line, "rip=127.0.0.1") {
		t.Errorf("login line lacks rip: %s", line)
	}

	// Master user: PLAIN with authzid=alice, authcid=proxymaster.
	m, err := imapclient.DialInsecure(d.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Authenticate(sasl.NewPlainClient("alice", "proxymaster", "masterpw")); err != nil {
		t.Fatalf("master login: %v", err)
	}
	d.WaitLog(t, "Master user logging in as alice", 5*time.Second)

	// Wrong passwords fail quickly (auth_failure_delay = 0).
	b, err := imapclient.DialInsecure(d.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	start := time.Now()
	if err := b.Login("bob", "wrong").Wait(); err == nil {
		t.Fatal("login with a wrong password succeeded")
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("failed login took %v", el)
	}
	if strings.Contains(d.Log(), "hunter2") || strings.Contains(d.Log(), "secret") {
		t.Error("the log contains a password")
	}

	// Forwarded client IPs: ID from a trusted network, PROXY on the HAProxy port.
	raw(t, d.Addr, "", `a ID ("x-originating-ip" "192.0.2.9" "x-originating-port" "4242")`, "b LOGIN alice secret")
	d.WaitLog(t, "rip=192.0.2.9", 5*time.Second)
	raw(t, d.HAProxyAddr, "PROXY TCP4 192.0.2.7 127.0.0.1 5555 143\r\n", "b LOGIN alice secret")
	d.WaitLog(t, "rip=192.0.2.7", 5*time.Second)

	// Stop with sessions still connected: logged-in imap processes would
	// outlive the master if Stop only signalled the master.
	pgid := d.cmd.Process.Pid
	if len(groupProcesses(pgid)) < 3 {
		t.Fatalf("expected a dovecot process tree, got %v", groupProcesses(pgid))
	}
	d.Stop()
	d.Stop() // idempotent
	if p := groupProcesses(pgid); len(p) != 0 {
		t.Fatalf("processes survived Stop: %v", p)
	}
	if conn, err := net.DialTimeout("tcp", d.Addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("IMAP port still accepts connections after Stop")
	}
}

// raw sends an optional preamble, then tagged commands, and waits for the
// last tagged response, which must be OK.
func raw(t *testing.T, addr, preamble string, cmds ...string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(c, preamble)
	r := bufio.NewReader(c)
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "* OK") {
		t.Fatalf("greeting %q: %v", l, err)
	}
	for _, cmd := range cmds {
		fmt.Fprintf(c, "%s\r\n", cmd)
		tag := strings.Fields(cmd)[0] + " "
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}
			if strings.HasPrefix(l, tag) {
				if !strings.HasPrefix(l, tag+"OK") {
					t.Fatalf("%s: %s", tag, l)
				}
				break
			}
		}
	}
}

func TestDovecotUntrusted(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{
		Users:           map[string]string{"alice": "secret"},
		TrustedNetworks: []string{},
	})
	if strings.Contains(d.Log(), "192.0.2") {
		t.Fatal("unexpected log content")
	}
	raw(t, d.Addr, "", `a ID ("x-originating-ip" "192.0.2.9")`, "b LOGIN alice secret")
	line := d.WaitLog(t, "Login: user=<alice>", 5*time.Second)
	if !strings.Contains(line, "rip=127.0.0.1") {
		t.Fatalf("untrusted client could forward its IP: %s", line)
	}
	b, err := os.ReadFile(d.Dir + "/dovecot.conf")
	if err != nil || !strings.Contains(string(b), "login_trusted_networks = \n") {
		t.Fatalf("config does not trust nobody: %v", err)
	}
}

// TestDovecotPOP3: with POP3 set, pop3-login serves the users' mail,
// takes XCLIENT from trusted networks and PROXY headers on its haproxy
// listener.
func TestDovecotPOP3(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{Users: map[string]string{"alice": "secret"}, POP3: true})
	d.AddMessage(t, "alice", "INBOX", []byte("Subject: hi\r\n\r\nhello\r\n"))
	pop3(t, d.POP3Addr, "", "+OK [XCLIENT]", "XCLIENT ADDR=192.0.2.9 PORT=4242", "USER alice", "PASS secret", "STAT +OK 1 22")
	d.WaitLog(t, "rip=192.0.2.9", 5*time.Second)
	pop3(t, d.POP3HAProxyAddr, "PROXY TCP4 192.0.2.7 127.0.0.1 5555 110\r\n", "+OK", "USER alice", "PASS secret")
	d.WaitLog(t, "rip=192.0.2.7", 5*time.Second)

	imapOnly := StartDovecot(t, DovecotOptions{})
	if imapOnly.POP3Addr != "" || imapOnly.POP3HAProxyAddr != "" {
		t.Errorf("POP3 listeners without POP3: %q %q", imapOnly.POP3Addr, imapOnly.POP3HAProxyAddr)
	}
}

// pop3 sends an optional preamble, checks the greeting starts with
// greeting, then sends each command and checks its answer is +OK (or, for
// "CMD ARG +OK ...", starts with what follows the command).
func pop3(t *testing.T, addr, preamble, greeting string, cmds ...string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(c, preamble)
	r := bufio.NewReader(c)
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, greeting) {
		t.Fatalf("greeting %q: %v", l, err)
	}
	for _, cmd := range cmds {
		want := "+OK"
		if i := strings.Index(cmd, " +OK"); i >= 0 {
			cmd, want = cmd[:i], cmd[i+1:]
		}
		fmt.Fprintf(c, "%s\r\n", cmd)
		if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, want) {
			t.Fatalf("%s: %q, %v", cmd, l, err)
		}
	}
}

func TestRedis(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	r.Stop()
	if c, err := net.DialTimeout("tcp", r.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("redis still accepts connections after Stop")
	}
}

// fakeTB records Fatalf and stops the calling function, as testing.T does.
type fakeTB struct {
	testing.TB
	msg string
}

type fatal struct{}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(fatal{})
}

func TestLookPathMissing(t *testing.T) {
	f := &fakeTB{TB: t}
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(fatal); !ok {
					panic(r)
				}
			}
		}()
		LookPath(f, "portico-no-such-server", "/nonexistent/portico-no-such-server")
	}()
	if !strings.Contains(f.msg, "portico-no-such-server not found") || !strings.Contains(f.msg, "make test") {
		t.Fatalf("LookPath did not fail loudly: %q", f.msg)
	}
	if p := LookPath(t, "sh"); p == "" {
		t.Fatal("LookPath(sh) returned nothing")
	}
}
