package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
)

// streamBackend is a fake IMAP backend for kicks: it accepts any login,
// answers FETCH with one large literal written slowly, holds IDLE until
// DONE, and accepts COMPRESS (without compressing anything).
type streamBackend struct {
	*fakeServer
	body  []byte        // the FETCH literal
	chunk int           // bytes per write of the literal
	pause time.Duration // between writes
	ended chan error    // one value per connection that has ended
	quit  chan struct{} // closed by close: ends pauses
	delay time.Duration // before the greeting
}

func (h *harness) streamBackend(name string, tune func(*streamBackend), users ...string) *streamBackend {
	h.t.Helper()
	b := &streamBackend{chunk: 32 << 10, pause: 10 * time.Millisecond,
		ended: make(chan error, 64), quit: make(chan struct{})}
	if tune != nil {
		tune(b)
	}
	b.fakeServer = startFakeServer(h.t, func(c net.Conn) {
		err := b.handle(c)
		c.Close() // before reporting the end: tests then expect the proxy to see it
		b.ended <- err
	})
	h.t.Cleanup(b.close) // runs before the harness's close and goroutine check
	be := &routing.Backend{Name: name, Addr: b.addr()}
	for _, u := range users {
		h.router.add(u, be)
	}
	return b
}

func (b *streamBackend) handle(c net.Conn) error {
	const caps = "IMAP4rev1 SASL-IR AUTH=PLAIN IDLE COMPRESS=DEFLATE"
	select {
	case <-time.After(b.delay):
	case <-b.quit:
		return nil
	}
	io.WriteString(c, "* OK [CAPABILITY "+caps+"] stream backend ready\r\n")
	br := bufio.NewReader(c)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		tag, rest, _ := strings.Cut(strings.TrimRight(l, "\r\n"), " ")
		cmd, _, _ := strings.Cut(rest, " ")
		var reply string
		switch strings.ToUpper(cmd) {
		case "AUTHENTICATE", "LOGIN":
			reply = tag + " OK [CAPABILITY " + caps + "] Logged in\r\n"
		case "FETCH":
			fmt.Fprintf(c, "* 1 FETCH (BODY[] {%d}\r\n", len(b.body))
			for p := b.body; len(p) > 0; {
				n := min(b.chunk, len(p))
				if _, err := c.Write(p[:n]); err != nil {
					return err
				}
				p = p[n:]
				select {
				case <-time.After(b.pause):
				case <-b.quit:
					return nil
				}
			}
			reply = ")\r\n" + tag + " OK Fetch completed\r\n"
		case "IDLE":
			io.WriteString(c, "+ idling\r\n")
			if _, err := br.ReadString('\n'); err != nil {
				return err
			}
			reply = tag + " OK Idle completed\r\n"
		case "COMPRESS":
			reply = tag + " OK DEFLATE active\r\n"
		case "LOGOUT":
			io.WriteString(c, "* BYE logging out\r\n"+tag+" OK done\r\n")
			return nil
		default:
			reply = tag + " OK done\r\n"
		}
		if _, err := io.WriteString(c, reply); err != nil {
			return err
		}
	}
}

func (b *streamBackend) close() {
	close(b.quit)
	b.fakeServer.close()
}

// waitEnded waits for n backend connections to end.
func (b *streamBackend) waitEnded(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-b.ended:
		case <-time.After(5 * time.Second):
			t.Fatalf("backend connection %d of %d still open", i+1, n)
		}
	}
}

// loginAs logs in on the imaps listener and checks the OK.
func (h *harness) loginAs(t *testing.T, user string) *client {
	t.Helper()
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a LOGIN " + user + " pw\r\n")
	c.expectPrefix("a OK ")
	return c
}

// readToEOF returns what the client receives until the server closes.
func (c *client) readToEOF() []byte {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(c.br)
	if err != nil && !isReset(err) {
		c.t.Fatalf("waiting for close: %v (got %q)", err, rest)
	}
	return rest
}

const kickBye = "* BYE [UNAVAILABLE] moving you\r\n"

func TestKickDuringFetch(t *testing.T) {
	h := newHarness(t, nil)
	// A literal full of things that look like responses and markers.
	body := make([]byte, 1<<20)
	r := mrand.New(mrand.NewPCG(7, 8))
	for i := range body {
		body[i] = byte('a' + r.IntN(26))
	}
	for i := 0; i+64 < len(body); i += 1000 + r.IntN(3000) {
		copy(body[i:], "\r\n* BYE fake\r\na OK\r\n* 2 FETCH (BODY[] {12}\r\n")
	}
	be := h.streamBackend("big", func(b *streamBackend) { b.body = body }, "fetch@example.test", "other@example.test")

	c := h.loginAs(t, "fetch@example.test")
	other := h.loginAs(t, "other@example.test")
	c.send("f FETCH 1 BODY[]\r\n")
	c.expect("* 1 FETCH (BODY[] {1048576}")
	got := make([]byte, len(body))
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c.br, got[:100<<10]); err != nil {
		t.Fatal(err)
	}
	// The client is well inside the literal, and the backend still sending.
	if n := h.srv.KickUser("FETCH", "moving you"); n != 1 {
		t.Fatalf("KickUser found %d sessions, want 1", n)
	}
	if _, err := io.ReadFull(c.br, got[100<<10:]); err != nil {
		t.Fatalf("literal cut short: %v", err)
	}
	if !bytes.Equal(got, body) {
		t.Fatal("literal corrupted")
	}
	rest := string(c.readToEOF())
	// The response ends; the tagged OK may or may not have come with it.
	if rest != ")\r\n"+kickBye && rest != ")\r\nf OK Fetch completed\r\n"+kickBye {
		t.Fatalf("after the literal: %q", rest)
	}
	be.waitEnded(t, 1)

	// The other user's session is untouched.
	other.send("n NOOP\r\n")
	other.expect("n OK done")
	waitLog(t, h, `outcome=kicked`)
	if strings.Count(h.logs.String(), "outcome=kicked") != 1 {
		t.Errorf("log: %s", h.logs)
	}
}

// waitLog waits for the server's log to contain s.
func waitLog(t *testing.T, h *harness, s string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(h.logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("log has no %s:\n%s", s, h.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestKickIdleAndCompressed(t *testing.T) {
	h := newHarness(t, nil)
	be := h.streamBackend("idle", nil, "idle@example.test", "zip@example.test")

	t.Run("idle", func(t *testing.T) {
		c := h.loginAs(t, "idle@example.test")
		c.send("i IDLE\r\n")
		c.expect("+ idling")
		start := time.Now()
		if n := h.srv.KickUser("idle@example.test", "moving you"); n != 1 {
			t.Fatalf("KickUser found %d sessions", n)
		}
		if rest := string(c.readToEOF()); rest != kickBye {
			t.Fatalf("got %q, want the BYE and EOF", rest)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("the BYE took %v", d)
		}
		be.waitEnded(t, 1)
	})

	t.Run("compressed", func(t *testing.T) {
		c := h.loginAs(t, "zip@example.test")
		c.send("z compress deflate\r\n")
		c.expect("z OK DEFLATE active")
		if n := h.srv.KickUser("zip@example.test", "moving you"); n != 1 {
			t.Fatalf("KickUser found %d sessions", n)
		}
		if rest := c.readToEOF(); len(rest) != 0 {
			t.Fatalf("a compressed session got %q", rest)
		}
		be.waitEnded(t, 1)
	})

	t.Run("preauth", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		if n := h.srv.KickUser("idle@example.test", ""); n != 0 {
			t.Fatalf("KickUser found %d sessions of a user not logged in", n)
		}
		c.send("a LOGIN idle@example.test pw\r\n")
		c.expectPrefix("a OK ")
		if n := h.srv.KickUser("bad user", ""); n != 0 {
			t.Fatalf("KickUser of an invalid name found %d", n)
		}
		// The default reason, and a reason cleaned to one line.
		if n := h.srv.KickUser("idle", "two\r\nlines\x00"); n != 1 {
			t.Fatalf("KickUser found %d", n)
		}
		if rest := string(c.readToEOF()); rest != "* BYE [UNAVAILABLE] two??lines?\r\n" {
			t.Fatalf("got %q", rest)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(h.logs.String(), "outcome=kicked") != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("want 3 sessions logged as kicked:\n%s", h.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestKickStuck: a kicked session whose backend stops in the middle of a
// literal is closed after the kick timeout, without a BYE.
func TestKickStuck(t *testing.T) {
	h := newHarness(t, func(l *proxy.Limits) { l.KickTimeout = 300 * time.Millisecond })
	h.streamBackend("stuck", func(b *streamBackend) {
		b.body = make([]byte, 64<<10)
		b.chunk, b.pause = 1<<10, time.Hour // one KiB, then silence
	}, "stuck@example.test")
	c := h.loginAs(t, "stuck@example.test")
	c.send("f FETCH 1 BODY[]\r\n")
	c.expect("* 1 FETCH (BODY[] {65536}")
	start := time.Now()
	h.srv.KickUser("stuck", "")
	rest := c.readToEOF()
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Errorf("closed after %v, want about 300ms", d)
	}
	if len(rest) != 1<<10 {
		t.Errorf("got %d bytes (%q...), want the 1 KiB sent", len(rest), rest[:min(len(rest), 40)])
	}
}

func TestKickBackend(t *testing.T) {
	h := newHarness(t, nil)
	h.streamBackend("pool1", nil, "u1@example.test")
	lit := h.streamBackend("", nil, "lit@example.test")
	const n = 6
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = h.loginAs(t, "u1@example.test")
	}
	other := h.loginAs(t, "lit@example.test")

	const window = time.Second
	start := time.Now()
	if got := h.srv.KickBackend("pool1", window); got != n {
		t.Fatalf("KickBackend scheduled %d, want %d", got, n)
	}
	if got := h.srv.KickBackend("pool1", window); got != n {
		t.Fatalf("a second KickBackend counted %d, want %d", got, n)
	}
	ends := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			rest, _ := io.ReadAll(c.br)
			ends[i] = time.Since(start)
			if string(rest) != "* BYE [UNAVAILABLE] Backend maintenance, please reconnect\r\n" {
				t.Errorf("session %d got %q", i, rest)
			}
		}()
	}
	wg.Wait()
	slices.Sort(ends)
	t.Logf("sessions ended after %v", ends)
	if ends[n-1] > window+500*time.Millisecond {
		t.Errorf("last session ended after %v, window %v", ends[n-1], window)
	}
	if ends[n-1]-ends[0] < window/10 {
		t.Errorf("ends not spread: %v", ends)
	}

	// The other backend's session lives on, and a literal address is
	// matched by its address.
	other.send("n NOOP\r\n")
	other.expect("n OK done")
	if got := h.srv.KickBackend(lit.addr(), 0); got != 1 {
		t.Fatalf("KickBackend by address scheduled %d", got)
	}
	if rest := string(other.readToEOF()); !strings.HasPrefix(rest, "* BYE [UNAVAILABLE]") {
		t.Fatalf("got %q", rest)
	}
}

func TestSessionsAndHooks(t *testing.T) {
	var mu sync.Mutex
	spliced := map[string]proxy.SessionInfo{}
	ended := map[string]proxy.SessionInfo{}
	var dup []string
	h := newHarnessWith(t, nil, func(s *proxy.Server) {
		s.OnSplice = func(si proxy.SessionInfo) {
			mu.Lock()
			defer mu.Unlock()
			if _, ok := spliced[si.ID]; ok {
				dup = append(dup, "splice "+si.ID)
			}
			spliced[si.ID] = si
		}
		s.OnEnd = func(si proxy.SessionInfo) {
			mu.Lock()
			defer mu.Unlock()
			if _, ok := ended[si.ID]; ok {
				dup = append(dup, "end "+si.ID)
			}
			ended[si.ID] = si
		}
	})
	h.streamBackend("mx1", nil, "s1@example.test", "s2@example.test")
	begin := time.Now()
	c1 := h.loginAs(t, "s1@example.test")
	c2 := h.loginAs(t, "s1@example.test")
	c3 := h.loginAs(t, "s2@example.test")
	pre := h.dialTLS(t, h.imaps) // not logged in: not listed
	pre.greeting()
	for _, c := range []*client{c1, c2, c3} {
		c.send("n NOOP\r\n")
		c.expect("n OK done")
	}

	// A direction counts its bytes after its write returns, which can be
	// just after the client has read them.
	counted := func(si proxy.SessionInfo) bool {
		return si.BytesToBackend == int64(len("n NOOP\r\n")) && si.BytesToClient == int64(len("n OK done\r\n"))
	}
	list := h.srv.Sessions()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); list = h.srv.Sessions() {
		if len(list) == 3 && counted(list[0]) && counted(list[1]) && counted(list[2]) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(list) != 3 {
		t.Fatalf("Sessions() = %+v, want 3", list)
	}
	users := map[string]int{}
	clientAddrs := map[string]bool{}
	for _, c := range []*client{c1, c2, c3} {
		clientAddrs[c.c.LocalAddr().String()] = true
	}
	for _, si := range list {
		users[si.User]++
		if si.ID == "" || si.Backend != "mx1" || si.Listener != "imaps" || !clientAddrs[si.Client] {
			t.Errorf("bad entry %+v", si)
		}
		if si.Since.Before(begin) || si.Since.After(time.Now()) {
			t.Errorf("Since %v not within the test", si.Since)
		}
		if !counted(si) {
			t.Errorf("byte counts %d, %d", si.BytesToBackend, si.BytesToClient)
		}
	}
	if users["s1@example.test"] != 2 || users["s2@example.test"] != 1 {
		t.Errorf("users %v", users)
	}

	for _, c := range []*client{c1, c2, c3} {
		c.send("z LOGOUT\r\n")
		c.until("z")
		c.readToEOF()
		c.c.Close() // the proxy waits for the client's side of the close
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(h.srv.Sessions()) > 0 || func() bool { mu.Lock(); defer mu.Unlock(); return len(ended) < 3 }() {
		if time.Now().After(deadline) {
			t.Fatalf("sessions still listed: %+v", h.srv.Sessions())
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(spliced) != 3 || len(ended) != 3 || len(dup) > 0 {
		t.Fatalf("OnSplice %d, OnEnd %d, duplicates %v", len(spliced), len(ended), dup)
	}
	for id, si := range ended {
		if _, ok := spliced[id]; !ok {
			t.Errorf("OnEnd without OnSplice: %+v", si)
		}
		if si.BytesToClient <= int64(len("n OK done\r\n")) {
			t.Errorf("final counts %+v", si)
		}
	}
}

func TestLoginGate(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var asked []string
	racerAsks := 0
	h := newHarnessWith(t, func(l *proxy.Limits) { l.LoginGateTimeout = 300 * time.Millisecond },
		func(s *proxy.Server) {
			s.LoginGate = func(ctx context.Context, user string) error {
				mu.Lock()
				asked = append(asked, user)
				mu.Unlock()
				switch user {
				case "held@example.test":
					select {
					case <-release:
						return nil
					case <-ctx.Done():
						return ctx.Err()
					}
				case "refused@example.test":
					return errors.New("user is being moved")
				case "slow@example.test":
					<-ctx.Done()
					return ctx.Err()
				case "racer@example.test":
					// The first ask passes; the hold of a move that began
					// meanwhile is known by the second.
					racerAsks++
					if racerAsks > 1 {
						return errors.New("user is being moved")
					}
				}
				return nil
			}
		})
	h.streamBackend("gate", nil, "held@example.test", "refused@example.test", "slow@example.test", "racer@example.test")

	t.Run("held", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN HELD pw\r\n")
		c.c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
		if _, err := c.br.Peek(1); !isTimeout(err) {
			t.Fatalf("answered while held: %v", err)
		}
		close(release)
		c.expectPrefix("a OK ")
	})
	t.Run("refused", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN refused pw\r\n")
		c.expectPrefix("a NO [UNAVAILABLE] ")
	})
	t.Run("timeout", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		start := time.Now()
		c.send("a LOGIN slow pw\r\n")
		c.expectPrefix("a NO [UNAVAILABLE] ")
		if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
			t.Errorf("answered after %v, want about 300ms", d)
		}
	})
	t.Run("hold during registration", func(t *testing.T) {
		c := h.dialTLS(t, h.imaps)
		c.greeting()
		c.send("a LOGIN racer pw\r\n")
		c.expectPrefix("a NO [UNAVAILABLE] ")
		for _, si := range h.srv.Sessions() {
			if si.User == "racer@example.test" {
				t.Errorf("refused login still registered: %+v", si)
			}
		}
	})
	mu.Lock()
	defer mu.Unlock()
	// Each login asks before and after it is registered, unless the first
	// answer refuses it.
	want := []string{"held@example.test", "held@example.test", "refused@example.test", "slow@example.test",
		"racer@example.test", "racer@example.test"}
	if !slices.Equal(asked, want) {
		t.Errorf("gate asked about %q, want %q (normalised)", asked, want)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestKickDuringLogin: a kick that comes while the user's login is in
// progress refuses that login instead of splicing it; the client may retry.
func TestKickDuringLogin(t *testing.T) {
	h := newHarness(t, nil)
	be := h.streamBackend("slow", func(b *streamBackend) { b.delay = 300 * time.Millisecond }, "slow@example.test")
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.send("a LOGIN slow pw\r\n")
	deadline := time.Now().Add(5 * time.Second)
	for h.srv.KickUser("slow", "") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the login in progress was never found")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.expectPrefix("a NO [UNAVAILABLE] ")
	be.waitEnded(t, 1)
	if n := len(h.srv.Sessions()); n != 0 {
		t.Fatalf("%d sessions listed", n)
	}
	c.send("b LOGIN slow pw\r\n")
	c.expectPrefix("b OK ")
	// The session is listed once its splice goroutine has started, which
	// may be a moment after the client read its OK.
	for wait := time.Now().Add(2 * time.Second); len(h.srv.Sessions()) != 1; {
		if time.Now().After(wait) {
			t.Fatalf("%d sessions listed after the retry", len(h.srv.Sessions()))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
