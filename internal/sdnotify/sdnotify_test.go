package sdnotify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// listen opens a unixgram socket like systemd's notify socket and returns
// its name (as $NOTIFY_SOCKET would hold it) and a function that reads the
// next datagram.
func listen(t *testing.T, abstract bool) (string, func() string) {
	t.Helper()
	name, recv := listenTimeout(t, abstract)
	return name, func() string {
		t.Helper()
		m, ok := recv(5 * time.Second)
		if !ok {
			t.Fatal("nothing arrived on the notify socket")
		}
		return m
	}
}

// listenTimeout is listen with a read that may time out.
func listenTimeout(t *testing.T, abstract bool) (string, func(time.Duration) (string, bool)) {
	t.Helper()
	var name string
	if abstract {
		name = fmt.Sprintf("@portico-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	} else {
		// Not t.TempDir(): socket paths are limited to 108 bytes.
		dir, err := os.MkdirTemp("", "sdn")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		name = filepath.Join(dir, "notify")
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return name, func(d time.Duration) (string, bool) {
		buf := make([]byte, 4096)
		c.SetReadDeadline(time.Now().Add(d))
		n, err := c.Read(buf)
		if err != nil {
			return "", false
		}
		return string(buf[:n]), true
	}
}

func TestSendPathAndAbstract(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			name, recv := listen(t, abstract)
			n := New(name)
			if !n.Enabled() {
				t.Fatal("not enabled with a socket")
			}
			if err := n.Ready("2 sessions"); err != nil {
				t.Fatal(err)
			}
			if got, want := recv(), "READY=1\nSTATUS=2 sessions\n"; got != want {
				t.Errorf("Ready: got %q, want %q", got, want)
			}
			if err := n.Stopping(""); err != nil {
				t.Fatal(err)
			}
			if got, want := recv(), "STOPPING=1\n"; got != want {
				t.Errorf("Stopping: got %q, want %q", got, want)
			}
			if err := n.MainPID(4242, ""); err != nil {
				t.Fatal(err)
			}
			if got, want := recv(), "MAINPID=4242\nREADY=1\n"; got != want {
				t.Errorf("MainPID: got %q, want %q", got, want)
			}
		})
	}
}

func TestReloadingCarriesMonotonicUsec(t *testing.T) {
	name, recv := listen(t, false)
	before, _ := monotonicUsec()
	if err := New(name).Reloading(); err != nil {
		t.Fatal(err)
	}
	after, _ := monotonicUsec()
	got := recv()
	rest, ok := strings.CutPrefix(got, "RELOADING=1\nMONOTONIC_USEC=")
	if !ok || !strings.HasSuffix(rest, "\n") {
		t.Fatalf("got %q, want RELOADING=1 and MONOTONIC_USEC=", got)
	}
	us, err := strconv.ParseUint(strings.TrimSuffix(rest, "\n"), 10, 64)
	if err != nil || us < before || us > after {
		t.Errorf("MONOTONIC_USEC=%s, want CLOCK_MONOTONIC between %d and %d", rest, before, after)
	}
}

func TestNoSocketIsANoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	var zero Notifier
	var nilN *Notifier
	for _, n := range []*Notifier{FromEnv(), New(""), &zero, nilN} {
		if n.Enabled() {
			t.Errorf("%#v: enabled without a socket", n)
		}
		if err := n.Ready(""); err != nil {
			t.Errorf("Ready without a socket: %v", err)
		}
		if err := n.Reloading(); err != nil {
			t.Errorf("Reloading without a socket: %v", err)
		}
		n.Disable()
	}
}

func TestFromEnvAndDisable(t *testing.T) {
	name, recv := listen(t, true)
	t.Setenv("NOTIFY_SOCKET", name)
	n := FromEnv()
	if err := n.Status("ok"); err != nil {
		t.Fatal(err)
	}
	if got := recv(); got != "STATUS=ok\n" {
		t.Errorf("got %q", got)
	}
	n.Disable()
	if n.Enabled() {
		t.Error("enabled after Disable")
	}
	if err := n.Stopping(""); err != nil {
		t.Fatal(err)
	}
	// Nothing may arrive: a marker sent through another Notifier must be
	// the next datagram.
	New(name).Status("marker")
	if got := recv(); got != "STATUS=marker\n" {
		t.Errorf("after Disable, got %q", got)
	}
}

func TestSendErrors(t *testing.T) {
	if err := New("relative/path").Ready(""); err == nil {
		t.Error("relative NOTIFY_SOCKET accepted")
	}
	dir, _ := os.MkdirTemp("", "sdn")
	defer os.RemoveAll(dir)
	if err := New(filepath.Join(dir, "nobody")).Ready(""); err == nil {
		t.Error("no error for a socket nobody listens on")
	}
}

func TestWatchdogInterval(t *testing.T) {
	for _, c := range []struct {
		usec, pid   string
		predecessor int
		want        time.Duration
		err         bool
	}{
		{"", "", 0, 0, false},
		{"", "100", 0, 0, false},
		{"30000000", "", 0, 30 * time.Second, false},
		{"30000000", "100", 0, 30 * time.Second, false},
		{"30000000", "101", 0, 0, false},                  // meant for another process
		{"30000000", "101", 101, 30 * time.Second, false}, // ours since the upgrade
		{"30000000", "102", 101, 0, false},
		{"x", "", 0, 0, true},
		{"0", "", 0, 0, true},
		{"30000000", "x", 0, 0, true},
	} {
		got, err := watchdogInterval(c.usec, c.pid, 100, c.predecessor)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q predecessor %d: got %v, %v; want %v, error %v", c.usec, c.pid, c.predecessor, got, err, c.want, c.err)
		}
	}
	t.Setenv("WATCHDOG_USEC", "2000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	if d, err := WatchdogInterval(); d != 2*time.Second || err != nil {
		t.Errorf("WatchdogInterval() = %v, %v", d, err)
	}
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getppid()))
	if d, err := WatchdogInterval(); d != 0 || err != nil {
		t.Errorf("WatchdogInterval() for the parent = %v, %v", d, err)
	}
	if d, err := WatchdogIntervalAfter(os.Getppid()); d != 2*time.Second || err != nil {
		t.Errorf("WatchdogIntervalAfter(parent) = %v, %v", d, err)
	}
}

func TestWatchdogPingsOnlyWhileAlive(t *testing.T) {
	name, recv := listenTimeout(t, false)
	var sick atomic.Bool
	var checks atomic.Int32
	w := &Watchdog{
		Notifier: New(name),
		Interval: 40 * time.Millisecond,
		Alive: func() error {
			if sick.Load() {
				checks.Add(1)
				return errors.New("accept loop gone")
			}
			return nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for range 3 {
		if got, _ := recv(5 * time.Second); got != "WATCHDOG=1\n" {
			t.Fatalf("got %q, want WATCHDOG=1", got)
		}
	}
	sick.Store(true)
	for checks.Load() < 1 {
		time.Sleep(5 * time.Millisecond)
	}
	for { // pings sent before the first failed check
		if _, ok := recv(time.Millisecond); !ok {
			break
		}
	}
	for checks.Load() < 4 {
		if got, ok := recv(5 * time.Millisecond); ok {
			t.Fatalf("got %q while not alive", got)
		}
	}
	sick.Store(false)
	if got, _ := recv(5 * time.Second); got != "WATCHDOG=1\n" {
		t.Fatalf("got %q after recovery, want WATCHDOG=1", got)
	}
}

func TestWatchdogOffWithoutInterval(t *testing.T) {
	done := make(chan struct{})
	go func() { (&Watchdog{Notifier: New("@x")}).Run(context.Background()); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Run with no interval did not return")
	}
}
