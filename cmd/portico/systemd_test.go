package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testsrv"
)

// notifySocket is a stand-in for systemd's notification socket: a
// unixgram socket whose datagrams the test reads in order, each with the
// sender's pid, which systemd also uses (SO_PASSCRED) to tell the main
// process's messages from the others'.
type notifySocket struct {
	path string
	msgs chan notification
}

type notification struct {
	pid  int
	text string
}

func (m notification) String() string {
	return strconv.Quote(m.text) + " from pid " + strconv.Itoa(m.pid)
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	// Not t.TempDir(): socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ns := &notifySocket{path: filepath.Join(dir, "notify"), msgs: make(chan notification, 1000)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			m := notification{text: string(buf[:n])}
			if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(cmsgs) > 0 {
				if cred, err := unix.ParseUnixCredentials(&cmsgs[0]); err == nil {
					m.pid = int(cred.Pid)
				}
			}
			select {
			case ns.msgs <- m:
			default: // a test that stopped reading; never block Close
			}
		}
	}()
	return ns
}

// next returns the next datagram that is not a watchdog ping or a bare
// status update (those come at any time), and how many pings came before.
func (ns *notifySocket) next(t *testing.T, srv *notifiedServe) (msg notification, pings int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-ns.msgs:
			switch {
			case m.text == "WATCHDOG=1\n":
				pings++
			case strings.HasPrefix(m.text, "STATUS=") && strings.Count(m.text, "\n") == 1:
			default:
				return m, pings
			}
		case <-timeout:
			t.Fatalf("no notification within 10s\n%s", srv.log())
		}
	}
}

// notifiedServe is a `portico serve` started as systemd starts it.
type notifiedServe struct {
	cmd         *exec.Cmd
	imaps, imap string
	logFile     string

	waitOnce sync.Once
	waitErr  error
}

// wait is cmd.Wait, callable from the test and its cleanup alike.
func (s *notifiedServe) wait() error {
	s.waitOnce.Do(func() { s.waitErr = s.cmd.Wait() })
	return s.waitErr
}

// log returns what serve has logged so far.
func (s *notifiedServe) log() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

// serveNotified starts `portico serve` as systemd starts it with
// Type=notify: NOTIFY_SOCKET set, and with watchdog WATCHDOG_USEC=watchdog
// and WATCHDOG_PID=watchdogPID ("self" for the server's own pid, which
// only a shell that execs it knows in advance, as systemd does). extra is
// added to the config.
func serveNotified(t *testing.T, bin string, ns *notifySocket, watchdog, watchdogPID, extra string) *notifiedServe {
	t.Helper()
	return serveNotifiedVia(t, bin, ns, watchdog, watchdogPID, extra, nil)
}

// serveNotifiedVia is serveNotified with the command line that starts
// serve prefixed by via(s), when via is set (the addresses are chosen by
// then).
func serveNotifiedVia(t *testing.T, bin string, ns *notifySocket, watchdog, watchdogPID, extra string, via func(s *notifiedServe) []string) *notifiedServe {
	t.Helper()
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "carol@example.test", Password: "carol-pw"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	dir := t.TempDir()
	s := &notifiedServe{imaps: freeAddr(t), imap: freeAddr(t), logFile: filepath.Join(dir, "serve.log")}
	p := writeConfig(t, dir, `
listeners:
  - {name: imaps, mode: imaps, address: "`+s.imaps+`"}
  - {name: imap, mode: imap, address: "`+s.imap+`", cleartext_login_networks: [127.0.0.0/8]}
`+certFiles(t, dir)+`
routing:
  static:
    - {user: carol@example.test, backend: mem}
  health: {disabled: true}
backends:
  - {name: mem, address: "`+be.Addr()+`"}
`+extra)
	script := `exec "$0" serve -config "$1"`
	if watchdog != "" {
		pid := watchdogPID
		if pid == "self" {
			pid = "$$"
		}
		script = "WATCHDOG_USEC=" + watchdog + " WATCHDOG_PID=" + pid + " " + script
	}
	args := []string{"sh", "-c", script, bin, p}
	if via != nil {
		args = append(via(s), args...)
	}
	s.cmd = exec.Command(args[0], args[1:]...)
	s.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path)
	// A file, not a pipe: a process started by an upgrade inherits it,
	// and a pipe would keep Wait waiting for that one too.
	logf, err := os.Create(s.logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	s.cmd.Stderr = logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill(); s.wait() })
	return s
}

func monotonicUsec(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}

// TestSystemd runs `portico serve` against a real notification socket, as
// systemd runs it with Type=notify and WatchdogSec=.
func TestSystemd(t *testing.T) {
	bin := binary(t)
	t.Run("notify", func(t *testing.T) { testSystemdNotify(t, bin) })
	t.Run("watchdog for another process", func(t *testing.T) { testWatchdogForAnotherProcess(t, bin) })
	t.Run("upgrade", func(t *testing.T) { testSystemdUpgrade(t, bin) })
	t.Run("socket activation", func(t *testing.T) { testSocketActivation(t, bin) })
}

// testSocketActivation runs serve under systemd-socket-activate, which
// binds the listeners' addresses and one more, and starts serve on the
// first connection with the sockets (LISTEN_FDS), as a .socket unit
// does: that connection waits in the backlog and is served, the
// listeners take the sockets bound to their addresses, the one no
// listener wants is closed with a warning, and an upgrade hands the
// sockets on like those serve opens itself.
func testSocketActivation(t *testing.T, bin string) {
	activate := testsrv.LookPath(t, "systemd-socket-activate")
	ns := listenNotify(t)
	dir := t.TempDir()
	unused := freeAddr(t)
	srv := serveNotifiedVia(t, bin, ns, "", "", "pid_file: "+filepath.Join(dir, "portico.pid")+"\nlimits: {upgrade_timeout: 1s, upgrade_window: 10ms}\n",
		func(s *notifiedServe) []string {
			// Its child gets only the variables named with -E.
			return []string{activate, "-E", "NOTIFY_SOCKET", "-l", s.imaps, "-l", s.imap, "-l", unused}
		})
	// Nothing runs serve yet: this connection starts it, and waits.
	var sess *plainConn
	var l string
	var err error
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if sess, l, err = loginPlain(srv.imap, "carol@example.test", "carol-pw"); err == nil || time.Now().After(end) {
			break
		}
	}
	if err != nil || !strings.HasPrefix(l, "a OK") {
		t.Fatalf("first login: %q, %v\n%s", l, err, srv.log())
	}
	sess.c.Close()
	pid := srv.cmd.Process.Pid
	if msg, _ := ns.next(t, srv); !strings.HasPrefix(msg.text, "READY=1\n") || msg.pid != pid {
		t.Fatalf("first notification %s, want READY=1 from %d\n%s", msg, pid, srv.log())
	}
	log := srv.log()
	for _, want := range []string{
		`msg="listening (socket from systemd)" listener=imaps mode=imaps addr=` + srv.imaps,
		`msg="listening (socket from systemd)" listener=imap mode=imap addr=` + srv.imap,
		`msg="socket from systemd closed: no listener, admin or ACME address is bound there" addr=` + unused,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s\n%s", want, log)
		}
	}
	if c, err := net.DialTimeout("tcp", unused, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts", unused)
	}

	// An upgrade hands the activated sockets on.
	srv.cmd.Process.Signal(syscall.SIGUSR2)
	msg, _ := ns.next(t, srv)
	v, ok := strings.CutPrefix(msg.text, "MAINPID=")
	v, _, _ = strings.Cut(v, "\n")
	newPID, err := strconv.Atoi(v)
	if !ok || err != nil || newPID == pid {
		t.Fatalf("after SIGUSR2: %s, want MAINPID= of a new process\n%s", msg, srv.log())
	}
	defer syscall.Kill(newPID, syscall.SIGKILL)
	if err := srv.wait(); err != nil {
		t.Fatalf("old serve: %v\n%s", err, srv.log())
	}
	for _, addr := range []string{srv.imap, srv.imaps} {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatalf("after the upgrade, %s: %v\n%s", addr, err, srv.log())
		}
		c.Close()
	}
	if sess, l, err = loginPlain(srv.imap, "carol@example.test", "carol-pw"); err != nil || !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login after the upgrade: %q, %v\n%s", l, err, srv.log())
	}
	sess.c.Close()
	if !strings.Contains(srv.log(), `msg="listening (socket taken over)" listener=imap `) {
		t.Errorf("the new process did not take the socket over\n%s", srv.log())
	}
}

// testSystemdNotify: READY=1 once the listeners accept, WATCHDOG=1 at half
// of WATCHDOG_USEC, STATUS= with the sessions, RELOADING=1 with
// MONOTONIC_USEC then READY=1 around a SIGHUP reload, STOPPING=1 on
// SIGTERM; all from serve's own pid.
func testSystemdNotify(t *testing.T, bin string) {
	ns := listenNotify(t)
	// 400 ms: a ping every 200 ms.
	srv := serveNotified(t, bin, ns, "400000", "self", "")
	pid := srv.cmd.Process.Pid

	msg, _ := ns.next(t, srv)
	if msg.text != "READY=1\nSTATUS=serving, 0 sessions\n" || msg.pid != pid {
		t.Fatalf("first notification %s, want READY=1 with a status from %d\n%s", msg, pid, srv.log())
	}
	// READY=1 means the listeners accept now, not soon.
	for _, addr := range []string{srv.imaps, srv.imap} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("READY=1 before %s accepts: %v", addr, err)
		}
		c.Close()
	}

	// A session shows in STATUS=, and the pings come meanwhile.
	sess, l, err := loginPlain(srv.imap, "carol@example.test", "carol-pw")
	if err != nil || !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login: %q, %v\n%s", l, err, srv.log())
	}
	defer sess.c.Close()
	pings, status := 0, ""
	for deadline := time.After(10 * time.Second); pings < 3 || status != "STATUS=serving, 1 sessions\n"; {
		select {
		case m := <-ns.msgs:
			switch {
			case m.pid != pid:
				t.Fatalf("%s from another process than serve (%d)", m, pid)
			case m.text == "WATCHDOG=1\n":
				pings++
			case strings.HasPrefix(m.text, "STATUS="):
				status = m.text
			default:
				t.Fatalf("unexpected %s", m)
			}
		case <-deadline:
			t.Fatalf("%d pings, status %q within 10s\n%s", pings, status, srv.log())
		}
	}

	before := monotonicUsec(t)
	srv.cmd.Process.Signal(syscall.SIGHUP)
	msg, _ = ns.next(t, srv)
	after := monotonicUsec(t)
	rest, ok := strings.CutPrefix(msg.text, "RELOADING=1\nMONOTONIC_USEC=")
	us, err := strconv.ParseUint(strings.TrimSuffix(rest, "\n"), 10, 64)
	if !ok || err != nil || us < before || us > after {
		t.Fatalf("after SIGHUP: %s, want RELOADING=1 and MONOTONIC_USEC between %d and %d", msg, before, after)
	}
	if msg, _ = ns.next(t, srv); !strings.HasPrefix(msg.text, "READY=1\nSTATUS=serving; reloaded at ") {
		t.Fatalf("after the reload: %s, want READY=1 and a status", msg)
	}

	srv.cmd.Process.Signal(syscall.SIGTERM)
	if msg, _ = ns.next(t, srv); msg.text != "STOPPING=1\nSTATUS=shutting down\n" || msg.pid != pid {
		t.Fatalf("after SIGTERM: %s, want STOPPING=1", msg)
	}
	sess.c.Close() // or serve waits shutdown_timeout for it
	if err := srv.wait(); err != nil {
		t.Fatalf("serve: %v\n%s", err, srv.log())
	}
}

// testWatchdogForAnotherProcess: a WATCHDOG_PID that is not the server's
// (a parent passed its environment on) means no pings.
func testWatchdogForAnotherProcess(t *testing.T, bin string) {
	ns := listenNotify(t)
	srv := serveNotified(t, bin, ns, "200000", "1", "")
	if msg, _ := ns.next(t, srv); !strings.HasPrefix(msg.text, "READY=1\n") {
		t.Fatalf("first notification %s", msg)
	}
	time.Sleep(500 * time.Millisecond) // five intervals of 100 ms
	srv.cmd.Process.Signal(syscall.SIGTERM)
	msg, pings := ns.next(t, srv)
	if pings != 0 || !strings.HasPrefix(msg.text, "STOPPING=1\n") {
		t.Fatalf("%d pings for WATCHDOG_PID=1, then %s", pings, msg)
	}
	if err := srv.wait(); err != nil {
		t.Fatalf("serve: %v\n%s", err, srv.log())
	}
}

// testSystemdUpgrade: after `portico upgrade` (SIGUSR2) the new process
// tells systemd it is the main process (MAINPID= its own pid, sent by
// itself, as NotifyAccess=all allows) and feeds the watchdog, although
// WATCHDOG_PID still names the old process; the old process, draining,
// says nothing more, and above all not STOPPING=1.
func testSystemdUpgrade(t *testing.T, bin string) {
	ns := listenNotify(t)
	dir := t.TempDir()
	srv := serveNotified(t, bin, ns, "400000", "self",
		"pid_file: "+filepath.Join(dir, "portico.pid")+"\nlimits: {upgrade_timeout: 2s, upgrade_window: 10ms}\n")
	old := srv.cmd.Process.Pid
	if msg, _ := ns.next(t, srv); msg.text != "READY=1\nSTATUS=serving, 0 sessions\n" || msg.pid != old {
		t.Fatalf("first notification %s, want READY=1 from %d\n%s", msg, old, srv.log())
	}
	// A session on the old process keeps it draining for a while.
	sess, l, err := loginPlain(srv.imap, "carol@example.test", "carol-pw")
	if err != nil || !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login: %q, %v\n%s", l, err, srv.log())
	}
	defer sess.c.Close()

	srv.cmd.Process.Signal(syscall.SIGUSR2)
	msg, _ := ns.next(t, srv)
	v, ok := strings.CutPrefix(msg.text, "MAINPID=")
	v, rest, _ := strings.Cut(v, "\n")
	newPID, err := strconv.Atoi(v)
	if !ok || err != nil || newPID == old || msg.pid != newPID || !strings.HasPrefix(rest, "READY=1\n") {
		t.Fatalf("after SIGUSR2: %s, want MAINPID= and READY=1 from the new process\n%s", msg, srv.log())
	}
	defer syscall.Kill(newPID, syscall.SIGKILL)

	// The old process drains its session (upgrade_timeout) and exits,
	// silent; the new one pings throughout.
	exited := make(chan error, 1)
	go func() { exited <- srv.wait() }()
	newPings, oldExited := 0, false
	for deadline := time.After(15 * time.Second); !oldExited || newPings < 3; {
		select {
		case m := <-ns.msgs:
			switch {
			case m.pid == old && m.text != "WATCHDOG=1\n" && !strings.HasPrefix(m.text, "STATUS="):
				t.Fatalf("the old process, handed over, sent %s", m)
			case m.pid == newPID && m.text == "WATCHDOG=1\n":
				if oldExited {
					newPings++
				}
			case m.pid == newPID && strings.HasPrefix(m.text, "STATUS="):
			case m.pid == newPID:
				t.Fatalf("unexpected %s", m)
			}
		case err := <-exited:
			if err != nil {
				t.Fatalf("old serve: %v\n%s", err, srv.log())
			}
			oldExited = true
		case <-deadline:
			t.Fatalf("old process exited: %v; %d pings from the new one since\n%s", oldExited, newPings, srv.log())
		}
	}
	syscall.Kill(newPID, syscall.SIGTERM)
	if msg, _ := ns.next(t, srv); msg.text != "STOPPING=1\nSTATUS=shutting down\n" || msg.pid != newPID {
		t.Fatalf("after SIGTERM to the new process: %s, want STOPPING=1 from it", msg)
	}
}

// TestWatchdogCheck: the pings need an accept loop once serve is ready,
// but not during start-up (ACME) or shutdown.
func TestWatchdogCheck(t *testing.T) {
	serving := 0
	s := newService(context.Background())
	s.log, s.probe = slog.New(slog.DiscardHandler), func() (int, int) { return serving, 0 }
	if err := s.alive(); err != nil {
		t.Errorf("starting: %v", err)
	}
	s.started.Store(true)
	if err := s.alive(); err == nil {
		t.Error("ready without an accept loop: alive")
	}
	serving = 2
	if err := s.alive(); err != nil {
		t.Errorf("serving: %v", err)
	}
	serving = 0
	s.ending.Store(true)
	if err := s.alive(); err != nil {
		t.Errorf("stopping: %v", err)
	}
}
