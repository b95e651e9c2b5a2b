package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// testPoller parks the "-parked" splice modes and the benchmark proxies;
// it lives as long as the test binary, so goroutine counts include it from
// the start. nil where there is no epoll: those modes then do not park.
var testPoller *poller

func TestMain(m *testing.M) {
	testPoller, _ = newPoller()
	// Park after 10 ms rather than a second, so that the sessions of every
	// test in this package, not only those written for parking, park and
	// resume between their steps.
	parkAfter = 10 * time.Millisecond
	os.Exit(m.Run())
}

func needPoller(t *testing.T) {
	t.Helper()
	if testPoller == nil {
		t.Fatal("no epoll poller on this system; the parking tests need Linux")
	}
}

// waitParked waits until both directions of p are parked.
func waitParked(t *testing.T, p *splicer) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.dirs[dirUp].state.Load() != dirParked || p.dirs[dirDown].state.Load() != dirParked {
		if time.Now().After(deadline) {
			t.Fatalf("directions not parked (states %d, %d)", p.dirs[dirUp].state.Load(), p.dirs[dirDown].state.Load())
		}
		time.Sleep(parkAfter / 2)
	}
}

// goroutinesIn counts the goroutines with fn on their stack.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), fn)
}

// An idle session holds no goroutine; data from either side resumes its
// parked direction, which parks again once quiet.
func TestSpliceParksIdleDirection(t *testing.T) {
	needPoller(t)
	for _, backendTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("backendTLS=%v", backendTLS), func(t *testing.T) {
			testSpliceParks(t, backendTLS)
		})
	}
}

func testSpliceParks(t *testing.T, backendTLS bool) {
	g := runtime.NumGoroutine()
	p := &splicer{poller: testPoller}
	client, backend, res := startSplice(t, context.Background(), p, true, backendTLS)
	defer client.Close()
	defer backend.Close()

	buf := make([]byte, 64)
	for round := range 3 {
		waitParked(t, p)
		if n := goroutinesIn("(*splicer).spliceToClient("); n != 0 {
			t.Errorf("round %d: %d goroutines copy to the client of a parked session, want 0", round, n)
		}
		if n := goroutinesIn("(*splicer).spliceToBackend("); n != 0 {
			t.Errorf("round %d: %d goroutines copy to the backend of a parked session, want 0", round, n)
		}
		msg := fmt.Sprintf("* %d EXISTS\r\n", round)
		io.WriteString(backend, msg)
		if _, err := io.ReadFull(client, buf[:len(msg)]); err != nil || string(buf[:len(msg)]) != msg {
			t.Fatalf("round %d: client read %q, %v", round, buf[:len(msg)], err)
		}
		io.WriteString(client, "a NOOP\r\n")
		if _, err := io.ReadFull(backend, buf[:8]); err != nil || string(buf[:8]) != "a NOOP\r\n" {
			t.Fatalf("round %d: backend read %q, %v", round, buf[:8], err)
		}
	}
	waitParked(t, p)
	// The backend's EOF wakes the parked direction, which passes it on.
	backend.Close()
	if got, err := io.ReadAll(client); err != nil || len(got) != 0 {
		t.Errorf("client after backend EOF: %q, %v", got, err)
	}
	client.Close()
	if r := waitSplice(t, res); r.err != nil {
		t.Errorf("splice: %v", r.err)
	}
	checkGoroutines(t, g)
}

// A direction woken for a little data (an IDLE notification) parks again
// at once, not after parkAfter: Dovecot wakes all the IDLE sessions of
// one client address together. One that carries a burst keeps its
// goroutine for parkAfter, as a busy direction does.
func TestSpliceWokenParksQuickly(t *testing.T) {
	needPoller(t)
	defer SetParkAfter(600 * time.Millisecond)()
	g := runtime.NumGoroutine()
	p := &splicer{poller: testPoller}
	client, backend, res := startSplice(t, context.Background(), p, true, false)
	defer client.Close()
	defer backend.Close()
	down := &p.dirs[dirDown]
	parkedWithin := func(d time.Duration) bool {
		for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if down.state.Load() == dirParked {
				return true
			}
		}
		return false
	}
	if !parkedWithin(5 * time.Second) {
		t.Fatal("the idle direction did not park")
	}
	const note = "* OK Still here\r\n"
	io.WriteString(backend, note)
	buf := make([]byte, 64<<10)
	if _, err := io.ReadFull(client, buf[:len(note)]); err != nil {
		t.Fatal(err)
	}
	if !parkedWithin(parkAfter / 3) {
		t.Errorf("a direction woken for %d bytes still runs %v later", len(note), parkAfter/3)
	}
	backend.Write(buf) // well over quickBytes
	if _, err := io.ReadFull(client, buf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(parkAfter / 4)
	if down.state.Load() == dirParked {
		t.Errorf("a direction that carried %d bytes parked within %v", len(buf), parkAfter/4)
	}
	backend.Close()
	client.Close()
	waitSplice(t, res)
	checkGoroutines(t, g)
}

// Closing a session whose direction is parked (a kick, shutdown) ends it at
// once, although the closed socket raises no event.
func TestSpliceParkedCancel(t *testing.T) {
	needPoller(t)
	g := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	p := &splicer{poller: testPoller}
	client, backend, res := startSplice(t, ctx, p, true, false)
	defer client.Close()
	defer backend.Close()
	waitParked(t, p)
	cancel()
	if r := waitSplice(t, res); !errors.Is(r.err, context.Canceled) {
		t.Errorf("splice = %v, want Canceled", r.err)
	}
	for i := range p.dirs {
		if s := p.dirs[i].state.Load(); s != dirDone {
			t.Errorf("direction %d: state %d after close, want done", i, s)
		}
	}
	checkGoroutines(t, g)
}

// After the client's EOF, a parked backend direction still gets only
// halfCloseGrace to finish: the grace is a timer, not a read deadline.
func TestSpliceParkedHalfCloseGrace(t *testing.T) {
	needPoller(t)
	defer func(d time.Duration) { halfCloseGrace = d }(halfCloseGrace)
	halfCloseGrace = 300 * time.Millisecond
	g := runtime.NumGoroutine()
	p := &splicer{poller: testPoller}
	client, backend, res := startSplice(t, context.Background(), p, true, false)
	defer client.Close()
	defer backend.Close()
	waitParked(t, p)
	closeWrite(client)
	if got, err := io.ReadAll(backend); err != nil || len(got) != 0 {
		t.Fatalf("backend after client EOF: %q, %v", got, err)
	}
	// The backend stays silent: the session ends after the grace.
	start := time.Now()
	waitSplice(t, res)
	if d := time.Since(start); d > 5*halfCloseGrace {
		t.Errorf("session ended %v after the half-close, want about %v", d, halfCloseGrace)
	}
	checkGoroutines(t, g)
}

// Many sessions park and resume both directions at random while closes
// race with events; every byte arrives in order and nothing is left
// running.
func TestSpliceParkingStress(t *testing.T) {
	needPoller(t)
	g := runtime.NumGoroutine()
	const sessions = 40
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 1))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			client, backend, res := startSplice(t, ctx, &splicer{poller: testPoller}, i%2 == 0, i%4 < 2)
			defer client.Close()
			defer backend.Close()
			for step := range 20 {
				msg := fmt.Appendf(nil, "* %d %d\r\n", i, step)
				if _, err := backend.Write(msg); err != nil {
					errs <- err
					return
				}
				got := make([]byte, len(msg))
				client.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(client, got); err != nil || string(got) != string(msg) {
					errs <- fmt.Errorf("session %d step %d: read %q, %v, want %q", i, step, got, err, msg)
					return
				}
				if step%2 == 1 { // and the other way, to resume the client's side
					up := fmt.Appendf(nil, "a%d NOOP %d\r\n", step, i)
					if _, err := client.Write(up); err != nil {
						errs <- err
						return
					}
					got := make([]byte, len(up))
					backend.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := io.ReadFull(backend, got); err != nil || string(got) != string(up) {
						errs <- fmt.Errorf("session %d step %d: backend read %q, %v, want %q", i, step, got, err, up)
						return
					}
				}
				// Sometimes quiet long enough to park, sometimes not.
				time.Sleep(time.Duration(r.IntN(int(3 * parkAfter))))
			}
			if i%3 == 0 {
				cancel() // close while parked or running
			} else {
				backend.Close()
				client.Close()
			}
			select {
			case <-res:
			case <-time.After(10 * time.Second):
				errs <- fmt.Errorf("session %d: splice did not end", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkGoroutines(t, g)
}

// splitConn writes each chunk in two halves with a pause between, so that a
// TLS record reaches the proxy in two parts.
type splitConn struct {
	net.Conn
	pause time.Duration
}

func (c *splitConn) Write(p []byte) (int, error) {
	h := len(p) / 2
	n, err := c.Conn.Write(p[:h])
	if err != nil {
		return n, err
	}
	time.Sleep(c.pause)
	m, err := c.Conn.Write(p[h:])
	return n + m, err
}

// A TLS record that arrives in two parts, from the backend or from the
// client, with the direction parking in between, still reaches the other
// side whole: the tls.Conn keeps the first part while the socket waits in
// the poller.
func TestSpliceParksInsideTLSRecord(t *testing.T) {
	needPoller(t)
	for _, fromClient := range []bool{false, true} {
		t.Run(fmt.Sprintf("fromClient=%v", fromClient), func(t *testing.T) {
			testSpliceParksInsideTLSRecord(t, fromClient)
		})
	}
}

func testSpliceParksInsideTLSRecord(t *testing.T, fromClient bool) {
	g := runtime.NumGoroutine()
	bd, ba := tcpPair(t)
	cd, ca := tcpPair(t)
	var sc *splitConn
	var backend, pb, client, pc *tls.Conn
	if fromClient {
		sc = &splitConn{Conn: cd}
		backend, pb = tlsPair(t, bd, ba, false)
		client, pc = tlsPair(t, sc, ca, true)
	} else {
		sc = &splitConn{Conn: bd}
		backend, pb = tlsPair(t, sc, ba, false)
		client, pc = tlsPair(t, cd, ca, true)
	}
	defer client.Close()
	defer backend.Close()
	p := &splicer{poller: testPoller}
	res := make(chan spliceResult, 1)
	go func() {
		var r spliceResult
		r.toBackend, r.toClient, r.err = p.splice(context.Background(), pc, pb)
		res <- r
	}()
	waitParked(t, p)

	sc.pause = 20 * parkAfter
	const msg = "* 7 FETCH (FLAGS (\\Seen))\r\n"
	from, to := net.Conn(backend), net.Conn(client)
	if fromClient {
		from, to = client, backend
	}
	wrote := make(chan error, 1)
	go func() { _, err := io.WriteString(from, msg); wrote <- err }()
	// Half the record is in; the direction parks again before the rest.
	time.Sleep(5 * parkAfter)
	waitParked(t, p)
	buf := make([]byte, len(msg))
	to.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(to, buf); err != nil || string(buf) != msg {
		t.Fatalf("read %q, %v", buf, err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	backend.Close()
	client.Close()
	waitSplice(t, res)
	checkGoroutines(t, g)
}
