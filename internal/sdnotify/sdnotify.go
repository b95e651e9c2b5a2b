// Package sdnotify tells systemd (or any service manager that speaks
// sd_notify(3)) how the service is doing: READY=1, RELOADING=1,
// STOPPING=1, STATUS= and the watchdog's WATCHDOG=1, as datagrams on the
// Unix socket named by $NOTIFY_SOCKET.
//
// It is our own rather than github.com/coreos/go-systemd/v22/daemon: the
// protocol is one datagram per call, go-systemd does not send the
// MONOTONIC_USEC= that Type=notify-reload needs with RELOADING=1, and the
// watchdog's rule (ping only while the proxy proves it is alive) is ours
// either way.
//
// Without $NOTIFY_SOCKET (not started by systemd, or Type=simple) every
// call does nothing, so callers need no "are we under systemd" checks.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Notifier sends state changes to the service manager. The zero value and
// a nil *Notifier send nothing.
type Notifier struct {
	socket string // $NOTIFY_SOCKET: a path, or "@name" for an abstract socket
	off    atomic.Bool
}

// New returns a Notifier for socket, a path or an abstract name starting
// with '@', as $NOTIFY_SOCKET holds it. An empty socket gives a Notifier
// that sends nothing.
func New(socket string) *Notifier { return &Notifier{socket: socket} }

// FromEnv returns a Notifier for $NOTIFY_SOCKET. The variable stays set: a
// process started by this one to take over (a binary upgrade) needs it.
func FromEnv() *Notifier { return New(os.Getenv("NOTIFY_SOCKET")) }

// Enabled reports whether messages go anywhere.
func (n *Notifier) Enabled() bool { return n != nil && n.socket != "" && !n.off.Load() }

// Disable stops every later message for good. A process that has handed
// its service over to a successor calls it, so that its own end (STOPPING=1)
// is not taken for the service's.
func (n *Notifier) Disable() {
	if n != nil {
		n.off.Store(true)
	}
}

// Send sends the assignments (such as "READY=1", "STATUS=…") in one
// datagram, so that the service manager sees them together.
func (n *Notifier) Send(assignments ...string) error {
	if !n.Enabled() || len(assignments) == 0 {
		return nil
	}
	if n.socket[0] != '/' && n.socket[0] != '@' {
		// systemd ≥ 254 also allows vsock: addresses; Portico does not
		// run in VMs that need them.
		return fmt.Errorf("sdnotify: unsupported NOTIFY_SOCKET %q", n.socket)
	}
	// Go turns a leading '@' into the abstract namespace's NUL byte.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: n.socket, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	msg := strings.Join(assignments, "\n") + "\n"
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("sdnotify: sending %q: %w", assignments[0], err)
	}
	return nil
}

// Ready says start-up (or a reload) is complete: listeners open,
// certificates loaded.
func (n *Notifier) Ready(status string) error {
	if status == "" {
		return n.Send("READY=1")
	}
	return n.Send("READY=1", "STATUS="+status)
}

// Reloading says a reload has begun; Ready ends it. MONOTONIC_USEC lets
// systemd ≥ 253 (Type=notify-reload) match the message to the reload it
// asked for.
func (n *Notifier) Reloading() error {
	a := []string{"RELOADING=1"}
	if us, ok := monotonicUsec(); ok {
		a = append(a, "MONOTONIC_USEC="+strconv.FormatUint(us, 10))
	}
	return n.Send(a...)
}

// Stopping says the service is shutting down.
func (n *Notifier) Stopping(status string) error {
	if status == "" {
		return n.Send("STOPPING=1")
	}
	return n.Send("STOPPING=1", "STATUS="+status)
}

// Status sets the one-line status `systemctl status` shows.
func (n *Notifier) Status(status string) error { return n.Send("STATUS=" + status) }

// MainPID tells the service manager that pid is now the service's main
// process: a new binary that took over from the old one sends it with its
// own pid, together with READY=1.
func (n *Notifier) MainPID(pid int, status string) error {
	a := []string{"MAINPID=" + strconv.Itoa(pid), "READY=1"}
	if status != "" {
		a = append(a, "STATUS="+status)
	}
	return n.Send(a...)
}

// WatchdogInterval returns how often the service manager wants WATCHDOG=1
// from this process ($WATCHDOG_USEC), or 0 when it wants none: the
// variable is unset, or $WATCHDOG_PID names another process (the watchdog
// was meant for a parent that passed its environment on).
func WatchdogInterval() (time.Duration, error) {
	return watchdogInterval(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid(), 0)
}

// WatchdogIntervalAfter is WatchdogInterval for a process that has taken
// the service over from process predecessor (a binary upgrade, after
// MainPID): $WATCHDOG_PID, inherited from it, still names it.
func WatchdogIntervalAfter(predecessor int) (time.Duration, error) {
	return watchdogInterval(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid(), predecessor)
}

func watchdogInterval(usec, pid string, self, predecessor int) (time.Duration, error) {
	if usec == "" {
		return 0, nil
	}
	if pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil {
			return 0, fmt.Errorf("sdnotify: WATCHDOG_PID %q: %w", pid, err)
		}
		if p != self && (predecessor == 0 || p != predecessor) {
			return 0, nil
		}
	}
	us, err := strconv.ParseInt(usec, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("sdnotify: WATCHDOG_USEC %q: %w", usec, err)
	}
	if us <= 0 {
		return 0, errors.New("sdnotify: WATCHDOG_USEC must be positive")
	}
	return time.Duration(us) * time.Microsecond, nil
}
