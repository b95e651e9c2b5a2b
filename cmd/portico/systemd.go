package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/internal/sdnotify"
	"github.com/portico-mail/portico/proxy"
)

// service tells systemd how serve is doing (Type=notify, see
// packaging/portico.service): its methods are app.Process's hooks.
// Without $NOTIFY_SOCKET they do nothing.
type service struct {
	n   *sdnotify.Notifier
	ctx context.Context // ends the watchdog

	mu  sync.Mutex   // guards log and probe, set by the first ready
	log *slog.Logger // slog.Default() until then
	// probe reports the accept loops running and the logged-in sessions.
	// It takes the proxy's lock, so a wedged proxy blocks it: the
	// watchdog pings stop and systemd restarts the process.
	probe func() (serving, sessions int)

	once    sync.Once   // starts the watchdog at the first ready
	started atomic.Bool // listeners open: READY=1 sent
	ending  atomic.Bool // shutdown under way: no listener is fine
	status  string      // last STATUS= sent by alive; its goroutine's
}

func newService(ctx context.Context) *service {
	return &service{n: sdnotify.FromEnv(), ctx: ctx, log: slog.Default(), probe: func() (int, int) { return 0, 0 }}
}

func (s *service) logger() *slog.Logger {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log
}

func (s *service) counts() (serving, sessions int) {
	s.mu.Lock()
	probe := s.probe
	s.mu.Unlock()
	return probe()
}

// statusInterval is how often STATUS= follows the session count when no
// watchdog sets the pace.
const statusInterval = 30 * time.Second

// ready sends READY=1: every listener accepts and the certificates are
// loaded. A process started by an upgrade (upgraded) also says that it is
// the service's main process now. It starts the watchdog: systemd starts
// expecting pings at READY=1. log and srv are the process's.
func (s *service) ready(log *slog.Logger, srv *proxy.Server, upgraded bool) {
	s.mu.Lock()
	s.log, s.probe = log, srv.Counts
	s.mu.Unlock()
	s.started.Store(true)
	_, sessions := s.counts()
	status := fmt.Sprintf("serving, %d sessions", sessions)
	if upgraded {
		s.notify(s.n.MainPID(os.Getpid(), status))
	} else {
		s.notify(s.n.Ready(status))
	}
	s.once.Do(func() { go s.run(upgraded) })
}

// run feeds the watchdog (if systemd wants one) and keeps STATUS= current
// until s.ctx ends.
func (s *service) run(upgraded bool) {
	if !s.n.Enabled() {
		return
	}
	wd, err := sdnotify.WatchdogInterval()
	if upgraded && wd == 0 && err == nil {
		// WATCHDOG_PID still names the process this one took over from.
		wd, err = sdnotify.WatchdogIntervalAfter(os.Getppid())
	}
	if err != nil {
		s.logger().Warn("systemd watchdog: ignored", "err", err)
	}
	if wd > 0 {
		w := &sdnotify.Watchdog{Notifier: s.n, Interval: wd, Alive: s.alive, Logger: s.logger()}
		w.Run(s.ctx)
		return
	}
	// No watchdog: the same check, for the status line only.
	t := time.NewTicker(statusInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.alive()
		}
	}
}

// alive is the watchdog's check: once serving, at least one accept loop
// must run; during shutdown, with the listeners closed, only the lock
// must answer.
func (s *service) alive() error {
	serving, sessions := s.counts()
	if s.ending.Load() {
		return nil
	}
	if s.started.Load() && serving == 0 {
		return fmt.Errorf("no listener accepts connections")
	}
	if st := fmt.Sprintf("serving, %d sessions", sessions); st != s.status {
		s.status = st
		s.notify(s.n.Status(st))
	}
	return nil
}

// reloading sends RELOADING=1: systemd shows the unit as reloading until
// reloaded, and `systemctl reload` waits for it.
func (s *service) reloading() { s.notify(s.n.Reloading()) }

// reloaded sends READY=1, with the outcome in STATUS=.
func (s *service) reloaded(err error) {
	status := "serving; reloaded at " + time.Now().UTC().Format(time.TimeOnly)
	if err != nil {
		status = "serving the previous configuration; reload failed: " + err.Error()
	}
	s.notify(s.n.Ready(status))
}

// stopping sends STOPPING=1 when the service stops. A process that has
// handed the service over to a new binary (handedOn) says nothing more
// instead: it is no longer the service's main process, and its end while
// it drains its sessions is not the service's.
func (s *service) stopping(handedOn bool) {
	s.ending.Store(true)
	if handedOn {
		s.n.Disable()
		return
	}
	s.notify(s.n.Stopping("shutting down"))
}

func (s *service) notify(err error) {
	if err != nil {
		s.logger().Warn("systemd notify", "err", err)
	}
}
