package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"syscall"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/app"
)

// runReload validates the config file as serve would load it, asks the
// running serve (found through pid_file) to reload it with SIGHUP, and
// waits for the outcome, which the process writes to its status file. The
// exit status says whether the new configuration is in service.
func runReload(args []string) error {
	fs := newFlagSet("reload", "-config FILE\n\nValidates FILE, then makes the running serve (found through pid_file) load it; exits non-zero with the reason if the running configuration stays.")
	path := configFlag(fs)
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the process to answer")
	if _, help, err := parseArgs(fs, args); help || err != nil {
		return err
	}
	st, err := signalServe(*path, syscall.SIGHUP, "reload", *timeout)
	if err != nil {
		return err
	}
	fmt.Printf("reloaded: process %d serves %s\n", st.PID, st.Config)
	return nil
}

// runUpgrade is runReload for SIGUSR2: the running serve starts the binary
// now installed at its path, hands it the listening sockets, and keeps its
// own sessions until they end or limits.upgrade_timeout.
func runUpgrade(args []string) error {
	fs := newFlagSet("upgrade", "-config FILE\n\nValidates FILE with this binary, then makes the running serve (found through pid_file) hand its sockets to the binary installed at its path; exits non-zero with the reason if the old process stays in service.")
	path := configFlag(fs)
	timeout := fs.Duration("timeout", app.UpgradeReadyTimeout+30*time.Second, "how long to wait for the new process to serve")
	if _, help, err := parseArgs(fs, args); help || err != nil {
		return err
	}
	st, err := signalServe(*path, syscall.SIGUSR2, "upgrade", *timeout)
	if err != nil {
		return err
	}
	fmt.Printf("upgraded: process %d serves; process %d ends its sessions within limits.upgrade_timeout\n", st.NewPID, st.PID)
	return nil
}

// signalServe checks the config file, sends sig to the process in its
// pid_file and waits for that process to report event in the status file.
func signalServe(path string, sig syscall.Signal, event string, timeout time.Duration) (app.Status, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return app.Status{}, err
	}
	rt, err := app.Build(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return app.Status{}, err
	}
	rt.Close()
	if cfg.PIDFile == "" {
		return app.Status{}, fmt.Errorf("%s sets no pid_file: cannot find the running process (send it SIGHUP or SIGUSR2 yourself)", path)
	}
	pid, err := app.ReadPIDFile(cfg.PIDFile)
	if err != nil {
		return app.Status{}, fmt.Errorf("finding the running process: %w", err)
	}
	statusPath := app.StatusPath(cfg.PIDFile)
	before, err := app.ReadStatus(statusPath)
	if err != nil {
		return app.Status{}, err
	}
	if before.PID == pid && before.Config != "" {
		if abs := absPath(path); abs != before.Config {
			return app.Status{}, fmt.Errorf("process %d serves %s, not %s: it would %s the other file", pid, before.Config, abs, event)
		}
	}
	seq := 0
	if before.PID == pid {
		seq = before.Seq
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return app.Status{}, fmt.Errorf("signalling process %d: %w", pid, err)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		st, err := app.ReadStatus(statusPath)
		if err != nil || st.PID != pid || st.Seq <= seq || st.Event != event {
			continue
		}
		if !st.OK {
			return st, errors.New(st.Error)
		}
		return st, nil
	}
	return app.Status{}, fmt.Errorf("process %d did not report the %s within %s; see its log", pid, event, timeout)
}

// absPath is path as the running process records its config file.
func absPath(path string) string {
	if a, err := filepath.Abs(path); err == nil {
		return a
	}
	return path
}
