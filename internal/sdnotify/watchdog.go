package sdnotify

import (
	"context"
	"log/slog"
	"time"
)

// Watchdog keeps systemd's watchdog (WatchdogSec=) fed for as long as the
// process can prove it works. A goroutine that pings on a timer proves
// only that the Go scheduler runs; Alive should instead touch what serving
// needs (the accept loops, the server's lock), so that a wedged proxy stops
// pinging and systemd restarts it (with SIGABRT first: Go then prints
// every goroutine's stack to the journal).
type Watchdog struct {
	Notifier *Notifier
	// Interval is $WATCHDOG_USEC (see WatchdogInterval); Run pings every
	// half of it. Zero: Run returns at once.
	Interval time.Duration
	// Alive reports why the process is not serving, or nil. Nil Alive
	// means always alive.
	Alive func() error
	// Logger receives one line when pings stop and one when they resume;
	// nil means slog.Default().
	Logger *slog.Logger
}

// Run pings until ctx ends.
func (w *Watchdog) Run(ctx context.Context) {
	if w.Interval <= 0 || !w.Notifier.Enabled() {
		return
	}
	log := w.Logger
	if log == nil {
		log = slog.Default()
	}
	t := time.NewTicker(w.Interval / 2)
	defer t.Stop()
	var missing error
	for {
		err := w.alive()
		switch {
		case err == nil:
			if serr := w.Notifier.Send("WATCHDOG=1"); serr != nil {
				log.Warn("systemd watchdog: ping failed", "err", serr)
			}
			if missing != nil {
				log.Info("systemd watchdog: alive again; pings resumed")
			}
		case missing == nil:
			log.Error("systemd watchdog: not serving; pings stopped, systemd will restart the service", "err", err, "within", w.Interval)
		}
		missing = err
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *Watchdog) alive() error {
	if w.Alive == nil {
		return nil
	}
	return w.Alive()
}
